"""Dot-product attention, from the parameter-free version of chapter 1 upwards.

Shapes follow the book's convention: batch first, ``(B, L, E)`` for sequences.
"""

from __future__ import annotations

import math

import torch

from attnbook._checks import broadcast_shape, require_floating, require_ndim, require_tensor

__all__ = [
    "attention_weights",
    "causal_mask",
    "padding_mask",
    "scaled_dot_product_attention",
    "self_attention",
]

_HALF = (torch.float16, torch.bfloat16)


# --8<-- [start:self_attention]
def self_attention(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Parameter-free self-attention: every position attends to every position.

    ``output = softmax(x @ x^T) @ x``, with the softmax taken over each row.

    Args:
        x: the sequence, ``(L, E)`` or batched ``(B, L, E)``, floating point.

    Returns:
        ``(output, weights)``: ``output`` has the shape of ``x``; ``weights`` is
        ``(L, L)`` or ``(B, L, L)``, and each of its rows sums to 1.

    Half-precision inputs are computed in float32 and cast back: in float16, large
    scores would overflow to ``inf`` (it stops at 65504) and give NaN, and bfloat16
    would round the scores to about 3 significant digits.
    """
    require_tensor("x", x)
    require_floating("x", x)
    require_ndim("x", x, (2, 3), "(L, E) or (B, L, E)")
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    scores = work @ work.transpose(-2, -1)  # (..., L, L): one score per pair of positions
    weights = torch.softmax(scores, dim=-1)  # (..., L, L): each row sums to 1
    output = weights @ work  # (..., L, E): a weighted sum of the vectors
    return output.to(x.dtype), weights.to(x.dtype)


# --8<-- [end:self_attention]


# --8<-- [start:causal_mask]
def causal_mask(q_len: int, kv_len: int | None = None, *, device=None) -> torch.Tensor:
    """Boolean causal mask, ``True`` = may attend, aligned bottom-right.

    Query ``i`` sees key ``j`` iff ``j <= i + kv_len - q_len``: the last query is the
    newest token and sees every key, as in incremental decoding with a KV cache.
    (torch's ``is_causal=True`` aligns top-left instead; the two agree when
    ``q_len == kv_len``.)

    Returns:
        A ``(q_len, kv_len)`` bool tensor.
    """
    kv_len = q_len if kv_len is None else kv_len
    for name, value in (("q_len", q_len), ("kv_len", kv_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    i = torch.arange(q_len, device=device).unsqueeze(-1)  # (L, 1)
    j = torch.arange(kv_len, device=device)  # (S,)
    return j <= i + (kv_len - q_len)  # (L, S)


# --8<-- [end:causal_mask]


# --8<-- [start:padding_mask]
def padding_mask(lengths, max_len: int | None = None) -> torch.Tensor:
    """Boolean key mask from sequence lengths, ``True`` = real token.

    ``mask[b, j] = j < lengths[b]``.

    Args:
        lengths: ``(B,)`` integer lengths (a tensor or a list of ints).
        max_len: the padded length; defaults to ``max(lengths)``.

    Returns:
        A ``(B, max_len)`` bool tensor.
    """
    lengths = torch.as_tensor(lengths)
    if lengths.ndim != 1 or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise TypeError(
            f"lengths must be a 1-D sequence of ints, got dtype {lengths.dtype} "
            f"and shape {tuple(lengths.shape)}"
        )
    if (lengths < 0).any():
        raise ValueError(f"lengths must be non-negative, got {lengths.tolist()}")
    longest = int(lengths.max()) if lengths.numel() else 0
    max_len = longest if max_len is None else max_len
    if max_len < longest:
        raise ValueError(f"max_len={max_len} is shorter than the longest length {longest}")
    return torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(-1)  # (B, S)


# --8<-- [end:padding_mask]


def _check_qkv(query, key, value, enable_gqa):
    for name, t in (("query", query), ("key", key), ("value", value)):
        require_tensor(name, t)
        require_floating(name, t)
        if t.ndim < 2:
            raise ValueError(
                f"{name} must have shape (..., L, E) with at least 2 dimensions, "
                f"got a {t.ndim}-D tensor of shape {tuple(t.shape)}"
            )
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(
            f"query, key and value must share one dtype, got {query.dtype}, "
            f"{key.dtype} and {value.dtype}"
        )
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"query and key must have the same last (head) dimension, got "
            f"query (..., {query.shape[-1]}) and key (..., {key.shape[-1]})"
        )
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(
            f"key and value must have the same length S, got key "
            f"{tuple(key.shape)} and value {tuple(value.shape)}"
        )
    if enable_gqa and query.ndim >= 3:
        hq, hk, hv = query.shape[-3], key.shape[-3], value.shape[-3]
        if hk != hv or hq % hk:
            raise ValueError(
                f"with enable_gqa, query heads ({hq}) must be a multiple of key and "
                f"value heads, which must match; got key {hk} and value {hv}"
            )


def _check_mask(attn_mask, is_causal, dtype, target):
    if attn_mask is None:
        return
    require_tensor("attn_mask", attn_mask)
    if is_causal:
        raise ValueError(
            "pass either attn_mask or is_causal=True, not both: fold the causal "
            "mask into attn_mask (see attnbook.causal_mask)"
        )
    if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
        raise TypeError(
            f"attn_mask must be bool (True = may attend) or floating point (added "
            f"to the scores), got {attn_mask.dtype}"
        )
    broadcast_shape("attn_mask", tuple(attn_mask.shape), target, "the scores' shape")


# --8<-- [start:attention_weights]
def attention_weights(
    query: torch.Tensor,
    key: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention weights ``softmax(q k^T * scale + mask)``.

    Args:
        query: ``(..., L, E)``.
        key: ``(..., S, E)``; batch dimensions broadcast against ``query``'s.
        attn_mask: bool (``True`` = may attend) or float (added to the scores),
            broadcastable to ``(..., L, S)``.
        is_causal: mask with ``torch.ones(L, S).tril()``, aligned top-left like
            torch's ``is_causal``; for bottom-right use ``attn_mask=causal_mask(L, S)``.
        scale: defaults to ``1 / sqrt(E)``.

    Returns:
        ``(..., L, S)`` weights. Each row sums to 1, or is all 0 when every key
        of that row is masked out (never NaN).
    """
    _check_qkv(query, key, key, enable_gqa=False)
    return _weights(query, key, attn_mask, is_causal, scale)


# --8<-- [end:attention_weights]


def _weights(query, key, attn_mask, is_causal, scale):
    L, S, E = query.shape[-2], key.shape[-2], query.shape[-1]
    target = (*torch.broadcast_shapes(query.shape[:-2], key.shape[:-2]), L, S)
    _check_mask(attn_mask, is_causal, query.dtype, target)
    scale = 1.0 / math.sqrt(E) if scale is None else scale
    work = torch.float32 if query.dtype in _HALF else query.dtype  # half: compute in float32
    q, k = query.to(work) * scale, key.to(work)  # scaling q costs L*E, not L*S
    scores = q @ k.transpose(-2, -1)  # (..., L, S)
    if is_causal:  # top-left: row i keeps keys 0..i, so never loses every key
        causal = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is None:  # no mask, or a causal one: every row keeps a key
        return torch.softmax(scores, dim=-1).to(query.dtype)
    if attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    else:
        scores = scores + attn_mask.to(work)
    return _safe_softmax(scores).to(query.dtype)  # a mask may leave a row with no key


# --8<-- [start:safe_softmax]
def _safe_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis that gives 0, not NaN, for rows that are all -inf."""
    if scores.shape[-1] == 0:  # no keys at all: every row is "fully masked"
        return scores.clone()
    row_max = scores.amax(dim=-1, keepdim=True)  # (..., L, 1)
    dead = torch.isneginf(row_max)  # rows with no key to attend to
    weights = torch.softmax(scores.masked_fill(dead, 0.0), dim=-1)  # (..., L, S)
    return weights.masked_fill(dead, 0.0)


# --8<-- [end:safe_softmax]


# --8<-- [start:scaled_dot_product_attention]
def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(E) + mask) v``, a drop-in for torch's function of the same name.

    Args:
        query: ``(..., L, E)``, usually ``(B, H, L, E)``.
        key: ``(..., S, E)``.
        value: ``(..., S, Ev)``.
        attn_mask: bool (``True`` = may attend) or float (added to the scores),
            broadcastable to ``(..., L, S)``.
        dropout_p: dropout probability on the weights (applied whenever > 0, as torch does).
        is_causal: top-left causal mask, like torch; not together with ``attn_mask``.
        scale: defaults to ``1 / sqrt(E)``.
        enable_gqa: let key and value have fewer heads (dimension -3) than query;
            query head ``h`` uses key/value head ``h // (H_q // H_kv)``.

    Returns:
        ``(..., L, Ev)``. A query whose keys are all masked gets 0.
    """
    _check_qkv(query, key, value, enable_gqa)
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"dropout_p must be in [0, 1], got {dropout_p}")
    if enable_gqa and query.ndim >= 3 and key.shape[-3] != query.shape[-3]:
        group = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(group, dim=-3)  # (B, H, S, E): head h -> kv head h // group
        value = value.repeat_interleave(group, dim=-3)  # (B, H, S, Ev)
    weights = _weights(query, key, attn_mask, is_causal, scale)  # (B, H, L, S)
    if dropout_p > 0.0:
        weights = torch.nn.functional.dropout(weights, p=dropout_p)
    work = torch.float32 if query.dtype in _HALF else query.dtype
    return (weights.to(work) @ value.to(work)).to(query.dtype)  # (B, H, L, Ev)


# --8<-- [end:scaled_dot_product_attention]
