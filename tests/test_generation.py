"""Generation: the KV cache gives the uncached logits at every step, its size, and sampling."""

from __future__ import annotations

import pytest
import torch

from attnbook.generation import (
    KVCache,
    generate,
    kv_cache_bytes,
    sample_next,
    top_k_logits,
    top_p_logits,
)
from attnbook.gpt import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py

V = 37


def model(seed=0, **overrides) -> GPT:
    fields = dict(vocab_size=V, block_size=24, n_layer=2, n_head=4, n_embd=32)
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**fields, **overrides})).eval()


def tokens(*shape, seed=1):
    return torch.randint(0, V, shape, generator=torch.Generator().manual_seed(seed))


VARIANTS = {
    "learned": dict(),
    "rope": dict(positions="rope"),
    "alibi": dict(positions="alibi"),
    "gqa": dict(n_kv_head=2),
    "mqa": dict(n_kv_head=1),
    "rope-gqa": dict(positions="rope", n_kv_head=2),
    "alibi-mqa": dict(positions="alibi", n_kv_head=1),
    "rmsnorm-swiglu": dict(norm="rmsnorm", mlp="swiglu", bias=False, tie_weights=False),
}


# --- the cache gives the same logits -----------------------------------------------------


@pytest.mark.parametrize("name", VARIANTS)
def test_cached_logits_equal_uncached_at_every_step(name):
    m = model(**VARIANTS[name])
    seq = tokens(2, 5)
    cache = KVCache(2)
    with torch.no_grad():
        prefill = m(seq, kv_cache=cache)
        assert torch.allclose(prefill, m(seq), atol=1e-5)
        logits = prefill[:, -1]
        for _ in range(10):
            nxt = logits.argmax(-1, keepdim=True)  # (B, 1)
            seq = torch.cat((seq, nxt), dim=1)
            logits = m(nxt, kv_cache=cache)[:, -1]
            assert torch.allclose(logits, m(seq)[:, -1], atol=1e-5)
    assert cache.length == seq.shape[1] == 15
    greedy = generate(m, seq[:, :5], 10, temperature=0)
    assert torch.equal(greedy, seq)
    assert torch.equal(generate(m, seq[:, :5], 10, temperature=0, use_cache=False), seq)


@pytest.mark.parametrize("name", ["learned", "rope", "alibi-mqa"])
def test_chunks_after_a_cached_prefix_are_aligned_bottom_right(name):
    # several new queries at once with a non-empty cache: query i sits at offset + i
    m = model(**VARIANTS[name])
    seq = tokens(3, 14)
    cache = KVCache(2)
    with torch.no_grad():
        parts = [m(seq[:, a:b], kv_cache=cache) for a, b in ((0, 4), (4, 5), (5, 11), (11, 14))]
        assert torch.allclose(torch.cat(parts, dim=1), m(seq), atol=1e-5)


def test_generate_without_cache_crops_to_block_size():
    m = model(block_size=8)
    out = generate(m, tokens(1, 3), 12, temperature=0, use_cache=False)
    assert out.shape == (1, 15)
    with torch.no_grad():
        for t in range(8, 15):  # token t was chosen from the 8 tokens before it
            assert out[0, t] == m(out[:, t - 8 : t])[0, -1].argmax()


def test_generate_with_cache_refuses_to_run_past_block_size():
    m = model(block_size=8)
    assert generate(m, tokens(1, 3), 6, temperature=0).shape == (1, 9)  # reads 8 tokens
    with pytest.raises(ValueError, match=r"3 \+ 7 - 1 = 9 positions, more than block_size=8"):
        generate(m, tokens(1, 3), 7)


# --- the cache's size --------------------------------------------------------------------


def test_cache_tensors_have_the_documented_shape():
    m = model(n_kv_head=2)
    cache = KVCache(2)
    m(tokens(3, 7), kv_cache=cache)
    for k, v in zip(cache.keys, cache.values, strict=True):
        assert k.shape == v.shape == (3, 2, 7, 8)  # (B, H_kv, T, D)
    assert (cache.length, cache.batch_size) == (7, 3)
    assert "length=7" in repr(cache)


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_measured_cache_bytes_match_the_formula(n_kv_head):
    m = model(n_kv_head=n_kv_head)
    cache = KVCache(2)
    m(tokens(2, 9), kv_cache=cache)
    measured = sum(t.element_size() * t.numel() for t in cache.keys + cache.values)
    assert measured == cache.nbytes()
    assert measured == kv_cache_bytes(2, n_kv_head, 8, 9, batch_size=2, dtype=torch.float32)


def test_half_precision_cache_is_half_the_bytes():
    m = model(n_kv_head=2, positions="rope").to(torch.bfloat16)
    cache = KVCache(2)
    m(tokens(2, 9), kv_cache=cache)
    assert cache.keys[0].dtype == torch.bfloat16
    assert cache.nbytes() == kv_cache_bytes(2, 2, 8, 9, batch_size=2, dtype=torch.bfloat16)


def test_gqa_shrinks_the_measured_cache_by_the_group_size():
    sizes = {}
    for n_kv_head in (4, 2, 1):
        cache = KVCache(2)
        model(n_kv_head=n_kv_head)(tokens(1, 11), kv_cache=cache)
        sizes[n_kv_head] = cache.nbytes()
    assert sizes[4] == 2 * sizes[2] == 4 * sizes[1]


def test_kv_cache_bytes_for_llama_2_7b():
    per_token = kv_cache_bytes(32, 32, 128, 1)
    assert per_token == 524_288  # 512 KiB
    assert kv_cache_bytes(32, 32, 128, 4096) == 2 * 1024**3  # 2 GiB
    assert kv_cache_bytes(32, 8, 128, 4096, batch_size=4, dtype=torch.bfloat16) == 2 * 1024**3
    assert kv_cache_bytes(32, 32, 128, 4096, dtype=torch.float32) == 4 * 1024**3
    assert kv_cache_bytes(32, 32, 128, 0) == 0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n_layer=0), ValueError, "n_layer must be >= 1"),
        (dict(n_kv_head=2.0), TypeError, "n_kv_head must be an int"),
        (dict(seq_len=-1), ValueError, "seq_len must be >= 0"),
        (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
        (dict(dtype="float16"), TypeError, "dtype must be a torch.dtype"),
    ],
)
def test_kv_cache_bytes_refuses_bad_arguments(kwargs, error, match):
    args = dict(n_layer=2, n_kv_head=2, head_dim=8, seq_len=4) | kwargs
    dtype = args.pop("dtype", torch.float16)
    batch = args.pop("batch_size", 1)
    with pytest.raises(error, match=match):
        kv_cache_bytes(**args, batch_size=batch, dtype=dtype)


def test_cache_update_checks():
    cache = KVCache(2)
    with pytest.raises(ValueError, match="n_layer must be >= 1"):
        KVCache(0)
    with pytest.raises(ValueError, match="layer must be < n_layer=2"):
        cache.update(2, torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match=r"key must have shape \(B, H_kv, T, D\)"):
        cache.update(0, torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))
    cache.update(0, torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match="the cache holds batch size 1, got key of batch size 2"):
        cache.update(0, torch.zeros(2, 2, 1, 4), torch.zeros(2, 2, 1, 4))
    with pytest.raises(ValueError, match="layer 0 caches"):
        cache.update(0, torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4))
    with pytest.raises(TypeError, match="layer 0 caches torch.float32, got key in torch.float64"):
        cache.update(0, torch.zeros(1, 2, 1, 4).double(), torch.zeros(1, 2, 1, 4).double())
    cache.update(1, torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))
    branch = cache.copy()
    for layer in (0, 1):
        branch.update(layer, torch.ones(1, 2, 2, 4), torch.ones(1, 2, 2, 4))
    assert (cache.keys[0].shape[2], branch.keys[0].shape[2]) == (3, 5)
    assert (cache.length, branch.length) == (3, 5)


def test_cache_key_and_value_must_match_from_the_first_update():
    cache = KVCache(1)
    with pytest.raises(
        TypeError, match="key and value must share one dtype, got torch.float32 and torch.float16"
    ):
        cache.update(0, torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4).half())
    with pytest.raises(ValueError, match="key and value must be on one device, got cpu and meta"):
        cache.update(0, torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4, device="meta"))
    with pytest.raises(ValueError, match="key and value must have one shape"):
        cache.update(0, torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 2, 4))
    assert cache.length == 0 and cache.keys == [None]


def test_cache_layers_must_hold_as_many_tokens():
    kv = torch.zeros(1, 2, 3, 4)
    cache = KVCache(2)
    with pytest.raises(
        ValueError,
        match="layer 1 would hold 3 tokens after this update, but "
        "layer 0 holds 0: update the layers in order, 0 to 1",
    ):
        cache.update(1, kv, kv)
    cache.update(0, kv, kv)
    with pytest.raises(
        ValueError, match="layer 1 would hold 1 tokens after this update, but layer 0 holds 3"
    ):
        cache.update(1, kv[:, :, :1], kv[:, :, :1])
    with pytest.raises(
        ValueError, match="layer 0 caches batch size 1, got key of batch size 2 for layer 1"
    ):
        cache.update(1, torch.zeros(2, 2, 3, 4), torch.zeros(2, 2, 3, 4))
    # layer 0 again before layer 1 caught up: the last forward stopped part-way
    with pytest.raises(
        ValueError,
        match=r"the layers hold different numbers of tokens, \[3, 0\]: "
        r"a forward stopped part-way",
    ):
        cache.update(0, kv, kv)
    cache.update(1, kv, kv)
    cache.update(0, kv, kv)  # a complete round, then a new one
    assert cache.length == 6


def test_a_model_forward_that_failed_part_way_is_caught_at_the_next():
    m = model()
    cache = KVCache(2)
    m(tokens(1, 3), kv_cache=cache)
    cache.update(0, *(t[:, :, -1:] for t in (cache.keys[0], cache.values[0])))  # layer 0 only
    with pytest.raises(ValueError, match=r"the layers hold different numbers of tokens, \[4, 3\]"):
        m(tokens(1, 1), kv_cache=cache)


# --- sampling ----------------------------------------------------------------------------


def test_top_k_and_greedy():
    m = model()
    prompt = tokens(2, 4)
    greedy = generate(m, prompt, 8, temperature=0)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        assert torch.equal(generate(m, prompt, 8, top_k=1, generator=g), greedy)
        assert torch.equal(generate(m, prompt, 8, top_p=1e-9, generator=g), greedy)


def test_seeded_generator_is_reproducible():
    m = model()
    prompt = tokens(2, 4)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return generate(m, prompt, 12, temperature=1.5, generator=g)

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))
    assert torch.equal(
        run(7),
        generate(
            m,
            prompt,
            12,
            temperature=1.5,
            use_cache=False,
            generator=torch.Generator().manual_seed(7),
        ),
    )


def test_temperature_scales_the_distribution():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    rows = logits.expand(20000, 4)
    for temperature in (0.5, 1.0, 2.0):
        g = torch.Generator().manual_seed(0)
        draws = sample_next(rows, temperature=temperature, generator=g)
        freq = torch.bincount(draws, minlength=4) / 20000
        assert torch.allclose(freq, torch.softmax(logits / temperature, -1), atol=0.015)


def test_top_k_logits_keeps_exactly_k():
    logits = torch.tensor([[0.1, 3.0, 3.0, -2.0, 1.0]])
    kept = top_k_logits(logits, 2)
    assert torch.isfinite(kept).sum() == 2 and torch.equal(kept[0, 1:3], logits[0, 1:3])
    assert torch.equal(top_k_logits(logits, 10), logits)  # k > V keeps everything
    with pytest.raises(ValueError, match="k must be >= 1"):
        top_k_logits(logits, 0)


@pytest.mark.parametrize("p, kept", [(1e-9, 1), (0.49, 1), (0.6, 2), (0.9, 3), (1.0, 4)])
def test_top_p_logits_keeps_the_smallest_nucleus(p, kept):
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])  # sorted: 0.5, 0.3, 0.15, 0.05
    result = top_p_logits(probs.log().unsqueeze(0), p)
    order = [1, 3, 0, 2]
    assert torch.isfinite(result[0, order[:kept]]).all()
    assert torch.isinf(result[0, order[kept:]]).all()


def test_no_nan_with_extreme_logits():
    logits = torch.full((3, 50), -1e4)
    logits[0, 7] = logits[1, 3] = 1e4
    logits[2, 10:13] = 1e4  # a three-way tie at the top
    for kwargs in (
        dict(),
        dict(top_k=1),
        dict(top_p=1e-9),
        dict(temperature=1e-6),
        dict(temperature=1e-30, top_k=5, top_p=0.5),
        dict(temperature=100.0),
    ):
        draws = sample_next(logits, generator=torch.Generator().manual_seed(0), **kwargs)
        assert draws[:2].tolist() == [7, 3], kwargs
        assert 10 <= draws[2] <= 12, kwargs
    half = sample_next(logits.half(), top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert half[:2].tolist() == [7, 3]


def test_sample_next_refuses_bad_logits():
    with pytest.raises(ValueError, match="logits must be finite or -inf"):
        sample_next(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="at least one finite entry"):
        sample_next(torch.full((1, 3), float("-inf")))
    with pytest.raises(ValueError, match=r"logits must have shape \(B, V\)"):
        sample_next(torch.zeros(3))
    with pytest.raises(TypeError, match="logits must be floating point"):
        sample_next(torch.zeros(1, 3, dtype=torch.long))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(top_p=0.0), ValueError, r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), ValueError, r"top_p must be in \(0, 1\]"),
        (dict(top_p="0.9"), TypeError, "top_p must be a number"),
        (dict(top_k=0), ValueError, "top_k must be >= 1"),
        (dict(top_k=2.0), TypeError, "top_k must be an int"),
        (dict(temperature=-0.5), ValueError, "temperature must be a finite number >= 0"),
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(temperature=None), TypeError, "temperature must be a number"),
        (dict(max_new_tokens=-1), ValueError, "max_new_tokens must be >= 0"),
    ],
)
def test_generate_refuses_bad_arguments(kwargs, error, match):
    m = model()
    n = kwargs.pop("max_new_tokens", 3)
    with pytest.raises(error, match=match):
        generate(m, tokens(1, 4), n, **kwargs)


def test_generate_refuses_bad_prompts():
    m = model()
    with pytest.raises(ValueError, match="T=25, longer than block_size=24; pass use_cache=False"):
        generate(m, tokens(1, 25), 1)
    with pytest.raises(
        ValueError,
        match=r"idx must hold at least one prompt \(B >= 1\), got "
        r"shape \(0, 4\)",
    ):
        generate(m, torch.zeros(0, 4, dtype=torch.long), 2)
    with pytest.raises(
        TypeError,
        match=r"idx must hold integer token ids \(torch.long, or "
        r"torch.int32\), got torch.uint8",
    ):
        generate(m, tokens(1, 3).to(torch.uint8), 1)
    with pytest.raises(
        ValueError,
        match=r"idx holds token ids in \[0, 40\], outside the "
        r"vocabulary \[0, 37\)",
    ):
        generate(m, torch.tensor([[0, 40]]), 1)
    with pytest.raises(ValueError, match=r"idx holds token ids in \[-3, 1\]"):
        generate(m, torch.tensor([[-3, 1]]), 1)
    with pytest.raises(TypeError, match="idx must hold integer token ids"):
        generate(m, torch.zeros(1, 3), 1)
    with pytest.raises(ValueError, match=r"idx must have shape \(B, T\)"):
        generate(m, torch.zeros(1, 0, dtype=torch.long), 1)
    with pytest.raises(TypeError, match="model must be a GPT"):
        generate(lambda x: x, tokens(1, 3), 1)


def test_zero_new_tokens_returns_a_copy_of_the_prompt():
    prompt = tokens(2, 5)
    for use_cache in (True, False):
        out = generate(model(), prompt, 0, use_cache=use_cache)
        assert torch.equal(out, prompt)
        assert out is not prompt and out.data_ptr() != prompt.data_ptr()
        out[0, 0] += 1  # the caller's prompt does not change
        assert not torch.equal(out, prompt)


def test_generate_without_cache_crops_a_long_prompt():
    # as the docstring says: without the cache the context is the last block_size tokens
    m = model(block_size=8)
    prompt = tokens(2, 11)
    out = generate(m, prompt, 3, temperature=0, use_cache=False)
    assert out.shape == (2, 14) and torch.equal(out[:, :11], prompt)
    assert torch.equal(
        out[:, 11:], generate(m, prompt[:, -8:], 3, temperature=0, use_cache=False)[:, 8:]
    )
    with pytest.raises(ValueError, match="T=11, longer than block_size=8"):
        generate(m, prompt, 3)  # the cache needs every position


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(use_cache=1), TypeError, "use_cache must be a bool, got int 1"),
        (dict(use_cache=None), TypeError, "use_cache must be a bool, got NoneType"),
        (dict(generator=0), TypeError, "generator must be a torch.Generator or None, got int"),
        (dict(temperature=True), TypeError, "temperature must be a number, got bool"),
        (dict(top_p=True), TypeError, "top_p must be a number, got bool"),
        (dict(top_k=True), TypeError, "top_k must be an int, got bool"),
    ],
)
def test_generate_refuses_arguments_of_the_wrong_type(kwargs, error, match):
    with pytest.raises(error, match=match):
        generate(model(), tokens(1, 4), 2, **kwargs)


def test_generator_must_be_on_the_logits_device():
    logits = torch.zeros(1, 3, device="meta")  # any device other than the generator's
    with pytest.raises(
        ValueError,
        match="generator must be on the device of the logits, meta, got a generator on cpu",
    ):
        sample_next(logits, generator=torch.Generator())
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None"):
        sample_next(torch.zeros(1, 3), generator=7)


def test_numpy_scalars_are_numbers_too():
    np = pytest.importorskip("numpy")
    m = model()
    prompt = tokens(2, 4)

    def run(**kwargs):
        return generate(
            m, prompt, kwargs.pop("n", 5), generator=torch.Generator().manual_seed(3), **kwargs
        )

    expected = run(temperature=0.5, top_k=5, top_p=0.75)
    assert torch.equal(
        run(temperature=np.float64(0.5), top_k=np.int64(5), top_p=np.float64(0.75), n=np.int64(5)),
        expected,
    )
    assert torch.equal(
        run(temperature=np.float32(0.5), top_k=np.int32(5), top_p=np.float32(0.75)), expected
    )
    greedy = generate(m, prompt, 5, temperature=0)
    assert torch.equal(run(temperature=np.float32(0), n=np.int8(5)), greedy)
    with pytest.raises(TypeError, match="top_k must be an int, got bool"):
        generate(m, prompt, 2, top_k=np.bool_(True))
    with pytest.raises(TypeError, match="max_new_tokens must be an int, got float64"):
        generate(m, prompt, np.float64(2.0))
    assert torch.equal(
        top_k_logits(torch.tensor([[1.0, 3.0, 2.0]]), np.int64(1)),
        torch.tensor([[-torch.inf, 3.0, -torch.inf]]),
    )
    assert kv_cache_bytes(np.int64(2), 2, 8, 4) == kv_cache_bytes(2, 2, 8, 4)
    assert type(kv_cache_bytes(np.int64(2), 2, 8, 4)) is int


# --- extreme settings: never NaN ----------------------------------------------------------


@pytest.mark.parametrize(
    "logits, temperature, allowed",
    [
        # the float32 temperature used to round to 0: the top logit became 0 / 0
        ([[1.0, 3.0, 2.0]], 1e-46, {1}),
        ([[1.0, 3.0, 2.0]], 1e-300, {1}),
        ([[1.0, 3.0, 3.0]], 1e-300, {1, 2}),  # a tie stays a tie
        # the float32 temperature used to round to inf: -inf / inf is NaN
        ([[0.0, 1.0, -torch.inf]], 1e39, {0, 1}),
        ([[0.0, 1.0, -torch.inf]], 1e308, {0, 1}),
    ],
)
def test_sample_next_takes_any_positive_temperature(logits, temperature, allowed):
    rows = torch.tensor(logits).expand(200, -1)
    draws = sample_next(rows, temperature=temperature, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == allowed  # a huge temperature is uniform over the finite ones


@pytest.mark.parametrize(
    "logits, allowed",
    [
        ([[1e300, 0.0]], {0}),  # became [inf, 0] in float32, then inf - inf
        ([[-1e300, -1e300]], {0, 1}),  # became [-inf, -inf]: a row with no finite entry
        ([[-1e300, -1e300 + 1e285, -torch.inf]], {1}),
        ([[1e300, -1e300]], {0}),
    ],
)
def test_sample_next_shifts_float64_logits_before_float32(logits, allowed):
    rows = torch.tensor(logits, dtype=torch.float64).expand(200, -1)
    for kwargs in (dict(), dict(top_k=2), dict(top_p=0.9), dict(temperature=1e-300)):
        draws = sample_next(rows, generator=torch.Generator().manual_seed(0), **kwargs)
        assert set(draws.tolist()) <= allowed, kwargs
    assert set(sample_next(rows, generator=torch.Generator().manual_seed(0)).tolist()) == allowed


def test_filters_refuse_nan_and_inf():
    for bad in (float("nan"), float("inf")):
        logits = torch.tensor([[0.0, bad, 1.0]])
        with pytest.raises(ValueError, match="logits must be finite or -inf, got NaN or \\+inf"):
            top_k_logits(logits, 1)  # NaN used to be kept as the top entry
        with pytest.raises(ValueError, match="logits must be finite or -inf, got NaN or \\+inf"):
            top_p_logits(logits, 0.5)  # used to return a row of -inf only
    with pytest.raises(ValueError, match="every row of logits needs at least one finite entry"):
        top_p_logits(torch.full((2, 3), -torch.inf), 0.5)


def test_top_p_of_one_keeps_every_token():
    logits = torch.tensor([[0.0, 0.0, -20.0], [0.0, -30.0, -torch.inf]])
    assert torch.equal(top_p_logits(logits, 1.0), logits)  # float32 cumsum reached 1.0 at 2
    assert top_p_logits(logits, 1.0) is not logits
    # just under 1: the float64 running sum still sees the third token's 1e-9
    assert torch.equal(top_p_logits(logits[:1], 1 - 1e-10), logits[:1])
    assert torch.isneginf(top_p_logits(logits[:1], 0.99)[0, 2])
