"""Encoder and decoder layers, their stacks and the Transformer against torch, on copied weights.

torch's boolean masks mean "True = ignore", attnbook's "True = may attend" (and, for key
masks, "True = real token"), so every torch mask below is the negation of ours.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from attnbook.attention import causal_mask, padding_mask
from attnbook.multihead import MultiHeadAttention
from attnbook.norms import LayerNorm, RMSNorm
from attnbook.transformer import (
    Transformer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
    count_parameters,
)

E, H, FF = 16, 4, 32
ATOL = 1e-5
no_nested_warning = pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


def x(*shape, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def perturbed(module):
    """``module`` with every parameter moved, so that norms and biases are copied for real."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module


def set_mode(mode, *modules):
    for m in modules:
        m.train(mode == "train")
    return torch.no_grad() if mode == "eval" else torch.enable_grad()  # eval: torch's fast path


def torch_encoder_layer(**kwargs):
    kwargs = dict(dim_feedforward=FF, dropout=0.0, batch_first=True) | kwargs
    return perturbed(nn.TransformerEncoderLayer(E, H, **kwargs))


def torch_decoder_layer(**kwargs):
    kwargs = dict(dim_feedforward=FF, dropout=0.0, batch_first=True) | kwargs
    return perturbed(nn.TransformerDecoderLayer(E, H, **kwargs))


enc = TransformerEncoderLayer(E, H, FF)  # fresh modules for the error tests
dec = TransformerDecoderLayer(E, H, FF)
both = Transformer(E, H, 1, 1, FF)
BOOL = dict(dtype=torch.bool)

LENGTHS = [6, 4, 2]  # right padding: torch's nested-tensor path needs it
REAL = padding_mask(LENGTHS)  # (3, 6), True = real token


# ---- encoder layer ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("masks", ["none", "padding", "causal", "both"])
def test_encoder_layer_matches_torch(norm_first, mode, masks):
    ref = torch_encoder_layer(norm_first=norm_first)
    ours = TransformerEncoderLayer.from_torch(ref)
    src = x(3, 6, E)
    pad = masks in ("padding", "both")
    causal = masks in ("causal", "both")
    with set_mode(mode, ref, ours):
        a = ref(
            src,
            src_mask=~causal_mask(6) if causal else None,
            src_key_padding_mask=~REAL if pad else None,
        )
        b = ours(src, key_mask=REAL if pad else None, is_causal=causal)
    assert torch.allclose(a, b, atol=ATOL)


@pytest.mark.parametrize("activation", ["gelu", F.gelu, nn.GELU(), F.relu, nn.ReLU()])
@pytest.mark.parametrize("bias", [True, False])
def test_encoder_layer_activations_and_bias(activation, bias):
    ref = torch_encoder_layer(activation=activation, bias=bias)
    ours = TransformerEncoderLayer.from_torch(ref)
    assert ours.ff.activation in ("relu", "gelu") and (ours.norm1.bias is None) == (not bias)
    src = x(2, 5, E)
    assert torch.allclose(ref(src), ours(src), atol=ATOL)


def test_float_mask_equals_is_causal():
    layer = TransformerEncoderLayer(E, H, FF, dropout=0.0)
    src = x(2, 5, E)
    additive = nn.Transformer.generate_square_subsequent_mask(5)  # 0 and -inf
    assert torch.allclose(layer(src, attn_mask=additive), layer(src, is_causal=True), atol=1e-6)
    assert torch.allclose(layer(src, attn_mask=causal_mask(5)), layer(src, is_causal=True))


def test_from_torch_keeps_dtype_and_mode():
    ref = torch_encoder_layer().double().eval()
    ours = TransformerEncoderLayer.from_torch(ref)
    assert not ours.training and ours.ff.w1.weight.dtype == torch.float64
    src = x(2, 5, E).double()
    with torch.no_grad():
        assert torch.allclose(ref(src), ours(src), atol=1e-12)


def test_swiglu_layer_runs_and_trains():
    layer = TransformerEncoderLayer(E, H, 24, activation="swiglu", norm_first=True)
    out = layer(x(2, 5, E), is_causal=True)
    out.sum().backward()
    assert out.shape == (2, 5, E) and layer.ff.w3.weight.grad is not None


# ---- encoder stack ---------------------------------------------------------------------------


@no_nested_warning
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_encoder_matches_torch_at_every_position_without_nesting(norm_first, mode):
    layer = nn.TransformerEncoderLayer(
        E, H, FF, dropout=0.0, batch_first=True, norm_first=norm_first
    )
    ref = perturbed(nn.TransformerEncoder(layer, 3, nn.LayerNorm(E), enable_nested_tensor=False))
    ours = TransformerEncoder.from_torch(ref)
    assert len(ours.layers) == 3 and isinstance(ours.norm, LayerNorm)
    src = x(3, 6, E)
    with set_mode(mode, ref, ours):
        a = ref(src, src_key_padding_mask=~REAL)
        b = ours(src, key_mask=REAL)
    assert torch.allclose(a, b, atol=ATOL)  # padded positions too: they still read real keys


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
@pytest.mark.parametrize("final_norm", [False, True])
def test_encoder_matches_torch_nested_tensor_fast_path_at_real_tokens(final_norm):
    layer = nn.TransformerEncoderLayer(E, H, FF, dropout=0.0, batch_first=True)
    ref = perturbed(
        nn.TransformerEncoder(
            layer, 2, nn.LayerNorm(E) if final_norm else None, enable_nested_tensor=True
        )
    ).eval()
    ours = TransformerEncoder.from_torch(ref).eval()
    src = x(3, 6, E)
    with torch.no_grad():
        a = ref(src, src_key_padding_mask=~REAL)
        b = ours(src, key_mask=REAL)
    # The fast path packs the real tokens into a nested tensor and pads the result with
    # zeros, before the final norm: padded rows come out as exactly 0, or as norm(0) = bias.
    padded_value = ref.norm.bias if final_norm else torch.zeros(E)
    assert torch.equal(a[~REAL], padded_value.expand(int((~REAL).sum()), E)), "no fast path"
    assert not torch.allclose(b[~REAL], a[~REAL])  # ours computes padded rows as usual
    assert torch.allclose(a[REAL], b[REAL], atol=ATOL)


def test_encoder_layers_are_independent_copies():
    stack = TransformerEncoder(TransformerEncoderLayer(E, H, FF), 2)
    with torch.no_grad():
        stack.layers[0].norm1.weight.fill_(3.0)
    assert torch.equal(stack.layers[1].norm1.weight, torch.ones(E))


def test_encoder_with_an_rmsnorm_from_torch():
    layer = nn.TransformerEncoderLayer(E, H, FF, dropout=0.0, batch_first=True)
    ref = perturbed(nn.TransformerEncoder(layer, 2, nn.RMSNorm(E, eps=1e-6)))
    ours = TransformerEncoder.from_torch(ref)
    assert isinstance(ours.norm, RMSNorm)
    src = x(2, 5, E)
    assert torch.allclose(ref(src), ours(src), atol=ATOL)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
@settings(max_examples=10, deadline=None)
@given(lengths=st.lists(st.integers(1, 5), min_size=1, max_size=3), seed=st.integers(0, 99))
def test_property_encoder_padding_matches_torch(lengths, seed):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    ref = nn.TransformerEncoder(layer, 2, nn.LayerNorm(8)).eval()
    ours = TransformerEncoder.from_torch(ref)
    real = padding_mask(lengths, max_len=5)
    src = x(len(lengths), 5, 8, seed=seed)
    with torch.no_grad():
        a, b = ref(src, src_key_padding_mask=~real), ours(src, key_mask=real)
    assert torch.allclose(a[real], b[real], atol=ATOL)


# ---- decoder layer and stack -----------------------------------------------------------------

TGT_REAL = padding_mask([5, 3, 4])  # (3, 5)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_matches_torch(norm_first, mode):
    ref = torch_decoder_layer(norm_first=norm_first)
    ours = TransformerDecoderLayer.from_torch(ref)
    tgt, memory = x(3, 5, E), x(3, 6, E, seed=2)
    with set_mode(mode, ref, ours):
        a = ref(
            tgt,
            memory,
            tgt_mask=~causal_mask(5),
            tgt_key_padding_mask=~TGT_REAL,
            memory_key_padding_mask=~REAL,
        )
        b = ours(tgt, memory, tgt_is_causal=True, tgt_key_mask=TGT_REAL, memory_key_mask=REAL)
    assert torch.allclose(a, b, atol=ATOL)


def test_decoder_layer_memory_mask_matches_torch():
    ref = torch_decoder_layer(activation="gelu")
    ours = TransformerDecoderLayer.from_torch(ref)
    tgt, memory = x(2, 5, E), x(2, 6, E, seed=2)
    allowed = x(5, 6, seed=3) > -0.5  # (L, S), True = may attend
    allowed[:, 0] = True  # every query keeps one key
    a = ref(tgt, memory, memory_mask=~allowed)
    b = ours(tgt, memory, memory_attn_mask=allowed)
    assert torch.allclose(a, b, atol=ATOL)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_matches_torch(norm_first, mode):
    layer = nn.TransformerDecoderLayer(
        E, H, FF, dropout=0.0, batch_first=True, norm_first=norm_first
    )
    ref = perturbed(nn.TransformerDecoder(layer, 3, nn.LayerNorm(E)))
    ours = TransformerDecoder.from_torch(ref)
    tgt, memory = x(3, 5, E), x(3, 6, E, seed=2)
    with set_mode(mode, ref, ours):
        a = ref(
            tgt,
            memory,
            tgt_mask=~causal_mask(5),
            tgt_key_padding_mask=~TGT_REAL,
            memory_key_padding_mask=~REAL,
        )
        b = ours(tgt, memory, tgt_is_causal=True, tgt_key_mask=TGT_REAL, memory_key_mask=REAL)
    assert torch.allclose(a, b, atol=ATOL)


# ---- the full Transformer --------------------------------------------------------------------


def torch_transformer(**kwargs):
    kwargs = (
        dict(
            num_encoder_layers=2,
            num_decoder_layers=2,
            dim_feedforward=FF,
            dropout=0.0,
            batch_first=True,
        )
        | kwargs
    )
    return perturbed(nn.Transformer(E, H, **kwargs))


@no_nested_warning
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_matches_torch(norm_first, mode):
    ref = torch_transformer(norm_first=norm_first)
    ours = Transformer.from_torch(ref)
    src, tgt = x(3, 6, E), x(3, 5, E, seed=2)
    with set_mode(mode, ref, ours):
        a = ref(
            src,
            tgt,
            tgt_mask=~causal_mask(5),
            src_key_padding_mask=~REAL,
            tgt_key_padding_mask=~TGT_REAL,
            memory_key_padding_mask=~REAL,
        )
        b = ours(src, tgt, tgt_is_causal=True, src_key_mask=REAL, tgt_key_mask=TGT_REAL)
        c = ours(
            src,
            tgt,
            tgt_is_causal=True,
            src_key_mask=REAL,
            tgt_key_mask=TGT_REAL,
            memory_key_mask=REAL,
        )
    assert torch.allclose(a, b, atol=ATOL)
    assert torch.equal(b, c)  # memory_key_mask defaults to src_key_mask


def test_transformer_has_final_norms_and_xavier_init():
    model = Transformer(E, H, 1, 1, FF)
    assert isinstance(model.encoder.norm, LayerNorm) and isinstance(model.decoder.norm, LayerNorm)
    bound = (6 / (3 * E + E)) ** 0.5  # xavier_uniform_ on a (3E, E) matrix, as torch's in_proj
    q = model.encoder.layers[0].self_attn.q_proj.weight
    assert q.abs().max() <= bound and q.std() > bound / 3
    assert not torch.equal(q, model.decoder.layers[0].self_attn.q_proj.weight)


def test_count_parameters_of_the_default_transformer():
    with torch.device("meta"):  # shapes only: no 44M floats to allocate or initialise
        ours, ref = Transformer(), nn.Transformer(batch_first=True)
    assert count_parameters(ours) == count_parameters(ref) == 44_140_544
    assert sum(p.numel() for p in ref.parameters()) == 44_140_544


def test_count_parameters_trainable_only_and_tied_weights():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    assert count_parameters(model) == 80
    model[1].weight = model[0].weight  # tied: one tensor, counted once
    assert count_parameters(model) == 40
    model[0].weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 0


# ---- what from_torch refuses -----------------------------------------------------------------


def differing_stack():
    stack = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(E, H, FF, batch_first=True), 2, enable_nested_tensor=False
    )
    stack.layers[1] = nn.TransformerEncoderLayer(E, H, 2 * FF, batch_first=True)
    return stack


def differing_dropouts():
    layer = nn.TransformerEncoderLayer(E, H, FF, batch_first=True)
    layer.dropout1.p = 0.3
    return layer


def missing_norm():
    model = torch_transformer()
    model.decoder.norm = None
    return model


@no_nested_warning
@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: TransformerEncoderLayer.from_torch(nn.TransformerEncoderLayer(E, H, FF)),
            ValueError,
            "batch_first=False",
        ),
        (
            lambda: TransformerDecoderLayer.from_torch(nn.TransformerDecoderLayer(E, H, FF)),
            ValueError,
            "batch_first=False",
        ),
        (
            lambda: Transformer.from_torch(nn.Transformer(E, H, 1, 1, FF)),
            ValueError,
            "batch_first=False",
        ),
        (
            lambda: TransformerEncoderLayer.from_torch(torch_encoder_layer(activation=torch.tanh)),
            ValueError,
            "activation .*tanh.* has no counterpart",
        ),
        (
            lambda: TransformerDecoderLayer.from_torch(
                torch_decoder_layer(activation=nn.GELU(approximate="tanh"))
            ),
            ValueError,
            "approximate='tanh'",
        ),
        (
            lambda: TransformerEncoderLayer.from_torch(differing_dropouts()),
            ValueError,
            "dropout probabilities differ",
        ),
        (
            lambda: TransformerEncoder.from_torch(differing_stack()),
            ValueError,
            r"layers\[1\] differs from layers\[0\] in dim_feedforward \(64 vs 32\)",
        ),
        (
            lambda: Transformer.from_torch(missing_norm()),
            ValueError,
            "m.decoder.norm is NoneType, not a LayerNorm",
        ),
        (
            lambda: Transformer.from_torch(
                nn.Transformer(
                    E,
                    H,
                    custom_encoder=nn.Identity(),
                    batch_first=True,
                    num_decoder_layers=1,
                    dim_feedforward=FF,
                )
            ),
            ValueError,
            "m.encoder is a Identity",
        ),
        (
            lambda: TransformerEncoderLayer.from_torch(torch_decoder_layer()),
            TypeError,
            "torch.nn.TransformerEncoderLayer",
        ),
        (
            lambda: TransformerEncoder.from_torch(TransformerEncoder(enc, 1)),
            TypeError,
            "torch.nn.TransformerEncoder",
        ),
        (
            lambda: Transformer.from_torch(Transformer(E, H, 1, 1, FF)),
            TypeError,
            "torch.nn.Transformer",
        ),
    ],
)
def test_from_torch_refuses(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_from_torch_refuses_encoder_and_decoder_that_differ():
    model = torch_transformer()
    for i in range(len(model.decoder.layers)):
        model.decoder.layers[i] = torch_decoder_layer(norm_first=True)
    with pytest.raises(ValueError, match="decoder's layers differ from the encoder's in norm_"):
        Transformer.from_torch(model)


# ---- bad inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: TransformerEncoderLayer(10, 3),
            ValueError,
            r"nhead \(3\) must divide d_model \(10\)",
        ),
        (lambda: TransformerDecoderLayer(10, 4), ValueError, r"nhead \(4\) must divide d_model"),
        (lambda: Transformer(10, 3), ValueError, r"nhead \(3\) must divide d_model \(10\)"),
        (lambda: TransformerEncoderLayer(E, 0), ValueError, "nhead must be a positive int"),
        (
            lambda: TransformerEncoderLayer(E, H, activation="tanh"),
            ValueError,
            r"activation must be one of 'relu', 'gelu', 'swiglu', got 'tanh'",
        ),
        (lambda: Transformer(E, H, activation=F.relu), ValueError, "activation must be one of"),
        (lambda: TransformerEncoderLayer(E, H, dropout=1.5), ValueError, "dropout must be in"),
        (lambda: TransformerEncoderLayer(E, H, layer_norm_eps=-1), ValueError, "layer_norm_eps"),
        (
            lambda: TransformerEncoderLayer(E, H, layer_norm_eps=float("nan")),
            ValueError,
            "layer_norm_eps must be a non-negative finite float, got nan",
        ),
        (
            lambda: TransformerDecoderLayer(E, H, layer_norm_eps=float("inf")),
            ValueError,
            "layer_norm_eps must be a non-negative finite float, got inf",
        ),
        (lambda: Transformer(E, H, layer_norm_eps=float("nan")), ValueError, "layer_norm_eps"),
        (
            lambda: TransformerEncoderLayer(E, H, layer_norm_eps="1e-5"),
            TypeError,
            "layer_norm_eps must be a real number, got str",
        ),
        (
            lambda: TransformerEncoderLayer(E, H, dropout="0.1"),
            TypeError,
            "dropout must be a real number in .*, got str '0.1'",
        ),
        (
            lambda: TransformerDecoderLayer(E, H, dropout=None),
            TypeError,
            "dropout must be a real number in .*, got NoneType None",
        ),
        (lambda: Transformer(E, H, dropout=True), TypeError, "dropout must be a real number"),
        (
            lambda: TransformerEncoderLayer(E, H, norm_first="False"),
            TypeError,
            "norm_first must be a bool, got 'False'",
        ),
        (
            lambda: TransformerDecoderLayer(E, H, norm_first=0),
            TypeError,
            "norm_first must be a bool, got 0",
        ),
        (lambda: Transformer(E, H, norm_first="False"), TypeError, "norm_first must be a bool"),
        (lambda: TransformerEncoderLayer(E, H, bias=1), TypeError, "bias must be a bool, got 1"),
        (lambda: Transformer(E, H, bias="yes"), TypeError, "bias must be a bool, got 'yes'"),
        (
            lambda: enc(x(2, 5, E), is_causal="False"),
            TypeError,
            "is_causal must be a bool, got 'False'",
        ),
        (
            lambda: TransformerEncoder(enc, 2)(x(2, 5, E), is_causal=1),
            TypeError,
            "is_causal must be a bool, got 1",
        ),
        (
            lambda: dec(x(2, 5, E), x(2, 6, E), tgt_is_causal=None),
            TypeError,
            "tgt_is_causal must be a bool, got None",
        ),
        (
            lambda: both(x(2, 6, E), x(2, 5, E), src_is_causal="yes"),
            TypeError,
            "src_is_causal must be a bool, got 'yes'",
        ),
        (
            lambda: both(x(2, 6, E), x(2, 5, E), tgt_is_causal=torch.tensor(True)),
            TypeError,
            "tgt_is_causal must be a bool",
        ),
        (
            lambda: TransformerEncoder(enc, 2, norm=LayerNorm(8)),
            ValueError,
            r"norm must normalise the layers' width d_model = 16, got a LayerNorm of shape \(8,\)",
        ),
        (
            lambda: TransformerDecoder(dec, 2, norm=nn.LayerNorm(8)),
            ValueError,
            r"norm must normalise .* d_model = 16, got a LayerNorm of shape \(8,\)",
        ),
        (
            lambda: TransformerDecoder(dec, 2, norm=RMSNorm(2 * E)),
            ValueError,
            "norm must normalise .* got a RMSNorm of shape",
        ),
        (
            lambda: TransformerEncoder(enc, 1, norm=nn.RMSNorm((2, E))),
            ValueError,
            r"norm must normalise .* shape \(2, 16\)",
        ),
        (lambda: TransformerEncoder(enc, 0), ValueError, "num_layers must be a positive int"),
        (lambda: Transformer(E, H, num_decoder_layers=0), ValueError, "num_decoder_layers must"),
        (lambda: TransformerEncoder(dec, 2), TypeError, "TransformerEncoderLayer, got Transform"),
        (lambda: TransformerDecoder(dec, 2, norm="layernorm"), TypeError, "norm must be None"),
        (lambda: enc(x(5, E)), ValueError, r"src must have shape \(B, L, 16\)"),
        (lambda: enc(x(2, 5, 8)), ValueError, "src must have last dimension d_model = 16"),
        (
            lambda: enc(x(2, 5, E), key_mask=torch.ones(3, 5, **BOOL)),
            ValueError,
            r"key_mask must have shape \(B, S\) = \(2, 5\), got \(3, 5\)",
        ),
        (lambda: enc(x(2, 5, E), key_mask=torch.ones(2, 5)), TypeError, "key_mask must be bool"),
        (
            lambda: enc(x(2, 5, E), attn_mask=torch.ones(3, 1, 5, 5, **BOOL)),
            ValueError,
            r"attn_mask of shape \(3, 1, 5, 5\) does not broadcast to \(B, H, L, S\)",
        ),
        (
            lambda: enc(x(2, 5, E), attn_mask=torch.ones(5, 5, dtype=torch.long)),
            TypeError,
            "attn_mask must be bool",
        ),
        (
            lambda: enc(x(2, 5, E), attn_mask=causal_mask(5), is_causal=True),
            ValueError,
            "either attn_mask or is_causal=True, not both",
        ),
        (
            lambda: dec(x(2, 5, E), x(2, 6, 8)),
            ValueError,
            r"memory must have last dimension d_model = 16, got shape \(2, 6, 8\)",
        ),
        (lambda: dec(x(2, 5, E), x(3, 6, E)), ValueError, "memory must have batch size B = 2"),
        (lambda: dec(x(2, 5, E), x(2, 6)), ValueError, r"memory must have shape \(B, L, 16\)"),
        (
            lambda: dec(x(2, 5, E), x(2, 6, E), tgt_key_mask=torch.ones(3, 5, **BOOL)),
            ValueError,
            r"tgt_key_mask must have shape \(B, S\) = \(2, 5\)",
        ),
        (
            lambda: dec(x(2, 5, E), x(2, 6, E), memory_key_mask=torch.ones(1, 6, **BOOL)),
            ValueError,
            r"memory_key_mask must have shape \(B, S\) = \(2, 6\), got \(1, 6\)",
        ),
        (
            lambda: dec(x(2, 5, E), x(2, 6, E), memory_key_mask=torch.ones(2, 5, **BOOL)),
            ValueError,
            r"memory_key_mask must have shape \(B, S\) = \(2, 6\), got \(2, 5\)",
        ),
        (
            lambda: dec(x(2, 5, E), x(2, 6, E), memory_attn_mask=torch.ones(5, 5, **BOOL)),
            ValueError,
            r"memory_attn_mask of shape \(5, 5\) does not broadcast",
        ),
        (
            lambda: dec(x(2, 5, E), x(2, 6, E), tgt_attn_mask=causal_mask(5), tgt_is_causal=True),
            ValueError,
            "either tgt_attn_mask or tgt_is_causal=True",
        ),
        (
            lambda: both(x(2, 6, E), x(2, 5, E), src_key_mask=torch.ones(3, 6, **BOOL)),
            ValueError,
            r"src_key_mask must have shape \(B, S\) = \(2, 6\)",
        ),
        (
            lambda: both(x(2, 6, E), x(3, 5, E)),
            ValueError,
            r"tgt must have batch size B = 2 \(that of src\), got shape \(3, 5, 16\)",
        ),
        (lambda: count_parameters([nn.Linear(2, 2)]), TypeError, "module must be a torch.nn"),
        # dtypes: checked before torch's "mat1 and mat2 must have the same dtype"
        (
            lambda: enc(x(2, 5, E).double()),
            TypeError,
            r"src is float64 but the layer's weights are float32; convert one with \.to",
        ),
        (
            lambda: TransformerEncoder(enc, 2, LayerNorm(E))(x(2, 5, E).half()),
            TypeError,
            "src is float16 but the layer's weights are float32",
        ),
        (
            lambda: dec(x(2, 5, E).bfloat16(), x(2, 6, E)),
            TypeError,
            "tgt is bfloat16 but the layer's weights are float32",
        ),
        (
            lambda: dec(x(2, 5, E), x(2, 6, E).double()),
            TypeError,
            "memory is float64 but the layer's weights are float32",
        ),
        (
            lambda: TransformerDecoder(dec, 2)(x(2, 5, E), x(2, 6, E).double()),
            TypeError,
            "memory is float64 but the layer's weights",
        ),
        (
            lambda: both(x(2, 6, E).double(), x(2, 5, E)),
            TypeError,
            "src is float64 but the model's weights are float32",
        ),
        (
            lambda: both(x(2, 6, E), x(2, 5, E).half()),
            TypeError,
            "tgt is float16 but the model's weights are float32",
        ),
        # masks on another device than the input (meta: no data, so no silent result)
        (
            lambda: enc(x(2, 5, E), key_mask=torch.ones(2, 5, **BOOL, device="meta")),
            ValueError,
            r"key_mask is on meta but src is on cpu; move the mask with \.to\(src\.device\)",
        ),
        (
            lambda: enc(x(2, 5, E), attn_mask=torch.ones(5, 5, **BOOL, device="meta")),
            ValueError,
            "attn_mask is on meta but src is on cpu",
        ),
        (
            lambda: dec(x(2, 5, E), x(2, 6, E), tgt_attn_mask=torch.zeros(5, 5, device="meta")),
            ValueError,
            "tgt_attn_mask is on meta but tgt is on cpu",
        ),
        (
            lambda: dec(
                x(2, 5, E), x(2, 6, E), memory_key_mask=torch.ones(2, 6, **BOOL, device="meta")
            ),
            ValueError,
            "memory_key_mask is on meta but memory is on cpu",
        ),
        (
            lambda: both(
                x(2, 6, E), x(2, 5, E), src_key_mask=torch.ones(2, 6, **BOOL, device="meta")
            ),
            ValueError,
            "src_key_mask is on meta but src is on cpu",
        ),
        (
            lambda: both(
                x(2, 6, E), x(2, 5, E), memory_attn_mask=torch.ones(5, 6, **BOOL, device="meta")
            ),
            ValueError,
            "memory_attn_mask is on meta but tgt is on cpu",
        ),
    ],
)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ---- Transformer.forward checks everything up front, under its own argument names -----------


def refuse_encoder_calls(model):
    def hook(*_):
        raise AssertionError("the encoder ran before the inputs were checked")

    return model.encoder.register_forward_pre_hook(hook)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(tgt=x(3, 5, E)), ValueError, r"tgt must have batch size B = 2 \(that of src\)"),
        (dict(tgt=x(2, 5, 8)), ValueError, "tgt must have last dimension d_model = 16"),
        (dict(src=x(2, 6)), ValueError, r"src must have shape \(B, L, 16\)"),
        (
            dict(src_attn_mask=causal_mask(6), src_is_causal=True),
            ValueError,
            "either src_attn_mask or src_is_causal=True, not both",
        ),
        (
            dict(src_attn_mask=torch.ones(5, 5, **BOOL)),
            ValueError,
            r"src_attn_mask of shape \(5, 5\) does not broadcast to \(B, H, L, S\) \(2, 4, 6, 6\)",
        ),
        (
            dict(src_attn_mask=torch.ones(6, 6, dtype=torch.long)),
            TypeError,
            "src_attn_mask must be bool",
        ),
        (dict(src_key_mask=torch.ones(2, 6)), TypeError, "src_key_mask must be bool"),
        (
            dict(src_key_mask=torch.ones(2, 5, **BOOL)),
            ValueError,
            r"src_key_mask must have shape \(B, S\) = \(2, 6\), got \(2, 5\)",
        ),
        (
            dict(tgt_key_mask=torch.ones(2, 6, **BOOL)),
            ValueError,
            r"tgt_key_mask must have shape \(B, S\) = \(2, 5\), got \(2, 6\)",
        ),
        (
            dict(tgt_attn_mask=torch.ones(6, 6, **BOOL)),
            ValueError,
            r"tgt_attn_mask of shape \(6, 6\) does not broadcast .* \(2, 4, 5, 5\)",
        ),
        (
            dict(memory_attn_mask=torch.ones(5, 5, **BOOL)),
            ValueError,
            r"memory_attn_mask of shape \(5, 5\) does not broadcast .* \(2, 4, 5, 6\)",
        ),
        (
            dict(memory_key_mask=torch.ones(2, 5, **BOOL)),
            ValueError,
            r"memory_key_mask must have shape \(B, S\) = \(2, 6\), got \(2, 5\)",
        ),
    ],
)
def test_transformer_checks_its_inputs_before_the_encoder_runs(kwargs, error, message):
    handle = refuse_encoder_calls(both)
    try:
        args = dict(src=x(2, 6, E), tgt=x(2, 5, E)) | kwargs
        with pytest.raises(error, match=message):
            both(args.pop("src"), args.pop("tgt"), **args)
    finally:
        handle.remove()


def test_matching_dtypes_and_autocast_are_accepted():
    layer = TransformerEncoderLayer(E, H, FF, dropout=0.0)
    src = x(2, 5, E)
    assert layer.double()(src.double()).dtype == torch.float64
    layer.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts for the products
        out = layer(src.bfloat16(), is_causal=True)
    assert out.shape == (2, 5, E) and torch.isfinite(out).all()


# ---- from_torch refuses parts whose biases, widths or heads differ ---------------------------


def with_part(layer, name, module):
    setattr(layer, name, module)
    return layer


def without_bias(layer, *names):
    for name in names:
        part = layer
        *path, last = name.split(".")
        for step in path:
            part = getattr(part, step)
        setattr(part, last, None)
    return layer


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: with_part(torch_encoder_layer(), "linear2", nn.Linear(FF, E, bias=False)),
            r"TransformerEncoderLayer\.linear2 has no bias but linear1 has one",
        ),
        (
            lambda: with_part(torch_encoder_layer(bias=False), "linear2", nn.Linear(FF, E)),
            r"TransformerEncoderLayer\.linear2 has a bias but linear1 has none",
        ),
        (
            lambda: without_bias(torch_encoder_layer(), "self_attn.out_proj.bias"),
            r"TransformerEncoderLayer\.self_attn\.out_proj has no bias but linear1 has one",
        ),
        (
            lambda: without_bias(torch_encoder_layer(), "self_attn.in_proj_bias"),
            r"self_attn\.in_proj_bias has no bias but linear1 has one",
        ),
        (
            lambda: with_part(
                torch_encoder_layer(),
                "self_attn",
                nn.MultiheadAttention(E, H, bias=False, batch_first=True),
            ),
            r"self_attn\.in_proj_bias has no bias but linear1 has one",
        ),
        (
            lambda: with_part(torch_encoder_layer(bias=False), "norm2", nn.LayerNorm(E)),
            r"TransformerEncoderLayer\.norm2 has a bias but linear1 has none",
        ),
        (
            lambda: with_part(torch_decoder_layer(), "norm3", nn.LayerNorm(E, bias=False)),
            r"TransformerDecoderLayer\.norm3 has no bias but linear1 has one",
        ),
        (
            lambda: with_part(
                torch_decoder_layer(),
                "multihead_attn",
                nn.MultiheadAttention(E, H, bias=False, batch_first=True),
            ),
            r"TransformerDecoderLayer\.multihead_attn\.in_proj_bias has no bias",
        ),
        (
            lambda: with_part(torch_decoder_layer(bias=False), "linear1", nn.Linear(E, FF)),
            r"TransformerDecoderLayer\.linear2 has no bias but linear1 has one",
        ),
        # widths and heads
        (
            lambda: with_part(
                torch_decoder_layer(),
                "multihead_attn",
                nn.MultiheadAttention(E, H, kdim=8, vdim=8, batch_first=True),
            ),
            r"TransformerDecoderLayer\.multihead_attn has kdim=8 and vdim=8, expected both to be "
            r"d_model = 16",
        ),
        (
            lambda: with_part(
                torch_decoder_layer(),
                "multihead_attn",
                nn.MultiheadAttention(E, H, vdim=8, batch_first=True),
            ),
            "multihead_attn has kdim=16 and vdim=8",
        ),
        (
            lambda: with_part(
                torch_encoder_layer(),
                "self_attn",
                nn.MultiheadAttention(E, H, kdim=8, batch_first=True),
            ),
            r"TransformerEncoderLayer\.self_attn has kdim=8 and vdim=16",
        ),
        (
            lambda: with_part(
                torch_decoder_layer(),
                "multihead_attn",
                nn.MultiheadAttention(E, 2, batch_first=True),
            ),
            r"TransformerDecoderLayer\.multihead_attn has num_heads=2 but self_attn has 4",
        ),
        (
            lambda: with_part(
                torch_encoder_layer(), "self_attn", nn.MultiheadAttention(8, 2, batch_first=True)
            ),
            "self_attn has embed_dim 8, expected d_model = 16",
        ),
        (
            lambda: with_part(torch_encoder_layer(), "linear2", nn.Linear(2 * FF, E)),
            "linear2 maps 64 -> 16, but linear1 maps 16 -> 32: expected linear2 to map 32 -> 16",
        ),
        (
            lambda: with_part(torch_decoder_layer(), "norm2", nn.LayerNorm(8)),
            r"TransformerDecoderLayer\.norm2 normalises 8 channels, expected d_model = 16",
        ),
        (
            lambda: with_part(
                torch_encoder_layer(), "norm1", nn.LayerNorm(E, elementwise_affine=False)
            ),
            r"TransformerEncoderLayer\.norm1 with elementwise_affine=False",
        ),
    ],
)
def test_from_torch_refuses_mixed_parts(make, message):
    m = make()
    convert = (
        TransformerEncoderLayer
        if isinstance(m, nn.TransformerEncoderLayer)
        else TransformerDecoderLayer
    ).from_torch
    with pytest.raises(ValueError, match=message):
        convert(m)


@no_nested_warning
def test_from_torch_refuses_a_final_norm_of_another_width():
    layer = nn.TransformerEncoderLayer(E, H, FF, batch_first=True)
    ref = nn.TransformerEncoder(layer, 2, nn.LayerNorm(8))
    with pytest.raises(ValueError, match="norm must normalise the layers' width d_model = 16"):
        TransformerEncoder.from_torch(ref)


@pytest.mark.parametrize("bias", [True, False])
def test_from_torch_bias_is_copied_for_every_part(bias):
    ref = torch_decoder_layer(bias=bias)
    ours = TransformerDecoderLayer.from_torch(ref)
    assert ours.config["bias"] is bias
    parts = [ours.ff.w1, ours.ff.w2, ours.norm1, ours.norm2, ours.norm3]
    parts += [
        getattr(a, p)
        for a in (ours.self_attn, ours.cross_attn)
        for p in ("q_proj", "k_proj", "v_proj", "out_proj")
    ]
    assert all((part.bias is not None) == bias for part in parts)
    if bias:
        assert torch.equal(ours.ff.w2.bias, ref.linear2.bias)
        assert torch.equal(ours.cross_attn.out_proj.bias, ref.multihead_attn.out_proj.bias)
    tgt, memory = x(2, 5, E), x(2, 6, E, seed=2)
    assert torch.allclose(ref(tgt, memory), ours(tgt, memory), atol=ATOL)


# ---- fully masked rows -------------------------------------------------------------------------


def force_weights_path(monkeypatch, model):
    """Make every attention in ``model`` take the need_weights path (attnbook's own softmax)."""
    for attn in (m for m in model.modules() if isinstance(m, MultiHeadAttention)):
        forward = attn.forward
        monkeypatch.setattr(
            attn, "forward", lambda *a, forward=forward, **k: forward(*a, **k, need_weights=True)
        )


def assert_finite_with_gradients(out, model, *inputs):
    out.float().pow(2).sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(t.grad).all() for t in inputs)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("path", ["fused", "need_weights"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_fully_masked_rows_are_finite(norm_first, path, dtype, monkeypatch):
    torch.manual_seed(0)
    model = Transformer(E, H, 2, 2, FF, dropout=0.0, norm_first=norm_first).to(dtype)
    if path == "need_weights":
        force_weights_path(monkeypatch, model)
    src = x(2, 6, E).to(dtype).requires_grad_()
    tgt = x(2, 5, E, seed=2).to(dtype).requires_grad_()
    src_real = torch.ones(2, 6, **BOOL)
    src_real[1] = False  # sequence 1 of src: all padding, so memory_key_mask too
    rows = torch.ones(5, 5, **BOOL).tril()
    rows[2] = False  # query 2 of tgt: no key at all in self-attention
    out = model(src, tgt, src_key_mask=src_real, tgt_attn_mask=rows)
    assert_finite_with_gradients(out, model, src, tgt)
    assert torch.equal(src.grad[1], torch.zeros_like(src.grad[1]))  # nothing reads that src


@pytest.mark.parametrize("path", ["fused", "need_weights"])
def test_fully_masked_sequence_gets_out_proj_bias_from_attention(path, monkeypatch):
    layer = perturbed(TransformerEncoderLayer(E, H, FF, dropout=0.0, norm_first=True))
    if path == "need_weights":
        force_weights_path(monkeypatch, layer)
    src = x(2, 5, E).requires_grad_()
    real = torch.ones(2, 5, **BOOL)
    real[1] = False
    out = layer(src, key_mask=real)
    with torch.no_grad():  # sequence 1 by hand: the attention sub-block adds out_proj.bias
        h = src[1] + layer.self_attn.out_proj.bias
        expected = h + layer.ff(layer.norm2(h))
    assert torch.allclose(out[1], expected, atol=1e-6)
    assert_finite_with_gradients(out, layer, src)

    dec_layer = perturbed(TransformerDecoderLayer(E, H, FF, dropout=0.0))
    if path == "need_weights":
        force_weights_path(monkeypatch, dec_layer)
    tgt, memory = x(2, 4, E, seed=3), x(2, 5, E, seed=4)
    out = dec_layer(tgt, memory, memory_key_mask=real, tgt_is_causal=True)
    with torch.no_grad():  # post-norm; cross-attention of sequence 1 gives out_proj.bias
        h = dec_layer.norm1(tgt[1] + dec_layer.self_attn(tgt[1:], is_causal=True)[0][0])
        h = dec_layer.norm2(h + dec_layer.cross_attn.out_proj.bias)
        expected = dec_layer.norm3(h + dec_layer.ff(h))
    assert torch.allclose(out[1], expected, atol=1e-5)


# ---- initialisation --------------------------------------------------------------------------


def test_init_matches_torch_in_distribution():
    torch.manual_seed(0)
    ours = Transformer(E, H, 2, 2, FF)
    ref = nn.Transformer(E, H, 2, 2, FF, batch_first=True)
    fused_bound = (6 / (3 * E + E)) ** 0.5  # xavier_uniform_ on torch's (3E, E) in_proj_weight
    for ours_layer, ref_layer in (
        (ours.encoder.layers[0], ref.encoder.layers[0]),
        (ours.decoder.layers[1], ref.decoder.layers[1]),
    ):
        attn = ours_layer.self_attn
        qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        theirs = ref_layer.self_attn.in_proj_weight
        assert qkv.abs().max() <= fused_bound and theirs.abs().max() <= fused_bound
        assert qkv.abs().max() > 0.9 * fused_bound
        assert abs(qkv.std() / theirs.std() - 1) < 0.15
        # attention biases are zero, in both
        for a in (ours_layer.self_attn, getattr(ours_layer, "cross_attn", ours_layer.self_attn)):
            for proj in (a.q_proj, a.k_proj, a.v_proj, a.out_proj):
                assert torch.equal(proj.bias, torch.zeros(E))
        assert torch.equal(ref_layer.self_attn.in_proj_bias, torch.zeros(3 * E))
        assert torch.equal(ref_layer.self_attn.out_proj.bias, torch.zeros(E))
    # feed-forward biases: nn.Linear's default draw, equal across the deep-copied layers
    for stack in (ours.encoder, ours.decoder, ref.encoder, ref.decoder):
        first, second = stack.layers[0], stack.layers[1]
        w1 = (
            (first.ff.w1, second.ff.w1) if hasattr(first, "ff") else (first.linear1, second.linear1)
        )
        assert torch.equal(w1[0].bias, w1[1].bias) and w1[0].bias.abs().max() > 0
        assert not torch.equal(w1[0].weight, w1[1].weight)  # the weights are redrawn
    assert torch.equal(ours.encoder.norm.weight, torch.ones(E))
