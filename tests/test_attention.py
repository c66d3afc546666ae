"""attnbook.attention against PyTorch's own reference ops."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook import self_attention

WORDS = torch.tensor(
    [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]
)


def reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's SDPA with query = key = value = x and scale 1 is softmax(x x^T) x."""
    xf = x.double()
    output = torch.nn.functional.scaled_dot_product_attention(xf, xf, xf, scale=1.0)
    weights = torch.softmax(xf @ xf.transpose(-2, -1), dim=-1)
    return output, weights


def test_chapter_one_numbers():
    output, weights = self_attention(WORDS)
    e = torch.exp(torch.tensor([2.0, 0.0, 1.0, 1.0]))
    assert torch.allclose(weights[0], e / e.sum())
    assert torch.allclose(output[0], (e / e.sum()) @ WORDS)
    # the honest limit: with equal-length vectors, each word scores itself highest
    assert weights.argmax(dim=-1).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("shape", [(1, 1), (4, 4), (7, 3), (2, 5, 8), (3, 1, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_torch_sdpa(shape, dtype):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    output, weights = self_attention(x)
    ref_out, ref_w = reference(x)
    assert output.shape == x.shape and output.dtype == dtype
    assert weights.shape == (*x.shape[:-1], x.shape[-2])
    assert torch.allclose(output.double(), ref_out, atol=1e-6)
    assert torch.allclose(weights.double(), ref_w, atol=1e-6)
    assert torch.allclose(weights.sum(-1), torch.ones((), dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_matches_and_stays_finite(dtype):
    x = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(1)).to(dtype)
    output, weights = self_attention(x)
    assert output.dtype == dtype and weights.dtype == dtype
    ref_out, ref_w = reference(x)
    assert torch.allclose(output.double(), ref_out, atol=1e-2)
    assert torch.allclose(weights.double(), ref_w, atol=1e-2)


def test_float16_scores_that_overflow_stay_finite():
    # 40 * 40 * 64 = 102400 > 65504, the largest float16: a float16 matmul gives inf.
    x = torch.full((3, 64), 40.0, dtype=torch.float16)
    assert torch.isinf(x @ x.T).all()
    output, weights = self_attention(x)
    assert torch.isfinite(output).all() and torch.isfinite(weights).all()
    assert torch.allclose(weights.float(), torch.full((3, 3), 1 / 3), atol=1e-3)
    assert torch.equal(output, x)


def test_huge_logits_are_finite():
    x = torch.tensor([[1e4, 0.0], [0.0, 1e4], [1e4, 1e4]])
    output, weights = self_attention(x)
    assert torch.isfinite(output).all() and torch.isfinite(weights).all()


def test_gradients_flow():
    x = WORDS.clone().requires_grad_()
    output, _ = self_attention(x)
    output.sum().backward()
    xr = WORDS.clone().requires_grad_()
    torch.nn.functional.scaled_dot_product_attention(xr, xr, xr, scale=1.0).sum().backward()
    assert torch.allclose(x.grad, xr.grad, atol=1e-6)


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        ([[1.0, 0.0]], TypeError, "x must be a torch.Tensor, got list"),
        (torch.tensor([[1, 0], [0, 1]]), TypeError, "floating-point dtype.*got torch.int64"),
        (torch.tensor([True, False]), TypeError, "got torch.bool"),
        (torch.ones(3), ValueError, r"\(L, E\) or \(B, L, E\), got a 1-D tensor of shape \(3,\)"),
        (torch.ones(1, 2, 3, 4), ValueError, r"got a 4-D tensor of shape \(1, 2, 3, 4\)"),
        (torch.tensor(1.0), ValueError, "got a 0-D tensor"),
    ],
)
def test_bad_input_names_the_argument(bad, error, message):
    with pytest.raises(error, match=message):
        self_attention(bad)


@settings(max_examples=60, deadline=None)
@given(
    batch=st.one_of(st.none(), st.integers(1, 3)),
    length=st.integers(1, 9),
    dim=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([1e-3, 1.0, 10.0]),
)
def test_property_matches_torch(batch, length, dim, seed, scale):
    shape = (length, dim) if batch is None else (batch, length, dim)
    x = scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    output, weights = self_attention(x)
    ref_out, ref_w = reference(x)
    # float32 rounding of scores ~ scale^2 * dim moves the weights by about 1e-7 of that,
    # and the output, a mix of rows of size ~ scale, by that times scale
    tol = 1e-5 * max(1.0, scale) ** 2
    assert torch.allclose(weights.double(), ref_w, atol=tol)
    assert torch.allclose(output.double(), ref_out, atol=tol * max(1.0, scale))
    # each output row is a convex combination of input rows: inside their bounding box
    lo = x.min(dim=-2, keepdim=True).values - 1e-4 * scale
    hi = x.max(dim=-2, keepdim=True).values + 1e-4 * scale
    assert ((output >= lo) & (output <= hi)).all()
