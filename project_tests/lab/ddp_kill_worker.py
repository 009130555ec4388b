"""`cs336 train` that dies mid-run: what `test_distributed.py` resumes from.

    torchrun --nproc_per_node 2 project_tests/lab/ddp_kill_worker.py KILL_RANK KILL_STEP [cs336 train flags]

Parses the flags exactly as `cs336 train` does and runs the same `train()`, with one difference: on rank
`KILL_RANK` the model's forward pass of training step `KILL_STEP` (1-based, counting training-mode forwards,
so `--grad-accum-steps` must be 1) sends the process SIGKILL, like a pre-empted machine or an OOM kill.
torchrun then tears down the other rank and exits non-zero; the files left behind are those of a real crash.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import torch
from torch import nn

from cs336_basics.model import ModelConfig, TransformerLM
from cs336_lab.cli import build_parser
from cs336_lab.config import config_from_args
from cs336_lab.train import TrainConfig, train


def killing_factory(kill_rank: int, kill_step: int) -> Any:
    rank = int(os.environ.get("RANK", "0"))
    calls = 0

    def hook(module: nn.Module, args: Any) -> None:
        nonlocal calls
        if not module.training:  # evaluation forwards do not count
            return
        calls += 1
        if rank == kill_rank and calls == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)

    def factory(spec: Any, device: torch.device) -> nn.Module:
        model = TransformerLM(ModelConfig(**spec.to_dict()), device=device)
        model.register_forward_pre_hook(hook)
        return model

    return factory


def main(argv: list[str]) -> int:
    kill_rank, kill_step, flags = int(argv[0]), int(argv[1]), argv[2:]
    torch.set_num_threads(1)
    args = build_parser().parse_args(["train", *flags])
    config = config_from_args(TrainConfig, args)
    if config.grad_accum_steps != 1:
        raise ValueError(f"one forward per step is counted: expected grad_accum_steps=1, got {config.grad_accum_steps}")
    train(config, model_factory=killing_factory(kill_rank, kill_step))
    return 3  # not reached when the kill fires: the test expects a killed run


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
