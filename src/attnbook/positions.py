"""Positional information: sinusoidal and learned absolute positions, RoPE and ALiBi.

Attention on its own is blind to order (chapter 6). The functions here give it
positions in the four ways in common use:

- ``sinusoidal_positions``: the fixed encoding of Vaswani et al. (2017), added to the
  embeddings;
- ``LearnedPositionalEmbedding``: one trained vector per position, as in GPT-2 and BERT;
- ``apply_rotary`` / ``RotaryEmbedding``: RoPE (Su et al., 2021), which rotates query
  and key channel pairs by a position-dependent angle;
- ``alibi_slopes`` / ``alibi_bias``: ALiBi (Press et al., 2022), a per-head linear bias
  on the scores.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import nn

from attnbook._checks import broadcast_shape, require_floating, require_tensor

__all__ = [
    "LearnedPositionalEmbedding",
    "RotaryEmbedding",
    "alibi_bias",
    "alibi_slopes",
    "apply_rotary",
    "sinusoidal_positions",
]


def _int(name: str, value: object) -> int:
    """``value`` as an int (Python or NumPy integers), else a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or isinstance(value, torch.Tensor) and value.ndim:
        raise ValueError(f"{name} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int, got {value!r}") from None


def _positive_int(name: str, value: object, *, even: bool = False) -> int:
    value = _int(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if even and value % 2:
        raise ValueError(f"{name} must be even (channels are used in pairs), got {value}")
    return value


def _non_negative_int(name: str, value: object) -> int:
    value = _int(name, value)
    if value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


def _check_base(base: object) -> float:
    if isinstance(base, bool) or not isinstance(base, (int, float)):
        raise TypeError(f"base must be a float, got {type(base).__name__}")
    if not 1 < base < math.inf:
        raise ValueError(f"base must be a finite number greater than 1, got {base!r}")
    return float(base)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


# --8<-- [start:sinusoidal]
def sinusoidal_positions(length: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """The sinusoidal encoding, ``PE[p, 2i] = sin(p / base^(2i/dim))``, ``PE[p, 2i+1] = cos(...)``.

    Channel pair ``(2i, 2i+1)`` holds the sine and cosine of one angle, which turns
    with the position at frequency ``base^(-2i/dim)``: fast for the first pairs, slow
    for the last (Vaswani et al., 2017, section 3.5).

    Returns:
        A float32 ``(length, dim)`` tensor; ``dim`` must be even.
    """
    length = _non_negative_int("length", length)
    dim = _positive_int("dim", dim, even=True)
    base = _check_base(base)
    position = torch.arange(length, dtype=torch.float64).unsqueeze(1)  # (length, 1)
    frequency = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim/2,)
    angle = position * frequency  # (length, dim/2)
    pe = torch.empty(length, dim, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)  # even channels
    pe[:, 1::2] = torch.cos(angle)  # odd channels
    return pe.float()


# --8<-- [end:sinusoidal]


class LearnedPositionalEmbedding(nn.Module):
    """Learned absolute positions: ``x + P[offset : offset + L]``, one trained row per position.

    Args:
        max_len: the number of positions the table holds. There is no row for position
            ``max_len`` or beyond, so longer inputs are refused.
        dim: E, the embedding width.

    Shapes: ``x`` ``(B, L, E)`` in, the same shape out.
    """

    def __init__(self, max_len: int, dim: int):
        super().__init__()
        self.max_len = _positive_int("max_len", max_len)
        self.dim = _positive_int("dim", dim)
        self.weight = nn.Parameter(torch.empty(max_len, dim))
        nn.init.normal_(self.weight, std=0.02)  # the scale GPT-2 uses

    # --8<-- [start:learned]
    def forward(self, x: torch.Tensor, *, offset: int = 0) -> torch.Tensor:
        """Add the rows for positions ``offset, ..., offset + L - 1`` to ``x`` (B, L, E)."""
        require_tensor("x", x)
        require_floating("x", x)
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (B, L, {self.dim}), got {tuple(x.shape)}")
        offset = _non_negative_int("offset", offset)
        end = offset + x.shape[1]
        if end > self.max_len:
            where = f"positions {offset}..{end - 1}" if x.shape[1] else f"offset {offset}"
            raise ValueError(
                f"{where} do not fit: this embedding was built with "
                f"max_len={self.max_len}, so it has no row for position {self.max_len} or beyond "
                f"(offset={offset}, length={x.shape[1]})"
            )
        return x + self.weight[offset:end].to(x.dtype)  # (B, L, E) + (L, E)

    # --8<-- [end:learned]


def _check_positions(positions, length: int, batch_shape: tuple[int, ...], device) -> torch.Tensor:
    require_tensor("positions", positions)
    if positions.is_floating_point() or positions.is_complex() or positions.dtype == torch.bool:
        raise TypeError(f"positions must be an integer tensor (torch.long), got {positions.dtype}")
    if positions.ndim == 0 or positions.shape[-1] != length:
        raise ValueError(
            f"positions must have shape (L,) or (..., L) with L = {length} (the "
            f"length of x), got shape {tuple(positions.shape)}"
        )
    broadcast_shape(
        "positions",
        tuple(positions.shape),
        batch_shape + (length,),
        "x's shape without its last dimension,",
    )
    return positions.to(device)


def _rotary_frequencies(
    head_dim: int, base: float, device=None, dtype=torch.float32
) -> torch.Tensor:
    """theta_i = base^(-2i / D) for the D/2 channel pairs."""
    return base ** (-torch.arange(0, head_dim, 2, dtype=dtype, device=device) / head_dim)


# --8<-- [start:rotary]
def _rotate(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool
) -> torch.Tensor:
    """Turn each channel pair (a, b) into (a cos - b sin, a sin + b cos)."""
    if interleaved:  # pairs (0, 1), (2, 3), ...: RoFormer, Meta's Llama
        a, b = x[..., 0::2], x[..., 1::2]  # (..., L, D/2) each
        return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(
            -2
        )  # (..., L, D)
    half = x.shape[-1] // 2  # pairs (i, i + D/2): GPT-NeoX, Hugging Face Llama
    a, b = x[..., :half], x[..., half:]
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)  # (..., L, D)


def apply_rotary(
    x: torch.Tensor,
    positions: torch.Tensor | None = None,
    *,
    base: float = 10000.0,
    interleaved: bool = False,
) -> torch.Tensor:
    """RoPE: rotate channel pair ``i`` of the token at position ``m`` by the angle ``m * theta_i``.

    ``theta_i = base^(-2i/D)`` (Su et al., 2021). Applied to queries and keys, it makes
    ``q_m . k_n`` depend on the positions only through ``m - n``.

    Args:
        x: ``(..., L, D)`` queries or keys, ``D`` even.
        positions: integer positions, ``(L,)`` or broadcastable to ``x.shape[:-1]``;
            defaults to ``0, 1, ..., L - 1``. For ``x`` of shape ``(B, H, L, D)`` and
            one row of positions per sequence, pass ``(B, 1, L)``: a ``(B, L)`` tensor
            would be matched with the head axis.
        interleaved: ``False`` pairs channel ``i`` with ``i + D/2`` (the "rotate-half"
            layout); ``True`` pairs ``2i`` with ``2i + 1``.

    Returns:
        A tensor of the same shape and dtype as ``x``.
    """
    require_tensor("x", x)
    require_floating("x", x)
    if x.ndim < 2:
        raise ValueError(f"x must have shape (..., L, D), got shape {tuple(x.shape)}")
    _positive_int("head_dim (the last dimension of x)", x.shape[-1], even=True)
    base = _check_base(base)
    _check_bool("interleaved", interleaved)
    L = x.shape[-2]
    if positions is None:
        positions = torch.arange(L, device=x.device)
    else:
        positions = _check_positions(positions, L, tuple(x.shape[:-2]), x.device)
    work = torch.promote_types(x.dtype, torch.float32)  # half precision is rotated in float32
    theta = _rotary_frequencies(x.shape[-1], base, x.device, work)  # (D/2,)
    angle = positions.to(work).unsqueeze(-1) * theta  # (..., L, D/2)
    out = _rotate(x.to(work), torch.cos(angle), torch.sin(angle), interleaved)
    return out.to(x.dtype)


# --8<-- [end:rotary]


class RotaryEmbedding(nn.Module):
    """RoPE with cached cos/sin tables: ``forward(x, offset=k)`` rotates ``x`` as positions ``k, k+1, ...``.

    The tables are built on first use for the input's device and precision (float32,
    or float64 for float64 inputs), grow when a longer input arrives, and are not part
    of the ``state_dict``. Offsets far beyond the table (more than ``2**16`` positions
    past it) are computed on the fly instead of growing it.

    Args:
        head_dim: D, the width of one head's queries and keys (even).
        base: the base of the frequencies ``base^(-2i/D)``.
        interleaved: the channel-pair layout, as in ``apply_rotary``.

    Shapes: ``x`` ``(..., L, D)`` in, the same shape out.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, interleaved: bool = False):
        super().__init__()
        self.head_dim = _positive_int("head_dim", head_dim, even=True)
        self.base = _check_base(base)
        self.interleaved = _check_bool("interleaved", interleaved)
        self._tables: dict[
            tuple, tuple[torch.Tensor, torch.Tensor]
        ] = {}  # (device, dtype) -> cos, sin

    def _angles(self, start: int, end: int, device, dtype) -> torch.Tensor:
        theta = _rotary_frequencies(self.head_dim, self.base, device, dtype)  # (D/2,)
        return (
            torch.arange(start, end, device=device, dtype=dtype).unsqueeze(-1) * theta
        )  # (L, D/2)

    def _cos_sin(self, offset: int, end: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self._tables.get((device, dtype), (None, None))
        size = 0 if cos is None else cos.shape[0]
        if end > size + 2**16:  # a lone far position: do not build a huge table for it
            angle = self._angles(offset, end, device, dtype)
            return torch.cos(angle), torch.sin(angle)
        if end > size:
            angle = self._angles(0, max(end, 2 * size, 16), device, dtype)
            cos, sin = torch.cos(angle), torch.sin(angle)
            self._tables[(device, dtype)] = cos, sin
        return cos[offset:end], sin[offset:end]  # (L, D/2)

    def forward(self, x: torch.Tensor, *, offset: int = 0) -> torch.Tensor:
        require_tensor("x", x)
        require_floating("x", x)
        if x.ndim < 2 or x.shape[-1] != self.head_dim:
            raise ValueError(f"x must have shape (..., L, {self.head_dim}), got {tuple(x.shape)}")
        offset = _non_negative_int("offset", offset)
        work = torch.promote_types(x.dtype, torch.float32)  # half precision is rotated in float32
        cos, sin = self._cos_sin(offset, offset + x.shape[-2], x.device, work)
        return _rotate(x.to(work), cos, sin, self.interleaved).to(x.dtype)


# --8<-- [start:alibi_slopes]
def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi's head slopes: a geometric sequence, extended to any head count as the authors' code does.

    For ``n`` a power of 2 the slopes are ``2^(-8/n), 2^(-16/n), ..., 2^(-8)``. Otherwise
    take the ``m`` slopes of the largest power of 2 ``m < n``, then every other slope of
    ``2m`` heads for the remaining ``n - m``. That rule is the one in the authors'
    reference code (used by BLOOM and Hugging Face); the paper's text (Press et al.,
    2022, section 3) states the power-of-2 formula only.

    Returns:
        A float32 ``(num_heads,)`` tensor.
    """
    num_heads = _positive_int("num_heads", num_heads)

    def geometric(n: int) -> list[float]:  # n is a power of 2
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

    m = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = geometric(m) + geometric(2 * m)[0::2][: num_heads - m]
    return torch.tensor(slopes, dtype=torch.float32)


# --8<-- [end:alibi_slopes]


# --8<-- [start:alibi_bias]
def alibi_bias(
    num_heads: int,
    q_len: int,
    kv_len: int | None = None,
    *,
    causal: bool = True,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """ALiBi's float bias, ``bias[h, i, j] = -slope_h * |i' - j|``, added to the scores.

    Queries are aligned bottom-right, like ``causal_mask``: query ``i`` sits at position
    ``i' = i + kv_len - q_len``. With ``causal=True`` the keys after ``i'`` get ``-inf``,
    so every kept entry is ``-slope_h * (i' - j)``. With ``causal=False`` the distance is
    taken both ways.

    Returns:
        A ``(num_heads, q_len, kv_len)`` tensor of ``dtype``, to pass as ``attn_mask``.
    """
    kv_len = q_len if kv_len is None else kv_len
    q_len, kv_len = _non_negative_int("q_len", q_len), _non_negative_int("kv_len", kv_len)
    _check_bool("causal", causal)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    slopes = alibi_slopes(num_heads).to(device)  # (H,)
    i = torch.arange(q_len, device=device).unsqueeze(-1) + (kv_len - q_len)  # (L, 1)
    j = torch.arange(kv_len, device=device)  # (S,)
    closeness = -(i - j).abs()  # (L, S): 0 on the diagonal, -1 one step away, ...
    bias = slopes.view(-1, 1, 1) * closeness  # (H, L, S)
    if causal:
        bias = bias.masked_fill(j > i, float("-inf"))
    return bias.to(dtype)


# --8<-- [end:alibi_bias]
