"""The position-wise feed-forward network: the same small MLP applied to every token.

Attention mixes information across positions; this block then transforms each
position's vector on its own, ``(B, L, E) -> (B, L, E)``.
"""

from __future__ import annotations

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


# --8<-- [start:swiglu_hidden]
def swiglu_hidden(d_ff: int, multiple_of: int = 1) -> int:
    """The SwiGLU hidden width with as many weights as a plain MLP of width ``d_ff``.

    ``h = 2/3 * d_ff``: a plain MLP has two ``d_model x d_ff`` matrices and SwiGLU has
    three ``d_model x h`` ones, so ``3 h = 2 d_ff``. ``h`` is rounded down to an int,
    then up to a multiple of ``multiple_of`` (LLaMA uses 256, for fast matrix
    products): the weight counts are equal exactly when 3 divides ``d_ff`` and
    ``multiple_of`` divides the result. Examples: ``swiglu_hidden(4 * 768) == 2048``,
    ``swiglu_hidden(4 * 512) == 1365``, ``swiglu_hidden(4 * 4096, 256) == 11008``.
    """
    _positive_int("d_ff", d_ff)
    _positive_int("multiple_of", multiple_of)
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
        bias: whether the linear layers have biases.
        dropout: dropout on the hidden activations, in training mode only.

    Shapes: ``x`` ``(..., E)`` -> ``(..., E)``; the hidden activations are ``(..., d_ff)``.
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "relu", bias: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        _positive_int("d_model", d_model)
        _positive_int("d_ff", d_ff)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(map(repr, ACTIVATIONS))}, "
                             f"got {activation!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.d_model, self.d_ff, self.activation = d_model, d_ff, activation
        self.w1 = nn.Linear(d_model, d_ff, bias=bias)  # up (for SwiGLU: the gate)
        self.w2 = nn.Linear(d_ff, d_model, bias=bias)  # down
        self.w3 = nn.Linear(d_model, d_ff, bias=bias) if activation == "swiglu" else None
        self.dropout = nn.Dropout(dropout)

    # --8<-- [start:feedforward]
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        require_tensor("x", x)
        require_floating("x", x)
        if x.ndim == 0 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (..., {self.d_model}), got {tuple(x.shape)}")
        if self.activation == "relu":
            h = F.relu(self.w1(x))  # (..., d_ff)
        elif self.activation == "gelu":
            h = F.gelu(self.w1(x))  # (..., d_ff)
        else:  # swiglu: a SiLU gate, multiplied channel by channel with a second projection
            h = F.silu(self.w1(x)) * self.w3(x)  # (..., d_ff)
        return self.w2(self.dropout(h))  # (..., E)
    # --8<-- [end:feedforward]

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"
