"""Efficient attention: the online softmax, FlashAttention's tiled algorithm, linear attention.

Naive attention materialises the ``(L, S)`` score matrix, so its memory grows with the
square of the sequence length. The functions here never hold more than one block of it:
``flash_attention`` gives the same numbers as ``scaled_dot_product_attention`` with
``O(n * block)`` extra memory, in the forward *and* the backward pass, and
``linear_attention`` changes the formula so that the cost is linear in ``n``.
``peak_memory_bytes`` measures the difference, deterministically.

Shapes follow the book's convention: ``(B, H, L, E)`` inside attention.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from attnbook._checks import require_floating, require_tensor
from attnbook.attention import _check_mask, _check_qkv

__all__ = [
    "BLOCK_KV",
    "BLOCK_Q",
    "flash_attention",
    "linear_attention",
    "online_softmax",
    "peak_memory_bytes",
]

# Default tiles, tuned on a 2-core CPU (B = 1, H = 8, n = 4096, E = 64, float32): one tile of
# scores for all 8 heads is 8 MiB, small enough to stay in cache between the ops that read
# it (tiles of 16 MiB and more ran 1.5-2x slower), large enough that the matrix products
# run near full speed and the Python loop costs little.
BLOCK_Q = 512
BLOCK_KV = 512

_HALF = (torch.float16, torch.bfloat16)
_NEG_INF = float("-inf")


def _require_block(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1 (not a bool), else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value}")
    return value


def _finite(m: torch.Tensor) -> torch.Tensor:
    """The running max with ``-inf`` (no key seen yet) replaced by 0, safe to subtract."""
    return m.masked_fill(torch.isneginf(m), 0.0)


# --8<-- [start:online_softmax]
def online_softmax(x: torch.Tensor, dim: int = -1, *, block_size: int = 256) -> torch.Tensor:
    """Softmax along ``dim`` in one pass over blocks, keeping a running max and sum.

    For each block ``b``: ``m' = max(m, max(x_b))``, ``l = l * exp(m - m') + sum(exp(x_b - m'))``;
    then ``softmax(x) = exp(x - m) / l`` (Milakov & Gimelshein, 2018).

    Args:
        x: any shape, floating point.
        dim: the axis to normalise.
        block_size: how many entries of ``dim`` each step reads.

    Returns:
        A tensor like ``x``, equal to ``torch.softmax(x, dim)``, except that a row whose
        entries are all ``-inf`` (fully masked) gives zeros, not NaN, as in
        attnbook's ``scaled_dot_product_attention``.
    """
    require_tensor("x", x)
    require_floating("x", x)
    _require_block("block_size", block_size)
    n_dims = max(x.ndim, 1)  # a 0-D x is one row of one entry
    if isinstance(dim, bool) or not isinstance(dim, int) or not -n_dims <= dim < n_dims:
        raise ValueError(
            f"dim must be an int in [{-n_dims}, {n_dims}) for a {x.ndim}-D x, got {dim!r}"
        )
    rows = x.reshape(1) if x.ndim == 0 else x
    work = rows.movedim(dim, -1)  # (..., n): the softmax axis last
    if x.dtype in _HALF:
        work = work.float()
    row_max = work.new_full((*work.shape[:-1], 1), _NEG_INF)  # (..., 1): m, the running max
    row_sum = work.new_zeros((*work.shape[:-1], 1))  # (..., 1): l, the sum of exp(x - m)
    for start in range(0, work.shape[-1], block_size):
        block = work[..., start : start + block_size]  # (..., b)
        new_max = torch.maximum(row_max, block.amax(dim=-1, keepdim=True))
        shift = _finite(new_max)  # while the max is -inf, exp(-inf - 0) = 0 instead of NaN
        row_sum = row_sum * torch.exp(row_max - shift) + torch.exp(block - shift).sum(
            dim=-1, keepdim=True
        )
        row_max = new_max
    out = torch.exp(work - _finite(row_max)) / row_sum.masked_fill(row_sum == 0, 1.0)  # 0 / 1
    return out.movedim(-1, dim).reshape(x.shape).to(x.dtype)


# --8<-- [end:online_softmax]


def _mask_slice(mask, i0, i1, j0, j1):
    """Rows ``i0:i1`` and columns ``j0:j1`` of a mask, but all of a dimension of size 1."""
    rows = slice(None) if mask.shape[-2] == 1 else slice(i0, i1)
    cols = slice(None) if mask.shape[-1] == 1 else slice(j0, j1)
    return mask[..., rows, cols]  # (..., bq or 1, bk or 1)


def _mask_tile(mask, batch, i0, i1, j0, j1):
    """The ``(N, bq, bk)`` (or broadcastable) slice of the mask for one tile of scores.

    A bool mask comes back inverted (``True`` = hidden), ready for ``masked_fill_``; a bool
    tile that hides everything comes back as ``None``, so the tile can be skipped.
    """
    tile = _mask_slice(mask, i0, i1, j0, j1)  # (..., bq, bk), some dimensions possibly 1
    if tile.dtype == torch.bool:
        if not tile.any():
            return None
        tile = ~tile
    if tile.shape[:-2].numel() == 1:
        return tile.reshape(1, *tile.shape[-2:])  # (1, bq, bk): broadcasts over N
    return tile.expand(*batch, *tile.shape[-2:]).reshape(-1, *tile.shape[-2:])  # (N, bq, bk)


def _kv_blocks(i0, i1, S, block_kv, is_causal):
    """``(j0, j1)`` of each key block that query rows ``i0 .. i1 - 1`` may see."""
    stop = min(S, i1) if is_causal else S  # top-left causal: row i sees keys 0 .. i
    return [(j0, min(j0 + block_kv, stop)) for j0 in range(0, stop, block_kv)]


def _scores(q_i, k, mask, is_causal, batch, i0, i1, j0, j1):
    """One tile ``q_i k_j^T + mask`` (``q_i`` already scaled), or ``None`` if all hidden."""
    tile = None if mask is None else _mask_tile(mask, batch, i0, i1, j0, j1)
    if mask is not None and tile is None:
        return None
    s = torch.bmm(q_i, k[:, j0:j1].transpose(1, 2))  # (N, bq, bk)
    if is_causal and j1 - 1 > i0:  # the tile crosses the diagonal
        rows = torch.arange(i0, i1, device=s.device).unsqueeze(-1)  # (bq, 1)
        s.masked_fill_(torch.arange(j0, j1, device=s.device) > rows, _NEG_INF)  # key after query
    elif tile is not None and tile.dtype == torch.bool:
        s.masked_fill_(tile, _NEG_INF)
    elif tile is not None:
        s.add_(tile.to(s.dtype))
    return s


# --8<-- [start:flash_forward]
def _flash_forward(q, k, v, mask, is_causal, scale, block_q, block_kv, batch):
    """Tiled attention on ``(N, L, E)`` inputs; returns the output and each row's logsumexp."""
    N, L, _ = q.shape
    S, Ev = v.shape[-2:]
    out = q.new_empty(N, L, Ev)
    lse = q.new_empty(N, L)  # log sum_j exp(s_ij): all the backward pass needs per row
    for i0 in range(0, L, block_q):
        i1 = min(i0 + block_q, L)
        q_i = q[:, i0:i1] * scale  # (N, bq, E)
        row_max = q.new_full((N, i1 - i0, 1), _NEG_INF)  # (N, bq, 1): m, the running max
        row_sum = q.new_zeros((N, i1 - i0, 1))  # (N, bq, 1): l, the sum of exp(s - m)
        acc = q.new_zeros((N, i1 - i0, Ev))  # (N, bq, Ev): the sum of exp(s - m) v
        for j0, j1 in _kv_blocks(i0, i1, S, block_kv, is_causal):
            s = _scores(q_i, k, mask, is_causal, batch, i0, i1, j0, j1)  # (N, bq, bk)
            if s is None:  # every pair in the tile is masked out
                continue
            new_max = torch.maximum(row_max, s.amax(dim=-1, keepdim=True))
            shift = _finite(new_max)
            p = s.sub_(shift).exp_()  # (N, bq, bk), in place of s
            alpha = torch.exp(row_max - shift)  # rescales what was summed under the old max
            row_sum.mul_(alpha).add_(p.sum(dim=-1, keepdim=True))
            torch.baddbmm(acc.mul_(alpha), p, v[:, j0:j1], out=acc)  # acc = alpha acc + p v_j
            row_max = new_max
        out[:, i0:i1] = acc / row_sum.masked_fill(row_sum == 0, 1.0)  # no key to see: 0
        lse[:, i0:i1] = (row_max + row_sum.log()).squeeze(-1)  # -inf for such a row
    return out, lse


# --8<-- [end:flash_forward]


# --8<-- [start:flash_backward]
def _flash_backward(
    grad_out, q, k, v, mask, is_causal, scale, block_q, block_kv, batch, out, lse, mask_grad
):
    """Gradients of the tiled attention, recomputing each tile's weights from ``lse``.

    ``P = exp(S - lse)``; ``dV = P^T dO``; ``dS = P * (dO V^T - rowsum(dO * O))``;
    ``dQ = dS K * scale``; ``dK = dS^T Q * scale``; ``dMask = dS``.
    """
    L, S = q.shape[1], k.shape[1]
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    dmask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device) if mask_grad else None
    delta = (grad_out * out).sum(dim=-1, keepdim=True)  # (N, L, 1): rowsum(dO * O)
    lse = lse.masked_fill(torch.isneginf(lse), float("inf")).unsqueeze(-1)  # (N, L, 1); P = 0
    for i0 in range(0, L, block_q):
        i1 = min(i0 + block_q, L)
        q_i, do_i = q[:, i0:i1] * scale, grad_out[:, i0:i1]  # (N, bq, E), (N, bq, Ev)
        dq_i = torch.zeros_like(q_i)  # (N, bq, E)
        for j0, j1 in _kv_blocks(i0, i1, S, block_kv, is_causal):
            s = _scores(q_i, k, mask, is_causal, batch, i0, i1, j0, j1)  # (N, bq, bk)
            if s is None:
                continue
            p = s.sub_(lse[:, i0:i1]).exp_()  # (N, bq, bk): the softmax weights again
            dv_j, dk_j = dv[:, j0:j1], dk[:, j0:j1]  # (N, bk, Ev), (N, bk, E): views
            torch.baddbmm(dv_j, p.transpose(1, 2), do_i, out=dv_j)  # dV_j += P^T dO_i
            ds = torch.bmm(do_i, v[:, j0:j1].transpose(1, 2))  # (N, bq, bk): dP
            ds.sub_(delta[:, i0:i1]).mul_(p)  # dS = P * (dP - delta)
            torch.baddbmm(dq_i, ds, k[:, j0:j1], out=dq_i)  # dQ_i += dS K_j
            torch.baddbmm(dk_j, ds.transpose(1, 2), q_i, out=dk_j)  # dK_j += dS^T Q_i (scaled)
            if dmask is not None:
                target = _mask_slice(dmask, i0, i1, j0, j1)  # (..., bq, bk), a view
                target += ds.view(*batch, *ds.shape[1:]).sum_to_size(target.shape)
        dq[:, i0:i1] = dq_i * scale
    return dq, dk, dv, dmask


# --8<-- [end:flash_backward]


# --8<-- [start:flash_autograd]
class _FlashAttention(torch.autograd.Function):
    """Forward: ``_flash_forward``. Backward: ``_flash_backward``, from the saved output and
    logsumexp, so training memory stays ``O(n * block)`` too (no ``(L, S)`` tensor is saved)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, is_causal, scale, block_q, block_kv, batch):
        out, lse = _flash_forward(q, k, v, mask, is_causal, scale, block_q, block_kv, batch)
        ctx.save_for_backward(q, k, v, mask, out, lse)
        ctx.options = (is_causal, scale, block_q, block_kv, batch)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, mask, out, lse = ctx.saved_tensors
        mask_grad = mask is not None and ctx.needs_input_grad[3]
        dq, dk, dv, dmask = _flash_backward(
            grad_out, q, k, v, mask, *ctx.options, out, lse, mask_grad
        )
        if dmask is not None:
            dmask = dmask.to(mask.dtype)
        return dq, dk, dv, dmask, None, None, None, None, None


# --8<-- [end:flash_autograd]


# --8<-- [start:flash_attention]
def flash_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    *,
    block_q: int = BLOCK_Q,
    block_kv: int = BLOCK_KV,
) -> torch.Tensor:
    """FlashAttention (Dao et al., 2022): ``softmax(q k^T * scale + mask) v``, one tile at a time.

    The queries are cut into blocks of ``block_q`` rows and the keys into blocks of
    ``block_kv``; for each query block a running max ``m``, sum ``l`` and output
    accumulator are rescaled block by block (the online softmax), so no ``(L, S)``
    tensor ever exists: the extra memory is the output and ``(B * H, block_q, block_kv)``
    tiles of scores, ``O(n * block)``. There is no ``dropout_p`` or ``enable_gqa``: for
    grouped-query attention, repeat the key and value heads first.

    Args:
        query: ``(..., L, E)``, usually ``(B, H, L, E)``.
        key: ``(..., S, E)``; batch dimensions broadcast.
        value: ``(..., S, Ev)``.
        attn_mask: bool (``True`` = may attend) or float (added to the scores),
            broadcastable to ``(..., L, S)``. Tiles a bool mask hides entirely are
            skipped, so ``attn_mask=causal_mask(L, S)`` (bottom-right) skips work too.
        is_causal: top-left causal mask, like torch and attnbook's
            ``scaled_dot_product_attention``; tiles above the diagonal are skipped.
        scale: defaults to ``1 / sqrt(E)``.
        block_q, block_kv: tile sizes, ints >= 1; any size works, the result is the same.

    Returns:
        ``(..., L, Ev)``, equal to attnbook's ``scaled_dot_product_attention`` on the same
        inputs (which it checks the same way). A query whose keys are all masked gets 0.
        Half precision is computed in float32. The backward pass is the FlashAttention
        one: it recomputes each tile from the output and the per-row logsumexp instead of
        storing the weights, and gives gradients for query, key, value and a float mask.
    """
    _check_qkv(query, key, value, enable_gqa=False)
    _require_block("block_q", block_q)
    _require_block("block_kv", block_kv)
    L, S, E, Ev = query.shape[-2], key.shape[-2], query.shape[-1], value.shape[-1]
    scores_batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2])
    _check_mask(attn_mask, is_causal, query.dtype, (*scores_batch, L, S))
    batch = torch.broadcast_shapes(scores_batch, value.shape[:-2])
    scale = 1.0 / math.sqrt(E) if scale is None else scale
    work = torch.float32 if query.dtype in _HALF else query.dtype  # half: accumulate in float32
    N = math.prod(batch)  # B * H: the tiles of all heads are multiplied in one batched call
    q = query.to(work).expand(*batch, L, E).reshape(N, L, E)  # (N, L, E)
    k = key.to(work).expand(*batch, S, E).reshape(N, S, E)  # (N, S, E)
    v = value.to(work).expand(*batch, S, Ev).reshape(N, S, Ev)  # (N, S, Ev)
    mask = attn_mask
    if mask is not None:
        mask = mask.reshape((1,) * (len(batch) + 2 - mask.ndim) + tuple(mask.shape))  # (..., L, S)
    out = _FlashAttention.apply(q, k, v, mask, bool(is_causal), scale, block_q, block_kv, batch)
    return out.reshape(*batch, L, Ev).to(query.dtype)  # (B, H, L, Ev)


# --8<-- [end:flash_attention]


_FEATURE_MAPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "elu+1": lambda x: F.elu(x) + 1.0,  # positive, and close to linear for x > 0
}


# --8<-- [start:linear_attention]
def linear_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    causal: bool = False,
    feature_map: str | Callable[[torch.Tensor], torch.Tensor] = "elu+1",
) -> torch.Tensor:
    """Linear attention (Katharopoulos et al., 2020), ``phi(q) phi(K)^T V / phi(q) phi(K)^T 1``.

    Replacing ``exp(q . k)`` by ``phi(q) . phi(k)`` lets the sum over keys be taken once,
    ``phi(K)^T V`` of shape ``(E, Ev)``, so the cost is ``O(n * E * Ev)``, linear in ``n``.
    With ``causal=True`` query ``i`` sums keys ``j <= i`` through cumulative sums (memory
    ``O(n * E * Ev)``); it is then a recurrent network with state ``(E, Ev)``.

    Args:
        query: ``(..., L, E)``.
        key: ``(..., S, E)``; batch dimensions broadcast.
        value: ``(..., S, Ev)``.
        causal: each query sees keys up to its own position; needs ``L == S``.
        feature_map: ``"elu+1"`` (``phi(x) = elu(x) + 1``), or a callable that maps
            ``(..., n, E)`` to positive features ``(..., n, F)``.

    Returns:
        ``(..., L, Ev)``. A row whose normaliser is 0 (no keys) gives 0.
    """
    _check_qkv(query, key, value, enable_gqa=False)
    if isinstance(feature_map, str):
        if feature_map not in _FEATURE_MAPS:
            raise ValueError(
                f"feature_map must be one of {sorted(_FEATURE_MAPS)} or a callable, "
                f"got {feature_map!r}"
            )
        phi = _FEATURE_MAPS[feature_map]
    elif callable(feature_map):
        phi = feature_map
    else:
        raise TypeError(
            f"feature_map must be a str or a callable, got {type(feature_map).__name__}"
        )
    if causal and query.shape[-2] != key.shape[-2]:
        raise ValueError(
            f"causal linear attention needs as many queries as keys (L == S), got "
            f"query {tuple(query.shape)} and key {tuple(key.shape)}"
        )
    work = torch.float32 if query.dtype in _HALF else query.dtype
    q, k, v = phi(query.to(work)), phi(key.to(work)), value.to(work)  # (..., L, F), (..., S, F)
    if causal:
        kv = torch.cumsum(k.unsqueeze(-1) * v.unsqueeze(-2), dim=-3)  # (..., L, F, Ev): sum_{j<=i}
        z = torch.cumsum(k, dim=-2)  # (..., L, F): sum_{j<=i} phi(k_j)
        num = (q.unsqueeze(-2) @ kv).squeeze(-2)  # (..., L, Ev)
    else:
        kv = k.transpose(-2, -1) @ v  # (..., F, Ev): sum_j phi(k_j) v_j^T
        z = k.sum(dim=-2, keepdim=True)  # (..., 1, F): sum_j phi(k_j)
        num = q @ kv  # (..., L, Ev)
    den = (q * z).sum(dim=-1, keepdim=True)  # (..., L, 1)
    return (num / den.masked_fill(den == 0, 1.0)).to(query.dtype)


# --8<-- [end:linear_attention]


# --8<-- [start:peak_memory]
class _LiveBytes(TorchDispatchMode):
    """Adds up the bytes of every storage a torch op creates, until that storage is freed."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:  # nothing here is compiled: skip importing dynamo
        return False

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def _freed(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        inputs = {
            id(t.untyped_storage())
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(result)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = id(storage)
            if key in inputs or key in self._seen:  # a view, an in-place op or an old tensor
                continue
            self._seen.add(key)
            self.live += storage.nbytes()
            weakref.finalize(storage, self._freed, key, storage.nbytes())
        self.peak = max(self.peak, self.live)
        return result


def peak_memory_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of tensor storage that ``fn()`` allocates and holds at one time.

    ``peak = max over time of (bytes of storages created inside fn and not yet freed)``.
    Tensors that existed before the call (the inputs) are not counted; views and in-place
    results share their storage and add nothing; scratch space inside one kernel is not
    seen. It follows torch ops, not the allocator, so it is the same on every run.
    """
    with _LiveBytes() as mode:
        fn()
    return mode.peak


# --8<-- [end:peak_memory]
