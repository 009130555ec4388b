"""The tools on a student's own package: `cs336 train-bpe / tokenize / train / generate` in the handout's layout.

The handout is built (`cs336_grading.staff.handout.build_handout`), a small implementation that is *not* ours is
dropped into its `cs336_basics/` (keyword constructor, plain torch ops, names spread over several modules,
no `__init__` exports, none of our extras), and the commands run as subprocesses with the handout first on
`PYTHONPATH`. The run's checkpoint holds the student's parameter names, so the student's model was trained.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

STUDENT_MODULES = {
    "model.py": '''
        import torch
        from torch import nn


        class TransformerLM(nn.Module):
            """Not a Transformer at all: embeddings, residual MLPs, a head. Enough for the tools."""

            def __init__(self, vocab_size, context_length, d_model, num_layers, num_heads, d_ff, rope_theta,
                         device=None):
                super().__init__()
                self.context_length = context_length
                self.student_embedding = nn.Embedding(vocab_size, d_model)
                self.student_blocks = nn.ModuleList(
                    nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
                    for _ in range(num_layers))
                self.student_head = nn.Linear(d_model, vocab_size)
                self.to(device)

            def forward(self, x):
                h = self.student_embedding(x)
                for block in self.student_blocks:
                    h = h + block(h)
                return self.student_head(h)
    ''',
    "training.py": """
        import math

        import numpy as np
        import torch
        import torch.nn.functional as F


        def cross_entropy(logits, targets):
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


        class AdamW(torch.optim.AdamW):
            pass


        def get_lr_cosine_schedule(it, max_learning_rate, min_learning_rate, warmup_iters, cosine_cycle_iters):
            if it < warmup_iters:
                return it / warmup_iters * max_learning_rate
            if it > cosine_cycle_iters:
                return min_learning_rate
            t = (it - warmup_iters) / max(cosine_cycle_iters - warmup_iters, 1)
            return min_learning_rate + 0.5 * (1 + math.cos(math.pi * t)) * (max_learning_rate - min_learning_rate)


        def gradient_clipping(parameters, max_l2_norm):
            torch.nn.utils.clip_grad_norm_(list(parameters), max_l2_norm)


        def get_batch(dataset, batch_size, context_length, device):
            starts = np.random.randint(0, len(dataset) - context_length, size=batch_size)
            windows = np.stack([dataset[s : s + context_length + 1] for s in starts]).astype(np.int64)
            w = torch.from_numpy(windows).to(device)
            return w[:, :-1], w[:, 1:]
    """,
    "bytes_tokenizer.py": '''
        import re


        def train_bpe(input_path, vocab_size, special_tokens):
            """A trainer that learns no merge: the 256 bytes and the special tokens."""
            vocab = {i: bytes([i]) for i in range(256)}
            for token in special_tokens:
                vocab[len(vocab)] = token.encode("utf-8")
            return vocab, []


        class Tokenizer:
            def __init__(self, vocab, merges, special_tokens=None):
                self.vocab = dict(vocab)
                self.special_tokens = list(special_tokens or [])
                self.ids = {v: k for k, v in self.vocab.items()}

            def encode(self, text):
                if self.special_tokens:
                    pattern = "(" + "|".join(map(re.escape, sorted(self.special_tokens, key=len, reverse=True))) + ")"
                    parts = re.split(pattern, text)
                else:
                    parts = [text]
                out = []
                for part in parts:
                    if part in self.special_tokens:
                        out.append(self.ids[part.encode("utf-8")])
                    else:
                        out.extend(self.ids[bytes([b])] for b in part.encode("utf-8"))
                return out

            def encode_iterable(self, iterable):
                for chunk in iterable:
                    yield from self.encode(chunk)

            def decode(self, ids):
                return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")
    ''',
}


def test_the_tools_import_the_assignment_only_through_the_door() -> None:
    offenders = []
    for path in sorted((REPO / "cs336_lab").glob("*.py")):
        if path.name == "assignment.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            offenders += [f"{path.name}:{node.lineno}" for n in names if n.split(".")[0] == "cs336_basics"]
    assert offenders == [], f"cs336_lab must reach cs336_basics through cs336_lab/assignment.py only: {offenders}"


@pytest.fixture(scope="module")
def student_kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cs336_grading.staff.handout import build_handout

    kit = build_handout(tmp_path_factory.mktemp("kit") / "handout")
    package = kit / "cs336_basics"
    (package / "__init__.py").write_text('"""A student\'s package: nothing re-exported."""\n')
    for name, source in STUDENT_MODULES.items():
        (package / name).write_text(textwrap.dedent(source).lstrip())
    stories = "".join(f"Once upon a time there was a cat number {i}.\n<|endoftext|>\n" for i in range(60))
    (kit / "train.txt").write_text(stories)
    (kit / "valid.txt").write_text(stories[: len(stories) // 3])
    return kit


def _cs336(kit: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(kit), "CUDA_VISIBLE_DEVICES": ""}
    code = (
        "import sys, cs336_basics; print('PACKAGE', cs336_basics.__file__, file=sys.stderr); "
        "from cs336_lab.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=kit, env=env, capture_output=True, text=True, timeout=300
    )


TRAIN = [
    "train",
    "--train-data",
    "tokens/train.npy",
    "--valid-data",
    "tokens/valid.npy",
    "--tokenizer-dir",
    "tok",
    "--vocab-size",
    "257",
    "--context-length",
    "16",
    "--d-model",
    "32",
    "--num-layers",
    "1",
    "--num-heads",
    "2",
    "--d-ff",
    "64",
    "--batch-size",
    "4",
    "--max-steps",
    "3",
    "--warmup-steps",
    "1",
    "--eval-every",
    "3",
    "--eval-batches",
    "1",
    "--log-every",
    "1",
    "--checkpoint-every",
    "3",
    "--out-dir",
    "run",
    "--device",
    "cpu",
    "--no-progress",
]


@pytest.mark.slow
def test_train_and_generate_with_a_students_package(student_kit: Path) -> None:
    kit = student_kit
    steps = [
        ["train-bpe", "train.txt", "--vocab-size", "300", "--out", "tok", "--no-progress"],
        ["tokenize", "train.txt", "valid.txt", "--tokenizer", "tok", "--out-dir", "tokens", "--no-progress"],
        TRAIN,
        ["generate", "--checkpoint", "run/ckpt_latest.pt", "--prompt", "Once", "--max-new-tokens", "5", "--seed", "0"],
    ]
    for args in steps:
        done = _cs336(kit, *args)
        assert done.returncode == 0, f"cs336 {args[0]}: {done.stderr[-2000:]}"
        assert f"PACKAGE {kit / 'cs336_basics' / '__init__.py'}" in done.stderr, "the student's package is used"
    assert (kit / "tok" / "merges.txt").read_text().splitlines() == ["#version: cs336-bpe 1"]  # their trainer
    payload = torch.load(kit / "run" / "ckpt_latest.pt", weights_only=True)
    assert payload["iteration"] == 3 and all(k.startswith("student_") for k in payload["model"])
    records = [json.loads(line) for line in (kit / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and "val_loss" in records[-1]
    assert done.stdout.startswith("Once")

    ablation = _cs336(kit, *TRAIN, "--out-dir", "run2", "--norm-position", "post")
    assert ablation.returncode == 2
    assert "--norm-position post needs cs336_basics.ModelConfig" in ablation.stderr
