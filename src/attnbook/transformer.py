"""Transformer blocks: encoder and decoder layers, their stacks, and the encoder-decoder model.

Each class mirrors the torch module of the same name, with torch's argument names and
defaults, but always batch-first and with attnbook's mask polarity: an attention mask
is ``True`` where a query may attend, and a key mask ``(B, S)`` is ``True`` at real
tokens (``False`` at padding).
"""

from __future__ import annotations

import copy
import math
import numbers

import torch
from torch import nn
from torch.nn import functional as F

from attnbook._checks import broadcast_shape, require_floating, require_ndim, require_tensor
from attnbook.feedforward import FeedForward, _check_dropout, _check_dtype, _require_bool
from attnbook.multihead import MultiHeadAttention
from attnbook.norms import LayerNorm, RMSNorm, _single_dim

__all__ = [
    "Transformer",
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "count_parameters",
]


# --8<-- [start:count_parameters]
def count_parameters(module: nn.Module, *, trainable_only: bool = False) -> int:
    """The number of scalars in ``module``'s parameters, ``sum(p.numel() for p in parameters)``.

    A parameter shared by two submodules (tied weights) is counted once. With
    ``trainable_only``, parameters with ``requires_grad=False`` are left out.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# --8<-- [end:count_parameters]


# Input checks. They name the argument of the public forward() that went wrong, so
# that a decoder's error says ``memory_key_mask`` rather than the attention's ``key_mask``.


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_config(d_model, nhead, dim_feedforward, dropout, layer_norm_eps, norm_first, bias):
    for name, value in (
        ("d_model", d_model),
        ("nhead", nhead),
        ("dim_feedforward", dim_feedforward),
    ):
        _positive_int(name, value)
    if d_model % nhead:
        raise ValueError(
            f"nhead ({nhead}) must divide d_model ({d_model}): each head gets "
            f"d_model / nhead channels"
        )
    _check_dropout(dropout)
    if isinstance(layer_norm_eps, bool) or not isinstance(layer_norm_eps, numbers.Real):
        raise TypeError(
            f"layer_norm_eps must be a real number, got "
            f"{type(layer_norm_eps).__name__} {layer_norm_eps!r}"
        )
    if not math.isfinite(layer_norm_eps) or layer_norm_eps < 0:
        raise ValueError(
            f"layer_norm_eps must be a non-negative finite float, got {layer_norm_eps!r}"
        )
    _require_bool("norm_first", norm_first)
    _require_bool("bias", bias)


def _check_sequence(name, x, d_model, weight, owner, batch=None, batch_of="tgt"):
    require_tensor(name, x)
    require_floating(name, x)
    require_ndim(name, x, (3,), f"(B, L, {d_model}) (batch first)")
    if x.shape[-1] != d_model:
        raise ValueError(
            f"{name} must have last dimension d_model = {d_model}, got shape {tuple(x.shape)}"
        )
    if batch is not None and x.shape[0] != batch:
        raise ValueError(
            f"{name} must have batch size B = {batch} (that of {batch_of}), got "
            f"shape {tuple(x.shape)}"
        )
    _check_dtype(name, x, weight, owner)


def _check_same_device(name, mask, input_name, x):
    if mask.device != x.device:
        raise ValueError(
            f"{name} is on {mask.device} but {input_name} is on {x.device}; "
            f"move the mask with .to({input_name}.device)"
        )


def _check_attn_mask(name, mask, target, causal_name, is_causal, input_name, x):
    if mask is None:
        return
    require_tensor(name, mask)
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(
            f"{name} must be bool (True = may attend) or floating point (added "
            f"to the scores), got {mask.dtype}"
        )
    broadcast_shape(name, tuple(mask.shape), target, "(B, H, L, S)")
    _check_same_device(name, mask, input_name, x)
    if is_causal:
        raise ValueError(f"pass either {name} or {causal_name}=True, not both")


def _check_key_mask(name, mask, B, S, input_name, x):
    if mask is None:
        return
    require_tensor(name, mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be bool (True = real token), got {mask.dtype}")
    if tuple(mask.shape) != (B, S):
        raise ValueError(f"{name} must have shape (B, S) = {(B, S)}, got {tuple(mask.shape)}")
    _check_same_device(name, mask, input_name, x)


# Conversions from torch. Each refuses, with the reason, a torch module that the copy
# could not reproduce exactly.


def _activation_name(activation) -> str:
    """``"relu"`` or ``"gelu"`` for the activation stored in a torch layer."""
    if activation is F.relu or activation is torch.relu or isinstance(activation, nn.ReLU):
        return "relu"
    if activation is F.gelu or (
        isinstance(activation, nn.GELU) and activation.approximate == "none"
    ):
        return "gelu"
    if isinstance(activation, nn.GELU):
        raise ValueError(
            f"activation nn.GELU(approximate={activation.approximate!r}) has no "
            f"counterpart: attnbook's 'gelu' is the exact one"
        )
    raise ValueError(
        f"activation {activation!r} has no counterpart in attnbook: from_torch "
        f"copies 'relu' and 'gelu' (F.relu, F.gelu, nn.ReLU, nn.GELU) only"
    )


def _layer_config(m, norm_names, attention_names) -> dict:
    """Our layer's constructor arguments for torch's layer ``m``, or an error saying why not."""
    kind = type(m).__name__
    norms = [getattr(m, name) for name in norm_names]
    attentions = [getattr(m, name) for name in attention_names]
    for name, a in zip(attention_names, attentions, strict=True):
        if not isinstance(a, nn.MultiheadAttention):
            raise TypeError(
                f"{kind}.{name} must be a torch.nn.MultiheadAttention, got {type(a).__name__}"
            )
    if not all(a.batch_first for a in attentions):
        raise ValueError(
            f"{kind} has batch_first=False, and attnbook is batch-first only: "
            f"build it with batch_first=True"
        )
    dropouts = {m.dropout.p, m.dropout1.p, m.dropout2.p, *(a.dropout for a in attentions)}
    dropouts |= {m.dropout3.p} if hasattr(m, "dropout3") else set()
    if len(dropouts) > 1:
        raise ValueError(
            f"{kind}'s dropout probabilities differ ({sorted(dropouts)}); "
            f"attnbook's layers use one dropout everywhere"
        )
    for name, norm in zip(norm_names, norms, strict=True):
        if not isinstance(norm, nn.LayerNorm):
            raise TypeError(
                f"{kind}.{name} must be a torch.nn.LayerNorm, got {type(norm).__name__}"
            )
    if len({norm.eps for norm in norms}) > 1:
        raise ValueError(
            f"{kind}'s norms have different eps ({[n.eps for n in norms]}); "
            f"attnbook's layers have one layer_norm_eps"
        )
    named_norms = dict(zip(norm_names, norms, strict=True))
    named_attentions = dict(zip(attention_names, attentions, strict=True))
    _check_widths(kind, m, named_norms, named_attentions)
    _check_biases(kind, m, named_norms, named_attentions)
    return dict(
        d_model=m.linear1.in_features,
        nhead=attentions[0].num_heads,
        dim_feedforward=m.linear1.out_features,
        dropout=m.dropout.p,
        activation=_activation_name(m.activation),
        layer_norm_eps=norms[0].eps,
        norm_first=m.norm_first,
        bias=m.linear1.bias is not None,
    )


def _check_widths(kind, m, norms, attentions) -> None:
    """Every part of ``m`` works on ``d_model = linear1.in_features``, with one head count.

    torch builds its layers that way, but a replaced submodule can break it; attnbook's
    layers have one ``d_model`` and one ``nhead``, and read a memory of width ``d_model``.
    """
    d_model, d_ff = m.linear1.in_features, m.linear1.out_features
    if (m.linear2.in_features, m.linear2.out_features) != (d_ff, d_model):
        raise ValueError(
            f"{kind}.linear2 maps {m.linear2.in_features} -> "
            f"{m.linear2.out_features}, but linear1 maps {d_model} -> {d_ff}: "
            f"expected linear2 to map {d_ff} -> {d_model}"
        )
    for name, norm in norms.items():
        width = _single_dim(norm, f"{kind}.{name}")
        if width != d_model:
            raise ValueError(
                f"{kind}.{name} normalises {width} channels, expected d_model = "
                f"{d_model} (linear1.in_features)"
            )
    (first_name, first), *_ = attentions.items()
    for name, a in attentions.items():
        if a.embed_dim != d_model:
            raise ValueError(
                f"{kind}.{name} has embed_dim {a.embed_dim}, expected d_model = "
                f"{d_model} (linear1.in_features)"
            )
        if a.kdim != d_model or a.vdim != d_model:
            raise ValueError(
                f"{kind}.{name} has kdim={a.kdim} and vdim={a.vdim}, expected "
                f"both to be d_model = {d_model}: attnbook's layers attend to "
                f"sequences of width d_model"
            )
        if a.num_heads != first.num_heads:
            raise ValueError(
                f"{kind}.{name} has num_heads={a.num_heads} but {first_name} has "
                f"{first.num_heads}: attnbook's layers use one nhead"
            )


def _check_biases(kind, m, norms, attentions) -> None:
    """Every bias of ``m`` must exist exactly when ``linear1``'s does: ours has one ``bias``."""
    bias = m.linear1.bias is not None
    parts = {"linear2": m.linear2.bias}
    for name, a in attentions.items():
        parts |= {f"{name}.in_proj_bias": a.in_proj_bias, f"{name}.out_proj": a.out_proj.bias}
    parts |= {name: norm.bias for name, norm in norms.items()}
    for part, b in parts.items():
        if (b is not None) != bias:
            raise ValueError(
                f"{kind}.{part} has {'a' if b is not None else 'no'} bias but "
                f"linear1 has {'one' if bias else 'none'}: attnbook's layers have "
                f"one bias setting for all linear layers, attentions and norms"
            )


def _copy_feedforward(ff: FeedForward, linear1: nn.Linear, linear2: nn.Linear) -> None:
    with torch.no_grad():
        for ours, theirs in ((ff.w1, linear1), (ff.w2, linear2)):
            ours.weight.copy_(theirs.weight)
            if theirs.bias is not None:
                ours.bias.copy_(theirs.bias)


def _convert_layers(layers, torch_type, our_type) -> nn.ModuleList:
    if len(layers) == 0:
        raise ValueError("the torch stack has no layers; attnbook's stacks need at least one")
    for i, layer in enumerate(layers):
        if not isinstance(layer, torch_type):
            raise TypeError(
                f"layers[{i}] must be a torch.nn.{torch_type.__name__}, got {type(layer).__name__}"
            )
    ours = [our_type.from_torch(layer) for layer in layers]
    for i, layer in enumerate(ours[1:], 1):
        for key, value in layer.config.items():
            if value != ours[0].config[key]:
                raise ValueError(
                    f"layers[{i}] differs from layers[0] in {key} ({value!r} vs "
                    f"{ours[0].config[key]!r}); attnbook's stacks repeat one "
                    f"layer configuration"
                )
    return nn.ModuleList(ours)


def _convert_norm(norm):
    if norm is None:
        return None
    if isinstance(norm, nn.LayerNorm):
        return LayerNorm.from_torch(norm)
    if isinstance(norm, nn.RMSNorm):
        return RMSNorm.from_torch(norm)
    raise TypeError(
        f"norm must be None, a torch.nn.LayerNorm or a torch.nn.RMSNorm, got {type(norm).__name__}"
    )


def _build_layer(layer: nn.Module, attentions: tuple[str, ...], n_norms: int, **config) -> None:
    """Check ``config`` (torch's layer arguments) and give ``layer`` its parts: the named
    attentions, ``ff``, and ``norm1..n`` with ``dropout1..n``, one pair per sub-layer."""
    d, h, p, bias = config["d_model"], config["nhead"], config["dropout"], config["bias"]
    _check_config(
        d, h, config["dim_feedforward"], p, config["layer_norm_eps"], config["norm_first"], bias
    )
    layer.config = config
    layer.d_model, layer.nhead, layer.norm_first = d, h, config["norm_first"]
    for name in attentions:
        setattr(layer, name, MultiHeadAttention(d, h, bias=bias, dropout=p))
    layer.ff = FeedForward(d, config["dim_feedforward"], config["activation"], bias=bias, dropout=p)
    for i in range(1, n_norms + 1):
        setattr(layer, f"norm{i}", LayerNorm(d, eps=config["layer_norm_eps"], bias=bias))
        setattr(layer, f"dropout{i}", nn.Dropout(p))


class TransformerEncoderLayer(nn.Module):
    """One encoder block: self-attention, then a feed-forward network, each with a residual.

    Post-norm (``norm_first=False``, the 2017 paper and torch's default):
    ``x = norm1(x + attn(x)); x = norm2(x + ff(x))``. Pre-norm (``norm_first=True``):
    ``x = x + attn(norm1(x)); x = x + ff(norm2(x))``.

    Args:
        d_model: E, the model width.
        nhead: H, the number of attention heads; it must divide ``d_model``.
        dim_feedforward: the hidden width of the feed-forward network.
        dropout: on the attention weights, on the hidden activations of the
            feed-forward network, and on each sub-block's output (training mode only).
        activation: ``"relu"``, ``"gelu"`` (exact) or ``"swiglu"`` (see :class:`FeedForward`).
        layer_norm_eps: the ``eps`` of both LayerNorms (finite, ``>= 0``).
        norm_first: pre-norm if True, post-norm if False (a bool).
        bias: whether the linear layers and the LayerNorms have biases (a bool).

    Shapes: ``src`` ``(B, L, E)`` -> ``(B, L, E)``, with the layer's dtype. Unlike torch
    there is no ``batch_first`` argument: the batch always comes first. ``config`` holds
    the constructor's arguments as a dict.

    Fully masked rows: a query that may attend to no key (all of its sequence's
    ``key_mask`` False, or its ``attn_mask`` row all False or all ``-inf``) gets
    attention weights of 0, not NaN. The attention's output there is 0, so the
    sub-block adds ``self_attn.out_proj.bias`` (0 without biases) to the residual.
    Outputs and gradients stay finite, in float32, float16 and bfloat16 (tested on CPU).
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        layer_norm_eps: float = 1e-5,
        norm_first: bool = False,
        bias: bool = True,
    ):
        super().__init__()
        _build_layer(
            self,
            ("self_attn",),
            2,
            d_model=d_model,
            nhead=nhead,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            activation=activation,
            layer_norm_eps=layer_norm_eps,
            norm_first=norm_first,
            bias=bias,
        )

    # --8<-- [start:encoder_layer_forward]
    def forward(
        self,
        src: torch.Tensor,
        *,
        attn_mask: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """Encode ``src`` ``(B, L, E)`` into a sequence of the same shape.

        ``attn_mask``: bool (True = may attend) or float (added to the scores),
        broadcastable to ``(B, H, L, L)``. ``key_mask``: ``(B, L)`` bool, True = real
        token. ``is_causal``: let position ``i`` attend to positions ``<= i`` only.
        """
        self._check_inputs(src, attn_mask, key_mask, is_causal)
        x = src  # (B, L, E) throughout: each sub-block maps (B, L, E) to (B, L, E)
        if self.norm_first:  # pre-norm: normalise what goes into each sub-block
            x = x + self._attend(self.norm1(x), attn_mask, key_mask, is_causal)
            x = x + self._feed_forward(self.norm2(x))
        else:  # post-norm: normalise each residual sum
            x = self.norm1(x + self._attend(x, attn_mask, key_mask, is_causal))
            x = self.norm2(x + self._feed_forward(x))
        return x

    def _attend(self, x, attn_mask, key_mask, is_causal):
        out, _ = self.self_attn(x, attn_mask=attn_mask, key_mask=key_mask, is_causal=is_causal)
        return self.dropout1(out)

    def _feed_forward(self, x):
        return self.dropout2(self.ff(x))

    # --8<-- [end:encoder_layer_forward]

    def _check_inputs(self, src, attn_mask, key_mask, is_causal):
        _check_sequence("src", src, self.d_model, self.self_attn.q_proj.weight, "the layer")
        _require_bool("is_causal", is_causal)
        B, L = src.shape[:2]
        _check_attn_mask(
            "attn_mask", attn_mask, (B, self.nhead, L, L), "is_causal", is_causal, "src", src
        )
        _check_key_mask("key_mask", key_mask, B, L, "src", src)

    @classmethod
    def from_torch(cls, m: nn.TransformerEncoderLayer) -> TransformerEncoderLayer:
        """A copy of ``m`` with its weights, in ``m``'s train/eval mode; outputs match to 1e-5.

        Refused, with the reason: ``batch_first=False``, an activation other than relu
        or exact gelu, norms other than ``nn.LayerNorm``, unequal dropouts or eps, and
        (possible after replacing submodules) a part whose bias exists when
        ``linear1``'s does not or the reverse, a part whose width is not ``d_model``,
        and an attention with ``kdim`` or ``vdim`` other than ``d_model``.
        """
        if not isinstance(m, nn.TransformerEncoderLayer):
            raise TypeError(f"m must be a torch.nn.TransformerEncoderLayer, got {type(m).__name__}")
        new = cls(**_layer_config(m, ("norm1", "norm2"), ("self_attn",)))
        new.self_attn = MultiHeadAttention.from_torch(m.self_attn)
        new.norm1, new.norm2 = LayerNorm.from_torch(m.norm1), LayerNorm.from_torch(m.norm2)
        _copy_feedforward(new.ff, m.linear1, m.linear2)
        return new.to(m.linear1.weight.dtype).train(m.training)


class TransformerDecoderLayer(nn.Module):
    """One decoder block: causal self-attention, cross-attention to ``memory``, feed-forward.

    Post-norm (``norm_first=False``): ``x = norm1(x + self_attn(x));
    x = norm2(x + cross_attn(x, memory)); x = norm3(x + ff(x))``. Pre-norm normalises
    each sub-block's input instead, ``x = x + self_attn(norm1(x))`` and so on;
    ``memory`` itself is never normalised here (the encoder's final norm does that).

    Args:
        d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, norm_first, bias:
            as in :class:`TransformerEncoderLayer`.

    Shapes: ``tgt`` ``(B, L, E)``, ``memory`` ``(B, S, E)`` -> ``(B, L, E)``, all with the
    layer's dtype. torch's ``multihead_attn`` is called ``cross_attn`` here.

    Fully masked rows give finite outputs and gradients, as in
    :class:`TransformerEncoderLayer`: a query with no key left in self-attention (e.g.
    its sequence's ``tgt_key_mask`` all False) gets ``self_attn.out_proj.bias`` from
    that sub-block, and one with no memory position left (e.g. ``memory_key_mask`` all
    False) gets ``cross_attn.out_proj.bias`` from cross-attention.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        layer_norm_eps: float = 1e-5,
        norm_first: bool = False,
        bias: bool = True,
    ):
        super().__init__()
        _build_layer(
            self,
            ("self_attn", "cross_attn"),
            3,
            d_model=d_model,
            nhead=nhead,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            activation=activation,
            layer_norm_eps=layer_norm_eps,
            norm_first=norm_first,
            bias=bias,
        )

    # --8<-- [start:decoder_layer_forward]
    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        *,
        tgt_attn_mask: torch.Tensor | None = None,
        memory_attn_mask: torch.Tensor | None = None,
        tgt_key_mask: torch.Tensor | None = None,
        memory_key_mask: torch.Tensor | None = None,
        tgt_is_causal: bool = False,
    ) -> torch.Tensor:
        """Decode ``tgt`` ``(B, L, E)`` while reading ``memory`` ``(B, S, E)``.

        ``tgt_attn_mask``: for self-attention, broadcastable to ``(B, H, L, L)``;
        ``memory_attn_mask``: for cross-attention, broadcastable to ``(B, H, L, S)``;
        both bool (True = may attend) or float. ``tgt_key_mask`` ``(B, L)`` and
        ``memory_key_mask`` ``(B, S)``: bool, True = real token. ``tgt_is_causal``:
        position ``i`` of ``tgt`` attends to positions ``<= i`` only.
        """
        self._check_inputs(
            tgt,
            memory,
            tgt_attn_mask,
            memory_attn_mask,
            tgt_key_mask,
            memory_key_mask,
            tgt_is_causal,
        )
        x = tgt  # (B, L, E) throughout
        if self.norm_first:
            x = x + self._self_attend(self.norm1(x), tgt_attn_mask, tgt_key_mask, tgt_is_causal)
            x = x + self._cross_attend(self.norm2(x), memory, memory_attn_mask, memory_key_mask)
            x = x + self._feed_forward(self.norm3(x))
        else:
            x = self.norm1(x + self._self_attend(x, tgt_attn_mask, tgt_key_mask, tgt_is_causal))
            x = self.norm2(x + self._cross_attend(x, memory, memory_attn_mask, memory_key_mask))
            x = self.norm3(x + self._feed_forward(x))
        return x

    def _self_attend(self, x, attn_mask, key_mask, is_causal):
        out, _ = self.self_attn(x, attn_mask=attn_mask, key_mask=key_mask, is_causal=is_causal)
        return self.dropout1(out)

    def _cross_attend(self, x, memory, attn_mask, key_mask):  # queries from x, keys from memory
        out, _ = self.cross_attn(x, memory, memory, attn_mask=attn_mask, key_mask=key_mask)
        return self.dropout2(out)

    def _feed_forward(self, x):
        return self.dropout3(self.ff(x))

    # --8<-- [end:decoder_layer_forward]

    def _check_inputs(
        self,
        tgt,
        memory,
        tgt_attn_mask,
        memory_attn_mask,
        tgt_key_mask,
        memory_key_mask,
        tgt_is_causal,
    ):
        _check_sequence("tgt", tgt, self.d_model, self.self_attn.q_proj.weight, "the layer")
        B, L = tgt.shape[:2]
        _check_sequence(
            "memory", memory, self.d_model, self.cross_attn.k_proj.weight, "the layer", batch=B
        )
        _require_bool("tgt_is_causal", tgt_is_causal)
        S, H = memory.shape[1], self.nhead
        _check_attn_mask(
            "tgt_attn_mask", tgt_attn_mask, (B, H, L, L), "tgt_is_causal", tgt_is_causal, "tgt", tgt
        )
        _check_attn_mask("memory_attn_mask", memory_attn_mask, (B, H, L, S), "", False, "tgt", tgt)
        _check_key_mask("tgt_key_mask", tgt_key_mask, B, L, "tgt", tgt)
        _check_key_mask("memory_key_mask", memory_key_mask, B, S, "memory", memory)

    @classmethod
    def from_torch(cls, m: nn.TransformerDecoderLayer) -> TransformerDecoderLayer:
        """A copy of ``m`` with its weights, in ``m``'s train/eval mode; outputs match to 1e-5.

        Refused as in :meth:`TransformerEncoderLayer.from_torch`, for both attentions,
        and also when the cross-attention (``multihead_attn``) has a ``num_heads`` other
        than the self-attention's.
        """
        if not isinstance(m, nn.TransformerDecoderLayer):
            raise TypeError(f"m must be a torch.nn.TransformerDecoderLayer, got {type(m).__name__}")
        norms = [m.norm1, m.norm2, m.norm3]
        new = cls(**_layer_config(m, ("norm1", "norm2", "norm3"), ("self_attn", "multihead_attn")))
        new.self_attn = MultiHeadAttention.from_torch(m.self_attn)
        new.cross_attn = MultiHeadAttention.from_torch(m.multihead_attn)
        new.norm1, new.norm2, new.norm3 = (LayerNorm.from_torch(n) for n in norms)
        _copy_feedforward(new.ff, m.linear1, m.linear2)
        return new.to(m.linear1.weight.dtype).train(m.training)


def _check_stack(layer, layer_type, num_layers, norm):
    if not isinstance(layer, layer_type):
        raise TypeError(
            f"the layer must be an attnbook {layer_type.__name__}, got {type(layer).__name__}"
        )
    _positive_int("num_layers", num_layers)
    if norm is not None and not isinstance(norm, nn.Module):
        raise TypeError(f"norm must be None or a torch.nn.Module, got {type(norm).__name__}")
    if isinstance(norm, (LayerNorm, RMSNorm)):
        width = (norm.dim,)
    elif isinstance(norm, (nn.LayerNorm, nn.RMSNorm)):
        width = tuple(norm.normalized_shape)
    else:  # None, or a module whose width is not known here
        return
    if width != (layer.d_model,):
        raise ValueError(
            f"norm must normalise the layers' width d_model = {layer.d_model}, "
            f"got a {type(norm).__name__} of shape {width}"
        )


def _stack_from_torch(cls, m, torch_stack, torch_layer, our_layer):
    """A stack of ``cls`` copied from the torch stack ``m``: layers, norm, train/eval mode."""
    if not isinstance(m, torch_stack):
        raise TypeError(f"m must be a torch.nn.{torch_stack.__name__}, got {type(m).__name__}")
    layers = _convert_layers(m.layers, torch_layer, our_layer)
    new = cls(layers[0], 1, _convert_norm(m.norm))
    new.layers = layers
    return new.train(m.training)


class TransformerEncoder(nn.Module):
    """A stack of ``num_layers`` encoder layers, then an optional norm.

    ``x = norm(layer_N(...layer_1(src)))``.

    Args:
        encoder_layer: a :class:`TransformerEncoderLayer`, copied ``num_layers`` times
            with ``copy.deepcopy`` as torch does, so all layers start out equal
            (:class:`Transformer` re-initialises them).
        num_layers: N, the number of layers.
        norm: applied to the last layer's output, e.g. a :class:`LayerNorm`. A pre-norm
            stack needs one: its last residual sum is otherwise never normalised. A
            LayerNorm or RMSNorm (attnbook's or torch's) must have width ``d_model``.

    Shapes, dtypes and masks: as in :meth:`TransformerEncoderLayer.forward`; every
    layer gets the same masks, and fully masked rows stay finite as described there.
    """

    def __init__(
        self, encoder_layer: TransformerEncoderLayer, num_layers: int, norm: nn.Module | None = None
    ):
        super().__init__()
        _check_stack(encoder_layer, TransformerEncoderLayer, num_layers, norm)
        self.layers = nn.ModuleList(copy.deepcopy(encoder_layer) for _ in range(num_layers))
        self.norm = norm

    # --8<-- [start:encoder_forward]
    def forward(
        self,
        src: torch.Tensor,
        *,
        attn_mask: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """``(B, L, E) -> (B, L, E)``; masks as in :meth:`TransformerEncoderLayer.forward`."""
        x = src  # (B, L, E)
        for layer in self.layers:
            x = layer(x, attn_mask=attn_mask, key_mask=key_mask, is_causal=is_causal)
        return x if self.norm is None else self.norm(x)

    # --8<-- [end:encoder_forward]

    @classmethod
    def from_torch(cls, m: nn.TransformerEncoder) -> TransformerEncoder:
        """A copy of ``m``: each layer and the norm (LayerNorm, RMSNorm or None) with weights.

        torch's ``enable_nested_tensor`` and ``mask_check`` only choose a faster kernel
        and are not copied. That kernel (eval mode, no autograd, a key padding mask)
        returns 0 at padded positions, before the final norm; this module computes
        them like any other position, so compare the two at real tokens only.
        Refused: layers that differ from one another in their configuration, and
        anything :meth:`TransformerEncoderLayer.from_torch` refuses.
        """
        return _stack_from_torch(
            cls, m, nn.TransformerEncoder, nn.TransformerEncoderLayer, TransformerEncoderLayer
        )


class TransformerDecoder(nn.Module):
    """A stack of ``num_layers`` decoder layers, all reading one ``memory``, then a norm.

    ``x = norm(layer_N(...layer_1(tgt, memory)..., memory))``.

    Args:
        decoder_layer: a :class:`TransformerDecoderLayer`, deep-copied ``num_layers`` times.
        num_layers: N, the number of layers.
        norm: applied to the last layer's output; a LayerNorm or RMSNorm must have
            width ``d_model``.

    Shapes, dtypes and masks: as in :meth:`TransformerDecoderLayer.forward`; fully masked
    rows stay finite as described there.
    """

    def __init__(
        self, decoder_layer: TransformerDecoderLayer, num_layers: int, norm: nn.Module | None = None
    ):
        super().__init__()
        _check_stack(decoder_layer, TransformerDecoderLayer, num_layers, norm)
        self.layers = nn.ModuleList(copy.deepcopy(decoder_layer) for _ in range(num_layers))
        self.norm = norm

    # --8<-- [start:decoder_forward]
    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        *,
        tgt_attn_mask: torch.Tensor | None = None,
        memory_attn_mask: torch.Tensor | None = None,
        tgt_key_mask: torch.Tensor | None = None,
        memory_key_mask: torch.Tensor | None = None,
        tgt_is_causal: bool = False,
    ) -> torch.Tensor:
        """``(B, L, E), (B, S, E) -> (B, L, E)``; masks as in the layer's ``forward``."""
        x = tgt  # (B, L, E)
        for layer in self.layers:
            x = layer(
                x,
                memory,
                tgt_attn_mask=tgt_attn_mask,
                memory_attn_mask=memory_attn_mask,
                tgt_key_mask=tgt_key_mask,
                memory_key_mask=memory_key_mask,
                tgt_is_causal=tgt_is_causal,
            )
        return x if self.norm is None else self.norm(x)

    # --8<-- [end:decoder_forward]

    @classmethod
    def from_torch(cls, m: nn.TransformerDecoder) -> TransformerDecoder:
        """A copy of ``m``: each layer and the norm with their weights.

        Refused: layers that differ from one another in their configuration, and
        anything :meth:`TransformerDecoderLayer.from_torch` refuses.
        """
        return _stack_from_torch(
            cls, m, nn.TransformerDecoder, nn.TransformerDecoderLayer, TransformerDecoderLayer
        )


class Transformer(nn.Module):
    """The encoder-decoder of "Attention Is All You Need", on already-embedded sequences.

    ``memory = encoder(src)``, ``output = decoder(tgt, memory)``. The encoder and the
    decoder each end with a LayerNorm, as in torch's ``nn.Transformer``; token
    embeddings, positions and the output head are left to the caller, as in torch.

    Initialisation follows torch's ``nn.Transformer``, in distribution (the random
    draws differ). Every weight matrix is redrawn with ``xavier_uniform_``, after the
    stacks' deep copies, so that layers no longer start out equal. The query, key and
    value weights are drawn as one ``(3E, E)`` matrix, like torch's fused
    ``in_proj_weight``: bound ``sqrt(6 / (4E))``, not the ``sqrt(6 / (2E))`` of a
    separate ``(E, E)`` matrix. The attention biases are zero, as in torch's
    ``nn.MultiheadAttention``. The feed-forward biases keep ``nn.Linear``'s default
    uniform draw and, as in torch, are equal in all layers of a stack (deep copies of
    one layer). The norms start at weight 1 and bias 0.

    Args:
        d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, norm_first, bias:
            as in :class:`TransformerEncoderLayer`, shared by all layers.
        num_encoder_layers, num_decoder_layers: the depths of the two stacks.

    Shapes: ``src`` ``(B, S, E)``, ``tgt`` ``(B, L, E)`` -> ``(B, L, E)``; both must have
    the model's dtype. With torch's defaults it has 44,140,544 parameters, like
    ``nn.Transformer()``.

    Fully masked rows give finite outputs and gradients (see
    :class:`TransformerEncoderLayer`). A source that is all padding (``src_key_mask``
    all False) leaves its decoder queries no memory position to read, since
    ``memory_key_mask`` defaults to ``src_key_mask``: cross-attention then adds
    ``cross_attn.out_proj.bias``, and the output no longer depends on ``src``.
    """

    def __init__(
        self,
        d_model: int = 512,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        layer_norm_eps: float = 1e-5,
        norm_first: bool = False,
        bias: bool = True,
    ):
        super().__init__()
        _positive_int("num_encoder_layers", num_encoder_layers)
        _positive_int("num_decoder_layers", num_decoder_layers)
        config = dict(
            d_model=d_model,
            nhead=nhead,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            activation=activation,
            layer_norm_eps=layer_norm_eps,
            norm_first=norm_first,
            bias=bias,
        )
        self.d_model, self.nhead = d_model, nhead
        self.encoder = TransformerEncoder(
            TransformerEncoderLayer(**config),
            num_encoder_layers,
            LayerNorm(d_model, eps=layer_norm_eps, bias=bias),
        )
        self.decoder = TransformerDecoder(
            TransformerDecoderLayer(**config),
            num_decoder_layers,
            LayerNorm(d_model, eps=layer_norm_eps, bias=bias),
        )
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """torch's initialisation, as described in the class docstring."""
        with torch.no_grad():
            drawn = set()
            for attn in (m for m in self.modules() if isinstance(m, MultiHeadAttention)):
                projs = (attn.q_proj, attn.k_proj, attn.v_proj)
                in_proj = torch.cat([p.weight for p in projs])  # (3E, E), as torch's in_proj
                nn.init.xavier_uniform_(in_proj)  # bound sqrt(6 / (3E + E))
                for proj, w in zip(projs, in_proj.split(attn.embed_dim), strict=True):
                    proj.weight.copy_(w)
                for proj in (*projs, attn.out_proj):
                    if proj.bias is not None:
                        proj.bias.zero_()
                drawn |= {id(proj.weight) for proj in projs}
            for p in self.parameters():
                if p.dim() > 1 and id(p) not in drawn:  # out_proj and feed-forward weights
                    nn.init.xavier_uniform_(p)

    # --8<-- [start:transformer_forward]
    def forward(
        self,
        src: torch.Tensor,
        tgt: torch.Tensor,
        *,
        src_attn_mask: torch.Tensor | None = None,
        tgt_attn_mask: torch.Tensor | None = None,
        memory_attn_mask: torch.Tensor | None = None,
        src_key_mask: torch.Tensor | None = None,
        tgt_key_mask: torch.Tensor | None = None,
        memory_key_mask: torch.Tensor | None = None,
        src_is_causal: bool = False,
        tgt_is_causal: bool = False,
    ) -> torch.Tensor:
        """Encode ``src`` ``(B, S, E)``, then decode ``tgt`` ``(B, L, E)`` against it.

        ``src_*`` masks go to the encoder's self-attention, ``tgt_*`` to the decoder's,
        and ``memory_*`` to its cross-attention (see the layers' ``forward``).
        ``memory_key_mask`` defaults to ``src_key_mask``: the memory's positions are the
        source's, so padding in ``src`` is not read by the decoder either. (torch has no
        such default: there, ``memory_key_padding_mask`` must be passed explicitly.)
        """
        self._check_inputs(
            src,
            tgt,
            src_attn_mask,
            tgt_attn_mask,
            memory_attn_mask,
            src_key_mask,
            tgt_key_mask,
            memory_key_mask,
            src_is_causal,
            tgt_is_causal,
        )
        memory = self.encoder(
            src, attn_mask=src_attn_mask, key_mask=src_key_mask, is_causal=src_is_causal
        )  # (B, S, E)
        if memory_key_mask is None:
            memory_key_mask = src_key_mask
        return self.decoder(
            tgt,
            memory,
            tgt_attn_mask=tgt_attn_mask,
            memory_attn_mask=memory_attn_mask,
            tgt_key_mask=tgt_key_mask,
            memory_key_mask=memory_key_mask,
            tgt_is_causal=tgt_is_causal,
        )  # (B, L, E)

    # --8<-- [end:transformer_forward]

    def _check_inputs(
        self,
        src,
        tgt,
        src_attn_mask,
        tgt_attn_mask,
        memory_attn_mask,
        src_key_mask,
        tgt_key_mask,
        memory_key_mask,
        src_is_causal,
        tgt_is_causal,
    ):
        """All of ``forward``'s arguments under their own names, before the encoder runs."""
        E, H = self.d_model, self.nhead
        _check_sequence("src", src, E, self.encoder.layers[0].self_attn.q_proj.weight, "the model")
        B, S = src.shape[:2]
        _check_sequence(
            "tgt",
            tgt,
            E,
            self.decoder.layers[0].self_attn.q_proj.weight,
            "the model",
            batch=B,
            batch_of="src",
        )
        L = tgt.shape[1]
        _require_bool("src_is_causal", src_is_causal)
        _require_bool("tgt_is_causal", tgt_is_causal)
        _check_attn_mask(
            "src_attn_mask", src_attn_mask, (B, H, S, S), "src_is_causal", src_is_causal, "src", src
        )
        _check_attn_mask(
            "tgt_attn_mask", tgt_attn_mask, (B, H, L, L), "tgt_is_causal", tgt_is_causal, "tgt", tgt
        )
        _check_attn_mask("memory_attn_mask", memory_attn_mask, (B, H, L, S), "", False, "tgt", tgt)
        _check_key_mask("src_key_mask", src_key_mask, B, S, "src", src)
        _check_key_mask("tgt_key_mask", tgt_key_mask, B, L, "tgt", tgt)
        _check_key_mask("memory_key_mask", memory_key_mask, B, S, "src", src)

    @classmethod
    def from_torch(cls, m: nn.Transformer) -> Transformer:
        """A copy of ``m`` with all its weights; outputs match torch's to 1e-5.

        Refused: ``batch_first=False``; a ``custom_encoder`` or ``custom_decoder`` that
        is not a torch ``TransformerEncoder``/``TransformerDecoder`` ending in a
        LayerNorm; encoder and decoder layers that differ in configuration; and
        anything the stacks' ``from_torch`` refuse.
        """
        if not isinstance(m, nn.Transformer):
            raise TypeError(f"m must be a torch.nn.Transformer, got {type(m).__name__}")
        if not m.batch_first:
            raise ValueError(
                "nn.Transformer has batch_first=False, and attnbook is batch-first "
                "only: build it with batch_first=True"
            )
        for part, torch_type in (
            ("encoder", nn.TransformerEncoder),
            ("decoder", nn.TransformerDecoder),
        ):
            stack = getattr(m, part)
            if not isinstance(stack, torch_type):
                raise ValueError(
                    f"m.{part} is a {type(stack).__name__}, not a torch.nn."
                    f"{torch_type.__name__}: custom stacks are not supported"
                )
            if not isinstance(stack.norm, nn.LayerNorm):
                raise ValueError(
                    f"m.{part}.norm is {type(stack.norm).__name__}, not a "
                    f"LayerNorm: attnbook's Transformer ends both stacks with one"
                )
        encoder = TransformerEncoder.from_torch(m.encoder)
        decoder = TransformerDecoder.from_torch(m.decoder)
        config = encoder.layers[0].config
        for key, value in decoder.layers[0].config.items():
            if value != config[key]:
                raise ValueError(
                    f"the decoder's layers differ from the encoder's in {key} "
                    f"({value!r} vs {config[key]!r}); attnbook's Transformer "
                    f"shares one configuration"
                )
        new = cls(**config, num_encoder_layers=1, num_decoder_layers=1)  # small shell
        new.encoder, new.decoder = encoder, decoder  # ...whose stacks are then replaced
        return new.train(m.training)
