"""The position-wise feed-forward network: the same small MLP applied to every token.

Attention mixes information across positions; this block then transforms each
position's vector on its own, ``(B, L, E) -> (B, L, E)``.
"""

from __future__ import annotations

import numbers

import torch
from torch import nn
from torch.nn import functional as F

from attnbook._checks import require_floating, require_tensor

__all__ = ["ACTIVATIONS", "FeedForward", "swiglu_hidden"]

ACTIVATIONS = ("relu", "gelu", "swiglu")
"""The activations :class:`FeedForward` knows. ``"gelu"`` is the exact (erf) GELU."""


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_swiglu_args(d_ff, multiple_of):
    _positive_int("d_ff", d_ff)
    _positive_int("multiple_of", multiple_of)
    if d_ff < 2:  # 2 * 1 // 3 == 0: no hidden channel at all
        raise ValueError(
            f"d_ff must be at least 2 for swiglu_hidden: 2 * {d_ff} // 3 = 0, "
            f"and the hidden width must be at least 1"
        )


def _require_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")


def _check_dropout(dropout):
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
        raise TypeError(
            f"dropout must be a real number in [0, 1), got {type(dropout).__name__} {dropout!r}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


def _check_dtype(name, x, weight, owner):
    """``x`` must have the dtype of the weights it is multiplied with.

    Under ``torch.autocast`` the products cast float32, float16 and bfloat16 operands
    themselves (float64 ones are left as they are, and still fail).
    """
    cast = torch.is_autocast_enabled(x.device.type) and torch.float64 not in (x.dtype, weight.dtype)
    if x.dtype != weight.dtype and not cast:
        raise TypeError(
            f"{name} is {_dtype_name(x.dtype)} but {owner}'s weights are "
            f"{_dtype_name(weight.dtype)}; convert one with .to(...)"
        )


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


# --8<-- [start:swiglu_hidden]
def swiglu_hidden(d_ff: int, multiple_of: int = 1) -> int:
    """The SwiGLU hidden width with as many weights as a plain MLP of width ``d_ff``.

    ``h = 2/3 * d_ff``: a plain MLP has two ``d_model x d_ff`` matrices and SwiGLU has
    three ``d_model x h`` ones, so ``3 h = 2 d_ff``. ``h`` is rounded down to an int,
    then up to a multiple of ``multiple_of`` (LLaMA uses 256, for fast matrix
    products): the weight counts are equal exactly when 3 divides ``d_ff`` and
    ``multiple_of`` divides the result. Examples: ``swiglu_hidden(4 * 768) == 2048``,
    ``swiglu_hidden(4 * 512) == 1365``, ``swiglu_hidden(4 * 4096, 256) == 11008``.
    ``d_ff`` must be at least 2: ``2 * 1 // 3`` is 0, and a layer needs a hidden channel.
    """
    _check_swiglu_args(d_ff, multiple_of)  # positive ints, and d_ff >= 2
    hidden = 2 * d_ff // 3
    return multiple_of * -(-hidden // multiple_of)  # round up to a multiple of multiple_of


# --8<-- [end:swiglu_hidden]


class FeedForward(nn.Module):
    """Position-wise MLP, ``w2(act(w1 x))``, or ``w2(silu(w1 x) * w3 x)`` for SwiGLU.

    Args:
        d_model: E, the width of the input and output.
        d_ff: the hidden width, used as given, also for SwiGLU (to give SwiGLU the
            weight count of a 4x MLP, pass ``swiglu_hidden(4 * d_model)``).
        activation: ``"relu"``, ``"gelu"`` (exact, erf-based) or ``"swiglu"``.
        bias: whether the linear layers have biases (a bool).
        dropout: dropout on the hidden activations, in training mode only.

    Shapes: ``x`` ``(..., E)`` -> ``(..., E)``; the hidden activations are ``(..., d_ff)``.
    ``x`` must have the weights' dtype (``TypeError`` otherwise), except under
    ``torch.autocast``, which casts float32, float16 and bfloat16 for the products.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        activation: str = "relu",
        bias: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        _positive_int("d_model", d_model)
        _positive_int("d_ff", d_ff)
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {', '.join(map(repr, ACTIVATIONS))}, got {activation!r}"
            )
        _require_bool("bias", bias)
        _check_dropout(dropout)
        self.d_model, self.d_ff, self.activation = d_model, d_ff, activation
        self.w1 = nn.Linear(d_model, d_ff, bias=bias)  # up (for SwiGLU: the gate)
        self.w2 = nn.Linear(d_ff, d_model, bias=bias)  # down
        self.w3 = nn.Linear(d_model, d_ff, bias=bias) if activation == "swiglu" else None
        self.dropout = nn.Dropout(dropout)

    # --8<-- [start:feedforward]
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if self.activation == "relu":
            h = F.relu(self.w1(x))  # (..., d_ff)
        elif self.activation == "gelu":
            h = F.gelu(self.w1(x))  # (..., d_ff)
        else:  # swiglu: a SiLU gate, multiplied channel by channel with a second projection
            h = F.silu(self.w1(x)) * self.w3(x)  # (..., d_ff)
        return self.w2(self.dropout(h))  # (..., E)

    # --8<-- [end:feedforward]

    def _check_input(self, x):
        require_tensor("x", x)
        require_floating("x", x)
        if x.ndim == 0 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (..., {self.d_model}), got {tuple(x.shape)}")
        _check_dtype("x", x, self.w1.weight, "the FeedForward")

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"
