"""Benchmarks: attnbook against the PyTorch reference, measured in the same run.

Run ``python -m attnbook.bench`` (or ``make bench``). Each case times attnbook and
torch alternately, call after call, and reports the median of each and their ratio,
so that a noisy machine slows both sides alike. Timings never appear in tests.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

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


CASES = {"mha": bench_multihead}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", metavar="case", help=f"any of {', '.join(CASES)}")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s) {', '.join(sorted(unknown))}; choose from {', '.join(CASES)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| case | attnbook ms (median) | torch ms (median) | ratio |")
    print("|---|---|---|---|")
    for name in args.cases or CASES:
        print(CASES[name](repeats=args.repeats).row(), flush=True)


if __name__ == "__main__":
    main()
