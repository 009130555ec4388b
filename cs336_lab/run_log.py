"""What a training run shows and leaves behind, apart from checkpoints: metrics, loss curve, progress, W&B.

    metrics = MetricsLog(out_dir / "metrics.jsonl")
    metrics.start()                                  # or start(keep_until_step=step) when resuming
    metrics.write({"step": 10, "train_loss": 5.1})
    plot_loss_curve(metrics.records, out_dir / "loss_curve.png")

`bytes_per_token` turns a loss in nats per token into bits per byte, a number that does not depend on the
tokenizer. The plotting, progress-bar and W&B packages are imported only when used, so that importing the
training loop stays cheap and W&B stays optional.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cs336_common.atomic import atomic_save_figure, atomic_write_text

logger = logging.getLogger(__name__)


class MetricsLog:
    """`metrics.jsonl`: one JSON object per line, appended and flushed as the run goes (rank 0 only)."""

    def __init__(self, path: Path, *, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled
        self.records: list[dict[str, Any]] = []

    def start(self, keep_until_step: int = -1) -> None:
        """Start a fresh file, or on resume keep the records up to the checkpoint's step and drop the rest."""
        if self.path.is_file() and keep_until_step >= 0:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                old = [record for number, line in enumerate(f, 1) if (record := self._parse(line, number))]
            self.records = [r for r in old if r.get("step", 0) <= keep_until_step]
        text = "".join(json.dumps(r) + "\n" for r in self.records)
        atomic_write_text(self.path, text)

    def _parse(self, line: str, number: int) -> dict[str, Any] | None:
        """A line's record; None for a blank line or one cut short (a full disk, a kill mid-write), said once."""
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            logger.warning("%s line %d is not a JSON record (cut short?): dropped", self.path, number)
            return None
        return record if isinstance(record, dict) else None

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def bytes_per_token(tokenizer_dir: str | os.PathLike[str], tokens: np.ndarray, chunk: int = 1 << 22) -> float:
    """Mean number of UTF-8 bytes per token of `tokens` under the vocabulary saved in `tokenizer_dir`.

    Bits per byte = (nats per token) / ln 2 / (bytes per token): a loss that does not depend on the tokenizer.
    Each token counts the bytes of its vocabulary entry, so the total is the byte length of the decoded text.
    """
    from cs336_lab.tokenizer_files import read_tokenizer

    vocab, _, _ = read_tokenizer(tokenizer_dir)
    lengths = np.zeros(max(vocab) + 1, dtype=np.int64)
    for token_id, token_bytes in vocab.items():
        lengths[token_id] = len(token_bytes)
    total = sum(int(lengths[np.asarray(tokens[i : i + chunk])].sum()) for i in range(0, len(tokens), chunk))
    return total / len(tokens)


def plot_loss_curve(records: Sequence[dict[str, Any]], path: Path, title: str | None = None) -> None:
    """Draw train and validation loss against the step into a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_pts = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    val_pts = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if train_pts:
        ax.plot(*zip(*train_pts), label="train", linewidth=1, alpha=0.8)
    if val_pts:
        ax.plot(*zip(*val_pts), "o-", label="validation", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title or path.parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.92)
    atomic_save_figure(fig, path)


def training_progress_bar(total: int, initial: int) -> Any:
    """A tqdm bar over a run's `total` steps, starting at `initial` (the resumed step)."""
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (CI logs, files), where each refresh would be a line.
    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, disable=None)


def start_wandb(project: str, config: dict[str, Any], out_dir: str) -> Any:
    """A Weights & Biases run, or None (with a warning) when wandb is not installed."""
    try:
        import wandb
    except ImportError:
        logger.warning(
            "wandb=True but the wandb package is not installed (pip install 'cs336-basics[wandb]'): "
            "logging to metrics.jsonl only"
        )
        return None
    return wandb.init(project=project, config=config, dir=out_dir)


class RunLog:
    """Everything a run shows and leaves beside its checkpoints, on the main rank only (silent elsewhere).

    `record(...)` builds a step's record (with the throughput since the last record), `write` appends it to
    metrics.jsonl and W&B, `tick` moves the progress bar, `plot` redraws the loss curve; `close` finishes.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        enabled: bool,
        max_steps: int,
        start_step: int,
        resume: bool,
        progress: bool,
        wandb: tuple[str, dict[str, Any]] | None = None,
    ) -> None:
        self.out_dir, self.enabled = out_dir, enabled
        self.metrics = MetricsLog(out_dir / "metrics.jsonl", enabled=enabled)
        self.progress = training_progress_bar(max_steps, start_step) if enabled and progress else None
        self.wandb = start_wandb(wandb[0], wandb[1], str(out_dir)) if enabled and wandb else None
        self.plotted = 0
        self.window_start, self.window_tokens = time.perf_counter(), 0
        if enabled:
            self.metrics.start(keep_until_step=start_step if resume else -1)

    def count_tokens(self, tokens: int) -> float:
        """Add a step's tokens to the throughput window; return the tokens/s of the window so far."""
        self.window_tokens += tokens
        return self.window_tokens / max(time.perf_counter() - self.window_start, 1e-9)

    def restart_window(self) -> None:
        """Start a new throughput window (after a logged step's evaluation and checkpoint)."""
        self.window_start, self.window_tokens = time.perf_counter(), 0

    def write(self, record: dict[str, Any]) -> None:
        """Append a step's record to metrics.jsonl (and W&B)."""
        if self.enabled:
            self.metrics.write(record)
            if self.wandb is not None:
                self.wandb.log(record, step=record["step"])

    def tick(self, loss: float, lr: float) -> None:
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")

    def plot(self) -> None:
        """Redraw loss_curve.png (a plot costs ~0.2 s, so it is drawn with each checkpoint and at the end)."""
        if self.enabled and len(self.metrics.records) != self.plotted:
            plot_loss_curve(self.metrics.records, self.out_dir / "loss_curve.png")
            self.plotted = len(self.metrics.records)

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.metrics.records

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.plot()


__all__ = ["MetricsLog", "RunLog", "bytes_per_token", "plot_loss_curve", "training_progress_bar", "start_wandb"]
