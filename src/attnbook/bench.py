"""Benchmarks: attnbook against a baseline, measured in the same run.

Run ``python -m attnbook.bench`` (or ``make bench``). Each case times attnbook and its
baseline alternately, call after call (A B A B ...), so that a noisy machine slows both
sides alike. It reports the median of the per-pair ratios ours/baseline, their spread
(the interquartile range), the share of the measured matmul roof that attnbook's side
reaches where its FLOPs are known, and peak tensor memory where it matters. Timings
never appear in tests.

The baseline is PyTorch's own op or module, or, for the KV-cache case, the same model
without a cache (there a ratio of 0.1 means the cache is 10x faster).

Results are printed as a Markdown table and written to ``docs/results/``: one
``bench-<case>.md`` table per case (included by the chapters) and ``bench.json`` with
every number and the machine (torch version, threads, CPU model).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from attnbook.attention import scaled_dot_product_attention
from attnbook.efficient import flash_attention, peak_memory_bytes
from attnbook.generation import KVCache
from attnbook.gpt import GPT, GPTConfig
from attnbook.multihead import MultiHeadAttention


@dataclass
class Row:
    """One measured comparison. Times in ms (medians), memory in bytes."""

    case: str
    ours: str
    baseline: str
    ours_ms: float
    baseline_ms: float
    ratio: float  # median of the per-pair ratios ours / baseline
    spread: tuple[float, float]  # interquartile range of those ratios
    roof_pct: float | None = None  # attnbook's GFLOP/s as % of the matmul roof
    ours_peak: int | None = None
    baseline_peak: int | None = None
    notes: dict = field(default_factory=dict)

    def cells(self) -> list[str]:
        def mib(b):
            return "" if b is None else f"{b / 2**20:,.1f} MiB"

        return [
            self.case,
            f"{self.ours_ms:.2f}",
            f"{self.baseline_ms:.2f}",
            f"{self.ratio:.2f}",
            f"{self.spread[0]:.2f}–{self.spread[1]:.2f}",
            f"{self.baseline_ms / self.ours_ms:.1f}×",
            "" if self.roof_pct is None else f"{self.roof_pct:.0f}%",
            mib(self.ours_peak),
            mib(self.baseline_peak),
        ]


HEADER = [
    "case",
    "attnbook ms",
    "baseline ms",
    "ratio",
    "ratio IQR",
    "baseline ms / attnbook ms",
    "% of matmul roof",
    "attnbook peak",
    "baseline peak",
]


def interleaved(
    ours: Callable[[], object], theirs: Callable[[], object], *, repeats: int = 30, warmup: int = 2
) -> tuple[float, float, float, tuple[float, float]]:
    """Time the two callables alternately; return both medians (ms), the median per-pair
    ratio and its interquartile range. The order flips every pair (A B, B A, ...)."""
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
    ratios = sorted(x / y for x, y in zip(a, b, strict=True))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return statistics.median(a), statistics.median(b), statistics.median(ratios), (q[0], q[2])


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """The roof: measured float32 ``torch.matmul`` GFLOP/s at the current thread count."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    out = torch.empty(n, n)
    for _ in range(2):
        torch.matmul(x, y, out=out)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(x, y, out=out)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def _qkv(B, H, n, d, kv_heads=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    kv = kv_heads or H
    return (
        torch.randn(B, H, n, d, generator=g),
        torch.randn(B, kv, n, d, generator=g),
        torch.randn(B, kv, n, d, generator=g),
    )


def _attention_row(case, ours_name, ours_fn, n, H, d, repeats, roof, B=1):
    q, k, v = _qkv(B, H, n, d)
    with torch.inference_mode():
        ours_ms, base_ms, ratio, spread = interleaved(
            lambda: ours_fn(q, k, v),
            lambda: F.scaled_dot_product_attention(q, k, v),
            repeats=repeats,
        )
    flops = 4 * B * H * n * n * d  # q k^T and weights @ v
    return Row(
        case,
        ours_name,
        "torch.nn.functional.scaled_dot_product_attention",
        ours_ms,
        base_ms,
        ratio,
        spread,
        roof_pct=100 * flops / (ours_ms / 1e3) / 1e9 / roof,
        notes={"B": B, "H": H, "n": n, "d": d, "flops": flops},
    )


def bench_sdpa(quick: bool, repeats: int, roof: float) -> list[Row]:
    """attnbook.scaled_dot_product_attention (the readable one) against torch's kernel."""
    return [
        _attention_row(
            f"sdpa n={n} (B=1, H=8, d=64)",
            "attnbook.scaled_dot_product_attention",
            scaled_dot_product_attention,
            n,
            8,
            64,
            repeats,
            roof,
        )
        for n in ((1024,) if quick else (1024, 2048))
    ]


def bench_flash(quick: bool, repeats: int, roof: float) -> list[Row]:
    """flash_attention (tiled, plain PyTorch) against torch's kernel."""
    n = 2048 if quick else 4096
    return [
        _attention_row(
            f"flash_attention n={n} (B=1, H=8, d=64)",
            "attnbook.flash_attention",
            flash_attention,
            n,
            8,
            64,
            max(3, repeats // 3),
            roof,
        )
    ]


def bench_multihead(quick: bool, repeats: int, roof: float) -> list[Row]:
    """MultiHeadAttention against nn.MultiheadAttention: eval, inference mode, no weights."""
    batch, length, embed, heads = (2 if quick else 8), 512, 512, 8
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(embed, heads, batch_first=True).eval()
    ours = MultiHeadAttention.from_torch(reference).eval()
    x = torch.randn(batch, length, embed)
    with torch.inference_mode():
        ours_ms, base_ms, ratio, spread = interleaved(
            lambda: ours(x, need_weights=False),
            lambda: reference(x, x, x, need_weights=False),
            repeats=repeats,
        )
    return [
        Row(
            f"MultiHeadAttention B={batch} L={length} E={embed} H={heads}",
            "attnbook.MultiHeadAttention",
            "torch.nn.MultiheadAttention",
            ours_ms,
            base_ms,
            ratio,
            spread,
        )
    ]


def bench_gqa(quick: bool, repeats: int, roof: float) -> list[Row]:
    """Grouped-query attention (8 query heads, 2 KV heads) against torch's enable_gqa."""
    n, H, kv, d = (512 if quick else 1024), 8, 2, 64
    q, k, v = _qkv(1, H, n, d, kv_heads=kv)
    with torch.inference_mode():
        ours_ms, base_ms, ratio, spread = interleaved(
            lambda: scaled_dot_product_attention(q, k, v, enable_gqa=True),
            lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
            repeats=repeats,
        )
    flops = 4 * H * n * n * d
    return [
        Row(
            f"GQA n={n} H=8 H_kv=2 (d=64)",
            "attnbook.scaled_dot_product_attention",
            "torch SDPA, enable_gqa=True",
            ours_ms,
            base_ms,
            ratio,
            spread,
            roof_pct=100 * flops / (ours_ms / 1e3) / 1e9 / roof,
        )
    ]


def _decoder(vocab: int = 256) -> GPT:
    """A small GPT for the cache case: 4 layers, 4 heads, width 256, context 1024."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=vocab, block_size=1024, n_layer=4, n_head=4, n_embd=256)
    return GPT(config).eval()


def bench_decode(quick: bool, repeats: int, roof: float) -> list[Row]:
    """One decoding step at each context length: with a KV cache of ``context - 1`` tokens,
    against re-reading all ``context`` tokens. Both give the same next-token logits; each
    cached call appends to a fresh copy of the prefilled cache."""
    model = _decoder()
    rows = []
    for context in (512,) if quick else (128, 512, 1024):
        seq = torch.randint(0, 256, (1, context), generator=torch.Generator().manual_seed(0))
        prefilled = KVCache(model.config.n_layer)
        with torch.inference_mode():
            model(seq[:, :-1], kv_cache=prefilled)
            ours_ms, base_ms, ratio, spread = interleaved(
                lambda seq=seq, cache=prefilled: model(seq[:, -1:], kv_cache=cache.copy()),
                lambda seq=seq: model(seq),
                repeats=max(5, repeats // 2),
            )
        rows.append(
            Row(
                f"decode 1 token at context {context} (4-layer GPT, E=256)",
                "with KV cache",
                "without cache",
                ours_ms,
                base_ms,
                ratio,
                spread,
                notes={"speed-up": base_ms / ours_ms},
            )
        )
    return rows


def bench_memory(quick: bool, repeats: int, roof: float) -> list[Row]:
    """Peak tensor memory of naive attention (the full score matrix) against tiled
    attention, and their time, at one long sequence (B = 1, H = 1, d = 64)."""
    n = 4096 if quick else 8192
    q, k, v = _qkv(1, 1, n, 64)
    with torch.inference_mode():
        naive = peak_memory_bytes(lambda: scaled_dot_product_attention(q, k, v))
        tiled = peak_memory_bytes(lambda: flash_attention(q, k, v))
        ours_ms, base_ms, ratio, spread = interleaved(
            lambda: flash_attention(q, k, v),
            lambda: scaled_dot_product_attention(q, k, v),
            repeats=max(3, repeats // 5),
            warmup=1,
        )
    return [
        Row(
            f"tiled vs naive memory, n={n} (B=1, H=1, d=64)",
            "attnbook.flash_attention",
            "attnbook.scaled_dot_product_attention (naive)",
            ours_ms,
            base_ms,
            ratio,
            spread,
            ours_peak=tiled,
            baseline_peak=naive,
            notes={"score matrix bytes": 4 * n * n},
        )
    ]


CASES: dict[str, Callable[[bool, int, float], list[Row]]] = {
    "sdpa": bench_sdpa,
    "flash": bench_flash,
    "mha": bench_multihead,
    "decode": bench_decode,
    "gqa": bench_gqa,
    "memory": bench_memory,
}


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def table(rows: list[Row]) -> str:
    """A Markdown table of ``rows``, without the columns that are empty in every row."""
    cells = [row.cells() for row in rows]
    keep = [i for i in range(len(HEADER)) if any(c[i] for c in cells)]
    lines = ["| " + " | ".join(HEADER[i] for i in keep) + " |", "|" + "---|" * len(keep)]
    lines += ["| " + " | ".join(c[i] for i in keep) + " |" for c in cells]
    return "\n".join(lines)


def describe(info: dict, roof: float, quick: bool, case: str = "") -> str:
    return (
        f"Measured by `python -m attnbook.bench{' --quick' if quick else ''} {case}` on "
        f"{info['date']}: torch {info['torch']}, {info['threads']} threads, {info['cpu']}; "
        f"matmul roof {roof:.0f} GFLOP/s (float32). Ratio = attnbook time / baseline time, "
        f"the median over interleaved pairs; below 1 means attnbook is faster."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", metavar="case", help=f"any of {', '.join(CASES)}")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes, done in under a minute"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for bench.json and bench-<case>.md (default docs/results "
        "when run from the repository, else none)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(
            f"unknown case(s) {', '.join(sorted(unknown))}; choose from {', '.join(CASES)}"
        )
    if args.repeats < 3:
        parser.error("--repeats must be at least 3")
    out = args.out
    if out is None and Path("mkdocs.yml").exists() and Path("docs").is_dir():
        out = Path("docs/results")
    info = machine()
    roof = matmul_gflops()
    print(describe(info, roof, args.quick), flush=True)
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER), flush=True)
    results: dict[str, list[Row]] = {}
    for name in args.cases or CASES:
        results[name] = CASES[name](args.quick, args.repeats, roof)
        for row in results[name]:
            print("| " + " | ".join(row.cells()) + " |", flush=True)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        path = out / "bench.json"
        previous = json.loads(path.read_text()) if path.exists() else {}
        cases = {
            **previous.get("cases", {}),
            **{k: [asdict(r) for r in v] for k, v in results.items()},
        }
        path.write_text(
            json.dumps(
                {"machine": info, "roof_gflops": roof, "quick": args.quick, "cases": cases},
                indent=1,
            )
            + "\n"
        )
        for name, rows in results.items():
            (out / f"bench-{name}.md").write_text(
                describe(info, roof, args.quick, name) + "\n\n" + table(rows) + "\n",
                encoding="utf-8",
            )
        print(f"wrote {path} and {', '.join(f'bench-{n}.md' for n in results)} in {out}")


if __name__ == "__main__":
    main()
