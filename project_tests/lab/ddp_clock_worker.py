"""`cs336 train` with `lr_clock = "time"` on ranks whose clocks disagree: what `test_faults.py` compares.

    torchrun --nproc_per_node 2 project_tests/lab/ddp_clock_worker.py OUT_DIR [cs336 train flags]

Parses the flags as `cs336 train` does and runs the same `train()`, but rank 1's training forward passes
sleep 30 ms, so each rank's own clock runs ahead of the other's. After the run every rank saves its own
replica's weights to OUT_DIR/rank{RANK}.pt: with one clock for all ranks they are identical.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cs336_basics.model import ModelConfig, TransformerLM
from cs336_lab.cli import build_parser
from cs336_lab.config import config_from_args
from cs336_lab.train import TrainConfig, train


def main(argv: list[str]) -> int:
    out, flags = Path(argv[0]), argv[1:]
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    config = config_from_args(TrainConfig, build_parser().parse_args(["train", *flags]))
    models: list[nn.Module] = []

    def slow_on_rank_one(module: nn.Module, args: Any) -> None:
        if rank == 1 and module.training:
            time.sleep(0.03)

    def factory(spec: Any, device: torch.device) -> nn.Module:
        model = TransformerLM(ModelConfig(**spec.to_dict()), device=device)
        model.register_forward_pre_hook(slow_on_rank_one)
        models.append(model)
        return model

    train(config, model_factory=factory)
    torch.save({k: v.detach().clone() for k, v in models[0].state_dict().items()}, out / f"rank{rank}.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
