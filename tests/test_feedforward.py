"""FeedForward against torch layers on copied weights, and the SwiGLU 2/3 width rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attnbook.feedforward import FeedForward, swiglu_hidden


def x(*shape, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    ("activation", "torch_activation"), [("relu", nn.ReLU()), ("gelu", nn.GELU())]
)
def test_mlp_matches_torch(activation, torch_activation, bias):
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(8, 32, bias=bias), torch_activation, nn.Linear(32, 8, bias=bias))
    ours = FeedForward(8, 32, activation, bias=bias)
    ours.load_state_dict(
        {"w1.weight": ref[0].weight, "w2.weight": ref[2].weight}
        | ({"w1.bias": ref[0].bias, "w2.bias": ref[2].bias} if bias else {})
    )
    inp = x(2, 5, 8)
    assert torch.allclose(ours(inp), ref(inp), atol=1e-6)


def test_swiglu_matches_its_formula():
    torch.manual_seed(0)
    ff = FeedForward(8, 12, "swiglu", bias=False)
    w1, w2, w3 = (torch.randn(12, 8), torch.randn(8, 12), torch.randn(12, 8))
    ff.load_state_dict({"w1.weight": w1, "w2.weight": w2, "w3.weight": w3})
    inp = x(2, 5, 8)
    gate = inp @ w1.T
    expected = (gate * torch.sigmoid(gate) * (inp @ w3.T)) @ w2.T  # silu(a) = a * sigmoid(a)
    assert torch.allclose(ff(inp), expected, atol=1e-5)
    assert torch.allclose(
        ff(inp), F.linear(F.silu(F.linear(inp, w1)) * F.linear(inp, w3), w2), atol=1e-6
    )


@pytest.mark.parametrize(
    ("d_ff", "multiple_of", "expected"),
    [(4 * 768, 1, 2048), (4 * 512, 1, 1365), (4 * 4096, 256, 11008), (3, 1, 2), (12, 8, 8)],
)
def test_swiglu_hidden(d_ff, multiple_of, expected):
    assert swiglu_hidden(d_ff, multiple_of) == expected


@pytest.mark.parametrize("d_model", [12, 96, 768])
def test_swiglu_hidden_matches_the_weights_of_a_4x_mlp(d_model):
    mlp = FeedForward(d_model, 4 * d_model, "relu", bias=False)
    glu = FeedForward(d_model, swiglu_hidden(4 * d_model), "swiglu", bias=False)
    assert count(glu) == count(mlp) == 8 * d_model * d_model


def test_swiglu_hidden_smallest_widths():
    assert [swiglu_hidden(d) for d in (2, 3, 4)] == [1, 2, 2]
    assert swiglu_hidden(2, multiple_of=8) == 8


def test_integer_dropout_and_matching_dtypes_are_accepted():
    ff = FeedForward(8, 32, dropout=0)
    inp = x(2, 8)
    assert ff.double()(inp.double()).dtype == torch.float64
    ff.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts for the products itself
        assert ff(inp.bfloat16()).dtype == torch.bfloat16
        with pytest.raises(TypeError, match="x is float64 but"):  # autocast leaves float64
            ff(inp.double())


def test_dropout_only_in_training():
    ff = FeedForward(8, 32, dropout=0.5)
    inp = x(4, 8)
    ff.eval()
    assert torch.equal(ff(inp), ff(inp))
    ff.train()
    torch.manual_seed(0)
    assert not torch.allclose(ff(inp), ff(inp))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: FeedForward(8, 32, "tanh"),
            ValueError,
            r"activation must be one of 'relu', 'gelu', 'swiglu', got 'tanh'",
        ),
        (lambda: FeedForward(0, 32), ValueError, "d_model must be a positive int"),
        (lambda: FeedForward(8, 2.5), ValueError, "d_ff must be a positive int"),
        (lambda: FeedForward(8, 32, dropout=1.0), ValueError, r"dropout must be in \[0, 1\)"),
        (lambda: FeedForward(8, 32)(x(2, 4)), ValueError, r"x must have shape \(\.\.\., 8\)"),
        (
            lambda: FeedForward(8, 32)(torch.ones(2, 8, dtype=torch.long)),
            TypeError,
            "x must have a floating",
        ),
        (lambda: swiglu_hidden(0), ValueError, "d_ff must be a positive int"),
        (lambda: swiglu_hidden(96, multiple_of=0), ValueError, "multiple_of must be a positive"),
        (lambda: swiglu_hidden(1), ValueError, r"d_ff must be at least 2 .* 2 \* 1 // 3 = 0"),
        (lambda: swiglu_hidden(1, multiple_of=256), ValueError, "d_ff must be at least 2"),
        (lambda: FeedForward(8, 32, bias="False"), TypeError, "bias must be a bool, got 'False'"),
        (lambda: FeedForward(8, 32, bias=1), TypeError, "bias must be a bool, got 1"),
        (
            lambda: FeedForward(8, 32, dropout="0.1"),
            TypeError,
            "dropout must be a real number in \\[0, 1\\), got str '0.1'",
        ),
        (lambda: FeedForward(8, 32, dropout=None), TypeError, "dropout must be a real number"),
        (lambda: FeedForward(8, 32, dropout=True), TypeError, "dropout must be a real number"),
        (lambda: FeedForward(8, 32, dropout=float("nan")), ValueError, "dropout must be in"),
        (
            lambda: FeedForward(8, 32)(x(2, 8).double()),
            TypeError,
            r"x is float64 but the FeedForward's weights are float32; convert one with \.to",
        ),
        (
            lambda: FeedForward(8, 32).double()(x(2, 8)),
            TypeError,
            "x is float32 but the FeedForward's weights are float64",
        ),
        (lambda: FeedForward(8, 32, "swiglu")(x(2, 8).half()), TypeError, "x is float16 but"),
    ],
)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()
