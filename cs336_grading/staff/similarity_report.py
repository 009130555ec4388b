"""The `cs336 similarity` command and what it writes: `similarity.csv`, one HTML page per flagged pair,
`similarity.png`, and the similarity columns of a batch's `summary.csv` (`similarity.py` scores the pairs).

Every byte of a page comes from a student (file names, code, even the submission's name): all of it is
escaped with `html.escape`, and the page forbids scripts with a Content-Security-Policy as a second wall.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cs336_common.atomic import atomic_save_figure, atomic_write_text
from cs336_grading.staff import batch
from cs336_grading.staff.similarity import (
    DEFAULT_THRESHOLD,
    MIN_MATCHES,
    Comparison,
    Pair,
    boilerplate_hashes,
    compare_fingerprints,
    fingerprint_code,
    handout_sources,
    load_code,
    shared_regions,
)

log = logging.getLogger(__name__)

CSV_NAME = "similarity.csv"
PLOT_NAME = "similarity.png"
PAGES_DIR = "similarity"
COLUMNS = ["rank", "a", "b", "b_kind", "score", "score_a", "score_b", "matched", "flagged", "files", "report"]
SUMMARY_COLUMNS = ["similarity", "similar_to", "similarity_flag"]
_MAX_LINES_SHOWN = 4000  # per file on a page
MAX_PAGES = 300  # more flagged pairs than this means a threshold too low: the CSV still lists them all


def is_flagged(pair: Pair, threshold: float) -> bool:
    """A pair is flagged when its score reaches the threshold on enough shared fingerprints."""
    return pair.score >= threshold and pair.matched >= MIN_MATCHES


def matched_files(result: Comparison, pair: Pair, top: int = 5) -> str:
    """`a_file<>b_file (n)` for the file pairs that share the most fingerprints."""
    counts = Counter((ra[0], rb[0]) for ra, rb in shared_regions(result, pair.a, pair.b))
    return "; ".join(f"{fa}<>{fb} ({n})" for (fa, fb), n in counts.most_common(top))


def write_report(result: Comparison, out_dir: Path, threshold: float, code: dict[str, dict[str, str]]) -> Path:
    """similarity.csv, the pages of the flagged pairs, the plot and the summary columns; returns the CSV."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, page = [], 0
    for rank, pair in enumerate(result.pairs, 1):
        flagged = is_flagged(pair, threshold)
        report = ""
        if flagged and page < MAX_PAGES:
            page += 1
            report = f"{PAGES_DIR}/pair-{page:04d}.html"
            atomic_write_text(out_dir / report, pair_page(result, pair, code))
        rows.append(
            {
                "rank": rank,
                "a": pair.a,
                "b": pair.b,
                "b_kind": "reference" if pair.b_is_reference else "student",
                "score": f"{pair.score:.3f}",
                "score_a": f"{pair.score_a:.3f}",
                "score_b": f"{pair.score_b:.3f}",
                "matched": pair.matched,
                "flagged": "yes" if flagged else "",
                "report": report,
                "files": matched_files(result, pair) if flagged or rank <= 200 else "",
            }
        )
    atomic_write_text(out_dir / CSV_NAME, _csv_text(COLUMNS, rows))
    try:
        plot_pair_scores(result, threshold, out_dir / PLOT_NAME)
    except ImportError:
        log.warning("matplotlib is not installed: no %s", PLOT_NAME)
    annotate_summary(out_dir, result, threshold)
    flagged = sum(r["flagged"] == "yes" for r in rows)
    if flagged > page:
        log.warning("similarity: %d pairs flagged, pages written for the first %d only", flagged, page)
    log.info(
        "similarity: %d pairs share fingerprints, %d flagged (score >= %g): %s",
        len(result.pairs),
        flagged,
        threshold,
        out_dir / CSV_NAME,
    )
    return out_dir / CSV_NAME


def _csv_text(columns: Sequence[str], rows: Sequence[dict[str, object]]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


# ------------------------------------------------------------------------------------------ pages


def pair_page(result: Comparison, pair: Pair, code: dict[str, dict[str, str]]) -> str:
    """One self-contained HTML page: the matched files of a and b side by side, matching lines marked."""
    marks_a: dict[str, dict[int, str]] = {}
    marks_b: dict[str, dict[int, str]] = {}
    for (fa, a0, a1), (fb, b0, b1) in shared_regions(result, pair.a, pair.b):
        for line in range(a0, a1 + 1):
            marks_a.setdefault(fa, {}).setdefault(line, f"{pair.b}: {fb}:{b0}-{b1}")
        for line in range(b0, b1 + 1):
            marks_b.setdefault(fb, {}).setdefault(line, f"{pair.a}: {fa}:{a0}-{a1}")
    e = html.escape
    title = f"{pair.a} vs {pair.b}: score {pair.score:.2f}"
    head = (
        '<!doctype html>\n<html><head><meta charset="utf-8">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>{e(title)}</title><style>body{{font-family:sans-serif}} td{{vertical-align:top;width:50%}}"
        "pre{font-size:12px;overflow-x:auto} mark{background:#fd8}</style></head><body>"
        f"<h1>{e(title)}</h1><p>{pair.matched} shared fingerprints; {e(pair.a)}: {pair.score_a:.0%} of its "
        f"fingerprints found in {e(pair.b)}; {e(pair.b)}: {pair.score_b:.0%} found in {e(pair.a)}. Marked lines "
        "share a run of tokens (identifiers, literals, comments and layout ignored); hover for the partner.</p>"
    )
    columns = [_side(pair.a, code.get(pair.a, {}), marks_a), _side(pair.b, code.get(pair.b, {}), marks_b)]
    return head + f"<table><tr><td>{columns[0]}</td><td>{columns[1]}</td></tr></table></body></html>\n"


def _side(name: str, files: dict[str, str], marks: dict[str, dict[int, str]]) -> str:
    parts = [f"<h2>{html.escape(name)}</h2>"]
    for path in sorted(marks):
        lines = files.get(path, "").splitlines()
        parts.append(f"<h3>{html.escape(path)}</h3><pre>")
        for number, line in enumerate(lines[:_MAX_LINES_SHOWN], 1):
            text = f"{number:5d}  {html.escape(line)}"
            partner = marks[path].get(number)
            parts.append(f'<mark title="{html.escape(partner)}">{text}</mark>\n' if partner else text + "\n")
        if len(lines) > _MAX_LINES_SHOWN:
            parts.append(f"... {len(lines) - _MAX_LINES_SHOWN} more lines\n")
        parts.append("</pre>")
    return "".join(parts)


# ----------------------------------------------------------------------------------- plot, summary


def plot_pair_scores(result: Comparison, threshold: float, path: Path) -> None:
    """A histogram of every pair's score (pairs sharing nothing count at 0), log scale, threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    students = [p.score for p in result.pairs if not p.b_is_reference]
    zeros = result.total_pairs - len(result.pairs)
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    bins = [i / 50 for i in range(51)]
    ax.hist(
        [students + [0.0] * max(zeros, 0), [p.score for p in result.pairs if p.b_is_reference]],
        bins=bins,
        stacked=True,
        color=["tab:blue", "tab:orange"],
        label=["student pairs", "student vs reference"],
    )
    ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:g}")
    if result.total_pairs:  # (log of nothing warns)
        ax.set_yscale("log")
    ax.set_xlabel("similarity score (share of fingerprints matched)")
    ax.set_ylabel("pairs")
    ax.set_title(f"{result.total_pairs} pairs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path)


def annotate_summary(out_dir: Path, result: Comparison, threshold: float) -> None:
    """Add (or refresh) the similarity columns of `summary.csv` in `out_dir`, when there is one."""
    path = out_dir / batch.SUMMARY
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = [c for c in reader.fieldnames or [] if c not in SUMMARY_COLUMNS]
        rows = list(reader)
    best: dict[str, Pair] = {}
    for pair in result.pairs:  # ranked: the first pair that names a student is its highest
        for name in (pair.a, pair.b):
            best.setdefault(name, pair)
    for row in rows:
        pair = best.get(row["student"])
        other = "" if pair is None else pair.b if pair.a == row["student"] else pair.a
        row.update(
            {
                "similarity": "" if pair is None else f"{pair.score:.3f}",
                "similar_to": other,
                "similarity_flag": "flagged" if pair is not None and is_flagged(pair, threshold) else "",
            }
        )
        for key in [k for k in row if k not in columns + SUMMARY_COLUMNS]:
            del row[key]
    atomic_write_text(path, _csv_text(columns + SUMMARY_COLUMNS, rows))


# --------------------------------------------------------------------------------------------- run


def find_similar(
    paths: Sequence[str | os.PathLike[str]],
    out_dir: Path,
    *,
    references: Sequence[str | os.PathLike[str]] = (),
    threshold: float = DEFAULT_THRESHOLD,
    max_share: float = 0.2,
    jobs: int | None = None,
) -> Comparison:
    """Compare the submissions under `paths` (and against `references`), write the report into `out_dir`."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"expected a similarity threshold in (0, 1], got {threshold}")
    t0 = time.monotonic()
    codes = [load_code(e) for e in batch.discover(paths)]
    for entry in batch.discover(references) if references else []:
        codes.append(load_code(batch.Entry(f"ref:{entry.student}", entry.source), reference=True))
    for code in codes:
        if code.skipped:
            log.warning("similarity: %s: skipped %s", code.name, ", ".join(code.skipped[:5]))
    jobs = jobs or os.cpu_count() or 1
    if jobs > 1 and len(codes) >= 16:  # tokenising is most of the time: one process per core
        with ProcessPoolExecutor(jobs) as pool:
            prints = list(pool.map(fingerprint_code, codes, chunksize=4))
    else:
        prints = [fingerprint_code(code) for code in codes]
    result = compare_fingerprints(prints, boilerplate_hashes(handout_sources()), max_share=max_share)
    write_report(result, out_dir, threshold, {c.name: c.files for c in codes})
    log.info(
        "similarity: %d submissions, %d references, %d pairs in %.1f s",
        sum(not c.reference for c in codes),
        sum(c.reference for c in codes),
        result.total_pairs,
        time.monotonic() - t0,
    )
    return result


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `cs336 grade --out-dir` that run the similarity check after the batch."""
    parser.add_argument("--no-similarity", action="store_true", help="batch mode: skip the similarity check")
    _add_options(parser, prefix="similarity-")


def _add_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    parser.add_argument(
        "--reference-set",
        nargs="+",
        default=[],
        metavar="DIR",
        help="earlier years' submissions or public solutions a submission may match too",
    )
    parser.add_argument(
        f"--{prefix}threshold",
        dest="threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"flag pairs whose similarity score reaches this (default {DEFAULT_THRESHOLD})",
    )
    parser.add_argument(
        f"--{prefix}max-share",
        dest="max_share",
        type=float,
        default=0.2,
        help="ignore code held by more than this share of the submissions, and by more than 10 (default 0.2)",
    )


def after_batch(args: argparse.Namespace) -> None:
    """`cs336 grade --out-dir`: the similarity check over the batch just graded, unless --no-similarity."""
    if not args.no_similarity:
        find_similar(
            args.submission,
            Path(args.out_dir or "grades"),
            references=args.reference_set,
            threshold=args.threshold,
            max_share=args.max_share,
        )


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "similarity",
        help="find similar submissions in a batch (course staff)",
        description="Compare every pair of submissions' cs336_basics/ and tests/adapters.py; the handout's "
        "starter code never counts. Writes similarity.csv, an HTML page per flagged pair and a plot.",
    )
    parser.add_argument("submission", nargs="+", help="folders or .zip files, or folders of them")
    parser.add_argument("--out-dir", required=True, help="where the report goes (a batch's folder: summary.csv too)")
    _add_options(parser)
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    find_similar(
        args.submission,
        Path(args.out_dir),
        references=args.reference_set,
        threshold=args.threshold,
        max_share=args.max_share,
    )
    return 0
