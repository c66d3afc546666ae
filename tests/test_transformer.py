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


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids the thread pool's hand-over costs on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
        a = ref(src, src_mask=~causal_mask(6) if causal else None,
                src_key_padding_mask=~REAL if pad else None)
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
    layer = nn.TransformerEncoderLayer(E, H, FF, dropout=0.0, batch_first=True,
                                       norm_first=norm_first)
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
    ref = perturbed(nn.TransformerEncoder(layer, 2, nn.LayerNorm(E) if final_norm else None,
                                          enable_nested_tensor=True)).eval()
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
        a = ref(tgt, memory, tgt_mask=~causal_mask(5), tgt_key_padding_mask=~TGT_REAL,
                memory_key_padding_mask=~REAL)
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
    layer = nn.TransformerDecoderLayer(E, H, FF, dropout=0.0, batch_first=True,
                                       norm_first=norm_first)
    ref = perturbed(nn.TransformerDecoder(layer, 3, nn.LayerNorm(E)))
    ours = TransformerDecoder.from_torch(ref)
    tgt, memory = x(3, 5, E), x(3, 6, E, seed=2)
    with set_mode(mode, ref, ours):
        a = ref(tgt, memory, tgt_mask=~causal_mask(5), tgt_key_padding_mask=~TGT_REAL,
                memory_key_padding_mask=~REAL)
        b = ours(tgt, memory, tgt_is_causal=True, tgt_key_mask=TGT_REAL, memory_key_mask=REAL)
    assert torch.allclose(a, b, atol=ATOL)


# ---- the full Transformer --------------------------------------------------------------------

def torch_transformer(**kwargs):
    kwargs = dict(num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=FF, dropout=0.0,
                  batch_first=True) | kwargs
    return perturbed(nn.Transformer(E, H, **kwargs))


@no_nested_warning
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_matches_torch(norm_first, mode):
    ref = torch_transformer(norm_first=norm_first)
    ours = Transformer.from_torch(ref)
    src, tgt = x(3, 6, E), x(3, 5, E, seed=2)
    with set_mode(mode, ref, ours):
        a = ref(src, tgt, tgt_mask=~causal_mask(5), src_key_padding_mask=~REAL,
                tgt_key_padding_mask=~TGT_REAL, memory_key_padding_mask=~REAL)
        b = ours(src, tgt, tgt_is_causal=True, src_key_mask=REAL, tgt_key_mask=TGT_REAL)
        c = ours(src, tgt, tgt_is_causal=True, src_key_mask=REAL, tgt_key_mask=TGT_REAL,
                 memory_key_mask=REAL)
    assert torch.allclose(a, b, atol=ATOL)
    assert torch.equal(b, c)  # memory_key_mask defaults to src_key_mask


def test_transformer_has_final_norms_and_xavier_init():
    model = Transformer(E, H, 1, 1, FF)
    assert isinstance(model.encoder.norm, LayerNorm) and isinstance(model.decoder.norm, LayerNorm)
    bound = (6 / (E + E)) ** 0.5  # xavier_uniform_ on a (E, E) matrix
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
    stack = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, H, FF, batch_first=True), 2,
                                  enable_nested_tensor=False)
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
        (lambda: TransformerEncoderLayer.from_torch(nn.TransformerEncoderLayer(E, H, FF)),
         ValueError, "batch_first=False"),
        (lambda: TransformerDecoderLayer.from_torch(nn.TransformerDecoderLayer(E, H, FF)),
         ValueError, "batch_first=False"),
        (lambda: Transformer.from_torch(nn.Transformer(E, H, 1, 1, FF)), ValueError,
         "batch_first=False"),
        (lambda: TransformerEncoderLayer.from_torch(torch_encoder_layer(activation=torch.tanh)),
         ValueError, "activation .*tanh.* has no counterpart"),
        (lambda: TransformerDecoderLayer.from_torch(
            torch_decoder_layer(activation=nn.GELU(approximate="tanh"))),
         ValueError, "approximate='tanh'"),
        (lambda: TransformerEncoderLayer.from_torch(differing_dropouts()), ValueError,
         "dropout probabilities differ"),
        (lambda: TransformerEncoder.from_torch(differing_stack()), ValueError,
         r"layers\[1\] differs from layers\[0\] in dim_feedforward \(64 vs 32\)"),
        (lambda: Transformer.from_torch(missing_norm()), ValueError,
         "m.decoder.norm is NoneType, not a LayerNorm"),
        (lambda: Transformer.from_torch(nn.Transformer(
            E, H, custom_encoder=nn.Identity(), batch_first=True, num_decoder_layers=1,
            dim_feedforward=FF)), ValueError, "m.encoder is a Identity"),
        (lambda: TransformerEncoderLayer.from_torch(torch_decoder_layer()), TypeError,
         "torch.nn.TransformerEncoderLayer"),
        (lambda: TransformerEncoder.from_torch(TransformerEncoder(enc, 1)), TypeError,
         "torch.nn.TransformerEncoder"),
        (lambda: Transformer.from_torch(Transformer(E, H, 1, 1, FF)), TypeError,
         "torch.nn.Transformer"),
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
        (lambda: TransformerEncoderLayer(10, 3), ValueError,
         r"nhead \(3\) must divide d_model \(10\)"),
        (lambda: TransformerDecoderLayer(10, 4), ValueError, r"nhead \(4\) must divide d_model"),
        (lambda: Transformer(10, 3), ValueError, r"nhead \(3\) must divide d_model \(10\)"),
        (lambda: TransformerEncoderLayer(E, 0), ValueError, "nhead must be a positive int"),
        (lambda: TransformerEncoderLayer(E, H, activation="tanh"), ValueError,
         r"activation must be one of 'relu', 'gelu', 'swiglu', got 'tanh'"),
        (lambda: Transformer(E, H, activation=F.relu), ValueError, "activation must be one of"),
        (lambda: TransformerEncoderLayer(E, H, dropout=1.5), ValueError, "dropout must be in"),
        (lambda: TransformerEncoderLayer(E, H, layer_norm_eps=-1), ValueError, "layer_norm_eps"),
        (lambda: TransformerEncoder(enc, 0), ValueError, "num_layers must be a positive int"),
        (lambda: Transformer(E, H, num_decoder_layers=0), ValueError, "num_decoder_layers must"),
        (lambda: TransformerEncoder(dec, 2), TypeError, "TransformerEncoderLayer, got Transform"),
        (lambda: TransformerDecoder(dec, 2, norm="layernorm"), TypeError, "norm must be None"),
        (lambda: enc(x(5, E)), ValueError, r"src must have shape \(B, L, 16\)"),
        (lambda: enc(x(2, 5, 8)), ValueError, "src must have last dimension d_model = 16"),
        (lambda: enc(x(2, 5, E), key_mask=torch.ones(3, 5, **BOOL)), ValueError,
         r"key_mask must have shape \(B, S\) = \(2, 5\), got \(3, 5\)"),
        (lambda: enc(x(2, 5, E), key_mask=torch.ones(2, 5)), TypeError, "key_mask must be bool"),
        (lambda: enc(x(2, 5, E), attn_mask=torch.ones(3, 1, 5, 5, **BOOL)), ValueError,
         r"attn_mask of shape \(3, 1, 5, 5\) does not broadcast to \(B, H, L, S\)"),
        (lambda: enc(x(2, 5, E), attn_mask=torch.ones(5, 5, dtype=torch.long)), TypeError,
         "attn_mask must be bool"),
        (lambda: enc(x(2, 5, E), attn_mask=causal_mask(5), is_causal=True), ValueError,
         "either attn_mask or is_causal=True, not both"),
        (lambda: dec(x(2, 5, E), x(2, 6, 8)), ValueError,
         r"memory must have last dimension d_model = 16, got shape \(2, 6, 8\)"),
        (lambda: dec(x(2, 5, E), x(3, 6, E)), ValueError, "memory must have batch size B = 2"),
        (lambda: dec(x(2, 5, E), x(2, 6)), ValueError, r"memory must have shape \(B, L, 16\)"),
        (lambda: dec(x(2, 5, E), x(2, 6, E), tgt_key_mask=torch.ones(3, 5, **BOOL)), ValueError,
         r"tgt_key_mask must have shape \(B, S\) = \(2, 5\)"),
        (lambda: dec(x(2, 5, E), x(2, 6, E), memory_key_mask=torch.ones(1, 6, **BOOL)),
         ValueError, r"memory_key_mask must have shape \(B, S\) = \(2, 6\), got \(1, 6\)"),
        (lambda: dec(x(2, 5, E), x(2, 6, E), memory_key_mask=torch.ones(2, 5, **BOOL)),
         ValueError, r"memory_key_mask must have shape \(B, S\) = \(2, 6\), got \(2, 5\)"),
        (lambda: dec(x(2, 5, E), x(2, 6, E), memory_attn_mask=torch.ones(5, 5, **BOOL)),
         ValueError, r"memory_attn_mask of shape \(5, 5\) does not broadcast"),
        (lambda: dec(x(2, 5, E), x(2, 6, E), tgt_attn_mask=causal_mask(5), tgt_is_causal=True),
         ValueError, "either tgt_attn_mask or tgt_is_causal=True"),
        (lambda: both(x(2, 6, E), x(2, 5, E), src_key_mask=torch.ones(3, 6, **BOOL)),
         ValueError, r"key_mask must have shape \(B, S\) = \(2, 6\)"),
        (lambda: both(x(2, 6, E), x(3, 5, E)), ValueError, "memory must have batch size B = 3"),
        (lambda: count_parameters([nn.Linear(2, 2)]), TypeError, "module must be a torch.nn"),
    ],
)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()
