"""`cs336 train` under torchrun, counting the DDP modules still alive when the process group is destroyed.

    torchrun --nproc_per_node 2 project_tests/lab/ddp_teardown_worker.py OUT_DIR [cs336 train flags]

A DDP module that outlives its gloo group aborts the process now and then at teardown ("terminate called
without an active exception", exit -6: about one 2-rank run in three on a loaded machine), too rarely for a
test to catch by running the trainer. So this worker catches the cause instead: it wraps
`torch.distributed.destroy_process_group`, and writes to OUT_DIR/rank{RANK}.json how many
`DistributedDataParallel` objects were alive at that moment (and whether it was called at all).
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from cs336_lab.cli import main as cs336_main


def main(argv: list[str]) -> int:
    out, flags = Path(argv[0]), argv[1:]
    seen: dict[str, Any] = {"destroyed": False, "live_ddp": None}
    destroy = dist.destroy_process_group

    def counting_destroy(*args: Any, **kwargs: Any) -> None:
        seen["destroyed"] = True
        seen["live_ddp"] = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
        destroy(*args, **kwargs)

    dist.destroy_process_group = counting_destroy  # type: ignore[assignment]
    code = cs336_main(["train", *flags])
    (out / f"rank{os.environ['RANK']}.json").write_text(json.dumps(seen))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
