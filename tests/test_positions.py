"""Positional encodings: hand-computed values, both RoPE layouts, the relative property, ALiBi."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    alibi_bias,
    alibi_slopes,
    apply_rotary,
    causal_mask,
    scaled_dot_product_attention,
    sinusoidal_positions,
)


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------- sinusoidal


def test_sinusoidal_against_hand_computed_values():
    pe = sinusoidal_positions(3, 4)
    # dim 4: pair 0 turns at frequency 1, pair 1 at 10000^(-2/4) = 1/100
    expected = torch.tensor(
        [
            [0.0, 1.0, 0.0, 1.0],
            [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)],
            [math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)],
        ]
    )
    assert pe.shape == (3, 4) and pe.dtype == torch.float32
    assert torch.allclose(pe, expected, atol=1e-7)


def test_sinusoidal_paper_layout_and_base():
    pe = sinusoidal_positions(50, 8, base=100.0)
    pos = torch.arange(50.0).unsqueeze(1)
    for i in range(4):
        angle = pos[:, 0] / 100.0 ** (2 * i / 8)
        assert torch.allclose(pe[:, 2 * i], torch.sin(angle), atol=1e-6)
        assert torch.allclose(pe[:, 2 * i + 1], torch.cos(angle), atol=1e-6)


@pytest.mark.parametrize("k", [1, 5, 37])
def test_sinusoidal_shift_is_a_rotation_independent_of_position(k):
    dim = 16
    pe = sinusoidal_positions(200, dim).double()
    omega = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    M = torch.zeros(dim, dim, dtype=torch.float64)
    for i, w in enumerate(omega.tolist()):  # [sin, cos](p + k) = R(k w) [sin, cos](p)
        c, s = math.cos(k * w), math.sin(k * w)
        M[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = torch.tensor([[c, s], [-s, c]])
    assert torch.allclose(pe[k:], pe[:-k] @ M.T, atol=1e-5)


def test_sinusoidal_zero_length_and_errors():
    assert sinusoidal_positions(0, 4).shape == (0, 4)
    with pytest.raises(ValueError, match="dim must be even"):
        sinusoidal_positions(4, 5)
    with pytest.raises(ValueError, match="length"):
        sinusoidal_positions(-1, 4)
    with pytest.raises(ValueError, match="base"):
        sinusoidal_positions(4, 4, base=1.0)


# ---------------------------------------------------------------- learned


def test_learned_adds_rows_with_offset():
    torch.manual_seed(0)
    emb = LearnedPositionalEmbedding(10, 4)
    x = randn(2, 3, 4)
    assert torch.equal(emb(x), x + emb.weight[:3])
    assert torch.equal(emb(x, offset=7), x + emb.weight[7:10])
    # the last token of a cached decode gets the same row as in the full pass
    full = emb(randn(1, 6, 4, seed=1))
    step = emb(randn(1, 6, 4, seed=1)[:, 5:], offset=5)
    assert torch.equal(full[:, 5:], step)


def test_learned_rejects_lengths_beyond_max_len_and_says_both_numbers():
    emb = LearnedPositionalEmbedding(8, 4)
    with pytest.raises(ValueError, match=r"positions 0\.\.8 .*max_len=8.*length=9"):
        emb(torch.zeros(1, 9, 4))
    with pytest.raises(ValueError, match=r"positions 6\.\.8 .*max_len=8.*offset=6, length=3"):
        emb(torch.zeros(1, 3, 4), offset=6)
    with pytest.raises(ValueError, match=r"x must have shape \(B, L, 4\)"):
        emb(torch.zeros(3, 4))
    with pytest.raises(TypeError, match="x must have a floating-point dtype"):
        emb(torch.zeros(1, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="offset"):
        emb(torch.zeros(1, 3, 4), offset=-1)
    with pytest.raises(ValueError, match="max_len"):
        LearnedPositionalEmbedding(0, 4)


def test_learned_rows_beyond_the_trained_length_get_no_gradient():
    emb = LearnedPositionalEmbedding(8, 4)
    emb(randn(2, 5, 4)).sum().backward()
    grad_norm = emb.weight.grad.norm(dim=-1)
    assert (grad_norm[:5] > 0).all() and (grad_norm[5:] == 0).all()


# ---------------------------------------------------------------- RoPE


def reference_rope_interleaved(x, positions, base=10000.0):
    """Complex-number form of RoFormer: channel pair (2i, 2i+1) is one complex number."""
    D = x.shape[-1]
    theta = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], D // 2, 2).contiguous())
    rot = torch.polar(torch.ones_like(theta), positions.double().unsqueeze(-1) * theta)
    return torch.view_as_real(z * rot).reshape(x.shape)


def reference_rope_half(x, positions, base=10000.0):
    """GPT-NeoX form: x * cos + rotate_half(x) * sin, with the angles repeated twice."""
    D = x.shape[-1]
    theta = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    angle = positions.double().unsqueeze(-1) * theta
    cos, sin = torch.cat((angle.cos(), angle.cos()), -1), torch.cat((angle.sin(), angle.sin()), -1)
    x = x.double()
    rotated_half = torch.cat((-x[..., D // 2 :], x[..., : D // 2]), -1)
    return x * cos + rotated_half * sin


@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_matches_independent_references(interleaved):
    x = randn(2, 3, 7, 8)
    pos = torch.arange(7) * 3 + 2
    ref = (reference_rope_interleaved if interleaved else reference_rope_half)(x, pos)
    out = apply_rotary(x, pos, interleaved=interleaved)
    assert out.dtype == x.dtype and torch.allclose(out, ref.float(), atol=1e-5)


def test_rope_hand_computed_2d():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # (L=2, D=2): one pair, theta = 1
    out = apply_rotary(x)
    assert torch.allclose(out, torch.tensor([[1.0, 0.0], [math.cos(1), math.sin(1)]]))


def test_rope_conventions_differ_by_a_fixed_channel_permutation():
    D = 8
    perm = torch.cat((torch.arange(0, D, 2), torch.arange(1, D, 2)))  # evens, then odds
    x = randn(2, 5, D)
    pos = torch.arange(5) + 11
    inter = apply_rotary(x, pos, interleaved=True)
    half = apply_rotary(x[..., perm], pos, interleaved=False)
    assert torch.allclose(inter[..., perm], half, atol=1e-6)
    # without the permutation they disagree away from position 0 ...
    assert not torch.allclose(
        apply_rotary(x, pos, interleaved=True), apply_rotary(x, pos, interleaved=False), atol=1e-3
    )
    # ... and at position 0 both are the identity, so a test there proves nothing
    zero = torch.zeros(5, dtype=torch.long)
    assert torch.equal(apply_rotary(x, zero, interleaved=True), x)
    assert torch.equal(apply_rotary(x, zero, interleaved=False), x)


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(0, 5000),
    n=st.integers(0, 5000),
    shift=st.integers(-500, 500),
    seed=st.integers(0, 10_000),
    interleaved=st.booleans(),
)
def test_rope_scores_depend_only_on_relative_position(m, n, shift, seed, interleaved):
    shift = max(shift, -min(m, n))
    q, k = randn(2, 16, seed=seed, dtype=torch.float64)

    def score(a, b):
        qa = apply_rotary(q.view(1, 16), torch.tensor([a]), interleaved=interleaved)
        kb = apply_rotary(k.view(1, 16), torch.tensor([b]), interleaved=interleaved)
        return (qa * kb).sum().item()

    assert score(m, n) == pytest.approx(score(m + shift, n + shift), abs=1e-6)


def test_rope_preserves_norms_and_dtype():
    x = randn(3, 10, 16)
    assert torch.allclose(apply_rotary(x).norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    h = x.to(torch.bfloat16)
    assert apply_rotary(h).dtype == torch.bfloat16


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary_module_matches_function_and_offsets(interleaved):
    rope = RotaryEmbedding(8, interleaved=interleaved)
    x = randn(2, 4, 20, 8)
    full = rope(x)
    assert torch.allclose(full, apply_rotary(x, interleaved=interleaved), atol=1e-6)
    for t in (0, 7, 19):  # one new token at a time, as in cached decoding
        assert torch.allclose(
            rope(x[..., t : t + 1, :], offset=t), full[..., t : t + 1, :], atol=1e-6
        )
    assert torch.allclose(
        rope(x[..., :3, :], offset=100),
        apply_rotary(x[..., :3, :], torch.arange(100, 103), interleaved=interleaved),
        atol=1e-5,
    )
    assert rope.state_dict() == {}


def test_rope_errors():
    with pytest.raises(ValueError, match="head_dim .* must be even"):
        apply_rotary(torch.zeros(4, 5))
    with pytest.raises(ValueError, match="head_dim must be even"):
        RotaryEmbedding(7)
    with pytest.raises(ValueError, match=r"positions must have shape \(L,\) .*L = 4.*\(5,\)"):
        apply_rotary(torch.zeros(4, 8), torch.arange(5))
    with pytest.raises(TypeError, match="positions must be an integer tensor.*float32"):
        apply_rotary(torch.zeros(4, 8), torch.arange(4.0))
    with pytest.raises(ValueError, match="does not broadcast"):
        apply_rotary(torch.zeros(2, 4, 8), torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        apply_rotary([[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., L, 8\)"):
        RotaryEmbedding(8)(torch.zeros(3, 6))


# ---------------------------------------------------------------- ALiBi


def test_alibi_slopes_power_of_two():
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -(h + 1) for h in range(8)]))


def test_alibi_slopes_six_heads_follow_the_paper_not_the_naive_formula():
    expected = torch.tensor([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])
    assert torch.allclose(alibi_slopes(6), expected)
    naive = torch.tensor([2.0 ** (-8 * (h + 1) / 6) for h in range(6)])
    assert not torch.allclose(alibi_slopes(6), naive)


def test_alibi_slopes_twelve_heads():
    eight = [2.0 ** -(h + 1) for h in range(8)]
    extra = [2.0 ** -(h + 0.5) for h in range(4)]  # every other slope of 16 heads
    assert torch.allclose(alibi_slopes(12), torch.tensor(eight + extra))


def test_alibi_bias_values_and_alignment():
    bias = alibi_bias(2, 3)
    s = alibi_slopes(2)  # [2^-4, 2^-8]
    inf = float("-inf")
    expected0 = torch.tensor([[0, inf, inf], [-1, 0, inf], [-2, -1, 0]]) * torch.tensor(1.0)
    expected0 = torch.where(torch.isinf(expected0), expected0, expected0 * s[0])
    assert torch.equal(bias[0], expected0)
    # bottom-right: 2 new queries against 5 keys sit at positions 3 and 4
    b = alibi_bias(4, 2, 5)
    assert b.shape == (4, 2, 5)
    assert torch.equal(torch.isfinite(b[0]), causal_mask(2, 5))
    assert torch.allclose(b[:, -1, :], alibi_bias(4, 5)[:, -1, :])
    sym = alibi_bias(2, 3, causal=False)
    assert torch.equal(sym, sym.transpose(-2, -1)) and torch.isfinite(sym).all()


@pytest.mark.parametrize("heads", [6, 8, 12])
def test_alibi_attention_is_sdpa_with_the_bias_as_float_mask(heads):
    B, L, D = 2, 9, 8
    q, k, v = (
        randn(B, heads, L, D, seed=1),
        randn(B, heads, L, D, seed=2),
        randn(B, heads, L, D, seed=3),
    )
    out = scaled_dot_product_attention(q, k, v, attn_mask=alibi_bias(heads, L))
    # by hand: softmax(q k^T / sqrt(D) - slope * (i - j)) over j <= i
    slopes = alibi_slopes(heads).view(heads, 1, 1)
    i, j = torch.arange(L).view(L, 1), torch.arange(L)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D) - slopes * (i - j)
    scores = scores.masked_fill(j > i, float("-inf"))
    assert torch.allclose(out, torch.softmax(scores, -1) @ v, atol=1e-5)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=alibi_bias(heads, L))
    assert torch.allclose(out, ref, atol=1e-5)


def test_alibi_errors():
    with pytest.raises(ValueError, match="num_heads"):
        alibi_slopes(0)
    with pytest.raises(ValueError, match="q_len"):
        alibi_bias(4, -1)
    with pytest.raises(ValueError, match="kv_len"):
        alibi_bias(4, 2, 1.5)


def test_positions_must_match_x_leading_shape_not_just_broadcast():
    with pytest.raises(ValueError, match=r"positions of shape \(4, 5\) does not broadcast"):
        apply_rotary(torch.zeros(5, 8), torch.zeros(4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"positions of shape \(7, 5\)"):
        apply_rotary(torch.zeros(1, 5, 8), torch.zeros(7, 5, dtype=torch.long))
    x = randn(2, 3, 5, 8)  # (B, H, L, D), one row of positions per sequence as (B, 1, L)
    pos = torch.stack([torch.arange(5), torch.arange(5) + 10]).unsqueeze(1)
    out = apply_rotary(x, pos)
    assert out.shape == x.shape
    assert torch.allclose(out[1], apply_rotary(x[1], torch.arange(5) + 10))


def test_flags_and_numbers_are_checked():
    import numpy as np

    with pytest.raises(TypeError, match="interleaved must be True or False"):
        apply_rotary(torch.zeros(4, 8), interleaved="no")
    with pytest.raises(TypeError, match="causal must be True or False"):
        alibi_bias(2, 3, causal="no")
    with pytest.raises(ValueError, match="base must be a finite number"):
        sinusoidal_positions(4, 4, base=float("inf"))
    with pytest.raises(TypeError, match="base must be a float"):
        apply_rotary(torch.zeros(4, 8), base="10000")
    with pytest.raises(TypeError, match="dtype must be a floating-point"):
        alibi_bias(2, 3, dtype=torch.long)
    assert sinusoidal_positions(np.int64(3), np.int64(4)).shape == (3, 4)
    assert alibi_bias(2, 3, dtype=torch.float16).dtype == torch.float16
    emb = LearnedPositionalEmbedding(8, 4)
    assert emb(torch.zeros(1, 2, 4, dtype=torch.bfloat16)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="offset 9 do not fit"):
        emb(torch.zeros(1, 0, 4), offset=9)


def test_rotary_module_precision_devices_and_far_offsets():
    rope = RotaryEmbedding(16)
    x = randn(1, 3, 16, dtype=torch.float64)
    assert torch.allclose(
        rope(x, offset=5000), apply_rotary(x, torch.arange(5000, 5003)), atol=1e-10
    )
    rope.half()  # module casts do not touch the tables
    y = randn(1, 3, 16)
    assert torch.allclose(rope(y, offset=7), apply_rotary(y, torch.arange(7, 10)), atol=1e-6)
    far = rope(y, offset=10**9)  # computed on the fly, no giant table
    assert torch.allclose(far, apply_rotary(y, torch.arange(10**9, 10**9 + 3)), atol=1e-3)
    assert max(cos.shape[0] for cos, _ in rope._tables.values()) < 2**17
