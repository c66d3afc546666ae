"""LayerNorm and RMSNorm against torch.nn.LayerNorm and torch.nn.RMSNorm on copied weights."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attnbook.norms import LayerNorm, RMSNorm


def x(*shape, seed=1, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def perturbed(module):
    torch.manual_seed(0)
    with torch.no_grad():  # weights away from ones and biases away from zeros
        for p in module.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return module


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
@pytest.mark.parametrize("shape", [(8,), (3, 8), (2, 3, 8)])
def test_layernorm_matches_torch(bias, eps, shape):
    ref = perturbed(nn.LayerNorm(8, eps=eps, bias=bias))
    ours = LayerNorm.from_torch(ref)
    assert (ours.bias is None) == (not bias) and ours.eps == eps
    inp = 3.0 * x(*shape) + 2.0  # an offset and a scale that the norm must remove
    assert torch.allclose(ours(inp), ref(inp), atol=1e-6)


@pytest.mark.parametrize("eps", [1e-6, 1e-2])
@pytest.mark.parametrize("shape", [(8,), (2, 3, 8)])
def test_rmsnorm_matches_torch(eps, shape):
    ref = perturbed(nn.RMSNorm(8, eps=eps))
    ours = RMSNorm.from_torch(ref)
    inp = 3.0 * x(*shape)
    assert torch.allclose(ours(inp), ref(inp), atol=1e-6)


def test_fresh_layers_equal_fresh_torch_layers():
    inp = x(4, 8)
    assert torch.allclose(LayerNorm(8)(inp), nn.LayerNorm(8)(inp), atol=1e-6)
    assert torch.allclose(RMSNorm(8)(inp), nn.RMSNorm(8, eps=1e-6)(inp), atol=1e-6)


def test_variance_is_biased():
    v = torch.tensor([1.0, 3.0])  # mean 2, biased variance 1 (unbiased would be 2)
    assert torch.allclose(LayerNorm(2, eps=0.0)(v), torch.tensor([-1.0, 1.0]))


@pytest.mark.parametrize("cls", [LayerNorm, RMSNorm])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_keeps_dtype_and_is_close(cls, dtype):
    norm = cls(8)
    inp = 100.0 * x(2, 8)  # squares of 100s overflow float16 arithmetic if done in float16
    out = norm(inp.to(dtype))
    assert out.dtype == dtype
    assert torch.allclose(out.float(), norm(inp), atol=2e-2)


@pytest.mark.parametrize("cls", [LayerNorm, RMSNorm])
@pytest.mark.parametrize("weights", [torch.float32, torch.float64])
@pytest.mark.parametrize("inputs", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_any_float_input_with_any_weights(cls, weights, inputs):
    """The output has the input's dtype; the weights are cast to the computing dtype."""
    norm = perturbed(cls(8)).to(weights)
    inp = x(3, 8, dtype=torch.float64).to(inputs)
    out = norm(inp)
    work = torch.float32 if inputs in (torch.float16, torch.bfloat16) else inputs
    expected = perturbed(cls(8)).to(work)(inp.to(work)).to(inputs)  # same weights, cast to work
    assert out.dtype == inputs and torch.equal(out, expected)


@settings(max_examples=25, deadline=None)
@given(width=st.integers(2, 16), seed=st.integers(0, 1000), scale=st.floats(0.1, 100.0))
def test_property_statistics(width, seed, scale):
    inp = scale * x(3, width, seed=seed)
    y = LayerNorm(width, eps=0.0)(inp)
    assert torch.allclose(y.mean(-1), torch.zeros(3), atol=1e-4)
    assert torch.allclose(y.var(-1, unbiased=False), torch.ones(3), atol=1e-3)
    r = RMSNorm(width, eps=0.0)(inp)
    assert torch.allclose(r.pow(2).mean(-1), torch.ones(3), atol=1e-3)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: LayerNorm(0), ValueError, "dim must be a positive int, got 0"),
        (lambda: RMSNorm(8, eps=-1.0), ValueError, "eps must be a non-negative finite float"),
        (lambda: LayerNorm(8, eps=float("nan")), ValueError, "eps must be a non-negative finite"),
        (lambda: RMSNorm(8, eps=float("inf")), ValueError, "eps must be a non-negative finite"),
        (lambda: LayerNorm(8, eps="1e-5"), TypeError, "eps must be a real number, got str"),
        (lambda: LayerNorm(8, bias="False"), TypeError, "bias must be a bool, got 'False'"),
        (lambda: LayerNorm(8, bias=0), TypeError, "bias must be a bool, got 0"),
        (
            lambda: LayerNorm(8)(x(2, 4)),
            ValueError,
            r"x must have shape \(\.\.\., 8\), got shape \(2, 4\)",
        ),
        (
            lambda: RMSNorm(8)(torch.ones(2, 8, dtype=torch.long)),
            TypeError,
            "x must have a floating",
        ),
        (lambda: LayerNorm(8)([1.0] * 8), TypeError, "x must be a torch.Tensor"),
        (lambda: LayerNorm.from_torch(nn.RMSNorm(8)), TypeError, "torch.nn.LayerNorm"),
        (lambda: RMSNorm.from_torch(nn.LayerNorm(8)), TypeError, "torch.nn.RMSNorm"),
        (
            lambda: LayerNorm.from_torch(nn.LayerNorm((2, 8))),
            ValueError,
            r"normalized_shape must have one dimension .* got \(2, 8\)",
        ),
        (lambda: RMSNorm.from_torch(nn.RMSNorm((2, 8), eps=1e-6)), ValueError, "normalized_shape"),
        (
            lambda: LayerNorm.from_torch(nn.LayerNorm(8, elementwise_affine=False)),
            ValueError,
            "elementwise_affine=False",
        ),
        (
            lambda: RMSNorm.from_torch(nn.RMSNorm(8, elementwise_affine=False, eps=1e-6)),
            ValueError,
            "elementwise_affine=False",
        ),
        (lambda: RMSNorm.from_torch(nn.RMSNorm(8)), ValueError, "eps=None"),
    ],
)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()
