"""attnbook: the companion package of an executable book about attention.

Every public name here is taught by a chapter of the book and tested against
PyTorch's own reference operations.
"""

from attnbook.attention import self_attention

__all__ = ["self_attention"]
__version__ = "0.1.0"
