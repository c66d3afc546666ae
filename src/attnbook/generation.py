"""Text generation: the KV cache, sampling one token, and the decoding loop.

- ``KVCache``: each layer's keys and values of the tokens seen so far, so a decoding
  step computes attention for one new token instead of re-reading the whole prefix;
- ``kv_cache_bytes``: what such a cache costs in memory;
- ``top_k_logits``, ``top_p_logits``, ``sample_next``: temperature, top-k and nucleus
  (top-p) sampling of the next token from the logits;
- ``generate``: prompt in, prompt plus new tokens out, with or without the cache.

The model is a :class:`attnbook.gpt.GPT` or anything with the same ``config`` fields
(``block_size``, ``vocab_size``, ``n_layer``) and ``forward(idx, *, kv_cache=None)``.
"""

from __future__ import annotations

import math

import torch

from attnbook._checks import require_tensor

__all__ = ["KVCache", "generate", "kv_cache_bytes", "sample_next", "top_k_logits", "top_p_logits"]


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


# --8<-- [start:kv_cache]
class KVCache:
    """The keys and values of every layer, ``keys[i]`` and ``values[i]`` ``(B, H_kv, T, D)``.

    Each forward with the cache appends the new tokens' keys and values along the
    token axis (``T``), so ``length`` is the number of tokens already seen, and the
    next tokens take positions ``length, length + 1, ...``. The tensors are exactly
    as long as the tokens they hold: ``nbytes()`` is the memory the cache really uses.
    """

    def __init__(self, n_layer: int):
        _check_int("n_layer", n_layer, 1)
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer

    @property
    def n_layer(self) -> int:
        return len(self.keys)

    @property
    def length(self) -> int:
        """Tokens cached (every layer holds as many between two forwards)."""
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    @property
    def batch_size(self) -> int | None:
        """B of the cached tensors, or None while the cache is empty."""
        return None if self.keys[0] is None else self.keys[0].shape[0]

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor):
        """Append ``key``, ``value`` ``(B, H_kv, T_new, D)`` to ``layer``; return all of it.

        Returns:
            ``(key, value)``, each ``(B, H_kv, T, D)``: the cached tokens, then the new ones.
        """
        self._check_update(layer, key, value)
        if self.keys[layer] is not None:
            key = torch.cat((self.keys[layer], key), dim=2)  # (B, H_kv, T_old + T_new, D)
            value = torch.cat((self.values[layer], value), dim=2)  # (B, H_kv, T_old + T_new, D)
        self.keys[layer], self.values[layer] = key, value
        return key, value
    # --8<-- [end:kv_cache]

    def _check_update(self, layer, key, value) -> None:
        _check_int("layer", layer, 0)
        if layer >= self.n_layer:
            raise ValueError(f"layer must be < n_layer={self.n_layer}, got {layer}")
        for name, t in (("key", key), ("value", value)):
            require_tensor(name, t)
            if t.ndim != 4:
                raise ValueError(f"{name} must have shape (B, H_kv, T, D), got {tuple(t.shape)}")
        if key.shape != value.shape:
            raise ValueError(f"key and value must have one shape, got {tuple(key.shape)} and "
                             f"{tuple(value.shape)}")
        old = self.keys[layer]
        if old is None:
            return
        if key.shape[0] != old.shape[0]:
            raise ValueError(f"the cache holds batch size {old.shape[0]}, got key of batch size "
                             f"{key.shape[0]}; start a new KVCache for a new batch")
        if (key.shape[1], key.shape[3]) != (old.shape[1], old.shape[3]) or key.dtype != old.dtype:
            raise ValueError(f"layer {layer} caches (B, H_kv, T, D) = {tuple(old.shape)} in "
                             f"{old.dtype}, got key {tuple(key.shape)} in {key.dtype}")

    def nbytes(self) -> int:
        """Bytes held by the cached tensors, ``sum(t.element_size() * t.numel())``."""
        return sum(t.element_size() * t.numel() for t in self.keys + self.values if t is not None)

    def copy(self) -> KVCache:
        """A cache that starts from the same tensors; appending to one leaves the other as it is."""
        new = KVCache(self.n_layer)
        new.keys, new.values = list(self.keys), list(self.values)
        return new

    def __repr__(self) -> str:
        return f"KVCache(n_layer={self.n_layer}, length={self.length}, nbytes={self.nbytes()})"


# --8<-- [start:kv_cache_bytes]
def kv_cache_bytes(n_layer: int, n_kv_head: int, head_dim: int, seq_len: int, *,
                   batch_size: int = 1, dtype: torch.dtype = torch.float16) -> int:
    """Memory of a KV cache: ``2 * n_layer * n_kv_head * head_dim * seq_len * batch_size * bytes``.

    The 2 counts keys and values; ``bytes`` is the size of one value of ``dtype``
    (2 for float16). Llama-2-7B (32 layers, 32 heads of 128, float16) needs
    524,288 bytes per token: 2 GiB for a context of 4096 tokens.
    """
    for name, value, minimum in (("n_layer", n_layer, 1), ("n_kv_head", n_kv_head, 1),
                                 ("head_dim", head_dim, 1), ("seq_len", seq_len, 0),
                                 ("batch_size", batch_size, 1)):
        _check_int(name, value, minimum)
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__}")
    return 2 * n_layer * n_kv_head * head_dim * seq_len * batch_size * dtype.itemsize
# --8<-- [end:kv_cache_bytes]


def _check_logits(logits) -> None:
    require_tensor("logits", logits)
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    if logits.ndim == 0 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have shape (..., V) with V >= 1, got {tuple(logits.shape)}")


def _check_probability(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value}")


def _check_sampling(temperature, top_k, top_p) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    if not (temperature >= 0 and math.isfinite(temperature)):  # also refuses NaN
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got "
                         f"{temperature}")
    if top_k is not None:
        _check_int("top_k", top_k, 1)
    if top_p is not None:
        _check_probability("top_p", top_p)


# --8<-- [start:top_k]
def top_k_logits(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row and set the others to ``-inf``.

    ``(..., V)`` in, the same shape out. Exactly ``k`` survive per row, even with ties.
    """
    _check_logits(logits)
    _check_int("k", k, 1)
    k = min(k, logits.shape[-1])
    keep = torch.zeros_like(logits, dtype=torch.bool)
    keep.scatter_(-1, logits.topk(k, dim=-1).indices, True)  # (..., V): k True per row
    return logits.masked_fill(~keep, float("-inf"))
# --8<-- [end:top_k]


# --8<-- [start:top_p]
def top_p_logits(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the fewest most likely tokens whose probabilities sum to ``>= p``.

    Sorted by probability, a token is kept when the tokens before it sum to less than
    ``p``, so the most likely token is always kept. The others become ``-inf``.
    ``(..., V)`` -> same.
    """
    _check_logits(logits)
    _check_probability("p", p)
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (..., V)
    probs = torch.softmax(sorted_logits.float(), dim=-1)  # (..., V)
    before = probs.cumsum(dim=-1) - probs  # (..., V): the mass of the more likely tokens
    keep_sorted = before < p  # the first entry has before = 0 < p: always kept
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)  # back to vocab order
    return logits.masked_fill(~keep, float("-inf"))
# --8<-- [end:top_p]


# --8<-- [start:sample_next]
def sample_next(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token id per row of ``logits`` ``(B, V)``: ``softmax(logits / temperature)``.

    ``temperature=0`` is greedy (the argmax; ``top_k``, ``top_p`` and ``generator``
    are then unused). Otherwise the logits are divided by ``temperature``, filtered
    by ``top_k`` then ``top_p``, and one token is drawn with ``torch.multinomial``.

    Returns:
        A ``(B,)`` long tensor.
    """
    _check_logits(logits)
    _check_sampling(temperature, top_k, top_p)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (B, V), got {tuple(logits.shape)}")
    if torch.isnan(logits).any() or torch.isposinf(logits).any():
        raise ValueError("logits must be finite or -inf, got NaN or +inf")
    if torch.isneginf(logits).all(dim=-1).any():
        raise ValueError("every row of logits needs at least one finite entry, got a row "
                         "of -inf only")
    if temperature == 0:
        return logits.argmax(dim=-1)  # (B,)
    # Shift each row so its largest logit is 0 before dividing: with a small temperature
    # the quotient then cannot overflow to inf, and exp() of it stays in [0, 1].
    logits = logits.float()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature  # (B, V), max 0
    if top_k is not None:
        logits = top_k_logits(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_logits(logits, top_p)
    probs = torch.softmax(logits, dim=-1)  # (B, V): the top token has logit 0, so no NaN
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
# --8<-- [end:sample_next]


def _check_generate(model, idx, max_new_tokens, use_cache):
    config = getattr(model, "config", None)
    if not isinstance(model, torch.nn.Module) or config is None:
        raise TypeError(f"model must be a GPT (an nn.Module with a config), got "
                        f"{type(model).__name__}")
    require_tensor("idx", idx)
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise TypeError(f"idx must hold integer token ids (torch.long), got {idx.dtype}")
    if idx.ndim != 2 or idx.shape[1] == 0:
        raise ValueError(f"idx must have shape (B, T) with T >= 1, got {tuple(idx.shape)}")
    if int(idx.min()) < 0 or int(idx.max()) >= config.vocab_size:
        raise ValueError(f"idx holds token ids in [{int(idx.min())}, {int(idx.max())}], "
                         f"outside the vocabulary [0, {config.vocab_size})")
    _check_int("max_new_tokens", max_new_tokens, 0)
    T, block_size = idx.shape[1], config.block_size
    if T > block_size:
        raise ValueError(f"idx has length T={T}, longer than block_size={block_size}")
    if use_cache and T + max_new_tokens - 1 > block_size:
        raise ValueError(
            f"with use_cache=True the model reads the prompt and every new token but the last: "
            f"T + max_new_tokens - 1 = {T} + {max_new_tokens} - 1 = {T + max_new_tokens - 1} "
            f"positions, more than block_size={block_size}. Generate fewer tokens, or pass "
            f"use_cache=False, which crops the context to the last {block_size} tokens")


# --8<-- [start:generate]
@torch.no_grad()
def generate(model: torch.nn.Module, idx: torch.Tensor, max_new_tokens: int, *,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             use_cache: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Extend the prompts ``idx`` ``(B, T)`` by ``max_new_tokens`` sampled tokens each.

    ``x_{t+1} ~ sample_next(model(x_{<=t})[:, -1])``, one token at a time (see
    :func:`sample_next` for ``temperature``, ``top_k``, ``top_p`` and ``generator``).

    With ``use_cache`` (the default) the prompt is read once and each later step
    feeds only the newest token, with a :class:`KVCache`; positions must then fit:
    ``T + max_new_tokens - 1 <= block_size``, else ``ValueError``. Without the cache
    every step re-reads the sequence, cropped to its last ``block_size`` tokens, so
    it can run on past the context window (forgetting the start).

    The model's mode is left alone: call ``model.eval()`` first, or dropout applies.

    Returns:
        A ``(B, T + max_new_tokens)`` long tensor: the prompt, then the new tokens.
    """
    _check_sampling(temperature, top_k, top_p)
    _check_generate(model, idx, max_new_tokens, use_cache)
    block_size = model.config.block_size
    idx = idx.long()
    kv_cache = KVCache(model.config.n_layer) if use_cache else None
    if max_new_tokens and use_cache:
        logits = model(idx, kv_cache=kv_cache)[:, -1]  # (B, V): read the whole prompt once
    for step in range(max_new_tokens):
        if not use_cache:
            logits = model(idx[:, -block_size:])[:, -1]  # (B, V): re-read the cropped context
        next_id = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                              generator=generator)  # (B,)
        idx = torch.cat((idx, next_id.unsqueeze(1)), dim=1)  # (B, T + step + 1)
        if use_cache and step < max_new_tokens - 1:
            logits = model(idx[:, -1:], kv_cache=kv_cache)[:, -1]  # (B, V): the new token only
    return idx
# --8<-- [end:generate]
