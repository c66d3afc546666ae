"""online_softmax, flash_attention and linear_attention against torch, plus memory and FLOPs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from attnbook import causal_mask, scaled_dot_product_attention
from attnbook.attention import _safe_softmax
from attnbook.efficient import (
    BLOCK_KV,
    BLOCK_Q,
    flash_attention,
    linear_attention,
    online_softmax,
    peak_memory_bytes,
)

MiB = 2**20
INF = float("inf")
# (block_q, block_kv) against L = 37, S = 53: sizes that divide neither, one block for
# everything, and the defaults. Blocks of one row and one key are tested on smaller inputs.
BLOCKS = [(7, 5), (16, 16), (64, 13), (100, 100), (BLOCK_Q, BLOCK_KV)]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


def rand(*shape, dtype=torch.float32, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def qkv(L=37, S=53, E=16, Ev=8, batch=(2, 3), dtype=torch.float32):
    return (
        rand(*batch, L, E, dtype=dtype),
        rand(*batch, S, E, dtype=dtype, seed=1),
        rand(*batch, S, Ev, dtype=dtype, seed=2),
    )


def assert_close(ours, theirs, atol=1e-5):
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    err = (ours.double() - theirs.double()).abs().max().item() if ours.numel() else 0.0
    assert err <= atol, err


# --- online softmax -------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [1, 3, 7, 64, 1000])
@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_online_softmax_matches_torch(block_size, dim):
    x = rand(5, 70, 3) * 4
    assert_close(online_softmax(x, dim, block_size=block_size), torch.softmax(x, dim), 1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_online_softmax_dtypes(dtype):
    x = rand(4, 33, dtype=dtype)
    ours = online_softmax(x, block_size=5)
    assert ours.dtype == dtype
    assert torch.allclose(
        ours.double(),
        torch.softmax(x.double(), -1),
        atol=1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-12,
    )


def test_online_softmax_is_stable_for_large_inputs():
    ours = online_softmax(torch.tensor([1000.0, 1001.0]), block_size=1)  # exp(1000) = inf
    assert torch.allclose(ours, torch.tensor([1 / (1 + math.e), math.e / (1 + math.e)]))


def test_online_softmax_leading_masked_blocks_give_no_nan():
    # the running max is -inf for the first two blocks: exp(-inf - (-inf)) would be NaN
    x = torch.tensor([[-INF, -INF, -INF, -INF, 0.5, 2.0, -INF, 1.0]])
    ours = online_softmax(x, block_size=2)
    assert torch.isfinite(ours).all()
    assert_close(ours, torch.softmax(x, -1), 1e-7)


def test_online_softmax_fully_masked_row_is_zero_like_safe_softmax():
    x = rand(3, 10)
    x[1] = -INF
    ours = online_softmax(x, block_size=4)
    assert torch.equal(ours[1], torch.zeros(10))
    assert_close(ours, _safe_softmax(x), 1e-7)


def test_online_softmax_edge_shapes():
    assert torch.equal(online_softmax(torch.tensor(3.0)), torch.tensor(1.0))
    assert online_softmax(torch.empty(2, 0)).shape == (2, 0)


# --- flash attention: values ---------------------------------------------------------------


@pytest.mark.parametrize(("block_q", "block_kv"), BLOCKS)
@pytest.mark.parametrize("case", ["plain", "bool", "float", "scale", "broadcast", "3d"])
def test_flash_matches_torch_sdpa(case, block_q, block_kv):
    q, k, v = qkv()
    kwargs = {}
    if case == "bool":
        kwargs["attn_mask"] = rand(37, 53, seed=3) > 0
    elif case == "float":
        kwargs["attn_mask"] = rand(2, 1, 37, 53, seed=3)
    elif case == "scale":
        kwargs["scale"] = 0.3
    elif case == "broadcast":
        k, v = k[:1], v[:1, :1]
    elif case == "3d":
        q, k, v = q[0], k[0], v[0]
    ours = flash_attention(q, k, v, **kwargs, block_q=block_q, block_kv=block_kv)
    assert_close(ours, F.scaled_dot_product_attention(q, k, v, **kwargs))


@pytest.mark.parametrize("shape", [(2, 1, 1, 53), (53,), (37, 1), (3, 1, 1)])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_flash_broadcast_masks_and_their_gradients(kind, shape):
    q, k, v = (t.requires_grad_() for t in qkv())
    mask = rand(*shape, seed=3)
    mask = mask > -0.5 if kind == "bool" else mask.requires_grad_()
    leaves = (q, k, v, mask) if kind == "float" else (q, k, v)
    ours = flash_attention(q, k, v, attn_mask=mask, block_q=8, block_kv=16)
    theirs = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert_close(ours, theirs)
    grad_out = rand(*ours.shape, seed=4)
    for a, b in zip(
        torch.autograd.grad(ours, leaves, grad_out),
        torch.autograd.grad(theirs, leaves, grad_out),
        strict=True,
    ):
        assert_close(a, b)


@pytest.mark.parametrize("mask", ["none", "bool", "float"])
def test_flash_with_blocks_of_one(mask):
    q, k, v = (t.requires_grad_() for t in qkv(6, 9))
    kwargs = {
        "bool": {"attn_mask": rand(6, 9, seed=3) > -0.5},
        "float": {"attn_mask": rand(6, 9, seed=3)},
        "none": {"is_causal": True},
    }[mask]
    ours = flash_attention(q, k, v, **kwargs, block_q=1, block_kv=1)
    theirs = F.scaled_dot_product_attention(q, k, v, **kwargs)
    assert_close(ours, theirs)
    grad_out = rand(*ours.shape, seed=4)
    for a, b in zip(
        torch.autograd.grad(ours, (q, k, v), grad_out),
        torch.autograd.grad(theirs, (q, k, v), grad_out),
        strict=True,
    ):
        assert_close(a, b)


@pytest.mark.parametrize(("block_q", "block_kv"), BLOCKS)
@pytest.mark.parametrize(("L", "S"), [(53, 53), (37, 53), (53, 37)])
def test_flash_causal(L, S, block_q, block_kv):
    q, k, v = qkv(L, S)
    ours = flash_attention(q, k, v, is_causal=True, block_q=block_q, block_kv=block_kv)
    # is_causal is top-left, as in torch and attnbook: the same as torch for any L, S
    assert_close(ours, scaled_dot_product_attention(q, k, v, is_causal=True))
    assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    # bottom-right (a KV cache) is attn_mask=causal_mask(L, S); its hidden tiles are skipped too
    mask = causal_mask(L, S)
    ours = flash_attention(q, k, v, attn_mask=mask, block_q=block_q, block_kv=block_kv)
    assert_close(ours, scaled_dot_product_attention(q, k, v, attn_mask=mask))


@pytest.mark.parametrize(("block_q", "block_kv"), [(4, 8), (64, 64)])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_flash_fully_masked_rows_give_zero(kind, block_q, block_kv):
    q, k, v = qkv(12, 40)
    mask = rand(12, 40, seed=3) > 0
    mask[3] = False  # a dead row
    mask[5, :32] = False  # only the last key block is visible: leading blocks all masked
    mask[:, :8] = False  # the first key block is hidden from every query: it is skipped
    if kind == "float":
        mask = torch.zeros(12, 40).masked_fill(~mask, -INF)
    ours = flash_attention(q, k, v, attn_mask=mask, block_q=block_q, block_kv=block_kv)
    assert torch.equal(ours[..., 3, :], torch.zeros(2, 3, 8))
    assert_close(ours, scaled_dot_product_attention(q, k, v, attn_mask=mask))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_flash_half_precision_with_huge_logits_is_finite(dtype):
    x = torch.full((1, 2, 9, 64), 40.0, dtype=dtype)  # q.k = 102400 > 65504, the fp16 maximum
    x[..., ::2, :] = -40.0
    ours = flash_attention(x, x, x, block_q=4, block_kv=4)
    assert ours.dtype == dtype and torch.isfinite(ours).all()
    assert_close(ours, scaled_dot_product_attention(x, x, x), 1e-2)
    q, k, v = qkv(dtype=dtype)
    assert_close(
        flash_attention(q, k, v, block_q=8, block_kv=8), scaled_dot_product_attention(q, k, v), 8e-3
    )


def test_flash_float64():
    q, k, v = qkv(dtype=torch.float64)
    assert_close(
        flash_attention(q, k, v, is_causal=True, block_q=5, block_kv=9),
        F.scaled_dot_product_attention(q, k, v, is_causal=True),
        1e-12,
    )


@pytest.mark.parametrize(("L", "S"), [(0, 3), (3, 0), (0, 0)])
def test_flash_empty_queries_or_keys(L, S):
    q, k, v = qkv(L, S)
    assert torch.equal(flash_attention(q, k, v), scaled_dot_product_attention(q, k, v))


# --- flash attention: gradients ------------------------------------------------------------


@pytest.mark.parametrize(("block_q", "block_kv"), [(7, 5), (64, 64)])
@pytest.mark.parametrize("case", ["plain", "bool", "float", "causal", "causal_rect", "broadcast"])
def test_flash_gradients_match_torch(case, block_q, block_kv):
    q, k, v = qkv(L=37 if case == "causal_rect" else 53)
    kwargs = {}
    if case == "bool":
        kwargs["attn_mask"] = rand(53, 53, seed=3) > -0.5
    elif case == "float":
        kwargs["attn_mask"] = rand(3, 53, 53, seed=3).requires_grad_()
    elif case in ("causal", "causal_rect"):
        kwargs["is_causal"] = True
    elif case == "broadcast":
        k, v = k[:1], v[:1]
    leaves = [t.requires_grad_() for t in (q, k, v)] + [
        m for m in kwargs.values() if isinstance(m, torch.Tensor) and m.requires_grad
    ]
    grad_out = rand(2, 3, q.shape[-2], 8, seed=4)
    ours = torch.autograd.grad(
        flash_attention(q, k, v, **kwargs, block_q=block_q, block_kv=block_kv), leaves, grad_out
    )
    theirs = torch.autograd.grad(
        F.scaled_dot_product_attention(q, k, v, **kwargs), leaves, grad_out
    )
    for a, b in zip(ours, theirs, strict=True):
        assert_close(a, b)


def test_flash_gradients_with_dead_rows_match_attnbook():
    q, k, v = (t.requires_grad_() for t in qkv(12, 40))
    mask = rand(12, 40, seed=3) > 0
    mask[3], mask[:, :8] = False, False
    ours = torch.autograd.grad(
        flash_attention(q, k, v, attn_mask=mask, block_q=4, block_kv=8).square().sum(), (q, k, v)
    )
    theirs = torch.autograd.grad(
        scaled_dot_product_attention(q, k, v, attn_mask=mask).square().sum(), (q, k, v)
    )
    for a, b in zip(ours, theirs, strict=True):
        assert torch.isfinite(a).all()
        assert_close(a, b)


def test_flash_gradcheck_float64():
    q, k, v = (t.requires_grad_() for t in qkv(5, 6, 3, 2, batch=(2,), dtype=torch.float64))
    bias = rand(5, 6, dtype=torch.float64, seed=5).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda *t: flash_attention(*t, block_q=2, block_kv=4), (q, k, v, bias)
    )


# --- flash attention: errors ---------------------------------------------------------------

BAD = [
    ((rand(4), rand(4), rand(4)), {}),
    ((rand(2, 3, 8), rand(2, 3, 4), rand(2, 3, 4)), {}),
    ((rand(3, 8), rand(5, 8), rand(4, 8)), {}),
    ((rand(3, 8), rand(5, 8), rand(5, 8)), {"attn_mask": torch.ones(4, 5, dtype=torch.bool)}),
    ((rand(3, 8), rand(5, 8), rand(5, 8)), {"attn_mask": torch.ones(3, 5, dtype=torch.int64)}),
    (
        (rand(3, 8), rand(5, 8), rand(5, 8)),
        {"attn_mask": torch.ones(3, 5, dtype=torch.bool), "is_causal": True},
    ),
    ((rand(3, 8).long(), rand(5, 8), rand(5, 8)), {}),
    ((rand(3, 8), rand(5, 8).double(), rand(5, 8)), {}),
    (([1.0], rand(5, 8), rand(5, 8)), {}),
    ((rand(3, 8), rand(5, 8), rand(5, 8)), {"attn_mask": [[True] * 5] * 3}),
]


@pytest.mark.parametrize(("args", "kwargs"), BAD)
def test_flash_rejects_what_sdpa_rejects_with_the_same_error(args, kwargs):
    with pytest.raises((TypeError, ValueError)) as expected:
        scaled_dot_product_attention(*args, **kwargs)
    with pytest.raises(expected.type) as got:
        flash_attention(*args, **kwargs)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"block_q": 0}, ValueError, "block_q must be an int >= 1, got 0"),
        ({"block_kv": -3}, ValueError, "block_kv must be an int >= 1, got -3"),
        ({"block_q": 2.0}, TypeError, "block_q must be an int >= 1, got float 2.0"),
        ({"block_kv": True}, TypeError, "block_kv must be an int >= 1, got bool True"),
    ],
)
def test_flash_bad_block_sizes(kwargs, error, message):
    q, k, v = qkv()
    with pytest.raises(error, match=message):
        flash_attention(q, k, v, **kwargs)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: online_softmax(rand(3), block_size=0), ValueError, "block_size must be an int"),
        (lambda: online_softmax(rand(3), block_size=False), TypeError, "block_size must be an int"),
        (lambda: online_softmax(rand(3), dim=1), ValueError, r"dim must be an int in \[-1, 1\)"),
        (
            lambda: online_softmax(torch.ones(3, dtype=torch.long)),
            TypeError,
            "x must have a floating-point dtype",
        ),
        (lambda: online_softmax([1.0]), TypeError, "x must be a torch.Tensor, got list"),
        (
            lambda: linear_attention(*qkv(), feature_map="relu"),
            ValueError,
            r"feature_map must be one of \['elu\+1'\] or a callable, got 'relu'",
        ),
        (
            lambda: linear_attention(*qkv(), feature_map=3),
            TypeError,
            "feature_map must be a str or a callable, got int",
        ),
        (lambda: linear_attention(*qkv(), causal=True), ValueError, r"needs .* \(L == S\)"),
        (
            lambda: linear_attention(rand(3, 8), rand(5, 4), rand(5, 4)),
            ValueError,
            "same last .head. dimension",
        ),
    ],
)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


# --- memory and FLOPs ----------------------------------------------------------------------


def test_peak_memory_bytes_counts_live_storage():
    x = torch.ones(1024)  # 4 KiB that exist before the call: not counted
    assert peak_memory_bytes(lambda: x[:10].add_(1)) == 0  # a view, updated in place
    assert peak_memory_bytes(lambda: x * 2) == 4096
    # two 4 KiB temporaries alive at once, then freed; the 4 KiB result is what remains
    assert peak_memory_bytes(lambda: (x * 2 + 1).sum()) == 8192
    assert peak_memory_bytes(lambda: [x + i for i in range(3)]) == 3 * 4096


def train(attention, q, k, v):
    return lambda: attention(q, k, v).sum().backward()


def test_peak_memory_is_the_same_on_the_meta_device():
    # meta tensors allocate (on paper) exactly what CPU tensors allocate, without computing
    # anything: the bounds below measure naive attention that way, flash attention for real
    def peaks(device):
        n, E = 512, 64
        q, k, v = (rand(1, 1, n, E, seed=s).to(device).requires_grad_() for s in range(3))
        return [
            peak_memory_bytes(lambda: scaled_dot_product_attention(q, k, v)),
            peak_memory_bytes(lambda: flash_attention(q, k, v)),
            peak_memory_bytes(train(scaled_dot_product_attention, q, k, v)),
            peak_memory_bytes(train(flash_attention, q, k, v)),
        ]

    assert peaks("meta") == peaks("cpu")


def test_naive_attention_holds_the_scores_and_flash_attention_does_not():
    n, E = 8192, 64
    scores = n * n * 4  # one float32 (L, S) matrix: 256 MiB
    q, k, v = (torch.empty(1, 1, n, E, device="meta") for _ in range(3))
    assert peak_memory_bytes(lambda: scaled_dot_product_attention(q, k, v)) >= scores
    q, k, v = (rand(1, 1, n, E, seed=s) for s in range(3))
    peak = peak_memory_bytes(lambda: flash_attention(q, k, v))
    # the output (2 MiB), score tiles (BLOCK_Q * BLOCK_KV floats) and O(n) row statistics
    assert peak <= n * E * 4 + 2 * BLOCK_Q * BLOCK_KV * 4 + 64 * n < 16 * MiB, peak / MiB


def test_flash_backward_memory_is_linear_in_n():
    n, E = 4096, 64
    q, k, v = (torch.empty(1, 1, n, E, device="meta", requires_grad=True) for _ in range(3))
    assert peak_memory_bytes(train(scaled_dot_product_attention, q, k, v)) >= n * n * 4
    q, k, v = (rand(1, 1, n, E, seed=s).requires_grad_() for s in range(3))
    peak = peak_memory_bytes(train(flash_attention, q, k, v))
    assert peak < 16 * MiB, peak / MiB  # the three gradients are 3 MiB of it


def counted_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_flop_counter_sees_four_n_squared_d_per_head():
    B, H, n, E = 2, 3, 64, 16
    q, k, v = (rand(B, H, n, E, seed=s) for s in range(3))
    matmuls = 4 * n * n * E * B * H  # q k^T and p v, 2 n^2 E each (a multiply-add is 2 FLOPs)
    assert counted_flops(lambda: scaled_dot_product_attention(q, k, v)) == matmuls
    # the same matrix products, one tile at a time: no recomputation in the forward pass
    assert counted_flops(lambda: flash_attention(q, k, v, block_q=16, block_kv=32)) == matmuls
    # causal tiles above the diagonal are skipped: 10 of the 16 16x16 tiles are computed
    assert (
        counted_flops(lambda: flash_attention(q, k, v, is_causal=True, block_q=16, block_kv=16))
        == matmuls * 10 // 16
    )
    # torch's fused CPU kernel has no FLOP formula registered: it counts as 0
    assert counted_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == 0


# --- linear attention ----------------------------------------------------------------------


def naive_linear(q, k, v, causal):
    """O(n^2) form of the same formula: phi(q) phi(k)^T, masked, rows normalised to sum 1."""
    phi = lambda x: F.elu(x) + 1  # noqa: E731
    w = phi(q.double()) @ phi(k.double()).transpose(-2, -1)  # (..., L, S)
    if causal:
        w = w * causal_mask(q.shape[-2], k.shape[-2])
    return (w / w.sum(-1, keepdim=True)) @ v.double()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", ["plain", "broadcast", "3d"])
def test_linear_attention_matches_the_quadratic_form(case, causal):
    q, k, v = qkv(L=40, S=40)
    if case == "broadcast":
        k, v = k[:1], v[:1]
    elif case == "3d":
        q, k, v = q[0], k[0], v[0]
    ours = linear_attention(q, k, v, causal=causal)
    assert ours.dtype == torch.float32
    assert_close(ours.double(), naive_linear(q, k, v, causal))


def test_linear_attention_rectangular_half_and_custom_map():
    q, k, v = qkv(L=7, S=30, dtype=torch.float16)
    ours = linear_attention(q, k, v)
    assert ours.dtype == torch.float16
    assert_close(ours.double(), naive_linear(q, k, v, False), 3e-3)
    q, k, v = qkv(L=7, S=30)
    relu = linear_attention(q, k, v, feature_map=lambda x: F.relu(x) + 1e-3)
    w = (F.relu(q) + 1e-3) @ (F.relu(k) + 1e-3).transpose(-2, -1)
    assert_close(relu, (w / w.sum(-1, keepdim=True)) @ v)


def test_linear_attention_no_keys_gives_zero():
    q, k, v = qkv(L=4, S=0)
    assert torch.equal(linear_attention(q, k, v), torch.zeros(2, 3, 4, 8))
