"""A decoder-only language model in the GPT-2 mould, in one readable file.

The pieces, from the bottom up:

- ``GPTConfig``: every size and choice of the model, checked when it is made;
- ``CausalSelfAttention``: multi-head attention in which position ``i`` sees only
  positions ``<= i``, with grouped-query attention (``n_kv_head < n_head``) and an
  optional :class:`~attnbook.generation.KVCache` for decoding one token at a time;
- ``Block``: pre-norm residual block, ``x + attn(norm(x))`` then ``x + mlp(norm(x))``;
- ``GPT``: token embedding, positions (learned, RoPE or ALiBi), the blocks, a final
  norm and the language-model head, tied to the token embedding.

Shapes: token ids ``idx`` are ``(B, T)``, activations ``(B, T, E)``, and inside
attention ``(B, H, T, D)`` with ``D = E / H``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from attnbook._checks import require_floating, require_tensor
from attnbook.attention import causal_mask
from attnbook.feedforward import FeedForward, swiglu_hidden
from attnbook.generation import KVCache, _check_token_ids
from attnbook.norms import LayerNorm, RMSNorm
from attnbook.positions import LearnedPositionalEmbedding, RotaryEmbedding, alibi_bias

__all__ = ["GPT", "Block", "CausalSelfAttention", "GPTConfig"]

POSITIONS = ("learned", "rope", "alibi")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")

# (n_layer, n_head, n_embd). Layers and widths: Radford et al. (2019), table 2, which lists
# no head counts; those (heads of 64 channels) come from the released checkpoints' hparams.
_GPT2_SIZES = {
    "small": (12, 12, 768),
    "medium": (24, 16, 1024),
    "large": (36, 20, 1280),
    "xl": (48, 25, 1600),
}


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _one_of(name: str, value: object, choices: tuple[str, ...]) -> None:
    expected = f"one of {', '.join(map(repr, choices))}"
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, {expected}, got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


# --8<-- [start:config]
@dataclass(frozen=True)
class GPTConfig:
    """Sizes and choices of a :class:`GPT`, checked when made, then frozen.

    To change a field, make a new config: ``dataclasses.replace(config, n_head=8)``
    (checked again). Assigning to a field raises ``FrozenInstanceError``.

    Args:
        vocab_size: V, the number of token ids.
        block_size: the longest sequence the model reads (its context window).
        n_layer: the number of blocks.
        n_head: H, the number of query heads; ``head_dim = n_embd / n_head``.
        n_embd: E, the model width.
        n_kv_head: key/value heads, ``None`` for ``n_head``; fewer is grouped-query
            attention, 1 is multi-query attention. It must divide ``n_head``.
        dropout: on embeddings, attention weights and each block's two outputs (training only).
        bias: biases in the linear layers and LayerNorms (GPT-2 has them).
        tie_weights: the output head shares its matrix with the token embedding.
        positions: ``"learned"`` (a table added to the embeddings, GPT-2), ``"rope"``
            (queries and keys rotated) or ``"alibi"`` (a linear bias on the scores).
        norm: ``"layernorm"`` or ``"rmsnorm"``.
        mlp: ``"gelu"`` (width ``4 E``) or ``"swiglu"`` (width ``2/3 * 4 E``, the same
            number of weights).
    """

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    n_kv_head: int | None = None
    dropout: float = 0.0
    bias: bool = True
    tie_weights: bool = True
    positions: str = "learned"
    norm: str = "layernorm"
    mlp: str = "gelu"
    # --8<-- [end:config]

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            _positive_int(name, getattr(self, name))
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head ({self.n_head}) must divide n_embd ({self.n_embd})")
        if self.n_kv_head is not None:
            _positive_int("n_kv_head", self.n_kv_head)
            if self.n_head % self.n_kv_head:
                raise ValueError(
                    f"n_kv_head ({self.n_kv_head}) must divide n_head "
                    f"({self.n_head}): each KV head serves a whole group of "
                    f"query heads"
                )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise TypeError(
                f"dropout must be a float, got {type(self.dropout).__name__} {self.dropout!r}"
            )
        if not 0.0 <= self.dropout < 1.0:  # also refuses NaN
            raise ValueError(f"dropout must be a float in [0, 1), got {self.dropout!r}")
        for name in ("bias", "tie_weights"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        _one_of("positions", self.positions, POSITIONS)
        _one_of("norm", self.norm, NORMS)
        _one_of("mlp", self.mlp, MLPS)
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(
                f"positions='rope' needs an even head_dim (channels rotate in "
                f"pairs), got n_embd / n_head = {self.head_dim}"
            )

    @property
    def head_dim(self) -> int:
        """D, the width of one head: ``n_embd // n_head``."""
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads: ``n_kv_head``, or ``n_head`` when that is None."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @classmethod
    def gpt2(cls, size: str = "small", **overrides) -> GPTConfig:
        """The configuration of a GPT-2 size: ``"small"``, ``"medium"``, ``"large"`` or ``"xl"``.

        Vocabulary 50257, context 1024, learned positions, LayerNorm, GELU MLP, biases and
        tied embeddings. ``overrides`` replace any field, e.g. ``dropout=0.1``, and the
        result is checked like any config.
        """
        _one_of("size", size, tuple(_GPT2_SIZES))
        n_layer, n_head, n_embd = _GPT2_SIZES[size]
        fields = dict(
            vocab_size=50257, block_size=1024, n_layer=n_layer, n_head=n_head, n_embd=n_embd
        )
        return cls(**{**fields, **overrides})


def _make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd)
    return LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)


class CausalSelfAttention(nn.Module):
    """Causal self-attention, ``out_proj(concat_h softmax(q_h k_h^T / sqrt(D) + m) v_h)``.

    Query head ``h`` reads key/value head ``h // (H / H_kv)``: with ``n_kv_head < n_head``
    neighbouring query heads share one key/value head (grouped-query attention), which
    shrinks the projections and, above all, the KV cache.

    Shapes: ``x`` ``(B, T, E)`` -> ``(B, T, E)``. ``S`` counts the cached keys plus
    the ``T`` new ones. The mask is what makes it causal, and its kind is fixed by
    ``config.positions``:

    - ``"learned"`` or ``"rope"``: ``m`` is a bool ``(T, S)`` mask, True = may attend
      (``causal_mask(T, S)``), or None for one new token (``T = 1``), which sees every key.
      A float mask is refused: it would be added to the scores, not read as 0/1.
    - ``"alibi"``: ``m`` is the float bias ``(H, T, S)`` in ``x``'s dtype, added to the
      scores, with ``-inf`` on the future (``alibi_bias(H, T, S)``); never None.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        E, kv_width = config.n_embd, config.kv_heads * config.head_dim
        self.q_proj = nn.Linear(E, E, bias=config.bias)
        self.k_proj = nn.Linear(E, kv_width, bias=config.bias)
        self.v_proj = nn.Linear(E, kv_width, bias=config.bias)
        self.out_proj = nn.Linear(E, E, bias=config.bias)
        self.rotary = RotaryEmbedding(config.head_dim) if config.positions == "rope" else None
        self.alibi = config.positions == "alibi"  # the mask is then ALiBi's float bias
        self.dropout_p = config.dropout  # on the attention weights, in training only

    def _check_forward(self, x, mask, kv_cache, layer, offset) -> None:
        E, H = self.n_head * self.head_dim, self.n_head
        require_tensor("x", x)
        require_floating("x", x)
        if x.ndim != 3 or x.shape[-1] != E:
            raise ValueError(f"x must have shape (B, T, E) with E={E}, got {tuple(x.shape)}")
        T = x.shape[1]
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset must be an int, got {type(offset).__name__} {offset!r}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        past = 0
        if kv_cache is not None:
            if not isinstance(kv_cache, KVCache):
                raise TypeError(
                    f"kv_cache must be an attnbook KVCache, got {type(kv_cache).__name__}"
                )
            past = kv_cache._tokens(layer)  # also checks layer
            if offset != past:
                raise ValueError(
                    f"offset must be the number of tokens cached in layer {layer}, "
                    f"{past}, got {offset}"
                )
        S = past + T
        if self.alibi:
            if not isinstance(mask, torch.Tensor) or not mask.is_floating_point():
                raise TypeError(
                    f"with positions='alibi', mask must be the float bias "
                    f"alibi_bias(H, T, S), got "
                    f"{type(mask).__name__ if mask is None else mask.dtype}"
                )
            if tuple(mask.shape) != (H, T, S):
                raise ValueError(
                    f"mask must have shape (H, T, S) = {(H, T, S)}, got {tuple(mask.shape)}"
                )
            if mask.dtype != x.dtype:
                raise TypeError(
                    f"mask (a float bias) must have x's dtype {x.dtype}, got {mask.dtype}"
                )
        elif mask is None:
            if T != 1:
                raise ValueError(
                    f"mask may be None only for one new token (T=1), which sees "
                    f"every key; got T={T}: pass causal_mask(T, S) = "
                    f"causal_mask({T}, {S})"
                )
            return
        else:
            require_tensor("mask", mask)
            if mask.dtype != torch.bool:
                raise TypeError(
                    f"mask must be bool (True = may attend), got {mask.dtype}: a "
                    f"float mask would be added to the scores; use causal_mask(T, S)"
                )
            if tuple(mask.shape) != (T, S):
                raise ValueError(f"mask must have shape (T, S) = {(T, S)}, got {tuple(mask.shape)}")
        if mask.device != x.device:
            raise ValueError(f"mask must be on x's device {x.device}, got {mask.device}")

    # --8<-- [start:attention_forward]
    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        *,
        kv_cache: KVCache | None = None,
        layer: int = 0,
        offset: int = 0,
    ) -> torch.Tensor:
        """Attend from the ``T`` new positions ``offset, ..., offset + T - 1`` to all so far."""
        self._check_forward(x, mask, kv_cache, layer, offset)
        B, T, E = x.shape
        H, H_kv, D = self.n_head, self.n_kv_head, self.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, H_kv, D).transpose(1, 2)  # (B, H_kv, T, D)
        v = self.v_proj(x).view(B, T, H_kv, D).transpose(1, 2)  # (B, H_kv, T, D)
        if self.rotary is not None:  # RoPE: rotate by the absolute positions of the new tokens
            q, k = self.rotary(q, offset=offset), self.rotary(k, offset=offset)
        if kv_cache is not None:  # keys are cached rotated, and with H_kv heads only
            k, v = kv_cache.update(layer, k, v)  # (B, H_kv, S, D), S = offset + T
        if H_kv != H:  # query head h reads kv head h // group
            k = k.repeat_interleave(H // H_kv, dim=1)  # (B, H, S, D)
            v = v.repeat_interleave(H // H_kv, dim=1)  # (B, H, S, D)
        p = self.dropout_p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, E)  # (B, T, E): heads side by side
        return self.out_proj(y)

    # --8<-- [end:attention_forward]


# --8<-- [start:block]
class Block(nn.Module):
    """Pre-norm transformer block: ``x = x + attn(norm1(x))``, then ``x = x + mlp(norm2(x))``.

    Shapes: ``x`` ``(B, T, E)`` -> ``(B, T, E)``; ``mask`` as in :class:`CausalSelfAttention`.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = 4 * config.n_embd
        if config.mlp == "swiglu":  # three matrices instead of two: 2/3 of the width
            hidden = swiglu_hidden(hidden)
        self.norm1 = _make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.norm2 = _make_norm(config)
        self.mlp = FeedForward(config.n_embd, hidden, config.mlp, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        *,
        kv_cache: KVCache | None = None,
        layer: int = 0,
        offset: int = 0,
    ) -> torch.Tensor:
        a = self.attn(self.norm1(x), mask, kv_cache=kv_cache, layer=layer, offset=offset)
        x = x + self.dropout(a)  # (B, T, E)
        return x + self.dropout(self.mlp(self.norm2(x)))  # (B, T, E)


# --8<-- [end:block]


class GPT(nn.Module):
    """A decoder-only language model: token ids ``(B, T)`` -> next-token logits ``(B, T, V)``.

    ``logits = lm_head(norm(blocks(wte[idx] (+ wpe[positions]))))``; the logits at
    position ``t`` score the token that follows ``idx[:, : t + 1]``.

    Weights start as in GPT-2: normal with std 0.02, biases 0, and the two projections
    that write into the residual stream (``attn.out_proj`` and ``mlp.w2``) with std
    ``0.02 / sqrt(2 * n_layer)``, so the residual sum does not grow with depth.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = (
            LearnedPositionalEmbedding(config.block_size, config.n_embd)
            if config.positions == "learned"
            else None
        )
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = _make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self._init_weights()
        if config.tie_weights:  # one (V, E) matrix reads tokens in and scores them out
            self.lm_head.weight = self.wte.weight

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.out_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.w2.weight, mean=0.0, std=residual_std)

    def _check_inputs(self, idx, kv_cache) -> int:
        _check_token_ids(idx, self.config.vocab_size)  # (B, T), torch.long or torch.int32
        block_size = self.config.block_size
        B, T = idx.shape
        if kv_cache is None:
            if T > block_size:
                raise ValueError(f"idx has length T={T}, longer than block_size={block_size}")
            return 0
        if not isinstance(kv_cache, KVCache):
            raise TypeError(f"kv_cache must be an attnbook KVCache, got {type(kv_cache).__name__}")
        if kv_cache.n_layer != self.config.n_layer:
            raise ValueError(
                f"kv_cache has {kv_cache.n_layer} layers, this model has "
                f"n_layer={self.config.n_layer}"
            )
        if kv_cache.batch_size is not None and kv_cache.batch_size != B:
            raise ValueError(
                f"kv_cache holds batch size {kv_cache.batch_size}, but idx has "
                f"batch size {B}; start a new KVCache for a new batch"
            )
        past = kv_cache.length
        if past + T > block_size:
            raise ValueError(
                f"kv_cache holds {past} tokens and idx adds {T}: {past + T} "
                f"positions do not fit in block_size={block_size}"
            )
        return past

    # --8<-- [start:gpt_forward]
    def forward(self, idx: torch.Tensor, *, kv_cache: KVCache | None = None) -> torch.Tensor:
        """Next-token logits ``(B, T, V)`` for token ids ``idx`` ``(B, T)``.

        With ``kv_cache``, ``idx`` holds only the new tokens: they take the positions
        after the ``kv_cache.length`` cached ones, attend to those too, and their keys
        and values are appended to the cache.
        """
        offset = self._check_inputs(idx, kv_cache)  # the number of tokens already cached
        T = idx.shape[1]
        S = offset + T  # keys: the cached ones and the new ones
        x = self.wte(idx)  # (B, T, E)
        if self.wpe is not None:  # learned positions: rows offset .. offset + T - 1
            x = self.wpe(x, offset=offset)  # (B, T, E)
        x = self.drop(x)
        if self.config.positions == "alibi":  # bias and causal mask in one float tensor
            mask = alibi_bias(self.config.n_head, T, S, device=idx.device).to(x.dtype)  # (H, T, S)
        elif T == 1:  # one new token may attend to every key: no mask needed
            mask = None
        else:  # bottom-right: new query i sits at position offset + i
            mask = causal_mask(T, S, device=idx.device)  # (T, S)
        for layer, block in enumerate(self.blocks):
            x = block(x, mask, kv_cache=kv_cache, layer=layer, offset=offset)  # (B, T, E)
        return self.lm_head(self.norm(x))  # (B, T, V)

    # --8<-- [end:gpt_forward]
