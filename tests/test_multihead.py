"""MultiHeadAttention against torch.nn.MultiheadAttention on copied weights."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attnbook import MultiHeadAttention, causal_mask, scaled_dot_product_attention


def pair(E=16, H=4, **kwargs):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, batch_first=True, **kwargs)
    with torch.no_grad():  # non-zero biases, so that copying them is tested too
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return ref, MultiHeadAttention.from_torch(ref)


def x(*shape, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_self_attention_matches_torch(need_weights, mode):
    ref, ours = pair()
    getattr(ref, mode)(), getattr(ours, mode)()  # dropout is 0, so train mode is deterministic
    q = x(2, 5, 16)
    a, wa = ref(q, q, q, need_weights=need_weights, average_attn_weights=False)
    b, wb = ours(q, need_weights=need_weights)
    assert torch.allclose(a, b, atol=1e-5)
    if need_weights:
        assert wb.shape == (2, 4, 5, 5) and torch.allclose(wa, wb, atol=1e-6)
    else:
        assert wb is None


@pytest.mark.parametrize("need_weights", [False, True])
def test_masks_match_torch_with_opposite_polarity(need_weights):
    ref, ours = pair()
    ref.eval(), ours.eval()
    q, kv = x(2, 4, 16), x(2, 6, 16, seed=2)
    key_padding = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])  # torch: True = ignore
    blocked = torch.zeros(4, 6, dtype=torch.bool)
    blocked[0, 1] = True
    a, wa = ref(
        q,
        kv,
        kv,
        key_padding_mask=key_padding,
        attn_mask=blocked,
        need_weights=need_weights,
        average_attn_weights=False,
    )
    b, wb = ours(q, kv, kv, key_mask=~key_padding, attn_mask=~blocked, need_weights=need_weights)
    assert torch.allclose(a, b, atol=1e-5)
    if need_weights:
        assert torch.allclose(wa, wb, atol=1e-6)


def test_float_mask_and_cross_attention_with_kdim_vdim():
    ref, ours = pair(kdim=5, vdim=7)
    ref.eval(), ours.eval()
    q, k, v = x(3, 4, 16), x(3, 6, 5, seed=2), x(3, 6, 7, seed=3)
    bias = x(4, 6, seed=4)
    a, _ = ref(q, k, v, attn_mask=bias)
    b, _ = ours(q, k, v, attn_mask=bias)
    assert torch.allclose(a, b, atol=1e-5)


def test_causal_equals_an_explicit_mask_and_torch():
    ref, ours = pair()
    ref.eval(), ours.eval()
    q = x(2, 5, 16)
    a, _ = ref(q, q, q, attn_mask=~causal_mask(5), need_weights=False)
    b, _ = ours(q, is_causal=True)
    assert torch.allclose(a, b, atol=1e-5)


def test_fully_padded_query_rows_give_finite_outputs():
    _, ours = pair()
    ours.eval()
    out, w = ours(x(1, 3, 16), key_mask=torch.zeros(1, 3, dtype=torch.bool), need_weights=True)
    assert torch.isfinite(out).all() and torch.equal(w, torch.zeros_like(w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("need_weights", [False, True])  # our softmax, or torch's fused kernel
@pytest.mark.parametrize("masked", ["key_mask", "bool attn_mask", "float attn_mask"])
def test_fully_masked_rows_give_out_proj_bias_and_finite_gradients(masked, need_weights, dtype):
    _, ours = pair()
    ours.to(dtype)
    q = x(2, 3, 16).to(dtype).requires_grad_()
    allowed = torch.ones(2, 3, dtype=torch.bool)
    allowed[1] = False  # sequence 1: every key masked
    if masked == "key_mask":
        kwargs, dead = dict(key_mask=allowed), (1, slice(None))
    else:
        rows = torch.ones(3, 3, dtype=torch.bool)
        rows[0] = False  # query 0 of every sequence: no key
        zeros = torch.zeros(3, 3).masked_fill(~rows, float("-inf"))
        kwargs = dict(attn_mask=rows if masked == "bool attn_mask" else zeros)
        dead = (slice(None), 0)
    out, _ = ours(q, need_weights=need_weights, **kwargs)
    out.float().pow(2).sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(q.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters())
    assert torch.equal(out[dead], ours.out_proj.bias.expand_as(out[dead]))  # attention gave 0


def test_dropout_only_in_training():
    m = MultiHeadAttention(16, 4, dropout=0.5)
    q = x(2, 5, 16)
    m.eval()
    assert torch.equal(m(q)[0], m(q)[0])
    m.train()
    torch.manual_seed(0)
    assert not torch.allclose(m(q)[0], m(q)[0])


@pytest.mark.parametrize(("E", "H"), [(16, 4), (512, 8), (768, 12)])
def test_parameter_count(E, H):
    m = MultiHeadAttention(E, H)
    assert sum(p.numel() for p in m.parameters()) == 4 * E * E + 4 * E
    assert sum(p.numel() for p in nn.MultiheadAttention(E, H).parameters()) == 4 * E * E + 4 * E


def test_grouped_query_heads_use_repeat_interleave():
    m = MultiHeadAttention(16, 4, num_kv_heads=2).eval()
    q = x(2, 5, 16)
    out, w = m(q, need_weights=True)
    B, L, H, D = 2, 5, 4, 4
    qh = m.q_proj(q).view(B, L, H, D).transpose(1, 2)
    kh = m.k_proj(q).view(B, L, 2, D).transpose(1, 2)
    vh = m.v_proj(q).view(B, L, 2, D).transpose(1, 2)
    manual = scaled_dot_product_attention(qh, kh, vh, enable_gqa=True)  # head h -> kv h // 2
    expected = m.out_proj(manual.transpose(1, 2).reshape(B, L, 16))
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(m(q)[0], out, atol=1e-6)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: MultiHeadAttention(10, 3),
            ValueError,
            r"num_heads \(3\) must divide embed_dim \(10\)",
        ),
        (lambda: MultiHeadAttention(16, 4, num_kv_heads=3), ValueError, "num_kv_heads"),
        (lambda: MultiHeadAttention(16, 4, num_kv_heads=True), ValueError, "num_kv_heads"),
        (
            lambda: MultiHeadAttention(16, 4)(x(5, 16)),
            ValueError,
            r"query must have shape \(B, L, 16\)",
        ),
        (
            lambda: MultiHeadAttention(16, 4)(x(2, 5, 8)),
            ValueError,
            "query must have last dimension 16",
        ),
        (
            lambda: MultiHeadAttention(16, 4)(x(2, 5, 16), key_mask=torch.ones(2, 5)),
            TypeError,
            "key_mask must be bool",
        ),
        (
            lambda: MultiHeadAttention(16, 4)(
                x(2, 5, 16), key_mask=torch.ones(2, 4, dtype=torch.bool)
            ),
            ValueError,
            r"key_mask must have shape \(B, S\) = \(2, 5\)",
        ),
        (
            lambda: MultiHeadAttention(16, 4)(
                x(2, 5, 16), is_causal=True, attn_mask=causal_mask(5)
            ),
            ValueError,
            "not both",
        ),
        (
            lambda: MultiHeadAttention(16, 4)(
                x(2, 5, 16), attn_mask=torch.ones(4, 5, dtype=torch.bool)
            ),
            ValueError,
            r"attn_mask of shape \(4, 5\) does not broadcast to \(B, H, L, S\) \(2, 4, 5, 5\)",
        ),
        (
            lambda: MultiHeadAttention(16, 4, dropout="0.1"),
            TypeError,
            "dropout must be a real number in .*, got str '0.1'",
        ),
        (lambda: MultiHeadAttention(16, 4, dropout=None), TypeError, "dropout must be a real"),
        (lambda: MultiHeadAttention.from_torch(nn.Linear(2, 2)), TypeError, "MultiheadAttention"),
        (
            lambda: MultiHeadAttention.from_torch(nn.MultiheadAttention(8, 2, add_bias_kv=True)),
            ValueError,
            "add_bias_kv",
        ),
    ],
)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(1, 3),
    L=st.integers(1, 6),
    S=st.integers(1, 6),
    heads=st.sampled_from([1, 2, 4]),
    seed=st.integers(0, 1000),
    pad=st.booleans(),
)
def test_property_cross_attention_matches_torch(B, L, S, heads, seed, pad):
    torch.manual_seed(seed)
    ref = nn.MultiheadAttention(8, heads, batch_first=True).eval()
    ours = MultiHeadAttention.from_torch(ref).eval()
    g = torch.Generator().manual_seed(seed)
    q, kv = torch.randn(B, L, 8, generator=g), torch.randn(B, S, 8, generator=g)
    real = torch.rand(B, S, generator=g) > 0.3 if pad else torch.ones(B, S, dtype=torch.bool)
    real[:, 0] = True  # torch's fast path returns NaN for fully padded rows; ours gives 0
    a, wa = ref(q, kv, kv, key_padding_mask=~real, average_attn_weights=False)
    b, wb = ours(q, kv, kv, key_mask=real, need_weights=True)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(wa, wb, atol=1e-6)
