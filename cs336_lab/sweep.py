"""``cs336 sweep``: train a grid of configs one after another, then compare them.

    cs336 sweep --config base.toml --set lr_max=1e-3,3e-3,1e-2 [--set batch_size=16,64] [--out runs/sweep]
    cs336 sweep --config configs/sweeps/lr.toml          # the grid can also live in the file's [sweep] table

Each point of the grid (the product of the ``--set`` values) trains into its own directory under the sweep's
directory (``lr_max=0.01+batch_size=16/``), with the base config and the point's values. A finished point
leaves ``status.json`` and is skipped when the sweep runs again (unless its config changed); a point that was
interrupted resumes from its checkpoint; a point that diverges is marked ``diverged`` and the sweep carries
on: a non-finite loss stops the point at once (``NonFiniteLossError``), a finite blow-up (a last validation
loss above the first) is marked when the point ends. At the end ``compare.png`` and ``compare.md``
(``cs336 compare``) sit in the sweep's directory. Points run in this process, one after another
(``--threads 1`` suits small models on a busy CPU).

A config file may carry, besides the ``cs336 train`` keys, a ``[sweep]`` table: ``base`` (a config file,
relative to this one, for the keys this one does not set), ``out`` (the sweep's directory), ``x`` and
``metric`` (of the comparison), ``grid`` (a table of lists, like ``--set``) and ``points`` (a list of tables,
``[[sweep.points]]``: points that are not a product, e.g. one per ablation, each with an optional ``name``;
every listed point is crossed with the grid).

Seeds: a ``seed`` axis in the grid (``[sweep.grid] seed = [0, 1]`` or ``--set seed=0,1``) runs every point once
per seed; ``summary.md`` then has one row per point (its name without ``seed=N``) with the mean ± sd over the
seeds of the final validation bits/byte (and loss). A recipe can be the base (``base = "../recipes/x.toml"``) with
the data given by the sweep file or by ``--train-data``, ``--valid-data`` and ``--tokenizer-dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import re
import statistics
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cs336_common.atomic import atomic_write_text
from cs336_lab.compare import compare
from cs336_lab.config import from_dict, merge_config_data, read_config_file, to_jsonable

logger = logging.getLogger(__name__)

STATUS_NAME = "status.json"
SWEEP_KEYS = ("base", "out", "x", "metric", "grid", "points")
# What the command line may give every point (e.g. the data of a recipe used as the base), over the files' values.
DATA_FLAGS = {
    "train_data": "training tokens (.npy)",
    "valid_data": "validation tokens (.npy)",
    "tokenizer_dir": "tokenizer directory",
}
TrainFn = Callable[[Any], Any]


def parse_set(text: str) -> tuple[str, list[Any]]:
    """``key=v1,v2`` -> ``(key, [v1, v2])``, each value read as a TOML value, else kept as a string.

    >>> parse_set("lr_max=1e-3,3e-3"), parse_set("norm_position=pre,post"), parse_set("d_ff=none,64")
    (('lr_max', [0.001, 0.003]), ('norm_position', ['pre', 'post']), ('d_ff', [None, 64]))
    """
    key, sep, values = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key or not values.strip():
        raise ValueError(f"--set expects KEY=VALUE[,VALUE...], got {text!r}")
    return key, [_parse_value(v.strip()) for v in values.split(",")]


def _parse_value(text: str) -> Any:
    if text.lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the first key varying slowest.

    >>> grid_points({"a": [1, 2], "b": ["x"]})
    [{'a': 1, 'b': 'x'}, {'a': 2, 'b': 'x'}]
    """
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"sweep grid {key!r}: expected a non-empty list of values, got {values!r}")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def point_name(point: Mapping[str, Any]) -> str:
    """The directory name of a grid point: ``key=value`` joined by ``+``, unsafe characters as ``_``.

    >>> point_name({"lr_max": 0.01, "norm_position": "post"})
    'lr_max=0.01+norm_position=post'
    """
    text = "+".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items())
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", text)


def _read_status(point_dir: Path) -> dict[str, Any] | None:
    path = point_dir / STATUS_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _finished_status(history: Sequence[Mapping[str, Any]]) -> str:
    """The status of a finished run: "diverged" if its last validation loss is above its first, else "done".

    >>> _finished_status([{"val_loss": 6.9}, {"val_loss": 3.1}]), _finished_status([{"val_loss": 6.9}, {"val_loss": 9}])
    ('done', 'diverged')
    """
    losses = [r["val_loss"] for r in history if "val_loss" in r]
    return "diverged" if len(losses) >= 2 and losses[-1] > losses[0] else "done"


def _ran_with(out_dir: Path, cls: type) -> dict[str, Any] | None:
    """The config an interrupted point ran with (its config.json, `resume` set to False), or None."""
    path = out_dir / "config.json"
    return _normalised(cls, json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None


def _normalised(cls: type, stored: Any) -> Any:
    """A stored config in today's form (`resume` False): an older run's flat model keys nested in `model`;
    as stored when it does not load (it then differs from any config, and the point trains again)."""
    try:
        return to_jsonable(from_dict(cls, {**stored, "resume": False, "start_over": False}))
    except (TypeError, ValueError):
        return stored


def run_point(config: Any, train_fn: TrainFn, *, label: str | None = None) -> dict[str, Any]:
    """Train one point (resuming an interrupted one); return its status, also written to status.json.

    `label`, when given, names the run in comparisons instead of its differing config keys.
    """
    from cs336_lab.train_config import CHECKPOINT_NAME, NonFiniteLossError

    out_dir = Path(config.out_dir)
    wanted = to_jsonable(dataclasses.replace(config, resume=False, start_over=False))
    old = _read_status(out_dir)
    if old is not None and _normalised(type(config), old.get("config")) == wanted:
        logger.info("%s: already %s, skipped", out_dir.name, old["status"])
        return old
    resume = old is None and (out_dir / CHECKPOINT_NAME).is_file() and _ran_with(out_dir, type(config)) == wanted
    if old is not None or (not resume and (out_dir / CHECKPOINT_NAME).is_file()):
        logger.warning("%s: its config changed since it ran: training it again from scratch", out_dir.name)
    logger.info("%s: %s", out_dir.name, "resuming from its checkpoint" if resume else "training")
    status: dict[str, Any] = {"config": wanted} | ({"label": label} if label else {})
    try:
        # A point trained again from scratch moves its earlier run aside (`run_folder.py`): nothing is deleted.
        result = train_fn(dataclasses.replace(config, resume=resume, start_over=not resume))
        reason = getattr(result, "stop_reason", "")
        if reason in ("SIGINT", "SIGTERM"):  # train saved and returned: the sweep stops too, resumable
            raise KeyboardInterrupt(
                f"{out_dir.name} stopped by {reason} after step {result.steps}; run the sweep again to resume it"
            )
        status |= {
            "status": _finished_status(result.history),
            "final_val_loss": result.final_val_loss,
            "final_val_bpb": getattr(result, "final_val_bpb", None),
            "best_val_loss": result.best_val_loss,
            "steps": result.steps,
        }
    except NonFiniteLossError as err:
        logger.warning("%s diverged: %s", out_dir.name, err)
        status |= {"status": "diverged", "error": str(err)}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / STATUS_NAME, json.dumps(status, indent=2) + "\n")
    return status


def expand_points(
    grid: Mapping[str, Sequence[Any]] | None = None, points: Sequence[Mapping[str, Any]] | None = None
) -> list[tuple[str, dict[str, Any], bool]]:
    """`(directory name, values, named)` of every point: each listed point crossed with the grid's combinations.

    A listed point is a table of values, optionally with a ``name``; a named point's directory name is also
    its label in the comparison (`named` is True), instead of the config keys that differ.

    >>> for point in expand_points({"lr_max": [0.1]}, [{"name": "post", "norm_position": "post"}, {"d_ff": 64}]):
    ...     print(point)
    ('post+lr_max=0.1', {'norm_position': 'post', 'lr_max': 0.1}, True)
    ('d_ff=64+lr_max=0.1', {'d_ff': 64, 'lr_max': 0.1}, False)
    """
    expanded = []
    for listed in points or [{}]:
        if not isinstance(listed, Mapping):
            raise ValueError(f"sweep points: expected a table of values per point, got {listed!r}")
        values = {k: v for k, v in listed.items() if k != "name"}
        for combo in grid_points(grid or {}):
            names = [str(listed["name"])] if "name" in listed else ([point_name(values)] if values else [])
            names += [point_name(combo)] if combo else []
            name = re.sub(r"[^A-Za-z0-9._=+-]", "_", "+".join(names)) or "base"
            expanded.append((name, {**values, **combo}, "name" in listed))
    duplicates = sorted({n for n, _, _ in expanded if sum(m == n for m, _, _ in expanded) > 1})
    if duplicates:
        raise ValueError(f"sweep points must have distinct names, got {duplicates} more than once")
    return expanded


def sweep(
    base: Mapping[str, Any],
    grid: Mapping[str, Sequence[Any]] | None,
    out: str | Path,
    *,
    points: Sequence[Mapping[str, Any]] | None = None,
    x: str = "steps",
    metric: str = "val_loss",
    train_fn: TrainFn | None = None,
) -> list[dict[str, Any]]:
    """Train every point (`expand_points`) over the `base` config (``cs336 train`` keys) into `out`/<name>.

    Every point's config is checked before the first one trains, so a typo fails at once. `train_fn`
    (default: ``cs336_lab.train.train``) is called with each point's ``TrainConfig``. Ends with `compare`.
    """
    from cs336_lab.train import TrainConfig, train

    out = Path(out)
    configs, labels = [], []
    for name, values, named in expand_points(grid, points):
        try:
            data = merge_config_data(TrainConfig, base, values, {"out_dir": str(out / name)})  # d_model = [model]
            configs.append(from_dict(TrainConfig, data))
        except (TypeError, ValueError) as err:
            raise type(err)(f"sweep point {name}: {err}") from None
        labels.append(name if named else None)
    out.mkdir(parents=True, exist_ok=True)
    plan = {"base": base, "grid": grid or {}, "points": points or []}
    atomic_write_text(out / "sweep.json", json.dumps(to_jsonable(plan), indent=2) + "\n")
    statuses = []
    for number, (config, label) in enumerate(zip(configs, labels), 1):
        logger.info("sweep point %d/%d: %s", number, len(configs), Path(config.out_dir).name)
        statuses.append(run_point(config, train_fn or train, label=label))
    table = seed_summary_markdown(seed_summary([Path(c.out_dir).name for c in configs], statuses))
    atomic_write_text(out / "summary.md", table)
    logger.info("final validation per point (mean ± sd over seeds), also in %s:\n%s", out / "summary.md", table)
    done = [c.out_dir for c in configs if (Path(c.out_dir) / "metrics.jsonl").is_file()]
    if done:
        table = compare(done, out / "compare.png", x=x, metric=metric, title=f"sweep {out.name}: {metric}")
        logger.info("comparison in %s and %s:\n%s", out / "compare.png", out / "compare.md", table)
    return statuses


def group_name(name: str) -> str:
    """A point's name without its seed: the runs of one point with several seeds are one row of the summary.

    >>> group_name("no_qk_norm+seed=1"), group_name("seed=0"), group_name("lr_max=0.01+seed=2+batch_size=8")
    ('no_qk_norm', 'base', 'lr_max=0.01+batch_size=8')
    """
    return re.sub(r"(^|\+)seed=[^+]*", "", name).strip("+") or "base"


def _mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def seed_summary(names: Sequence[str], statuses: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per point (`group_name`), in the sweep's order: its runs, the finished ones, and the mean and
    sample standard deviation over those of the final validation bits/byte and loss (a diverged run counts in
    `runs`, not in the means)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for name, status in zip(names, statuses, strict=True):
        groups.setdefault(group_name(name), []).append(status)
    rows = []
    for group, members in groups.items():
        done = [s for s in members if s.get("status") == "done"]
        bpb = _mean_sd([s["final_val_bpb"] for s in done if s.get("final_val_bpb") is not None])
        loss = _mean_sd([s["final_val_loss"] for s in done if s.get("final_val_loss") is not None])
        rows.append({"point": group, "runs": len(members), "done": len(done), "bpb": bpb, "loss": loss})
    return rows


def seed_summary_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """`seed_summary` as a Markdown table, with each point's mean bits/byte minus the first point's.

    >>> print(seed_summary_markdown([{"point": "a", "runs": 2, "done": 2, "bpb": (1.5, 0.01), "loss": (2.0, None)}]), end="")
    | point | runs (done) | final val bits/byte, mean ± sd | vs first | final val loss, mean ± sd |
    |---|---|---|---|---|
    | a | 2 (2) | 1.5000 ± 0.0100 | +0.0000 | 2.0000 |
    """

    def shown(mean_sd: tuple[float | None, float | None]) -> str:
        mean, sd = mean_sd
        return "-" if mean is None else f"{mean:.4f}" + ("" if sd is None else f" ± {sd:.4f}")

    first = rows[0]["bpb"][0] if rows else None
    lines = [
        "| point | runs (done) | final val bits/byte, mean ± sd | vs first | final val loss, mean ± sd |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        mean = r["bpb"][0]
        delta = "-" if mean is None or first is None else f"{mean - first:+.4f}"
        lines.append(f"| {r['point']} | {r['runs']} ({r['done']}) | {shown(r['bpb'])} | {delta} | {shown(r['loss'])} |")
    return "\n".join(lines) + "\n"


def load_sweep_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A config file's ``cs336 train`` keys and its ``[sweep]`` table (empty when it has none).

    ``[sweep] base = "other.toml"`` (relative to this file) supplies the keys this file does not set.
    """
    data = read_config_file(path)
    table = data.pop("sweep", {})
    if not isinstance(table, dict):
        raise ValueError(f"{path}: [sweep] must be a table with keys {SWEEP_KEYS}, got {table!r}")
    unknown = sorted(set(table) - set(SWEEP_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown [sweep] key(s) {unknown}; expected some of {list(SWEEP_KEYS)}")
    if "base" in table:
        base_path = Path(path).parent / table["base"]
        base_data = read_config_file(base_path)
        if "sweep" in base_data:
            raise ValueError(f"{base_path}: a sweep's base config must not have a [sweep] table of its own")
        from cs336_lab.train_config import TrainConfig

        data = merge_config_data(TrainConfig, base_data, data)  # [model] tables merge key by key
    return data, table


# --------------------------------------------------------------------------------------------- CLI


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register ``cs336 sweep``."""
    from cs336_lab.compare import METRIC_FIELDS, X_FIELDS

    parser = subparsers.add_parser(
        "sweep",
        help="train a grid of configs one by one, then compare them",
        description="Train a grid of configs one after another, a directory per point, then compare them.",
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="base cs336 train config (TOML/JSON)")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a grid axis (repeatable); overrides the file's [sweep] grid for that key",
    )
    parser.add_argument("--out", default=None, help="the sweep's directory (default: [sweep] out, else runs/sweep)")
    for name, what in DATA_FLAGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", default=None, metavar="PATH", help=f"{what} of every point")
    parser.add_argument("--x", choices=sorted(X_FIELDS), default=None, help="x axis of the comparison")
    parser.add_argument("--metric", choices=sorted(METRIC_FIELDS), default=None, help="metric of the comparison")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of torch (default: torch's); 1 is fastest for small models on a busy machine",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    base, table = load_sweep_file(args.config)
    base |= {name: getattr(args, name) for name in DATA_FLAGS if getattr(args, name) is not None}
    grid = dict(table.get("grid", {}))
    grid.update(parse_set(s) for s in args.sets)
    points = table.get("points")
    if not grid and not points:
        raise ValueError("a sweep needs points: give --set KEY=V1,V2, or [sweep.grid] / [[sweep.points]] in the file")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    out = args.out or table.get("out", "runs/sweep")
    statuses = sweep(
        base,
        grid,
        out,
        points=points,
        x=args.x or table.get("x", "steps"),
        metric=args.metric or table.get("metric", "val_loss"),
    )
    diverged = sum(s["status"] == "diverged" for s in statuses)
    logger.info("sweep finished: %d points, %d diverged", len(statuses), diverged)
    return 0


__all__ = [
    "parse_set",
    "grid_points",
    "point_name",
    "expand_points",
    "run_point",
    "sweep",
    "load_sweep_file",
    "group_name",
    "seed_summary",
    "seed_summary_markdown",
    "add_subcommand",
]
