"""`cs336 generate`: rebuild a model from a run checkpoint and complete prompts with it.

    cs336 generate --checkpoint runs/demo/ckpt_latest.pt --prompt "Once upon a time" --seed 0

The model is the package's `TransformerLM`, built from the config stored in the checkpoint (see `assignment.py`);
sampling is in `sampling.py`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cs336_common.model_spec import ModelSpec
from cs336_lab.assignment import Assignment
from cs336_lab.run_checkpoint import load_run_checkpoint, read_run_checkpoint
from cs336_lab.run_tokenizer import RECORD_KEY, check_tokenizer, find_tokenizer_dir
from cs336_lab.sampling import EOS_TOKEN, check_sampling, sample_completions

logger = logging.getLogger(__name__)


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the `TransformerLM` described by the config stored in a checkpoint and load its weights.

    Returns the model (in eval mode) and the checkpoint's config dict (a training config or a model config),
    with the checkpoint's record of its tokenizer under `RECORD_KEY` (see `run_tokenizer.py`), if it has one.
    """
    payload = read_run_checkpoint(checkpoint, map_location="cpu")
    config = payload.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"checkpoint {checkpoint} stores no config: cannot tell which model to build")
    spec = ModelSpec.from_run_config(config)  # today's [model] table, or the flat keys of an older run
    model = Assignment.load().build_model(spec, torch.device(device), fused_kernels=True)
    load_run_checkpoint(payload, model)
    record = (payload.get("extra") or {}).get(RECORD_KEY) if isinstance(payload.get("extra"), dict) else None
    return model.eval(), {**config, RECORD_KEY: record} if record else config


# --------------------------------------------------------------------------------------------- CLI


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register `cs336 generate`: complete prompts with a trained checkpoint."""
    parser = subparsers.add_parser("generate", help="complete prompts with a trained checkpoint")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by `cs336 train`")
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer directory (default: the tokenizer_dir stored in the checkpoint's config)",
    )
    parser.add_argument(
        "--prompt",
        action="append",
        default=None,
        help="a prompt; repeat for a batch (default: one empty-ish prompt, the EOS token)",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=200, help="tokens sampled per prompt (default: %(default)s)"
    )
    parser.add_argument(
        "--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy (default: %(default)s)"
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=0.95,
        help="nucleus sampling: keep the smallest set of tokens of this mass (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the sampling (default: a random one)")
    parser.add_argument(
        "--device", default="cpu", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps (default: %(default)s)"
    )
    parser.add_argument(
        "--no-kv-cache",
        dest="use_kv_cache",
        action="store_false",
        help="recompute the whole prefix for every token (slower; for checking)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cs336_lab.errors import USER_ERRORS
    from cs336_lab.tokenizer_files import read_tokenizer

    try:
        check_sampling(args.temperature, args.top_p, args.max_new_tokens)
        model, config = load_model(args.checkpoint, device=args.device)
        tokenizer_dir = find_tokenizer_dir(args.tokenizer, config, args.checkpoint)
        if tokenizer_dir is None:
            raise ValueError("no tokenizer: pass --tokenizer DIR (the checkpoint's config names none)")
        vocab, merges, special_tokens = read_tokenizer(tokenizer_dir)
        check_tokenizer(
            vocab,
            merges,
            special_tokens,
            model_vocab_size=ModelSpec.from_run_config(config).vocab_size,
            record=config.get(RECORD_KEY),
            where=tokenizer_dir,
        )
        tokenizer = Assignment.load().make_tokenizer(vocab, merges, special_tokens)
        prompts = args.prompt or [EOS_TOKEN]
        texts = sample_completions(
            model,
            tokenizer,
            prompts,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            use_kv_cache=args.use_kv_cache,
        )
    except USER_ERRORS as err:
        logger.error("%s", err)
        return 2
    for prompt, text in zip(prompts, texts):
        print(f"{prompt}{text}\n{'-' * 40}")  # the CLI's output proper: the completions on stdout
    return 0


__all__ = ["load_model", "add_subcommand"]
