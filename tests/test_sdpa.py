"""scaled_dot_product_attention, attention_weights and the masks, against torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook import attention_weights, causal_mask, padding_mask, scaled_dot_product_attention

# bfloat16 keeps 8 significant bits: torch's own math and fused CPU backends differ by one
# bf16 step (2**-7 = 0.0078 near 1) on the same inputs, so 1e-3 is below its resolution.
TOL = {torch.float32: 1e-6, torch.float64: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def rand(*shape, dtype=torch.float32, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def close(a, b, dtype):
    return torch.allclose(a.double(), b.double(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "case",
    ["plain", "bool", "float", "causal", "causal_rect", "scale", "broadcast", "gqa", "3d"],
)
def test_parity_with_torch(case, dtype):
    q, k, v = (
        rand(2, 4, 5, 8, dtype=dtype),
        rand(2, 4, 7, 8, dtype=dtype, seed=1),
        rand(2, 4, 7, 6, dtype=dtype, seed=2),
    )
    kwargs = {}
    if case == "bool":
        kwargs["attn_mask"] = rand(5, 7, seed=3) > 0
    elif case == "float":
        kwargs["attn_mask"] = rand(2, 1, 5, 7, seed=3, dtype=dtype)
    elif case == "causal":
        k, v = k[..., :5, :], v[..., :5, :]
        kwargs["is_causal"] = True
    elif case == "causal_rect":
        kwargs["is_causal"] = True  # top-left, like torch
    elif case == "scale":
        kwargs["scale"] = 0.3
    elif case == "broadcast":
        k, v = k[:1], v[:1]
    elif case == "gqa":
        k, v = k[:, :2], v[:, :2]
        kwargs["enable_gqa"] = True
    elif case == "3d":
        q, k, v = q[0], k[0], v[0]
    ours = scaled_dot_product_attention(q, k, v, **kwargs)
    theirs = F.scaled_dot_product_attention(q, k, v, **kwargs)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert close(ours, theirs, dtype), (ours.double() - theirs.double()).abs().max()


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_fully_masked_rows_give_zero_with_finite_gradients(kind):
    q = rand(1, 2, 3, 4).requires_grad_()
    k, v = rand(1, 2, 5, 4, seed=1), rand(1, 2, 5, 4, seed=2)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    if kind == "float":
        mask = torch.zeros(3, 5).masked_fill(~mask, float("-inf"))
    out = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.equal(out[..., 1, :], torch.zeros(1, 2, 4))
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-6)
    out.sum().backward()
    assert torch.isfinite(q.grad).all()
    w = attention_weights(q, k, attn_mask=mask)
    assert torch.equal(w[..., 1, :], torch.zeros(1, 2, 5))
    assert torch.allclose(w[..., [0, 2], :].sum(-1), torch.ones(1, 2, 2))


def test_float16_dot_products_beyond_65504_stay_finite():
    x = torch.full((1, 1, 4, 64), 40.0, dtype=torch.float16)  # raw q.k = 102400 = inf in fp16
    out = scaled_dot_product_attention(x, x, x)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.float(), F.scaled_dot_product_attention(x, x, x).float(), atol=1e-3)


@pytest.mark.parametrize(("L", "S"), [(0, 3), (3, 0), (0, 0)])
def test_empty_queries_or_keys_match_torch(L, S):
    q, k, v = rand(2, L, 4), rand(2, S, 4, seed=1), rand(2, S, 5, seed=2)
    ours = scaled_dot_product_attention(q, k, v)
    assert torch.equal(ours, F.scaled_dot_product_attention(q, k, v))
    assert attention_weights(q, k).shape == (2, L, S)


def test_weights_rows_sum_to_one():
    w = attention_weights(rand(3, 4, 8), rand(3, 6, 8, seed=1), is_causal=True)
    assert w.shape == (3, 4, 6)
    assert torch.allclose(w.sum(-1), torch.ones(3, 4))


def test_causal_mask_is_bottom_right():
    assert causal_mask(3).tolist() == torch.ones(3, 3, dtype=torch.bool).tril().tolist()
    m = causal_mask(2, 5)
    assert m.tolist() == [[True, True, True, True, False], [True] * 5]
    # the last query always sees every key: that is what incremental decoding needs
    for q_len in range(1, 6):
        assert causal_mask(q_len, 5)[-1].all()
    assert causal_mask(0, 3).shape == (0, 3)


def test_padding_mask():
    assert padding_mask([2, 0, 3]).tolist() == [[True, True, False], [False] * 3, [True] * 3]
    assert padding_mask(torch.tensor([1]), max_len=3).tolist() == [[True, False, False]]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: scaled_dot_product_attention(rand(4), rand(4), rand(4)),
            ValueError,
            r"query must have shape \(\.\.\., L, E\) with at least 2 dimensions, got a 1-D",
        ),
        (
            lambda: scaled_dot_product_attention(rand(2, 3, 8), rand(2, 3, 4), rand(2, 3, 4)),
            ValueError,
            "same last .head. dimension, got query .*8.*key .*4",
        ),
        (
            lambda: scaled_dot_product_attention(rand(3, 8), rand(5, 8), rand(4, 8)),
            ValueError,
            "key and value must have the same length S",
        ),
        (
            lambda: scaled_dot_product_attention(
                rand(3, 8), rand(5, 8), rand(5, 8), attn_mask=torch.ones(4, 5, dtype=torch.bool)
            ),
            ValueError,
            r"attn_mask of shape \(4, 5\) does not broadcast to the scores' shape \(3, 5\)",
        ),
        (
            lambda: scaled_dot_product_attention(
                rand(3, 8), rand(5, 8), rand(5, 8), attn_mask=torch.ones(3, 5, dtype=torch.int64)
            ),
            TypeError,
            "attn_mask must be bool .* or floating point .*, got torch.int64",
        ),
        (
            lambda: scaled_dot_product_attention(
                rand(3, 8),
                rand(5, 8),
                rand(5, 8),
                is_causal=True,
                attn_mask=torch.ones(3, 5, dtype=torch.bool),
            ),
            ValueError,
            "either attn_mask or is_causal",
        ),
        (
            lambda: scaled_dot_product_attention(rand(3, 8).long(), rand(5, 8), rand(5, 8)),
            TypeError,
            "query must have a floating-point dtype",
        ),
        (
            lambda: scaled_dot_product_attention(rand(3, 8), rand(5, 8).double(), rand(5, 8)),
            TypeError,
            "share one dtype",
        ),
        (
            lambda: scaled_dot_product_attention(
                rand(1, 6, 3, 8), rand(1, 4, 5, 8), rand(1, 4, 5, 8), enable_gqa=True
            ),
            ValueError,
            "multiple of key",
        ),
        (
            lambda: scaled_dot_product_attention([1.0], rand(5, 8), rand(5, 8)),
            TypeError,
            "query must be a torch.Tensor, got list",
        ),
        (lambda: causal_mask(-1), ValueError, "q_len must be a non-negative int"),
        (lambda: padding_mask([1.5, 2.0]), TypeError, "lengths must be a 1-D sequence of ints"),
        (lambda: padding_mask([3], max_len=2), ValueError, "max_len=2 is shorter"),
    ],
)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


@settings(max_examples=80, deadline=None)
@given(
    batch=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    L=st.integers(1, 6),
    S=st.integers(1, 6),
    E=st.integers(1, 8),
    Ev=st.integers(1, 5),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16]),
    mask_kind=st.sampled_from(["none", "bool", "float", "causal"]),
    dead_row=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_property_parity(batch, L, S, E, Ev, dtype, mask_kind, dead_row, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*batch, L, E, generator=g).to(dtype)
    k = torch.randn(*batch, S, E, generator=g).to(dtype)
    v = torch.randn(*batch, S, Ev, generator=g).to(dtype)
    kwargs = {}
    if mask_kind == "bool":
        mask = torch.rand(L, S, generator=g) > 0.3
        if dead_row:
            mask[0] = False
        kwargs["attn_mask"] = mask
    elif mask_kind == "float":
        mask = torch.randn(L, S, generator=g).to(dtype)
        if dead_row:
            mask[0] = float("-inf")
        kwargs["attn_mask"] = mask
    elif mask_kind == "causal":
        kwargs["is_causal"] = True
    ours = scaled_dot_product_attention(q, k, v, **kwargs)
    theirs = F.scaled_dot_product_attention(q, k, v, **kwargs)
    assert torch.isfinite(ours).all()
    assert close(ours, theirs, dtype), (ours.double() - theirs.double()).abs().max()
