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
import numbers
import operator

import torch

from attnbook._checks import require_tensor

__all__ = ["KVCache", "generate", "kv_cache_bytes", "sample_next", "top_k_logits", "top_p_logits"]


def _check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as a Python int: any integral number (``int``, ``numpy.int64``), not a bool."""
    if type(value) is not int:  # the common case first: this runs at every decoding step
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
        value = operator.index(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_real(name: str, value: object) -> float:
    """``value`` as a Python float: any real number (``float``, ``numpy.float32``), not a bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def _check_token_ids(idx, vocab_size: int) -> None:
    """Token ids ``(B, T)``, ``T >= 1``, in range; int64 or int32, as ``nn.Embedding`` reads."""
    require_tensor("idx", idx)
    if idx.dtype not in (torch.long, torch.int32):
        raise TypeError(
            f"idx must hold integer token ids (torch.long, or torch.int32), got {idx.dtype}"
        )
    if idx.ndim != 2 or idx.shape[1] == 0:
        raise ValueError(f"idx must have shape (B, T) with T >= 1, got {tuple(idx.shape)}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= vocab_size):
        raise ValueError(
            f"idx holds token ids in [{int(idx.min())}, {int(idx.max())}], "
            f"outside the vocabulary [0, {vocab_size})"
        )


# --8<-- [start:kv_cache]
class KVCache:
    """The keys and values of every layer, ``keys[i]`` and ``values[i]`` ``(B, H_kv, T, D)``.

    Each forward with the cache appends the new tokens' keys and values along the
    token axis (``T``), so ``length`` is the number of tokens already seen, and the
    next tokens take positions ``length, length + 1, ...``. The tensors are exactly
    as long as the tokens they hold: ``nbytes()`` is the memory the cache really uses.
    """

    def __init__(self, n_layer: int):
        n_layer = _check_int("n_layer", n_layer, 1)
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

    def _tokens(self, layer: int) -> int:
        """Tokens cached in ``layer`` (0 while it is empty), after checking ``layer``."""
        layer = _check_int("layer", layer, 0)
        if layer >= self.n_layer:
            raise ValueError(f"layer must be < n_layer={self.n_layer}, got {layer}")
        return 0 if self.keys[layer] is None else self.keys[layer].shape[2]

    def _check_update(self, layer, key, value) -> None:
        """The layers are updated in order, 0 to n_layer - 1, once per forward, each with the
        same new tokens: so between two forwards every layer holds ``length`` tokens."""
        old_length = self._tokens(layer)
        for name, t in (("key", key), ("value", value)):
            require_tensor(name, t)
            if t.ndim != 4:
                raise ValueError(f"{name} must have shape (B, H_kv, T, D), got {tuple(t.shape)}")
        if key.shape != value.shape:
            raise ValueError(
                f"key and value must have one shape, got {tuple(key.shape)} and "
                f"{tuple(value.shape)}"
            )
        if key.dtype != value.dtype:
            raise TypeError(
                f"key and value must share one dtype, got {key.dtype} and {value.dtype}"
            )
        if key.device != value.device:
            raise ValueError(
                f"key and value must be on one device, got {key.device} and {value.device}"
            )
        old = self.keys[layer]
        if old is not None:  # what this layer already holds
            if key.shape[0] != old.shape[0]:
                raise ValueError(
                    f"the cache holds batch size {old.shape[0]}, got key of batch "
                    f"size {key.shape[0]}; start a new KVCache for a new batch"
                )
            if (key.shape[1], key.shape[3]) != (old.shape[1], old.shape[3]):
                raise ValueError(
                    f"layer {layer} caches (B, H_kv, T, D) = {tuple(old.shape)}, "
                    f"got key {tuple(key.shape)}"
                )
            if key.dtype != old.dtype:
                raise TypeError(f"layer {layer} caches {old.dtype}, got key in {key.dtype}")
            if key.device != old.device:
                raise ValueError(f"layer {layer} caches on {old.device}, got key on {key.device}")
        first = self.keys[0]
        if layer > 0 and first is not None and key.shape[0] != first.shape[0]:
            raise ValueError(
                f"layer 0 caches batch size {first.shape[0]}, got key of batch size "
                f"{key.shape[0]} for layer {layer}"
            )
        if layer == 0:  # a new forward: the last one must have reached every layer
            lengths = [0 if k is None else k.shape[2] for k in self.keys]
            if old_length and any(n != old_length for n in lengths):
                raise ValueError(
                    f"the layers hold different numbers of tokens, {lengths}: "
                    f"a forward stopped part-way; start a new KVCache"
                )
        elif old_length + key.shape[2] != self._tokens(0):
            raise ValueError(
                f"layer {layer} would hold {old_length + key.shape[2]} tokens after "
                f"this update, but layer 0 holds {self._tokens(0)}: update the "
                f"layers in order, 0 to {self.n_layer - 1}, with the same new tokens"
            )

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
def kv_cache_bytes(
    n_layer: int,
    n_kv_head: int,
    head_dim: int,
    seq_len: int,
    *,
    batch_size: int = 1,
    dtype: torch.dtype = torch.float16,
) -> int:
    """Memory of a KV cache: ``2 * n_layer * n_kv_head * head_dim * seq_len * batch_size * bytes``.

    The 2 counts keys and values; ``bytes`` is the size of one value of ``dtype``
    (2 for float16). Llama-2-7B (32 layers, 32 heads of 128, float16) needs
    524,288 bytes per token: 2 GiB for a context of 4096 tokens.
    """
    n_layer, n_kv_head, head_dim, seq_len, batch_size = _check_sizes(
        n_layer, n_kv_head, head_dim, seq_len, batch_size, dtype
    )
    return 2 * n_layer * n_kv_head * head_dim * seq_len * batch_size * dtype.itemsize


# --8<-- [end:kv_cache_bytes]


def _check_sizes(n_layer, n_kv_head, head_dim, seq_len, batch_size, dtype) -> tuple[int, ...]:
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__}")
    return tuple(
        _check_int(name, value, minimum)
        for name, value, minimum in (
            ("n_layer", n_layer, 1),
            ("n_kv_head", n_kv_head, 1),
            ("head_dim", head_dim, 1),
            ("seq_len", seq_len, 0),
            ("batch_size", batch_size, 1),
        )
    )


def _check_logits(logits, *, layout: str = "(..., V)", generator=None) -> None:
    """Floating logits of shape ``layout``, each row finite or ``-inf`` with one finite entry.

    ``generator``, when given, must be a ``torch.Generator`` on the logits' device.
    """
    require_tensor("logits", logits)
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    ndim_ok = logits.ndim == 2 if layout == "(B, V)" else logits.ndim >= 1
    if not ndim_ok or logits.shape[-1] == 0:
        raise ValueError(f"logits must have shape {layout} with V >= 1, got {tuple(logits.shape)}")
    _check_generator(generator, logits.device)
    if torch.isnan(logits).any() or torch.isposinf(logits).any():
        raise ValueError("logits must be finite or -inf, got NaN or +inf")
    if torch.isneginf(logits).all(dim=-1).any():
        raise ValueError(
            "every row of logits needs at least one finite entry, got a row of -inf only"
        )


def _check_generator(generator, device: torch.device) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    where = generator.device  # an index of None (as in "cuda") matches any index
    same_index = None in (where.index, device.index) or where.index == device.index
    if where.type != device.type or not same_index:
        raise ValueError(
            f"generator must be on the device of the logits, {device}, got a generator on {where}"
        )


def _check_probability(name: str, value: object) -> float:
    value = _check_real(name, value)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value}")
    return value


def _check_sampling(temperature, top_k, top_p) -> tuple[float, int | None, float | None]:
    """The sampling settings as Python numbers (numpy scalars accepted), after checking them."""
    temperature = _check_real("temperature", temperature)
    if not (temperature >= 0 and math.isfinite(temperature)):  # also refuses NaN
        raise ValueError(
            f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}"
        )
    if top_k is not None:
        top_k = _check_int("top_k", top_k, 1)
    if top_p is not None:
        top_p = _check_probability("top_p", top_p)
    return temperature, top_k, top_p


# --8<-- [start:top_k]
def top_k_logits(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row and set the others to ``-inf``.

    ``(..., V)`` in, the same shape out. Exactly ``k`` survive per row, even with ties.
    """
    _check_logits(logits)  # finite or -inf: a NaN would sort to the top
    k = min(_check_int("k", k, 1), logits.shape[-1])
    keep = torch.zeros_like(logits, dtype=torch.bool)
    keep.scatter_(-1, logits.topk(k, dim=-1).indices, True)  # (..., V): k True per row
    return logits.masked_fill(~keep, float("-inf"))


# --8<-- [end:top_k]


# --8<-- [start:top_p]
def top_p_logits(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the fewest most likely tokens whose probabilities sum to ``>= p``.

    Sorted by probability, a token is kept when the tokens before it sum to less than
    ``p``, so the most likely token is always kept. The others become ``-inf``; with
    ``p = 1`` none does. ``(..., V)`` -> same.
    """
    _check_logits(logits)
    if _check_probability("p", p) >= 1.0:  # keep all: a running sum can round to 1 early
        return logits.clone()
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (..., V)
    probs = torch.softmax(sorted_logits.double(), dim=-1)  # (..., V), summed in float64
    before = probs.cumsum(dim=-1) - probs  # (..., V): the mass of the more likely tokens
    keep_sorted = before < p  # the first entry has before = 0 < p: always kept
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)  # back to vocab order
    return logits.masked_fill(~keep, float("-inf"))


# --8<-- [end:top_p]


# --8<-- [start:sample_next]
def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token id per row of ``logits`` ``(B, V)``: ``softmax(logits / temperature)``.

    ``temperature=0`` is greedy (the argmax; ``top_k``, ``top_p`` and ``generator``
    are then unused). Otherwise the logits are divided by ``temperature``, filtered
    by ``top_k`` then ``top_p``, and one token is drawn with ``torch.multinomial``.
    Any ``temperature > 0`` samples, however small or large: the division is done in
    float64, so a tiny one gives ``-inf`` (probability 0) to all but the top logits.

    Returns:
        A ``(B,)`` long tensor.
    """
    temperature, top_k, top_p = _check_sampling(temperature, top_k, top_p)
    _check_logits(logits, layout="(B, V)", generator=generator)
    if temperature == 0:
        return logits.argmax(dim=-1)  # (B,)
    # Shift each row so its largest logit is 0 before dividing (float64 logits in float64,
    # others in float32): the quotient is then <= 0 or -inf, never inf or NaN, and exp()
    # of it stays in [0, 1]. Dividing in float64 keeps a tiny temperature from rounding to 0.
    logits = logits.double() if logits.dtype == torch.float64 else logits.float()
    logits = logits - logits.amax(dim=-1, keepdim=True)  # (B, V), max 0
    logits = (logits.double() / temperature).float()  # (B, V), max 0
    if top_k is not None:
        logits = top_k_logits(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_logits(logits, top_p)
    probs = torch.softmax(logits, dim=-1)  # (B, V): the top token has logit 0, so no NaN
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


# --8<-- [end:sample_next]


def _check_generate(model, idx, max_new_tokens, use_cache, generator) -> int:
    """Check the arguments of ``generate``; return ``max_new_tokens`` as an int."""
    config = getattr(model, "config", None)
    if not isinstance(model, torch.nn.Module) or config is None:
        raise TypeError(
            f"model must be a GPT (an nn.Module with a config), got {type(model).__name__}"
        )
    _check_token_ids(idx, config.vocab_size)
    if idx.shape[0] == 0:
        raise ValueError(
            f"idx must hold at least one prompt (B >= 1), got shape {tuple(idx.shape)}"
        )
    max_new_tokens = _check_int("max_new_tokens", max_new_tokens, 0)
    if not isinstance(use_cache, bool):
        raise TypeError(f"use_cache must be a bool, got {type(use_cache).__name__} {use_cache!r}")
    _check_generator(generator, idx.device)
    T, block_size = idx.shape[1], config.block_size
    if use_cache and T > block_size:
        raise ValueError(
            f"idx has length T={T}, longer than block_size={block_size}; pass "
            f"use_cache=False to read only its last {block_size} tokens"
        )
    if use_cache and T + max_new_tokens - 1 > block_size:
        raise ValueError(
            f"with use_cache=True the model reads the prompt and every new token but the last: "
            f"T + max_new_tokens - 1 = {T} + {max_new_tokens} - 1 = {T + max_new_tokens - 1} "
            f"positions, more than block_size={block_size}. Generate fewer tokens, or pass "
            f"use_cache=False, which crops the context to the last {block_size} tokens"
        )
    return max_new_tokens


# --8<-- [start:generate]
@torch.no_grad()
def generate(
    model: torch.nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Extend the prompts ``idx`` ``(B, T)`` by ``max_new_tokens`` sampled tokens each.

    ``x_{t+1} ~ sample_next(model(x_{<=t})[:, -1])``, one token at a time (see
    :func:`sample_next` for ``temperature``, ``top_k``, ``top_p`` and ``generator``).

    With ``use_cache`` (the default) the prompt is read once and each later step
    feeds only the newest token, with a :class:`KVCache`; positions must then fit:
    ``T + max_new_tokens - 1 <= block_size``, else ``ValueError``. Without the cache
    every step re-reads the sequence, cropped to its last ``block_size`` tokens, so
    the prompt may be longer than ``block_size`` and generation can run on past the
    context window (forgetting the start).

    The model's mode is left alone: call ``model.eval()`` first, or dropout applies.

    Returns:
        A new ``(B, T + max_new_tokens)`` long tensor: the prompt, then the new tokens.
    """
    _check_sampling(temperature, top_k, top_p)
    max_new_tokens = _check_generate(model, idx, max_new_tokens, use_cache, generator)
    block_size = model.config.block_size
    idx = idx.to(torch.long, copy=True)  # never the caller's tensor, even for 0 new tokens
    kv_cache = KVCache(model.config.n_layer) if use_cache else None
    if max_new_tokens and use_cache:
        logits = model(idx, kv_cache=kv_cache)[:, -1]  # (B, V): read the whole prompt once
    for step in range(max_new_tokens):
        if not use_cache:
            logits = model(idx[:, -block_size:])[:, -1]  # (B, V): re-read the cropped context
        next_id = sample_next(
            logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
        )  # (B,)
        idx = torch.cat((idx, next_id.unsqueeze(1)), dim=1)  # (B, T + step + 1)
        if use_cache and step < max_new_tokens - 1:
            logits = model(idx[:, -1:], kv_cache=kv_cache)[:, -1]  # (B, V): the new token only
    return idx


# --8<-- [end:generate]
