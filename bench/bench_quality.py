"""The quality row of `make bench`: bits/byte after the same wall-clock budget, ours vs the torch-native peer.

Opt-in (`python -m bench --quality`, ~2 x 10 minutes of both cores): runs `python -m bench.quality --budget-s B`
(both models trained at the same time, one thread each; see that module) and turns its `quality.json` into one
row: final validation bits/byte over the whole validation split, ours / peer, goal <= 0.97x.

NOTE: the peer here is the torch-native model trained with OUR 4,096-token BPE (the same token stream for
both), not HF's BPE as the issue's table words it: the row compares the model and optimizer, not tokenizers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from bench.common import REPO_ROOT, make_row

BUDGET_S = 600.0


def run(quick: bool = False, budget_s: float | None = None) -> list[dict[str, Any]]:
    budget = budget_s or (60.0 if quick else BUDGET_S)
    subprocess.run([sys.executable, "-m", "bench.quality", "--budget-s", str(budget)], cwd=REPO_ROOT, check=False)
    report = json.loads((REPO_ROOT / "bench" / "results" / "quality" / "quality.json").read_text())
    ours, peer = report["ours"], report["oracle"]
    return [
        make_row(
            f"quality: pydocs, 4,096-token BPE, d256 L4 ctx128, {budget:.0f} s on one thread, bits/byte (whole valid split)",
            "torch-native oracle + torch.optim.AdamW, same BPE, trained at the same time on the other core",
            ours["final_val_bpb"],
            peer["final_val_bpb"],
            "bits/byte",
            goal="<= 0.97",
            notes=f"steps ours {ours['steps']} vs {peer['steps']}; tokens/s ours {ours['tokens_per_s']:.0f} vs "
            f"{peer['tokens_per_s']:.0f}",
        )
    ]
