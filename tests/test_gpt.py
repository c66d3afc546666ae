"""GPT: config checks, GPT-2 parameter counts, tying, init, causality, attention vs torch."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.nn import functional as F

from attnbook.attention import causal_mask
from attnbook.feedforward import swiglu_hidden
from attnbook.generation import KVCache
from attnbook.gpt import GPT, Block, CausalSelfAttention, GPTConfig
from attnbook.positions import alibi_bias
from attnbook.transformer import count_parameters

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


def tiny(**overrides) -> GPTConfig:
    fields = dict(vocab_size=37, block_size=16, n_layer=2, n_head=4, n_embd=32)
    return GPTConfig(**{**fields, **overrides})


def model(seed=0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny(**overrides)).eval()


def tokens(*shape, vocab=37, seed=1):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


# --- GPTConfig ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (dict(n_embd=30), ValueError, r"n_head \(4\) must divide n_embd \(30\)"),
        (dict(n_kv_head=3), ValueError, r"n_kv_head \(3\) must divide n_head \(4\)"),
        (dict(n_kv_head=0), ValueError, "n_kv_head must be a positive int"),
        (dict(positions="sine"), ValueError, "positions must be one of 'learned', 'rope', 'alibi'"),
        (dict(norm="batchnorm"), ValueError, "norm must be one of 'layernorm', 'rmsnorm'"),
        (dict(mlp="relu"), ValueError, "mlp must be one of 'gelu', 'swiglu'"),
        (dict(vocab_size=0), ValueError, "vocab_size must be a positive int"),
        (dict(block_size=-3), ValueError, "block_size must be a positive int"),
        # wrong types are TypeError, wrong values ValueError, as in generation.py
        (dict(block_size=8.0), TypeError, "block_size must be an int, got float 8.0"),
        (dict(n_layer=True), TypeError, "n_layer must be an int, got bool"),
        (dict(n_layer="2"), TypeError, "n_layer must be an int, got str '2'"),
        (dict(n_kv_head=2.0), TypeError, "n_kv_head must be an int"),
        (dict(positions=5), TypeError, "positions must be a str, one of 'learned'"),
        (dict(dropout="0.1"), TypeError, "dropout must be a float, got str"),
        (dict(dropout=1.0), ValueError, r"dropout must be a float in \[0, 1\)"),
        (dict(dropout=float("nan")), ValueError, r"dropout must be a float in \[0, 1\)"),
        (dict(bias=1), TypeError, "bias must be a bool"),
        (dict(tie_weights="yes"), TypeError, "tie_weights must be a bool"),
        (dict(n_head=32, positions="rope"), ValueError, "even head_dim"),
    ],
)
def test_config_refuses_bad_fields(overrides, error, match):
    with pytest.raises(error, match=match):
        tiny(**overrides)


def test_config_derived_sizes():
    c = tiny(n_kv_head=2)
    assert (c.head_dim, c.kv_heads) == (8, 2)
    assert tiny().kv_heads == 4


def test_gpt2_sizes_and_overrides():
    small = GPTConfig.gpt2("small")
    assert (small.n_layer, small.n_head, small.n_embd) == (12, 12, 768)
    assert (small.vocab_size, small.block_size) == (50257, 1024)
    xl = GPTConfig.gpt2("xl", dropout=0.1)
    assert (xl.n_layer, xl.n_head, xl.n_embd, xl.dropout) == (48, 25, 1600, 0.1)
    with pytest.raises(ValueError, match="size must be one of 'small', 'medium', 'large', 'xl'"):
        GPTConfig.gpt2("tiny")
    with pytest.raises(ValueError, match=r"n_head \(5\) must divide n_embd \(768\)"):
        GPTConfig.gpt2("small", n_head=5)  # overrides are checked like any field


def test_config_is_frozen_and_replace_checks_again():
    c = tiny()
    with pytest.raises(dataclasses.FrozenInstanceError, match="n_head"):
        c.n_head = 5
    with pytest.raises(dataclasses.FrozenInstanceError, match="positions"):
        c.positions = "rotary"
    assert (c.n_head, c.positions) == (4, "learned")  # nothing changed
    assert dataclasses.replace(c, n_head=8).head_dim == 4
    with pytest.raises(ValueError, match=r"n_head \(5\) must divide n_embd \(32\)"):
        dataclasses.replace(c, n_head=5)
    with pytest.raises(ValueError, match="positions must be one of"):
        dataclasses.replace(c, positions="rotary")
    assert hash(c) == hash(tiny())  # frozen and equal: usable as a dict key


# --- parameters --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, expected",
    [
        ("small", 124_439_808),
        ("medium", 354_823_168),
        ("large", 774_030_080),
        ("xl", 1_557_611_200),
    ],
)
def test_gpt2_parameter_counts(size, expected):
    with torch.device("meta"):  # shapes only: no memory is allocated for the weights
        m = GPT(GPTConfig.gpt2(size))
    assert m.wte.weight.is_meta
    assert count_parameters(m) == expected


def test_weight_tying():
    tied = model()
    assert tied.lm_head.weight is tied.wte.weight
    untied = model(tie_weights=False)
    assert untied.lm_head.weight is not untied.wte.weight
    assert count_parameters(untied) - count_parameters(tied) == 37 * 32


def test_swiglu_keeps_the_weight_count():
    # 4 * 48 = 192 is divisible by 3, so 3 matrices of width 128 hold as many as 2 of width 192
    gelu, swiglu = model(n_embd=48, bias=False), model(n_embd=48, bias=False, mlp="swiglu")
    assert swiglu.blocks[0].mlp.d_ff == swiglu_hidden(4 * 48) == 128
    assert count_parameters(gelu) == count_parameters(swiglu)


def test_bias_false_and_rmsnorm_leave_no_bias():
    m = model(bias=False, norm="rmsnorm")
    assert not [name for name, _ in m.named_parameters() if name.endswith("bias")]


def test_gqa_shrinks_the_key_value_projections():
    full, grouped = model().blocks[0].attn, model(n_kv_head=1).blocks[0].attn
    assert full.k_proj.weight.shape == (32, 32)
    assert grouped.k_proj.weight.shape == grouped.v_proj.weight.shape == (8, 32)  # 1 head of 8


def test_gpt2_style_init():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=500, block_size=64, n_layer=8, n_head=4, n_embd=256))
    block = m.blocks[3]
    assert abs(m.wte.weight.std().item() - 0.02) < 1e-3
    assert abs(block.attn.q_proj.weight.std().item() - 0.02) < 1e-3
    residual = 0.02 / math.sqrt(2 * 8)  # 0.005
    assert abs(block.attn.out_proj.weight.std().item() - residual) < 3e-4
    assert abs(block.mlp.w2.weight.std().item() - residual) < 3e-4
    assert torch.all(block.attn.q_proj.bias == 0) and torch.all(block.norm1.weight == 1)


# --- forward -----------------------------------------------------------------------------

VARIANTS = [
    dict(),
    dict(positions="rope"),
    dict(positions="alibi"),
    dict(n_kv_head=2),
    dict(n_kv_head=1, positions="rope", norm="rmsnorm", mlp="swiglu"),
]


@pytest.mark.parametrize(
    "overrides", VARIANTS, ids=lambda o: "-".join(map(str, o.values())) or "gpt2"
)
def test_forward_is_causal(overrides):
    m = model(**overrides)
    x = tokens(2, 10)
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 1) % 37  # change the future
    a, b = m(x), m(y)
    assert a.shape == (2, 10, 37)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6)
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-3)


def test_positions_matter():
    # with positions, swapping two earlier tokens changes the last logits
    for positions in ("learned", "rope", "alibi"):
        m = model(positions=positions)
        x = tokens(1, 6)
        y = x[:, [1, 0, 2, 3, 4, 5]]
        assert not torch.allclose(m(x)[:, -1], m(y)[:, -1], atol=1e-4), positions


def test_training_step_runs_with_dropout():
    m = model(dropout=0.1).train()
    x = tokens(2, 12)
    loss = F.cross_entropy(m(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    assert m.wte.weight.grad is not None and torch.isfinite(loss)
    assert abs(loss.item() - math.log(37)) < 0.5  # fresh weights: close to uniform


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_attention_matches_torch_sdpa_with_enable_gqa(n_kv_head):
    torch.manual_seed(0)
    config = tiny(n_kv_head=n_kv_head)
    attn = CausalSelfAttention(config).eval()
    x = torch.randn(2, 9, 32)
    B, T, H, D = 2, 9, 4, 8
    q = attn.q_proj(x).view(B, T, H, D).transpose(1, 2)
    k = attn.k_proj(x).view(B, T, n_kv_head, D).transpose(1, 2)
    v = attn.v_proj(x).view(B, T, n_kv_head, D).transpose(1, 2)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    ref = attn.out_proj(ref.transpose(1, 2).reshape(B, T, H * D))
    ours = attn(x, causal_mask(T))
    assert torch.allclose(ours, ref, atol=1e-5)


def test_gqa_groups_neighbouring_heads():
    # query heads 0, 1 share kv head 0 and heads 2, 3 share kv head 1 (repeat_interleave,
    # not tile): zeroing kv head 1's value weights silences only query heads 2 and 3
    torch.manual_seed(0)
    attn = CausalSelfAttention(tiny(n_kv_head=2, bias=False)).eval()
    with torch.no_grad():
        attn.v_proj.weight[8:].zero_()
        attn.out_proj.weight.copy_(torch.eye(32))
    y = attn(torch.randn(1, 5, 32), causal_mask(5))
    assert y[..., :16].abs().min() > 0 and torch.all(y[..., 16:] == 0)


# --- input checks ------------------------------------------------------------------------


def test_forward_refuses_bad_idx():
    m = model()
    with pytest.raises(TypeError, match="idx must hold integer token ids"):
        m(torch.zeros(1, 3))
    with pytest.raises(TypeError, match="idx must be a torch.Tensor"):
        m([[1, 2]])
    with pytest.raises(ValueError, match=r"idx must have shape \(B, T\)"):
        m(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"idx holds token ids in \[0, 37\], outside .*\[0, 37\)"):
        m(torch.tensor([[0, 37]]))
    with pytest.raises(ValueError, match=r"idx holds token ids in \[-1, 2\]"):
        m(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="T=17, longer than block_size=16"):
        m(tokens(1, 17))


def test_forward_refuses_bad_cache():
    m = model()
    with pytest.raises(TypeError, match="kv_cache must be an attnbook KVCache"):
        m(tokens(1, 3), kv_cache={})
    with pytest.raises(ValueError, match="kv_cache has 3 layers, this model has n_layer=2"):
        m(tokens(1, 3), kv_cache=KVCache(3))
    cache = KVCache(2)
    m(tokens(2, 3), kv_cache=cache)
    with pytest.raises(ValueError, match="kv_cache holds batch size 2, but idx has batch size 1"):
        m(tokens(1, 1), kv_cache=cache)
    m(tokens(2, 12), kv_cache=cache)  # 15 of 16 positions used
    with pytest.raises(
        ValueError,
        match="kv_cache holds 15 tokens and idx adds 2: 17 positions do not fit in block_size=16",
    ):
        m(tokens(2, 2), kv_cache=cache)
    assert cache.length == 15  # the refused call appended nothing
    m(tokens(2, 1), kv_cache=cache)
    assert cache.length == 16


def test_config_type_is_checked():
    with pytest.raises(TypeError, match="config must be a GPTConfig"):
        GPT(dataclasses.asdict(tiny()))


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.uint8, torch.bool, torch.float16])
def test_forward_refuses_token_ids_nn_embedding_cannot_read(dtype):
    with pytest.raises(
        TypeError,
        match=r"idx must hold integer token ids \(torch.long, or "
        rf"torch.int32\), got {dtype}",
    ):
        model()(tokens(1, 3).to(dtype))


def test_forward_takes_int32_token_ids():
    m = model()
    x = tokens(2, 5)
    assert torch.equal(m(x.int()), m(x))


# --- the mask of CausalSelfAttention and Block --------------------------------------------


def test_block_refuses_a_missing_mask_for_several_tokens():
    # None used to mean "no mask": position 0 then saw the future, silently
    torch.manual_seed(0)
    block = Block(tiny()).eval()
    x = torch.randn(2, 5, 32)
    with pytest.raises(
        ValueError,
        match=r"mask may be None only for one new token \(T=1\).* "
        r"got T=5: pass .* = causal_mask\(5, 5\)",
    ):
        block(x, None)
    one = x[:, :1]  # (B, 1, E): a single token sees every key, so None means all True
    assert torch.equal(block(one, None), block(one, causal_mask(1)))


def test_attention_refuses_a_float_mask_unless_alibi():
    torch.manual_seed(0)
    attn = CausalSelfAttention(tiny()).eval()
    x = torch.randn(1, 4, 32)
    for float_mask in (causal_mask(4).float(), torch.zeros(4, 4)):  # 0/1 would be a bias
        with pytest.raises(
            TypeError,
            match=r"mask must be bool \(True = may attend\), got "
            r"torch.float32: a float mask would be added",
        ):
            attn(x, float_mask)
    with pytest.raises(ValueError, match=r"mask must have shape \(T, S\) = \(4, 4\), got \(4, 5\)"):
        attn(x, causal_mask(4, 5))
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        attn(x, [[True]])
    with pytest.raises(ValueError, match="mask must be on x's device"):
        attn(x, causal_mask(4, device="meta"))


def test_alibi_attention_needs_its_float_bias():
    torch.manual_seed(0)
    attn = CausalSelfAttention(tiny(positions="alibi")).eval()
    x = torch.randn(1, 4, 32)
    assert attn(x, alibi_bias(4, 4)).shape == (1, 4, 32)
    for mask in (None, causal_mask(4)):  # either would drop the position bias silently
        with pytest.raises(
            TypeError,
            match="with positions='alibi', mask must be the float "
            r"bias alibi_bias\(H, T, S\)",
        ):
            attn(x, mask)
    with pytest.raises(
        ValueError,
        match=r"mask must have shape \(H, T, S\) = \(4, 4, 4\), "
        r"got \(4, 4\)",
    ):
        attn(x, alibi_bias(4, 4)[0])
    with pytest.raises(
        TypeError, match="mask .* must have x's dtype torch.float32, got torch.float64"
    ):
        attn(x, alibi_bias(4, 4, dtype=torch.float64))


def test_block_refuses_x_that_is_not_b_t_e():
    torch.manual_seed(0)
    block = Block(tiny()).eval()
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, E\) with E=32, got \(5, 32\)"):
        block(torch.randn(5, 32), causal_mask(5))
    with pytest.raises(TypeError, match="x must have a floating-point dtype"):
        block.attn(torch.zeros(1, 2, 32, dtype=torch.long), causal_mask(2))


def test_attention_checks_the_cache_offset_and_layer():
    torch.manual_seed(0)
    attn = CausalSelfAttention(tiny(positions="rope")).eval()
    cache = KVCache(2)
    attn(torch.randn(1, 3, 32), causal_mask(3), kv_cache=cache, layer=0)
    # the keys so far are for positions 0-2: the next token is at offset 3, not 0
    with pytest.raises(
        ValueError, match="offset must be the number of tokens cached in layer 0, 3, got 0"
    ):
        attn(torch.randn(1, 1, 32), None, kv_cache=cache, layer=0)
    with pytest.raises(ValueError, match=r"mask must have shape \(T, S\) = \(2, 5\), got \(2, 2\)"):
        attn(torch.randn(1, 2, 32), causal_mask(2), kv_cache=cache, layer=0, offset=3)
    with pytest.raises(ValueError, match="layer must be < n_layer=2, got 2"):
        attn(torch.randn(1, 1, 32), None, kv_cache=cache, layer=2, offset=3)
    with pytest.raises(TypeError, match="offset must be an int"):
        attn(torch.randn(1, 1, 32), None, offset=1.0)
    assert cache.length == 3  # refused calls append nothing
