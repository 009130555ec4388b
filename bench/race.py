"""The race: the project's best CPU recipe vs the handout's torch-native anchor, same wall clock, same text, same BPE.

    python -m bench.race                                          # 600 s each, both at once, ~12 minutes in all
    python -m bench.race --budget-s 60                            # a short run (say so when quoting it)
    python -m bench.race --recipe configs/recipes/cpu_10min.toml  # the recipe raced (default: the best one there is)

The two sides, run concurrently as two processes on one thread each (so they see the same contention):
- recipe: the real command line, `cs336 train --config RECIPE --train-data ... --valid-data ... --tokenizer-dir
  ... --out-dir ... --device cpu --max-time-s BUDGET --threads 1`: the recipe fixes everything else (model
  size, batch, optimiser, schedule), and may differ from the anchor in any of it;
- anchor: the quality bench's oracle side (`bench/quality.py`): `oracle.model.OracleTransformerLM` +
  `torch.optim.AdamW` with the handout's settings (`make_config`, the same as
  `configs/recipes/cpu_10min_baseline.toml`), trained by the same loop for the same budget.
Data: the quality bench's (`prepare_data`: pydocs, our 4,096-token BPE, cached). Each side is then scored on
the whole validation split (every token once) in bits per byte. Goal: recipe / anchor <= 0.92.
Outputs: `bench/results/race/{recipe,anchor}/` (each a run folder) and `bench/results/race/race.{json,md}`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from bench.common import REPO_ROOT

logger = logging.getLogger("bench.race")

RESULTS = REPO_ROOT / "bench" / "results" / "race"
RECIPES = REPO_ROOT / "configs" / "recipes"
GOAL = 0.92  # recipe / anchor, full-validation bits/byte
SIDES = ("recipe", "anchor")


def default_race_recipe() -> Path:
    """The best CPU recipe when it exists, else the handout's baseline."""
    best = RECIPES / "cpu_10min.toml"
    return best if best.is_file() else RECIPES / "cpu_10min_baseline.toml"


def recipe_command(recipe: Path, budget_s: float, out_dir: Path, data: tuple[Path, Path, Path]) -> list[str]:
    """The `cs336 train` command line of the recipe side: the recipe plus the data, the folder, the device, the budget."""
    tok_dir, train_npy, valid_npy = data
    return [
        sys.executable,
        "-m",
        "cs336_lab.cli",
        "train",
        "--config",
        str(recipe),
        "--train-data",
        str(train_npy),
        "--valid-data",
        str(valid_npy),
        "--tokenizer-dir",
        str(tok_dir),
        "--out-dir",
        str(out_dir),
        "--device",
        "cpu",
        "--max-time-s",
        str(budget_s),
        "--threads",
        "1",  # the race's rule, whatever the recipe says (a CPU recipe says 1 too)
        "--no-progress",
    ]


def _last_record(out_dir: Path) -> dict[str, Any]:
    """The run's last training record (steps, tokens, seconds) from its metrics.jsonl."""
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in records if "tokens" in r][-1]


def _train_side(side: str, budget_s: float, recipe: Path, data: tuple[Path, Path, Path], out_dir: Path) -> None:
    from bench.quality import _oracle_factories, make_config
    from cs336_lab.train import train

    if side == "recipe":
        subprocess.run(recipe_command(recipe, budget_s, out_dir, data), cwd=REPO_ROOT, check=True)
        return
    config = dataclasses.replace(make_config("oracle", budget_s, *data), out_dir=str(out_dir))
    model_factory, optimizer_factory = _oracle_factories()
    train(config, model_factory=model_factory, optimizer_factory=optimizer_factory)


def run_side(side: str, budget_s: float, recipe: Path) -> dict[str, Any]:
    """Train one side (this process, one thread; the recipe side in a `cs336 train` child) and score it."""
    from bench.quality import _oracle_factories, full_validation_loss, prepare_data
    from cs336_basics.checkpoint import load_checkpoint
    from cs336_basics.data import load_tokens
    from cs336_common.model_spec import ModelSpec
    from cs336_lab.generate import load_model
    from cs336_lab.run_log import bytes_per_token

    torch.set_num_threads(1)
    data = prepare_data()
    tok_dir, _, valid_npy = data
    out_dir = RESULTS / side
    if out_dir.exists():  # the bench's own output of an earlier race (regenerated here), not a user's run
        shutil.rmtree(out_dir)
    _train_side(side, budget_s, recipe, data, out_dir)
    ckpt = out_dir / "ckpt_latest.pt"
    if side == "recipe":
        model, stored = load_model(ckpt)  # the model the checkpoint's config describes: the recipe's switches too
        context = ModelSpec.from_run_config(stored).context_length
    else:
        spec = _anchor_spec()
        model = _oracle_factories()[0](spec, torch.device("cpu"))
        load_checkpoint(ckpt, model)
        context = spec.context_length
    val = full_validation_loss(model, valid_npy, context)
    bpt = bytes_per_token(tok_dir, load_tokens(valid_npy))
    last = _last_record(out_dir)
    summary = {
        "side": side,
        "steps": last["step"],
        "tokens": last["tokens"],
        "train_time_s": round(last["time_s"], 1),
        "tokens_per_s": last["tokens"] / last["time_s"],
        "final_val_loss": val,
        "final_val_bpb": val / math.log(2) / bpt,
        "bytes_per_token": bpt,
        "params": sum(p.numel() for p in model.parameters()),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _anchor_spec() -> Any:
    from bench.quality import make_config

    return make_config("oracle", 1.0, Path(), Path(), Path()).model


def write_race_report(results: dict[str, dict[str, Any]], budget_s: float, recipe: Path) -> dict[str, Any]:
    """`race.json` and `race.md`: both sides' figures and the ratio of their full-validation bits/byte."""
    from bench.common import machine_info

    ours, anchor = results["recipe"], results["anchor"]
    ratio = ours["final_val_bpb"] / anchor["final_val_bpb"]
    recipe_name = _shown(recipe)
    report = {
        "budget_s": budget_s,
        "recipe": recipe_name,
        "goal": f"recipe / anchor <= {GOAL}",
        "ratio": ratio,
        "met": ratio <= GOAL,
        "recipe_side": ours,
        "anchor_side": anchor,
        "machine": machine_info(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "race.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    rows = "\n".join(
        f"| {s['side']} | {s['final_val_loss']:.4f} | {s['final_val_bpb']:.4f} | {s['steps']} | {s['tokens']:,} "
        f"| {s['tokens_per_s']:.0f} | {s['params']:,} |"
        for s in (ours, anchor)
    )
    md = (
        f"# The race: `{recipe_name}` vs the handout's torch-native anchor ({budget_s:.0f} s each, one CPU thread)\n\n"
        "| side | val loss (nats/token) | bits/byte | steps | tokens | tokens/s | params |\n"
        "|---|---|---|---|---|---|---|\n" + rows + "\n\n"
        f"Whole validation split ({anchor['bytes_per_token']:.2f} bytes/token), bits/byte recipe / anchor: "
        f"**{ratio:.4f}** (goal <= {GOAL}: {'met' if ratio <= GOAL else 'NOT met'}).\n"
    )
    (RESULTS / "race.md").write_text(md)
    return report


def _shown(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.race", description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=600.0, help="training wall-clock per side (600)")
    parser.add_argument(
        "--recipe", type=Path, default=None, help=f"the recipe raced (default: {_shown(default_race_recipe())})"
    )
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # a worker process
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    recipe = (args.recipe or default_race_recipe()).resolve()
    if not recipe.is_file():
        parser.error(f"--recipe: expected a recipe file, got {recipe} (no such file)")
    if args.side:
        print(json.dumps(run_side(args.side, args.budget_s, recipe)))
        return 0
    from bench.quality import prepare_data

    prepare_data()  # once, before the two workers read it
    cmd = [sys.executable, "-m", "bench.race", "--budget-s", str(args.budget_s), "--recipe", str(recipe), "--side"]
    procs = {side: subprocess.Popen([*cmd, side], cwd=REPO_ROOT, stdout=subprocess.PIPE) for side in SIDES}
    results = {}
    for side, proc in procs.items():
        out, _ = proc.communicate()
        if proc.returncode != 0:
            logger.error("the %s side failed (exit %d)", side, proc.returncode)
            return 1
        results[side] = json.loads(out.decode().strip().splitlines()[-1])
    report = write_race_report(results, args.budget_s, recipe)
    print((RESULTS / "race.md").read_text())
    return 0 if report["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
