"""Multi-head attention: H attention heads side by side, each on its own slice of E."""

from __future__ import annotations

import numbers

import torch
from torch import nn

from attnbook._checks import broadcast_shape, require_floating, require_ndim, require_tensor
from attnbook.attention import _weights, causal_mask

__all__ = ["MultiHeadAttention"]


class MultiHeadAttention(nn.Module):
    """Batch-first multi-head attention, ``out_proj(concat_h softmax(q_h k_h^T / sqrt(D)) v_h)``.

    Args:
        embed_dim: E, the model width. Each of the ``num_heads`` heads works on
            ``D = E / num_heads`` channels.
        num_heads: H, the number of query heads.
        num_kv_heads: key/value heads for grouped-query attention (chapter 16);
            query head ``h`` uses KV head ``h // (H / H_kv)``. Defaults to ``H``.
        bias: whether the four projections have biases.
        dropout: dropout on the attention weights, in training mode only.
        kdim, vdim: widths of the key and value inputs, if not E.

    Shapes: ``query`` ``(B, L, E)``, ``key`` ``(B, S, kdim)``, ``value`` ``(B, S, vdim)``;
    the output is ``(B, L, E)`` and the optional weights ``(B, H, L, S)``.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        kdim: int | None = None,
        vdim: int | None = None,
    ):
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if embed_dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide embed_dim ({embed_dim})")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if (
            isinstance(num_kv_heads, bool)
            or not isinstance(num_kv_heads, int)
            or num_kv_heads <= 0
            or num_heads % num_kv_heads
        ):
            raise ValueError(
                f"num_kv_heads ({num_kv_heads!r}) must be a positive int that "
                f"divides num_heads ({num_heads})"
            )
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
            raise TypeError(
                f"dropout must be a real number in [0, 1), got {type(dropout).__name__} {dropout!r}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        kv_width = num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(self.kdim, kv_width, bias=bias)
        self.v_proj = nn.Linear(self.vdim, kv_width, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    # --8<-- [start:split_merge]
    def _split(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        B, L, _ = x.shape
        return x.view(B, L, heads, self.head_dim).transpose(1, 2)  # (B, H, L, D)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        B, H, L, D = x.shape
        return x.transpose(1, 2).contiguous().view(B, L, H * D)  # (B, L, E)

    # --8<-- [end:split_merge]

    def _check_inputs(self, query, key, value, attn_mask, key_mask):
        for name, t, width in (
            ("query", query, self.embed_dim),
            ("key", key, self.kdim),
            ("value", value, self.vdim),
        ):
            require_tensor(name, t)
            require_floating(name, t)
            require_ndim(name, t, (3,), f"(B, L, {width}) (batch first)")
            if t.shape[-1] != width:
                raise ValueError(
                    f"{name} must have last dimension {width}, got shape {tuple(t.shape)}"
                )
        if key.shape[:2] != value.shape[:2] or key.shape[0] != query.shape[0]:
            raise ValueError(
                f"query, key and value must share batch size B and key/value "
                f"length S, got {tuple(query.shape)}, {tuple(key.shape)} and "
                f"{tuple(value.shape)}"
            )
        B, S = key.shape[:2]
        if attn_mask is not None:
            require_tensor("attn_mask", attn_mask)
            broadcast_shape(
                "attn_mask",
                tuple(attn_mask.shape),
                (B, self.num_heads, query.shape[1], S),
                "(B, H, L, S)",
            )
        if key_mask is not None:
            require_tensor("key_mask", key_mask)
            if key_mask.dtype != torch.bool:
                raise TypeError(f"key_mask must be bool (True = real key), got {key_mask.dtype}")
            if tuple(key_mask.shape) != (B, S):
                raise ValueError(
                    f"key_mask must have shape (B, S) = {(B, S)}, got {tuple(key_mask.shape)}"
                )

    # --8<-- [start:forward]
    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        *,
        attn_mask: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``query`` to ``key``/``value`` (both default to ``query``: self-attention).

        ``attn_mask``: bool (True = may attend) or float, broadcastable to ``(B, H, L, S)``.
        ``key_mask``: ``(B, S)`` bool, True = real key (False = padding).
        ``is_causal``: causal mask aligned bottom-right (``attnbook.causal_mask``).
        Returns ``(output (B, L, E), weights (B, H, L, S) or None)``.
        """
        key = query if key is None else key
        value = key if value is None else value
        self._check_inputs(query, key, value, attn_mask, key_mask)
        L, S = query.shape[1], key.shape[1]
        q = self._split(self.q_proj(query), self.num_heads)  # (B, H, L, D)
        k = self._split(self.k_proj(key), self.num_kv_heads)  # (B, H_kv, S, D)
        v = self._split(self.v_proj(value), self.num_kv_heads)  # (B, H_kv, S, D)
        mask = self._combine_masks(attn_mask, key_mask, is_causal, L, S, query)
        p = self.dropout if self.training else 0.0
        if need_weights:
            group = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)  # (B, H, S, D)
            weights = _weights(q, k, mask, False, None)  # (B, H, L, S)
            dropped = nn.functional.dropout(weights, p=p) if p else weights
            out = dropped @ v  # (B, H, L, D)
        else:  # torch's fused kernel computes the same thing (tested), without the weights
            weights = None
            out = nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=p, enable_gqa=self.num_kv_heads != self.num_heads
            )  # (B, H, L, D)
        return self.out_proj(self._merge(out)), weights  # (B, L, E)

    # --8<-- [end:forward]

    @staticmethod
    def _combine_masks(attn_mask, key_mask, is_causal, L, S, like):
        if attn_mask is not None:
            require_tensor("attn_mask", attn_mask)
            if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
                raise TypeError(
                    f"attn_mask must be bool (True = may attend) or floating "
                    f"point, got {attn_mask.dtype}"
                )
            if is_causal:
                raise ValueError("pass either attn_mask or is_causal=True, not both")
        mask = causal_mask(L, S, device=like.device) if is_causal else attn_mask
        if key_mask is not None:
            keys = key_mask[:, None, None, :]  # (B, 1, 1, S)
            if mask is None or mask.dtype == torch.bool:
                mask = keys if mask is None else mask & keys
            else:
                mask = mask.to(like.dtype).masked_fill(~keys, float("-inf"))
        if mask is not None and mask.is_floating_point():
            mask = mask.to(like.dtype)
        return mask

    @classmethod
    def from_torch(cls, m: nn.MultiheadAttention) -> MultiHeadAttention:
        """A copy of ``m``'s weights in this module; outputs then match torch's to 1e-5.

        torch's module may be batch-first or not: only its weights are copied, and this
        module is always batch-first. ``add_bias_kv`` and ``add_zero_attn`` are not supported.
        """
        if not isinstance(m, nn.MultiheadAttention):
            raise TypeError(f"m must be a torch.nn.MultiheadAttention, got {type(m).__name__}")
        if m.bias_k is not None or m.add_zero_attn:
            raise ValueError("add_bias_kv and add_zero_attn have no counterpart in attnbook")
        bias = m.in_proj_bias is not None
        new = cls(
            m.embed_dim, m.num_heads, bias=bias, dropout=m.dropout, kdim=m.kdim, vdim=m.vdim
        ).to(m.out_proj.weight.dtype)
        E = m.embed_dim
        with torch.no_grad():
            if m._qkv_same_embed_dim:
                wq, wk, wv = m.in_proj_weight.split(E)
            else:
                wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
            for proj, w in ((new.q_proj, wq), (new.k_proj, wk), (new.v_proj, wv)):
                proj.weight.copy_(w)
            new.out_proj.weight.copy_(m.out_proj.weight)
            if bias:
                for proj, b in zip(
                    (new.q_proj, new.k_proj, new.v_proj), m.in_proj_bias.split(E), strict=True
                ):
                    proj.bias.copy_(b)
                new.out_proj.bias.copy_(m.out_proj.bias)
        return new
