"""`cs336 generate`: rebuild a model from a checkpoint and complete prompts with it.

    cs336 generate --checkpoint runs/demo/ckpt_latest.pt --prompt "Once upon a time" --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cs336_basics.decoding import EOS_TOKEN, complete

logger = logging.getLogger(__name__)


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the `TransformerLM` described by the config stored in a checkpoint and load its weights.

    Returns the model (in eval mode) and the checkpoint's config dict (a training config or a model config).
    """
    from cs336_basics.checkpoint import load_checkpoint, read_checkpoint
    from cs336_basics.model import ModelConfig, TransformerLM

    payload = read_checkpoint(checkpoint, map_location="cpu")
    config = payload.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"checkpoint {checkpoint} stores no config: cannot tell which model to build")
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    model_config = ModelConfig.from_dict({k: v for k, v in config.items() if k in names})
    model = TransformerLM(model_config, device=torch.device(device))
    load_checkpoint(checkpoint, model, map_location=device)
    return model.eval(), config


# --------------------------------------------------------------------------------------------- CLI


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register `cs336 generate`: complete prompts with a trained checkpoint."""
    parser = subparsers.add_parser("generate", help="complete prompts with a trained checkpoint")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by `cs336 train`")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer directory (default: the tokenizer_dir stored in the checkpoint's config)")
    parser.add_argument("--prompt", action="append", default=None,
                        help="a prompt; repeat for a batch (default: one empty-ish prompt, the EOS token)")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-kv-cache", dest="use_kv_cache", action="store_false",
                        help="recompute the whole prefix for every token (slower; for checking)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cs336_basics.tokenizer import Tokenizer

    try:
        model, config = load_model(args.checkpoint, device=args.device)
        tokenizer_dir = args.tokenizer or config.get("tokenizer_dir")
        if not tokenizer_dir:
            raise ValueError("no tokenizer: pass --tokenizer DIR (the checkpoint's config names none)")
        tokenizer = Tokenizer.from_directory(tokenizer_dir)
        prompts = args.prompt or [EOS_TOKEN]
        texts = complete(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                         use_kv_cache=args.use_kv_cache)
    except (ValueError, TypeError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    for prompt, text in zip(prompts, texts):
        print(f"{prompt}{text}\n{'-' * 40}")  # the CLI's output proper: the completions on stdout
    return 0


__all__ = ["load_model", "add_subcommand"]
