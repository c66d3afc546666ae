"""Input checks shared by the public functions.

Every check raises an error that names the argument and says what was expected
and what was received, so a reader sees at once which call went wrong.
"""

from __future__ import annotations

import torch


def require_tensor(name: str, value: object) -> torch.Tensor:
    """Return ``value`` if it is a tensor, else raise ``TypeError`` naming ``name``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def require_floating(name: str, value: torch.Tensor) -> None:
    """Raise ``TypeError`` unless ``value`` has a floating-point dtype."""
    if not value.is_floating_point():
        raise TypeError(
            f"{name} must have a floating-point dtype (float16, bfloat16, float32 or "
            f"float64), got {value.dtype}"
        )


def require_ndim(name: str, value: torch.Tensor, allowed: tuple[int, ...], layout: str) -> None:
    """Raise ``ValueError`` unless ``value.ndim`` is one of ``allowed``."""
    if value.ndim not in allowed:
        raise ValueError(
            f"{name} must have shape {layout}, got a {value.ndim}-D tensor of shape "
            f"{tuple(value.shape)}"
        )


def broadcast_shape(name: str, shape: tuple[int, ...], target: tuple[int, ...], what: str) -> None:
    """Raise ``ValueError`` unless ``shape`` broadcasts to ``target``."""
    try:
        result = torch.broadcast_shapes(shape, target)
    except RuntimeError:
        result = None
    if result != tuple(target):
        raise ValueError(
            f"{name} of shape {tuple(shape)} does not broadcast to {what} {tuple(target)}"
        )
