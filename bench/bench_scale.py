"""Scale benchmarks: BPE training and `encode_file` at TinyStories sizes, time and peak memory, and how they grow.

    python -m bench --scale                       # adds these rows to `make bench` (default sizes 250 MB .. 2 GB)
    python -m bench --scale --scale-mb 16,32,64   # smaller sizes (say so when quoting the exponents)
    python -m bench.bench_scale --sizes-mb 16,32,64

The corpus is `bench.zipf_corpus` (Zipf-distributed pseudo-words, documents separated like TinyStories; its
docstring says why not the synthetic stories), written once per size to a temporary directory. At each size,
interleaved (ours first at even sizes, the peer first at odd ones), each job in its own process:

- train a 10,000-token BPE: `cs336_basics.train_bpe` (2 worker processes) vs HF `tokenizers` (Rust, 2 threads);
- encode the file to token ids: `cs336 tokenize` (`tokenize_files`, engine auto: tiktoken in 2 processes where
  it is proven to give our ids; writes the .npy) vs tiktoken alone with the same merges (one thread, the file
  in 16 MB pieces), with the tokenizer trained at the smallest size. Goal: >= 1x tiktoken's speed, and a peak
  memory flat in corpus size (growth exponent <= 0.1).

Peak memory is the largest sum of the resident sets of the job's whole process tree (sampled every 20 ms).
Each component ends with a row of growth exponents (time ∝ size^k, memory ∝ size^k) and a log-log plot in
`docs/bench/growth_<component>.png`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, format_table, make_row
from bench.growth import exponent_text, fit_exponent, plot_growth, series_of
from bench.zipf_corpus import write_zipf_corpora

DEFAULT_SIZES_MB = (250, 500, 1000, 2000)
VOCAB_SIZE = 10_000
RSS_GOAL_BYTES = 1.5e9
# `cs336 tokenize`'s peak memory must not follow the corpus: its growth exponent at most this.
RSS_FLAT_EXPONENT = 0.1
DOCS_DIR = REPO_ROOT / "docs" / "bench"


def measure(args: list[str]) -> dict[str, Any]:
    """Run `python -m bench.scale_job ARGS` and return its JSON plus `wall_s` and `peak_rss` (whole tree)."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.scale_job", *args], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    peak = 0
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass  # a worker ended between listing and reading: the next sample counts it
        time.sleep(0.02)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"scale job {args[0]} failed (exit {proc.returncode}): {err.decode()[-2000:]}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    return result | {"wall_s": time.perf_counter() - start, "peak_rss": peak}


def _pair(i: int, ours: list[str], peer: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ours and the peer's measurement, in alternating order."""
    if i % 2 == 0:
        a = measure(ours)
        return a, measure(peer)
    b = measure(peer)
    return measure(ours), b


def _row(
    component: str, size_mb: float, ours: dict[str, Any], peer: dict[str, Any], peer_name: str, unit_note: str
) -> dict[str, Any]:
    row = make_row(
        f"{component}, Zipf corpus {size_mb:g} MB",
        peer_name,
        ours["seconds"],
        peer["seconds"],
        "s",
        goal="<= 1",
        notes=f"peak RSS ours {ours['peak_rss'] / 1e9:.2f} GB vs peer {peer['peak_rss'] / 1e9:.2f} GB "
        f"(goal <= {RSS_GOAL_BYTES / 1e9:g} GB: {'met' if ours['peak_rss'] <= RSS_GOAL_BYTES else 'NOT met'}); "
        f"{unit_note}",
    )
    return row | {
        "size_mb": size_mb,
        "ours_rss": ours["peak_rss"],
        "peer_rss": peer["peak_rss"],
        "ours_s": ours["seconds"],
        "peer_s": peer["seconds"],
    }


def _encode_row(size_mb: float, num_bytes: int, ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    """`cs336 tokenize` against tiktoken alone: speed (goal >= 1x), peak memory, the engine it chose."""
    row = make_row(
        f"cs336 tokenize to .npy, 2 processes, Zipf corpus {size_mb:g} MB",
        "tiktoken alone, one thread, 16 MB pieces",
        num_bytes / ours["seconds"],
        num_bytes / peer["seconds"],
        "bytes/s",
        goal=">= 1",
        notes=f"peak RSS ours {ours['peak_rss'] / 1e9:.2f} GB vs peer {peer['peak_rss'] / 1e9:.2f} GB; "
        f"{ours['tokens']:,} tokens (same count as tiktoken); {ours['engine']}",
    )
    return row | {
        "size_mb": size_mb,
        "ours_rss": ours["peak_rss"],
        "peer_rss": peer["peak_rss"],
        "ours_s": ours["seconds"],
        "peer_s": peer["seconds"],
    }


def _memory_growth_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How `cs336 tokenize`'s peak memory grows with the corpus (goal: flat, exponent <= RSS_FLAT_EXPONENT)."""
    k = {key: fit_exponent(*series_of(rows, "size_mb", key)) for key in ("ours_s", "peer_s", "ours_rss", "peer_rss")}
    sizes = ", ".join(f"{r['size_mb']:g}" for r in rows)
    flat = k["ours_rss"] is not None and k["ours_rss"] <= RSS_FLAT_EXPONENT
    return make_row(
        f"cs336 tokenize: growth exponent of peak RSS (size^k), {sizes} MB",
        "tiktoken alone",
        k["ours_rss"] or 0.0,
        k["peer_rss"] or 0.0,
        "k",
        notes=f"goal: ours <= {RSS_FLAT_EXPONENT:g} (memory flat in corpus size): {'met' if flat else 'NOT met'}; "
        f"time exponent ours {exponent_text(k['ours_s'])} vs peer {exponent_text(k['peer_s'])}",
    )


def _growth_row(component: str, peer_name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    k = {key: fit_exponent(*series_of(rows, "size_mb", key)) for key in ("ours_s", "peer_s", "ours_rss", "peer_rss")}
    sizes = ", ".join(f"{r['size_mb']:g}" for r in rows)
    return make_row(
        f"{component}: growth exponent of time (size^k), {sizes} MB",
        peer_name,
        k["ours_s"] or 0.0,
        k["peer_s"] or 0.0,
        "k",
        notes=f"peak RSS exponent ours {exponent_text(k['ours_rss'])} vs peer {exponent_text(k['peer_rss'])}; "
        "1 = linear; a flat memory (k ≈ 0) means it follows the distinct pre-tokens, not the corpus",
    )


def _plot(name: str, title: str, rows: list[dict[str, Any]], peer_name: str, docs_dir: Path) -> None:
    panels = [
        ("seconds", {"ours": series_of(rows, "size_mb", "ours_s"), peer_name: series_of(rows, "size_mb", "peer_s")}),
        (
            "peak RSS (bytes)",
            {"ours": series_of(rows, "size_mb", "ours_rss"), peer_name: series_of(rows, "size_mb", "peer_rss")},
        ),
    ]
    plot_growth(docs_dir / f"growth_{name}.png", title, "corpus size (MB)", panels)


def run(
    quick: bool = False,
    sizes_mb: list[float] | None = None,
    docs_dir: Path | None = DOCS_DIR,
    encode_max_mb: float | None = None,
) -> list[dict]:
    """BPE and encode rows at each size, then a growth row for each; plots into `docs_dir` (None: no plots).

    `encode_max_mb` leaves out the encode rows above that size (both sides encode at ~2-4 MB/s on one core:
    2 GB takes about ten minutes each).
    """
    sizes = sorted(sizes_mb or ([2, 4] if quick else DEFAULT_SIZES_MB))
    bpe_rows: list[dict[str, Any]] = []
    encode_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        work = Path(tmp)
        tokenizer = work / "tokenizer.pkl"
        corpora = write_zipf_corpora({work / f"zipf_{size_mb:g}mb.txt": int(size_mb * 1e6) for size_mb in sizes})
        for i, (size_mb, corpus) in enumerate(zip(sizes, corpora)):
            save = [str(tokenizer)] if i == 0 else []
            ours, peer = _pair(
                i, ["bpe-ours", str(corpus), str(VOCAB_SIZE), *save], ["bpe-hf", str(corpus), str(VOCAB_SIZE)]
            )
            wall = f"wall incl. start-up ours {ours['wall_s']:.1f} s vs {peer['wall_s']:.1f} s"
            bpe_rows.append(
                _row(f"train BPE, {VOCAB_SIZE} vocab", size_mb, ours, peer, "HF tokenizers BpeTrainer", wall)
            )
            out = work / "tokens" / "ids.npy"  # `cs336 tokenize` writes tokens/<corpus stem>.npy
            if encode_max_mb is not None and size_mb > encode_max_mb:
                corpus.unlink()
                continue
            ours, peer = _pair(
                i,
                ["encode-ours", str(corpus), str(tokenizer), str(out)],
                ["encode-tiktoken", str(corpus), str(tokenizer)],
            )
            if ours["tokens"] != peer["tokens"]:
                raise AssertionError(f"cs336 tokenize gave {ours['tokens']} tokens, tiktoken {peer['tokens']}")
            encode_rows.append(_encode_row(size_mb, corpus.stat().st_size, ours, peer))
            corpus.unlink()
            shutil.rmtree(out.parent, ignore_errors=True)
    rows = [*bpe_rows, _growth_row("train BPE", "HF tokenizers", bpe_rows), *encode_rows]
    if len(encode_rows) > 1:
        rows.append(_memory_growth_row(encode_rows))
    if docs_dir is not None and len(sizes) > 1:
        _plot("bpe", f"train BPE ({VOCAB_SIZE} vocab), Zipf corpus", bpe_rows, "HF tokenizers", docs_dir)
    if docs_dir is not None and len(encode_rows) > 1:
        _plot("encode", "encode to token ids, Zipf corpus", encode_rows, "tiktoken", docs_dir)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", default=None, help="comma-separated corpus sizes in MB (250,500,1000,2000)")
    parser.add_argument("--encode-max-mb", type=float, default=None, help="no encode rows above this size")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    sizes = [float(s) for s in args.sizes_mb.split(",")] if args.sizes_mb else None
    print(
        format_table(
            run(sizes_mb=sizes, docs_dir=None if args.no_plots else DOCS_DIR, encode_max_mb=args.encode_max_mb)
        )
    )


if __name__ == "__main__":
    main()
