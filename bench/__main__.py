"""Run the benchmark suite and write the results: `python -m bench [--quick] [--only NAME ...] [--scale] [--quality]`.

Every figure is printed beside a named peer doing the same work on the same machine in the same run, as a
ratio with its goal, then written as JSON and Markdown with the machine, versions, date and git commit to
`bench/results/` (a time-stamped copy and `latest.*`). A full run of every benchmark also refreshes the
committed copy `docs/bench/latest.{md,json}`.

The expensive rows are opt-in: `--scale` adds the torch.compile training step on a CPU (compiling takes
minutes there), the context-length and corpus-size rows (`bench.bench_context`,
`bench.bench_scale`, with log-log growth plots in `docs/bench/`; `--scale-mb` picks the sizes), `--quality`
the 10-minute quality race (`bench.bench_quality`), `--race` the best CPU recipe against the handout's anchor
(`bench.bench_race`; `--race-recipe PATH` picks the recipe). `make bench BENCH_FLAGS="--scale"` passes them on.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, ROW_KEYS, format_table, machine_info, write_results

logger = logging.getLogger("bench")

# Short name -> module exposing `run(quick: bool = False) -> list[dict]`.
BENCHMARKS: dict[str, str] = {
    "tokenizer": "bench.bench_tokenizer",
    "model": "bench.bench_model",
}
# Expensive benchmarks, run only when asked for (`--scale`, `--quality`, or by name with `--only`).
SCALE_BENCHMARKS: dict[str, str] = {"context": "bench.bench_context", "scale": "bench.bench_scale"}
QUALITY_BENCHMARKS: dict[str, str] = {"quality": "bench.bench_quality"}
RACE_BENCHMARKS: dict[str, str] = {"race": "bench.bench_race"}
ALL_BENCHMARKS = BENCHMARKS | SCALE_BENCHMARKS | QUALITY_BENCHMARKS | RACE_BENCHMARKS
RESULTS_DIR = REPO_ROOT / "bench" / "results"
DOCS_DIR = REPO_ROOT / "docs" / "bench"


def _check_rows(module_name: str, rows: Any) -> list[dict[str, Any]]:
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise TypeError(f"{module_name}.run() must return a list of dicts, got {type(rows).__name__}")
    for r in rows:
        missing = [k for k in ROW_KEYS if k not in r]
        if missing:
            raise ValueError(f"{module_name}.run() returned a row without {missing}: {r}")
    return rows


def run_benchmarks(
    names: list[str], *, quick: bool, options: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Run the named benchmarks (short names or dotted module paths); a failing one is recorded, not fatal."""
    rows: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    for name in names:
        module_name = ALL_BENCHMARKS.get(name, name)
        logger.info("running %s%s ...", module_name, " (quick)" if quick else "")
        start = time.perf_counter()
        try:
            module = importlib.import_module(module_name)
            new_rows = _check_rows(module_name, module.run(quick=quick, **(options or {}).get(name, {})))
        except Exception as err:  # noqa: BLE001 - one broken benchmark must not hide the others
            logger.error("%s failed:\n%s", module_name, traceback.format_exc())
            errors[name] = f"{type(err).__name__}: {err}"
            continue
        finally:
            timings[name] = round(time.perf_counter() - start, 2)
        for r in new_rows:
            r.setdefault("benchmark", name)
        rows.extend(new_rows)
        logger.info("%s done in %.1f s", module_name, timings[name])
    return {
        "machine": machine_info(),
        "quick": quick,
        "benchmarks": names,
        "seconds": timings,
        "rows": rows,
        "errors": errors,
    }


def build_parser() -> argparse.ArgumentParser:
    """The options of `python -m bench` (`make bench BENCH_FLAGS=...`)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (small sizes, few repeats)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only this benchmark (one of {', '.join(ALL_BENCHMARKS)}, or a module path); repeatable",
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="also the scale rows: context length 128-1024, BPE and encode_file at corpus sizes (tens of minutes)",
    )
    parser.add_argument(
        "--scale-mb",
        default=None,
        metavar="MB,MB,...",
        help="corpus sizes of the scale rows in MB (default 250,500,1000,2000)",
    )
    parser.add_argument(
        "--scale-encode-max-mb",
        type=float,
        default=None,
        metavar="MB",
        help="leave out the encode_file scale rows above this corpus size (default: none)",
    )
    parser.add_argument(
        "--quality",
        action="store_true",
        help="also the quality row: two 10-minute training runs side by side (bench.quality)",
    )
    parser.add_argument(
        "--race",
        action="store_true",
        help="also the race row: the best CPU recipe vs the handout's anchor, 10 minutes each side by side (bench.race)",
    )
    parser.add_argument(
        "--race-recipe",
        type=Path,
        default=None,
        metavar="PATH",
        help="the recipe of the race row (default: configs/recipes/cpu_10min.toml, else cpu_10min_baseline.toml)",
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help=f"results directory ({RESULTS_DIR})")
    parser.add_argument(
        "--docs-dir",
        type=Path,
        default=None,
        help=f"also write latest.{{md,json}} here (default: {DOCS_DIR} for a full run of all benchmarks)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's choice); 1 gives steadier numbers on a busy machine",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None:
        import torch

        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")

    names = args.only or [
        *BENCHMARKS,
        *(SCALE_BENCHMARKS if args.scale else ()),
        *(QUALITY_BENCHMARKS if args.quality else ()),
        *(RACE_BENCHMARKS if args.race else ()),
    ]
    scale: dict[str, Any] = {"sizes_mb": [float(x) for x in args.scale_mb.split(",")]} if args.scale_mb else {}
    if args.scale_encode_max_mb is not None:
        scale["encode_max_mb"] = args.scale_encode_max_mb
    options = {"scale": scale, "model": {"compile": True} if args.scale else {}}
    options["race"] = {"recipe": args.race_recipe} if args.race_recipe else {}
    results = run_benchmarks(names, quick=args.quick, options=options)
    print(format_table(results["rows"]))
    for name, err in results["errors"].items():
        print(f"FAILED {name}: {err}")

    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    write_results(results, args.out_dir, stem=stamp)
    json_path, md_path = write_results(results, args.out_dir)
    print(f"results: {md_path} and {json_path}")
    docs_dir = args.docs_dir
    if docs_dir is None and not args.quick and not args.only and not results["errors"]:
        docs_dir = DOCS_DIR
    if docs_dir is not None:
        json_path, md_path = write_results(results, docs_dir)
        print(f"committed copy: {md_path} and {json_path}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
