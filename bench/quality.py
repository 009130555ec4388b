"""Quality, measured: our model vs the torch-native oracle, trained by the same loop for the same time.

    python -m bench.quality                      # 600 s per model, both at once, ~12 minutes in all
    python -m bench.quality --budget-s 120       # a shorter run (say so when quoting it)

Data: `../shared/data/pydocs` (Python documentation, real text), a 4,096-token BPE vocabulary trained with our
`train_bpe` on the training split. The tokenizer and the token arrays are cached under
`bench/results/quality/cache/` (git-ignored), so only the first run pays for them.

The two runs differ only in the model and the optimizer:
- ours:   `cs336_basics.TransformerLM` + `cs336_basics.AdamW`;
- oracle: `oracle.model.OracleTransformerLM` (nn.Linear, nn.RMSNorm, F.scaled_dot_product_attention)
          + `torch.optim.AdamW`,
both started from the same initial weights (ours are built under the seed, the oracle loads them: the state-dict
keys are the same), with the same batches (same seed), the same loss (`cs336_basics.cross_entropy`), schedule,
clipping and wall-clock budget. The learning-rate schedule follows the clock (`lr_clock="time"`), so each run gets
a complete warm-up + cosine decay within its budget whatever its speed.

The machine's 2 cores are shared (with other processes too): the two runs go concurrently as two processes with
one thread each, so they see the same contention. Each model is then scored on the whole validation split
(every token once, `iterate_batches`). Goal: our final validation loss within 5% of the oracle's.
Outputs: `bench/results/quality/{ours,oracle}/` (metrics.jsonl, loss_curve.png, checkpoint),
`bench/results/quality/quality.{json,md}` and `curves.png` (both validation curves on one plot).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import REPO_ROOT, SHARED_DATA

logger = logging.getLogger("bench.quality")

DATA_DIR = SHARED_DATA / "pydocs"
RESULTS = REPO_ROOT / "bench" / "results" / "quality"
CACHE = RESULTS / "cache"
VOCAB_SIZE = 4096
EOS = "<|endoftext|>"
GOAL = 1.05  # ours / oracle final validation loss


def prepare_data(cache: Path = CACHE) -> tuple[Path, Path, Path]:
    """Train the 4,096-token tokenizer and encode train/valid once; return (tokenizer dir, train.npy, valid.npy)."""
    from cs336_basics.bpe_trainer import train_bpe
    from cs336_lab.parallel_encode import encode_file
    from cs336_lab.tokenizer_files import load_tokenizer, save_tokenizer

    tok_dir, train_npy, valid_npy = cache / "tokenizer", cache / "train.npy", cache / "valid.npy"
    if not (DATA_DIR / "train.txt").is_file():
        raise FileNotFoundError(f"the pydocs corpus is missing: expected {DATA_DIR / 'train.txt'}")
    if not (tok_dir / "vocab.json").is_file():
        start = time.perf_counter()
        vocab, merges = train_bpe(DATA_DIR / "train.txt", VOCAB_SIZE, [EOS])
        save_tokenizer(vocab, merges, tok_dir, special_tokens=[EOS])
        logger.info("trained the %d-token BPE in %.0f s", len(vocab), time.perf_counter() - start)
    tokenizer = load_tokenizer(tok_dir)
    for src, dst in ((DATA_DIR / "train.txt", train_npy), (DATA_DIR / "valid.txt", valid_npy)):
        if not dst.is_file():
            start = time.perf_counter()
            n = encode_file(src, dst, tokenizer)
            logger.info("encoded %s: %d tokens in %.0f s", src.name, n, time.perf_counter() - start)
    return tok_dir, train_npy, valid_npy


def side_dir(side: str, steps: int | None) -> Path:
    return RESULTS / side if steps is None else RESULTS / f"steps{steps}" / side


def make_config(
    side: str, budget_s: float, tok_dir: Path, train_npy: Path, valid_npy: Path, steps: int | None = None
) -> Any:
    """The one training config both sides use (only `out_dir` differs).

    `steps`: the equal-steps check instead, `steps` updates with the schedule on the step counter, no budget.
    """
    from cs336_common.model_spec import ModelSpec
    from cs336_lab.train import TrainConfig

    config = TrainConfig(
        train_data=str(train_npy),
        valid_data=str(valid_npy),
        tokenizer_dir=str(tok_dir),
        model=ModelSpec(vocab_size=VOCAB_SIZE, context_length=128, d_model=128, num_layers=4, num_heads=4, d_ff=384),
        batch_size=16,
        max_steps=100_000,
        max_time_s=budget_s,
        lr_clock="time",
        warmup_steps=3_000,
        lr_max=3e-3,
        lr_min=3e-4,
        weight_decay=0.1,
        betas=(0.9, 0.95),
        grad_clip=1.0,
        eval_every=20,
        eval_batches=4,
        log_every=10,
        checkpoint_every=100_000,
        seed=0,
        out_dir=str(side_dir(side, steps)),
        device="cpu",
        precision="fp32",
        progress=False,
    )
    if steps is not None:
        config = dataclasses.replace(
            config,
            max_steps=steps,
            warmup_steps=max(1, steps * 3 // 100),
            max_time_s=None,
            lr_clock="steps",
            eval_every=max(1, steps // 10),
        )
    return config


def _oracle_factories() -> tuple[Any, Any]:
    from cs336_basics.model import ModelConfig, TransformerLM
    from oracle.model import OracleTransformerLM

    def model_factory(spec: Any, device: torch.device) -> torch.nn.Module:
        mc = ModelConfig(**spec.to_dict())
        ours = TransformerLM(mc, device=device)  # built under the loop's seed: the same initial weights
        oracle = OracleTransformerLM(
            mc.vocab_size, mc.context_length, mc.d_model, mc.num_layers, mc.num_heads, mc.d_ff, mc.rope_theta, mc.eps
        ).to(device)
        oracle.load_state_dict(ours.state_dict())
        return oracle

    def optimizer_factory(params: list, config: Any) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            params, lr=config.lr_max, betas=config.betas, eps=config.adam_eps, weight_decay=config.weight_decay
        )

    return model_factory, optimizer_factory


@torch.no_grad()
def full_validation_loss(model: torch.nn.Module, valid_npy: Path, context_length: int) -> float:
    """Mean loss over every token of the validation split (each predicted once)."""
    from cs336_basics.data import iterate_batches, load_tokens
    from cs336_basics.loss import cross_entropy

    model.eval()
    total, count = 0.0, 0
    for x, y in iterate_batches(load_tokens(valid_npy), 32, context_length, "cpu"):
        total += cross_entropy(model(x), y).item() * y.numel()
        count += y.numel()
    return total / count


def run_side(side: str, budget_s: float, steps: int | None = None) -> dict[str, Any]:
    """Train one side (in its own process, one thread) and score it on the whole validation split."""
    from cs336_basics.checkpoint import load_checkpoint
    from cs336_basics.data import load_tokens
    from cs336_lab.run_log import bytes_per_token
    from cs336_lab.train import default_model_factory, train

    torch.set_num_threads(1)
    tok_dir, train_npy, valid_npy = prepare_data()
    config = make_config(side, budget_s, tok_dir, train_npy, valid_npy, steps)
    model_factory, optimizer_factory = _oracle_factories() if side == "oracle" else (None, None)
    result = train(config, model_factory=model_factory, optimizer_factory=optimizer_factory)
    torch.manual_seed(config.seed)
    build = model_factory or default_model_factory
    model = build(config.model, torch.device("cpu"))
    load_checkpoint(Path(config.out_dir) / "ckpt_latest.pt", model)
    val = full_validation_loss(model, valid_npy, config.model.context_length)
    bpt = bytes_per_token(tok_dir, load_tokens(valid_npy))
    summary = {
        "side": side,
        "steps": result.steps,
        "tokens": result.tokens_seen,
        "train_time_s": round(result.elapsed_s, 1),
        "final_val_loss": val,
        "final_val_bpb": val / math.log(2) / bpt,
        "bytes_per_token": bpt,
        "params": sum(p.numel() for p in model.parameters()),
        "tokens_per_s": result.tokens_seen / result.elapsed_s,
    }
    (Path(config.out_dir) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def compare_equal_steps(results: dict[str, dict[str, Any]], steps: int) -> dict[str, Any]:
    """Same updates, same batches, same schedule: any gap is numerics, not speed. Writes `steps<N>/summary.json`."""
    curves = {}
    for side in ("ours", "oracle"):
        records = [json.loads(line) for line in (side_dir(side, steps) / "metrics.jsonl").read_text().splitlines()]
        curves[side] = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    diffs = [abs(curves["ours"][k] - curves["oracle"][k]) for k in curves["ours"] if k in curves["oracle"]]
    summary = {
        "steps": steps,
        "val_curves": curves,
        "max_abs_val_diff": max(diffs),
        "final_full_val": {side: results[side]["final_val_loss"] for side in results},
        "ratio": results["ours"]["final_val_loss"] / results["oracle"]["final_val_loss"],
    }
    (RESULTS / f"steps{steps}" / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def plot_curves(path: Path, budget_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=90)
    for side, colour in (("ours", "tab:blue"), ("oracle", "tab:orange")):
        records = [json.loads(line) for line in (RESULTS / side / "metrics.jsonl").read_text().splitlines()]
        train_pts = [(r["time_s"], r["train_loss"]) for r in records if "train_loss" in r]
        val_pts = [(r["time_s"], r["val_loss"]) for r in records if "val_loss" in r]
        axes[0].plot(*zip(*train_pts), color=colour, alpha=0.7, linewidth=0.8, label=side)
        axes[1].plot(*zip(*val_pts), color=colour, marker="o", markersize=2, label=side)
    for ax, name in zip(axes, ("train loss", "validation loss (4 fixed batches)")):
        ax.set_xlabel("wall-clock seconds (1 thread each, run concurrently)")
        ax.set_ylabel(f"{name}, nats/token")
        lines = [line.get_ydata() for line in ax.get_lines()]
        if all(len(y) > 10 for y in lines):  # leave out the first steps' steep fall, show the end in detail
            ax.set_ylim(top=max(float(y[len(y) // 10]) for y in lines))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"pydocs, 4,096-token BPE, {budget_s:.0f} s budget: ours vs torch-native oracle")
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.88, wspace=0.22)
    fig.savefig(path)
    plt.close(fig)


def _val_at_common_step() -> tuple[int, float, float] | None:
    """Validation loss of both runs at the last evaluation step they both reached (same number of updates)."""
    vals = {}
    for side in ("ours", "oracle"):
        records = [json.loads(line) for line in (RESULTS / side / "metrics.jsonl").read_text().splitlines()]
        vals[side] = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    common = sorted(set(vals["ours"]) & set(vals["oracle"]))
    return (common[-1], vals["ours"][common[-1]], vals["oracle"][common[-1]]) if common else None


def write_quality_report(ours: dict[str, Any], oracle: dict[str, Any], budget_s: float) -> dict[str, Any]:
    from bench.common import machine_info

    ratio = ours["final_val_loss"] / oracle["final_val_loss"]
    config = make_config("ours", budget_s, Path(), Path(), Path())
    same_step = _val_at_common_step()
    report = {
        "budget_s": budget_s,
        "goal": f"ours / oracle <= {GOAL}",
        "ratio": ratio,
        "met": ratio <= GOAL,
        "ours": ours,
        "oracle": oracle,
        "val_at_common_step": same_step,
        "machine": machine_info(),
        "config": dataclasses.asdict(config),
    }
    (RESULTS / "quality.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    rows = "\n".join(
        f"| {s['side']} | {s['final_val_loss']:.4f} | {s['final_val_bpb']:.4f} | {s['steps']} | {s['tokens']:,} "
        f"| {s['tokens_per_s']:.0f} | {s['params']:,} |"
        for s in (ours, oracle)
    )
    step_line = (
        f"At the last evaluation both reached (step {same_step[0]}: the same updates, but the schedule "
        f"follows the clock, so the slower run had already decayed its learning rate further), the "
        f"validation loss on the 4 fixed batches was {same_step[1]:.4f} (ours) vs {same_step[2]:.4f} "
        f"(oracle), ratio {same_step[1] / same_step[2]:.4f}.\n\n"
        if same_step
        else ""
    )
    md = (
        f"# Quality: ours vs the torch-native oracle ({budget_s:.0f} s each, CPU)\n\n"
        f"`python -m bench.quality --budget-s {budget_s:.0f}` on {_dt_now()} ({machine_info().get('cpu', 'CPU')}, "
        "2 cores shared with other work; the two runs went concurrently, one thread each).\n\n"
        "| model | val loss (nats/token) | bits/byte | steps | tokens | tokens/s | params |\n"
        "|---|---|---|---|---|---|---|\n" + rows + "\n\n"
        f"Final validation loss over the whole validation split ({ours['bytes_per_token']:.2f} bytes/token), "
        f"ratio ours/oracle: **{ratio:.4f}** (goal <= {GOAL}: {'met' if ratio <= GOAL else 'NOT met'}).\n\n"
        + step_line
        + f"Data: `../shared/data/pydocs` (Python docs), {VOCAB_SIZE}-token BPE trained by `cs336_basics.train_bpe`. "
        f"Model: d_model {config.model.d_model}, {config.model.num_layers} layers, {config.model.num_heads} heads, "
        f"d_ff {config.model.d_ff}, context {config.model.context_length}, batch {config.batch_size}. "
        f"AdamW lr {config.lr_max:g} -> "
        f"{config.lr_min:g} (cosine over the time budget, {config.warmup_steps / config.max_steps:.0%} warm-up), "
        f"weight decay {config.weight_decay:g}, betas {config.betas}, clip {config.grad_clip:g}.\n\n"
        "Ours: `TransformerLM` + `cs336_basics.AdamW`. Oracle: `oracle.model.OracleTransformerLM` "
        "(nn.Linear, nn.RMSNorm, F.scaled_dot_product_attention) + `torch.optim.AdamW`. Same initial weights, "
        "same batches, same loss function, schedule, clipping and budget (`cs336_lab.train.train` with a "
        "model and optimizer factory). With a fixed time budget the faster implementation takes more steps, "
        "so the ratio mixes model quality with speed under the machine's load at the time.\n\n"
        + _equal_steps_line()
        + "![curves](curves.png)\n"
    )
    (RESULTS / "quality.md").write_text(md)
    return report


def _equal_steps_line() -> str:
    """A sentence on the latest equal-steps check (`--steps N`), when one was run."""
    found = sorted(RESULTS.glob("steps*/summary.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        return ""
    summary = json.loads(found[-1].read_text())
    return (
        f"Equal-steps check (`python -m bench.quality --steps {summary['steps']}`: the schedule on the step "
        f"counter, no time budget): the two validation curves differ by at most "
        f"{summary['max_abs_val_diff']:.1e} nats at every evaluation, and the final whole-split losses are "
        f"{summary['final_full_val']['ours']:.4f} (ours) vs {summary['final_full_val']['oracle']:.4f} (oracle), "
        f"ratio {summary['ratio']:.5f}: at equal updates the two implementations train identically up to "
        "float32 rounding, so any gap above comes from speed.\n\n"
    )


def _dt_now() -> str:
    import datetime

    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def copy_to_docs(docs_dir: Path) -> None:
    """The committed copy: the summary, the comparison plot and both runs' own loss curves (small PNGs)."""
    import shutil

    docs_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RESULTS / "quality.md", docs_dir / "README.md")
    shutil.copyfile(RESULTS / "curves.png", docs_dir / "curves.png")
    for side in ("ours", "oracle"):
        shutil.copyfile(RESULTS / side / "loss_curve.png", docs_dir / f"loss_curve_{side}.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=600.0, help="training wall-clock per model (600)")
    parser.add_argument("--side", choices=["ours", "oracle"], help=argparse.SUPPRESS)  # a worker process
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="instead: the equal-steps check, both sides for exactly this many updates",
    )
    parser.add_argument("--prepare-only", action="store_true", help="train the tokenizer and encode, then stop")
    parser.add_argument(
        "--docs-dir",
        type=Path,
        default=None,
        help="also copy the summary and PNGs here (default: docs/quality for a full 600 s run)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    if args.side:
        print(json.dumps(run_side(args.side, args.budget_s, args.steps)))
        return 0
    prepare_data()
    if args.prepare_only:
        return 0
    cmd = [sys.executable, "-m", "bench.quality", "--budget-s", str(args.budget_s)]
    cmd += (["--steps", str(args.steps)] if args.steps else []) + ["--side"]
    procs = {side: subprocess.Popen([*cmd, side], cwd=REPO_ROOT, stdout=subprocess.PIPE) for side in ("ours", "oracle")}
    results = {}
    for side, proc in procs.items():
        out, _ = proc.communicate()
        if proc.returncode != 0:
            logger.error("the %s run failed (exit %d)", side, proc.returncode)
            return 1
        results[side] = json.loads(out.decode().strip().splitlines()[-1])
    if args.steps:
        print(json.dumps(compare_equal_steps(results, args.steps), indent=2))
        return 0
    plot_curves(RESULTS / "curves.png", args.budget_s)
    report = write_quality_report(results["ours"], results["oracle"], args.budget_s)
    print((RESULTS / "quality.md").read_text())
    docs_dir = args.docs_dir or (REPO_ROOT / "docs" / "quality" if args.budget_s >= 600 else None)
    if docs_dir is not None:
        copy_to_docs(docs_dir)
    return 0 if report["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
