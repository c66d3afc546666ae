"""Benchmarks: attnbook against a baseline, measured in the same run.

Run ``python -m attnbook.bench`` (or ``make bench``). Each case times attnbook and its
baseline alternately, call after call, and reports the median of each and their ratio,
so that a noisy machine slows both sides alike. Timings never appear in tests.

The baseline is PyTorch's reference module (``mha``), or the same model without a KV
cache (``decode``, ``generate``: there a ratio of 0.1 means the cache is 10x faster).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from attnbook.generation import KVCache, generate
from attnbook.gpt import GPT, GPTConfig
from attnbook.multihead import MultiHeadAttention


@dataclass
class Result:
    name: str
    ours_ms: float
    torch_ms: float

    @property
    def ratio(self) -> float:
        return self.ours_ms / self.torch_ms

    def row(self) -> str:
        return (f"| {self.name} | {self.ours_ms:.2f} | {self.torch_ms:.2f} | "
                f"{self.ratio:.3f} |")


def interleaved(ours: Callable[[], object], theirs: Callable[[], object], *, repeats: int = 30,
                warmup: int = 3) -> tuple[float, float]:
    """Median milliseconds of each callable, timed alternately (ours, theirs, ours, ...)."""
    for _ in range(warmup):
        ours()
        theirs()
    a, b = [], []
    for i in range(repeats):
        order = ((ours, a), (theirs, b)) if i % 2 == 0 else ((theirs, b), (ours, a))
        for fn, bucket in order:
            start = time.perf_counter()
            fn()
            bucket.append((time.perf_counter() - start) * 1e3)
    return statistics.median(a), statistics.median(b)


def bench_multihead(batch: int = 8, length: int = 512, embed: int = 512, heads: int = 8,
                    repeats: int = 30) -> Result:
    """MultiHeadAttention against nn.MultiheadAttention: eval, inference_mode, no weights."""
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(embed, heads, batch_first=True).eval()
    ours = MultiHeadAttention.from_torch(reference).eval()
    x = torch.randn(batch, length, embed)
    with torch.inference_mode():
        ms_ours, ms_torch = interleaved(
            lambda: ours(x, need_weights=False),
            lambda: reference(x, x, x, need_weights=False),
            repeats=repeats,
        )
    return Result(f"MultiHeadAttention B={batch} L={length} E={embed} H={heads}", ms_ours, ms_torch)


def _decoder(vocab: int = 256) -> GPT:
    """A small GPT for the cache cases: 4 layers, 4 heads, width 256, context 1024."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=vocab, block_size=1024, n_layer=4, n_head=4, n_embd=256)
    return GPT(config).eval()


def bench_decode(context: int = 512, repeats: int = 30) -> Result:
    """One decoding step at ``context`` tokens: with a KV cache of ``context - 1`` tokens,
    against re-reading all ``context`` tokens (the baseline).

    Both sides produce the same next-token logits. The small vocabulary (256) keeps the
    output head, which the uncached forward applies at every position, from dominating.
    Each cached call appends to a fresh copy of the prefilled cache, so every call sees
    the same ``context - 1`` cached tokens.
    """
    model = _decoder()
    seq = torch.randint(0, 256, (1, context), generator=torch.Generator().manual_seed(0))
    prefilled = KVCache(model.config.n_layer)
    with torch.inference_mode():
        model(seq[:, :-1], kv_cache=prefilled)
        ms_cached, ms_full = interleaved(
            lambda: model(seq[:, -1:], kv_cache=prefilled.copy())[:, -1],
            lambda: model(seq)[:, -1],
            repeats=repeats,
        )
    return Result(f"decode 1 token at context {context}: KV cache vs none (4x256 GPT)",
                  ms_cached, ms_full)


def bench_generate(context: int = 512, new_tokens: int = 16, repeats: int = 30) -> Result:
    """``generate`` end to end: a prompt of ``context - new_tokens`` tokens, then
    ``new_tokens`` greedy tokens, with ``use_cache=True`` against ``use_cache=False``.

    The cached side includes its prefill (one forward over the prompt). Each uncached
    call is ``new_tokens`` full forwards, so this case runs at most 3 repeats.
    """
    model = _decoder()
    prompt = torch.randint(0, 256, (1, context - new_tokens),
                           generator=torch.Generator().manual_seed(0))
    ms_cached, ms_full = interleaved(
        lambda: generate(model, prompt, new_tokens, temperature=0, use_cache=True),
        lambda: generate(model, prompt, new_tokens, temperature=0, use_cache=False),
        repeats=min(repeats, 3), warmup=1,
    )
    return Result(f"generate {new_tokens} tokens up to context {context}: KV cache vs none",
                  ms_cached, ms_full)


def bench_decode_all(repeats: int = 30) -> list[Result]:
    return [bench_decode(context, repeats) for context in (128, 512, 1024)]


def bench_generate_all(repeats: int = 30) -> list[Result]:
    return [bench_generate(context, repeats=repeats) for context in (128, 512)]


CASES = {"mha": bench_multihead, "decode": bench_decode_all, "generate": bench_generate_all}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", metavar="case", help=f"any of {', '.join(CASES)}")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s) {', '.join(sorted(unknown))}; "
                     f"choose from {', '.join(CASES)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| case | attnbook ms (median) | baseline ms (median) | ratio |")
    print("|---|---|---|---|")
    for name in args.cases or CASES:
        results = CASES[name](repeats=args.repeats)
        for result in results if isinstance(results, list) else [results]:
            print(result.row(), flush=True)


if __name__ == "__main__":
    main()
