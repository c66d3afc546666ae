"""attnbook: the companion package of an executable book about attention.

Every public name here is taught by a chapter of the book and tested against
PyTorch's own reference operations.
"""

from attnbook.attention import (
    attention_weights,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
    self_attention,
)
from attnbook.efficient import flash_attention, linear_attention, online_softmax, peak_memory_bytes
from attnbook.feedforward import FeedForward, swiglu_hidden
from attnbook.generation import (
    KVCache,
    generate,
    kv_cache_bytes,
    sample_next,
    top_k_logits,
    top_p_logits,
)
from attnbook.gpt import GPT, GPTConfig
from attnbook.multihead import MultiHeadAttention
from attnbook.norms import LayerNorm, RMSNorm
from attnbook.positions import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    alibi_bias,
    alibi_slopes,
    apply_rotary,
    sinusoidal_positions,
)
from attnbook.transformer import (
    Transformer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
    count_parameters,
)

__all__ = [
    "GPT",
    "GPTConfig",
    "KVCache",
    "FeedForward",
    "LayerNorm",
    "LearnedPositionalEmbedding",
    "MultiHeadAttention",
    "RMSNorm",
    "RotaryEmbedding",
    "Transformer",
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "alibi_bias",
    "alibi_slopes",
    "apply_rotary",
    "attention_weights",
    "causal_mask",
    "count_parameters",
    "flash_attention",
    "generate",
    "kv_cache_bytes",
    "linear_attention",
    "online_softmax",
    "padding_mask",
    "peak_memory_bytes",
    "sample_next",
    "scaled_dot_product_attention",
    "self_attention",
    "sinusoidal_positions",
    "swiglu_hidden",
    "top_k_logits",
    "top_p_logits",
]
__version__ = "0.1.0"
