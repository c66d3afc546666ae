"""Dot-product attention, from the parameter-free version of chapter 1 upwards.

Shapes follow the book's convention: batch first, ``(B, L, E)`` for sequences.
"""

from __future__ import annotations

import torch

from attnbook._checks import require_floating, require_ndim, require_tensor

__all__ = ["self_attention"]


# --8<-- [start:self_attention]
def self_attention(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Parameter-free self-attention: every position attends to every position.

    ``output = softmax(x @ x^T) @ x``, with the softmax taken over each row.

    Args:
        x: the sequence, ``(L, E)`` or batched ``(B, L, E)``, floating point.

    Returns:
        ``(output, weights)``: ``output`` has the shape of ``x``; ``weights`` is
        ``(L, L)`` or ``(B, L, L)``, and each of its rows sums to 1.

    Half-precision inputs are computed in float32 and cast back, so that large
    scores cannot overflow to ``inf`` (float16 stops at 65504) and give NaN.
    """
    require_tensor("x", x)
    require_floating("x", x)
    require_ndim("x", x, (2, 3), "(L, E) or (B, L, E)")
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    scores = work @ work.transpose(-2, -1)  # (B, L, L): one score per pair of positions
    weights = torch.softmax(scores, dim=-1)  # (B, L, L): each row sums to 1
    output = weights @ work  # (B, L, E): a weighted sum of the vectors
    return output.to(x.dtype), weights.to(x.dtype)
# --8<-- [end:self_attention]
