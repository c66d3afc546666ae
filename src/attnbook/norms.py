"""Normalisation layers: LayerNorm (the original transformer's) and RMSNorm (most LLMs').

Both act on the last dimension only, so a ``(B, L, E)`` sequence is normalised one
position at a time: every token vector gets its own statistics.

Dtypes: unlike the layers with matrix products (which require their input to have the
weights' dtype), a norm accepts any floating-point input whatever its weights' dtype. It
computes in the input's dtype, or in float32 for float16 and bfloat16 inputs, casts its
weights to that dtype, and returns the input's dtype. So a float32 norm can sit in a
half-precision model, and its output always has the dtype of what came in.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from attnbook._checks import require_floating, require_tensor

__all__ = ["LayerNorm", "RMSNorm"]

_HALF = (torch.float16, torch.bfloat16)


def _check_dim(dim, eps):
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__} {eps!r}")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a non-negative finite float, got {eps!r}")


def _require_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")


def _check_input(x, dim):
    require_tensor("x", x)
    require_floating("x", x)
    if x.ndim == 0 or x.shape[-1] != dim:
        raise ValueError(f"x must have shape (..., {dim}), got shape {tuple(x.shape)}")


def _single_dim(m, kind):
    """The width torch's norm ``m`` normalises over, if it is a plain per-channel one."""
    shape = tuple(m.normalized_shape)
    if len(shape) != 1:
        raise ValueError(
            f"{kind}.normalized_shape must have one dimension (attnbook normalises "
            f"the last dimension only), got {shape}"
        )
    if not m.elementwise_affine:
        raise ValueError(
            f"{kind} with elementwise_affine=False has no weight; attnbook's "
            f"norms always learn one (copy it as ones instead)"
        )
    return shape[0]


class LayerNorm(nn.Module):
    """Layer normalisation of each vector, ``(x - mean) / sqrt(var + eps) * weight + bias``.

    ``mean`` and ``var`` are taken over the last dimension, and ``var`` is the biased
    variance (divided by E, not E - 1), as in torch's ``nn.LayerNorm``.

    Args:
        dim: E, the width of the last dimension.
        eps: added to the variance, so that a constant vector does not divide by 0;
            finite and ``>= 0``.
        bias: whether to learn the shift ``bias`` (the scale ``weight`` is always learnt).

    Shapes: ``x`` ``(..., E)``; the output has the same shape and dtype. ``weight`` and
    ``bias`` are ``(E,)``, initialised to ones and zeros, so a fresh layer only
    standardises. ``x`` may have any floating dtype (see the module's docstring):
    float16 and bfloat16 are computed in float32.
    """

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        _check_dim(dim, eps)
        _require_bool("bias", bias)
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    # --8<-- [start:layernorm]
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.dim)
        work = x.float() if x.dtype in _HALF else x  # half precision: statistics in float32
        mean = work.mean(dim=-1, keepdim=True)  # (..., 1): one mean per vector
        var = (work - mean).pow(2).mean(dim=-1, keepdim=True)  # (..., 1): biased variance
        y = (work - mean) * torch.rsqrt(var + self.eps)  # (..., E): mean 0, variance 1
        y = y * self.weight.to(work.dtype)
        if self.bias is not None:
            y = y + self.bias.to(work.dtype)
        return y.to(x.dtype)

    # --8<-- [end:layernorm]

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, bias={self.bias is not None}"

    @classmethod
    def from_torch(cls, m: nn.LayerNorm) -> LayerNorm:
        """A copy of ``m``'s weight and bias; outputs then match torch's to 1e-6 in float32.

        Refused: a ``normalized_shape`` of more than one dimension (torch's can normalise
        over several trailing dimensions at once) and ``elementwise_affine=False``.
        """
        if not isinstance(m, nn.LayerNorm):
            raise TypeError(f"m must be a torch.nn.LayerNorm, got {type(m).__name__}")
        dim = _single_dim(m, "LayerNorm")
        new = cls(dim, eps=m.eps, bias=m.bias is not None).to(m.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(m.weight)
            if m.bias is not None:
                new.bias.copy_(m.bias)
        return new


class RMSNorm(nn.Module):
    """Root-mean-square normalisation of each vector, ``x / sqrt(mean(x^2) + eps) * weight``.

    Unlike LayerNorm it neither subtracts the mean nor adds a bias: it only rescales
    each vector to unit root mean square, then applies a learnt per-channel gain.

    Args:
        dim: E, the width of the last dimension.
        eps: added to the mean square; finite and ``>= 0``.

    Shapes: ``x`` ``(..., E)``; the output has the same shape and dtype; ``weight`` is
    ``(E,)``, initialised to ones. ``x`` may have any floating dtype, as for
    :class:`LayerNorm`.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        _check_dim(dim, eps)
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim))

    # --8<-- [start:rmsnorm]
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.dim)
        work = x.float() if x.dtype in _HALF else x  # half precision: statistics in float32
        mean_square = work.pow(2).mean(dim=-1, keepdim=True)  # (..., 1): one per vector
        y = work * torch.rsqrt(mean_square + self.eps)  # (..., E): root mean square 1
        return (y * self.weight.to(work.dtype)).to(x.dtype)

    # --8<-- [end:rmsnorm]

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"

    @classmethod
    def from_torch(cls, m: nn.RMSNorm) -> RMSNorm:
        """A copy of ``m``'s weight; outputs then match torch's to 1e-6 in float32.

        Refused: a ``normalized_shape`` of more than one dimension,
        ``elementwise_affine=False``, and ``eps=None`` (torch then uses the machine
        epsilon of each input's dtype; give torch's module an explicit ``eps``).
        """
        if not isinstance(m, nn.RMSNorm):
            raise TypeError(f"m must be a torch.nn.RMSNorm, got {type(m).__name__}")
        dim = _single_dim(m, "RMSNorm")
        if m.eps is None:
            raise ValueError(
                "RMSNorm with eps=None uses the input dtype's machine epsilon; "
                "attnbook needs a number: build torch's module with eps=..."
            )
        new = cls(dim, eps=m.eps).to(m.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(m.weight)
        return new
