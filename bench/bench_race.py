"""The race row of `make bench`: the best CPU recipe vs the handout's torch-native anchor, same wall clock.

Opt-in (`python -m bench --race [--race-recipe PATH]`, ~2 x 10 minutes of both cores): runs
`python -m bench.race --budget-s B --recipe R` (see that module: the recipe through the real `cs336 train`
command, the anchor as the quality bench's oracle side, concurrently, one thread each) and turns its
`race.json` into one row: full-validation bits/byte, recipe / anchor, goal <= 0.92x.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, make_row

BUDGET_S = 600.0
QUICK_BUDGET_S = 60.0


def race_row(report: dict[str, Any]) -> dict[str, Any]:
    """The row of a `race.json` report."""
    ours, anchor = report["recipe_side"], report["anchor_side"]
    return make_row(
        f"race: {report['recipe']} vs handout anchor, pydocs, 4,096-token BPE, {report['budget_s']:.0f} s on one "
        "thread each, bits/byte (whole valid split)",
        "torch-native oracle + torch.optim.AdamW, the handout's recipe (cpu_10min_baseline), same BPE, same clock",
        ours["final_val_bpb"],
        anchor["final_val_bpb"],
        "bits/byte",
        goal="<= 0.92",
        notes=f"steps recipe {ours['steps']} vs anchor {anchor['steps']}; tokens/s recipe "
        f"{ours['tokens_per_s']:.0f} vs anchor {anchor['tokens_per_s']:.0f}",
    )


def run(quick: bool = False, recipe: str | Path | None = None, budget_s: float | None = None) -> list[dict[str, Any]]:
    from bench.race import RESULTS, default_race_recipe

    budget = budget_s or (QUICK_BUDGET_S if quick else BUDGET_S)
    recipe_path = Path(recipe) if recipe else default_race_recipe()
    report_path = RESULTS / "race.json"
    report_path.unlink(missing_ok=True)  # a failed race must not leave the last one's row behind
    cmd = [sys.executable, "-m", "bench.race", "--budget-s", str(budget), "--recipe", str(recipe_path)]
    subprocess.run(cmd, cwd=REPO_ROOT, check=False)
    if not report_path.is_file():
        raise RuntimeError(f"the race wrote no report ({' '.join(cmd)} failed; see its log above)")
    return [race_row(json.loads(report_path.read_text()))]
