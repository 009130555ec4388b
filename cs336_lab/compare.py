"""``cs336 compare``: the curves of several training runs on one plot, and a table of their final and best values.

    cs336 compare runs/lr/* --metric val_loss --x tokens --out compare.png     # also writes compare.md

A run is a directory written by ``cs336 train``: ``config.json`` (its config) and ``metrics.jsonl`` (one
record per logged step, field names from ``run_log.py``/``train.py``). Each curve is labelled by its folder's
name (with as many parent folders as it takes to tell two runs apart); the table also lists the settings that
differ between the configs (``lr_max``). A ``status.json`` beside them (written by ``cs336 sweep``) marks a run
that diverged and may name it; else ``outcome.json`` (written by ``cs336 train``, see ``run_folder.py``) says
whether it is done, running, stopped, killed, diverged or failed. ``--out`` without a suffix gets ``.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cs336_common.atomic import atomic_save_figure, atomic_write_text
from cs336_lab.run_folder import read_outcome

logger = logging.getLogger(__name__)

# --x and --metric choices -> the metrics.jsonl field they read.
X_FIELDS = {"steps": "step", "tokens": "tokens", "time": "time_s"}
METRIC_FIELDS = {"val_loss": "val_loss", "train_loss": "train_loss", "bpb": "val_bpb"}
X_LABELS = {"steps": "step", "tokens": "tokens seen", "time": "wall-clock time (s)"}
METRIC_LABELS = {
    "val_loss": "validation loss (nats/token)",
    "train_loss": "training loss (nats/token)",
    "bpb": "validation bits per byte",
}
# Config keys that say where or how a run was executed, not what was trained: never a label.
NOT_LABELS = frozenset(
    {
        "out_dir",
        "resume",
        "progress",
        "wandb",
        "wandb_project",
        "device",
        "train_data",
        "valid_data",
        "tokenizer_dir",
        "compile",
        "peak_flops",
    }
)


@dataclass
class Run:
    """One run directory: its config, its metric records, its sweep status ("done", "diverged") and label."""

    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    status: str = "done"
    label: str = ""
    note: str = ""  # why a diverged run stopped, e.g. "non-finite loss at step 9"
    steps: int = 0  # steps trained: the last record's, or more when the run stopped between two records
    tokens: int = 0

    def curve(self, x: str, metric: str) -> tuple[list[float], list[float]]:
        """The (x, y) points of `metric` (a --metric choice) against `x` (a --x choice)."""
        x_field, y_field = X_FIELDS[x], METRIC_FIELDS[metric]
        points = [(r[x_field], r[y_field]) for r in self.records if x_field in r and y_field in r]
        return [p[0] for p in points], [p[1] for p in points]


def load_run(path: str | os.PathLike[str]) -> Run:
    """Read a run directory; a missing metrics.jsonl is an error, a missing config.json an empty config."""
    path = Path(path)
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{path} is not a run directory: expected {metrics} (written by cs336 train)")
    records = []
    for number, line in enumerate(metrics.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a run killed mid-write leaves a partial last line
                logger.warning("%s line %d is not JSON: skipped", metrics, number)
    config_path, status_path = path / "config.json", path / "status.json"
    config = _flat(json.loads(config_path.read_text(encoding="utf-8"))) if config_path.is_file() else {}
    status = json.loads(status_path.read_text(encoding="utf-8")) if status_path.is_file() else {}
    outcome = read_outcome(path) or {}
    last = records[-1] if records else {}
    return Run(
        path=path,
        config=config,
        records=records,
        status=status.get("status") or outcome.get("status") or _status_without_outcome(config, last),
        label=status.get("label", ""),
        note=str(status.get("error") or outcome.get("error", "")).split(" (")[0].split(";")[0],
        steps=max(int(last.get("step", 0)), int(outcome.get("step", 0))),
        tokens=max(int(last.get("tokens", 0)), int(outcome.get("tokens", 0))),
    )


def _status_without_outcome(config: dict[str, Any], last: dict[str, Any]) -> str:
    """A run written before `outcome.json`: "done" when its last record reached its max_steps, else "unfinished".

    >>> _status_without_outcome({"max_steps": 40}, {"step": 40}), _status_without_outcome({"max_steps": 40}, {})
    ('done', 'unfinished')
    """
    reached = last.get("step", 0) >= config.get("max_steps", 0) or bool(config.get("max_time_s"))
    return "done" if reached else "unfinished"


def _flat(config: Any) -> Any:
    """A run's config with its `model` table's keys in its place (as runs stored them before the nesting), so
    that labels read ``d_model=64`` and old and new runs compare key by key.

    >>> _flat({"lr_max": 0.1, "model": {"d_model": 8}, "seed": 0})
    {'lr_max': 0.1, 'd_model': 8, 'seed': 0}
    """
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        return config
    flat: dict[str, Any] = {}
    for key, value in config.items():
        flat.update(value if key == "model" else {key: value})
    return flat


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_format_value(v) for v in value)
    return str(value)


def differing_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
    """The config keys whose values are not the same in every config, in first-seen order.

    >>> differing_keys([{"lr_max": 0.001, "seed": 0}, {"lr_max": 0.01, "seed": 0}])
    ['lr_max']
    """
    keys: list[str] = []
    for config in configs:
        keys += [k for k in config if k not in keys]
    missing = object()
    return [
        k
        for k in keys
        if k not in NOT_LABELS and len({json.dumps(c.get(k, missing), default=str) for c in configs}) > 1
    ]


def folder_labels(paths: Sequence[Path]) -> list[str]:
    """Each path's folder name, with as many parent folders as it takes to tell the paths apart.

    >>> folder_labels([Path("runs/lr1/model"), Path("runs/lr2/model"), Path("runs/base")])
    ['lr1/model', 'lr2/model', 'base']
    """
    parts = [Path(os.path.abspath(p)).parts for p in paths]

    def unique(i: int, depth: int) -> bool:
        return all(other[-depth:] != parts[i][-depth:] for j, other in enumerate(parts) if j != i)

    depths = [next((d for d in range(1, len(p)) if unique(i, d)), len(p)) for i, p in enumerate(parts)]
    return ["/".join(p[-d:]) for p, d in zip(parts, depths)]


def label_runs(runs: Sequence[Run]) -> None:
    """Label each run: its sweep's name for it, else its folder's name (see `folder_labels`)."""
    for run, name in zip(runs, folder_labels([r.path for r in runs])):
        run.label = run.label or name
        if run.status != "done":
            run.label += f" ({run.status})"


def summary_table(runs: Sequence[Run], metric: str) -> str:
    """A markdown table: per run the settings that differ between the runs, its final and best value of
    `metric`, the steps and tokens it reached."""
    keys = differing_keys([r.config for r in runs]) if len(runs) > 1 else []
    head = "".join(f" {k} |" for k in keys)
    lines = [
        f"| run |{head} final {metric} | best {metric} | steps | tokens | status |",
        "|---|" + "---|" * len(keys) + "---:|---:|---:|---:|---|",
    ]
    for run in runs:
        settings = "".join(f" {_format_value(run.config.get(k, '–'))} |" for k in keys)
        _, ys = run.curve("steps", metric)
        final = f"{ys[-1]:.4f}" if ys else "–"
        best = f"{min(ys):.4f}" if ys else "–"
        status = f"{run.status}: {run.note}" if run.note else run.status
        lines.append(f"| {run.label} |{settings} {final} | {best} | {run.steps} | {run.tokens} | {status} |")
    return "\n".join(lines) + "\n"


def plot_runs(
    runs: Sequence[Run], out: Path, *, x: str = "steps", metric: str = "val_loss", title: str | None = None
) -> list[str]:
    """Overlay one curve per run (those with points) into the PNG `out`, atomically; return the labels drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    drawn, highs, lows = [], [], []
    for run in runs:
        xs, ys = run.curve(x, metric)
        finite = [(a, b) for a, b in zip(xs, ys) if math.isfinite(b)]
        if not finite:
            continue
        ax.plot(*zip(*finite), marker="o" if len(finite) < 30 else None, markersize=3, linewidth=2, label=run.label)
        drawn.append(run.label)
        # A diverged run must not squash the others: only its first value counts for the y range.
        highs.append(finite[0][1] if run.status == "diverged" else max(b for _, b in finite))
        lows.append(min(b for _, b in finite))
    if highs:
        low, high = min(lows), max(highs)
        margin = 0.05 * max(high - low, 1e-3)
        ax.set_ylim(low - margin, high + margin)
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel(METRIC_LABELS[metric])
    ax.set_title(title or f"{metric} against {x}")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, out)
    return drawn


def plot_path(out: str | os.PathLike[str]) -> Path:
    """`out`, with ``.png`` added when it has no suffix.

    >>> plot_path("results"), plot_path("plots/lr.png"), plot_path("lr.svg")
    (PosixPath('results.png'), PosixPath('plots/lr.png'), PosixPath('lr.svg'))
    """
    out = Path(out)
    return out if out.suffix else out.with_name(out.name + ".png")


def compare(
    run_dirs: Sequence[str | os.PathLike[str]],
    out: Path,
    *,
    x: str = "steps",
    metric: str = "val_loss",
    title: str | None = None,
) -> str:
    """Plot the runs into `out` (`plot_path(out)`) and write the summary table beside it (suffix .md); return the
    table."""
    out = plot_path(out)
    if x not in X_FIELDS or metric not in METRIC_FIELDS:
        raise ValueError(
            f"expected x in {sorted(X_FIELDS)} and metric in {sorted(METRIC_FIELDS)}, got {x!r} and {metric!r}"
        )
    if not run_dirs:
        raise ValueError("compare needs at least one run directory, got none")
    runs = [load_run(d) for d in run_dirs]
    label_runs(runs)
    drawn = plot_runs(runs, out, x=x, metric=metric, title=title)
    if not drawn:
        logger.warning("no run has any %s point: the plot is empty", metric)
    table = summary_table(runs, metric)
    atomic_write_text(out.with_suffix(".md"), table)
    return table


# --------------------------------------------------------------------------------------------- CLI


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register ``cs336 compare``."""
    parser = subparsers.add_parser(
        "compare",
        help="overlay the loss curves of several runs, with a table",
        description="The curves of several training runs on one plot, and a table of their final and best values.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="directories written by cs336 train")
    parser.add_argument(
        "--x", choices=sorted(X_FIELDS), default="steps", help="the quantity on the x axis (default: %(default)s)"
    )
    parser.add_argument(
        "--metric",
        choices=sorted(METRIC_FIELDS),
        default="val_loss",
        help="the metric on the y axis; bpb needs runs trained with a tokenizer_dir (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("compare.png"),
        help="the PNG to write (.png is added when the name has no suffix); the table goes beside it with "
        "suffix .md (default: %(default)s)",
    )
    parser.add_argument("--title", default=None, help="plot title")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    table = compare(args.runs, args.out, x=args.x, metric=args.metric, title=args.title)
    print(table, end="")
    out = plot_path(args.out)
    logger.info("wrote %s and %s", out, out.with_suffix(".md"))
    return 0


__all__ = [
    "Run",
    "load_run",
    "differing_keys",
    "label_runs",
    "summary_table",
    "plot_runs",
    "plot_path",
    "folder_labels",
    "compare",
    "add_subcommand",
]
