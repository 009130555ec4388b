"""The modern recipe's model switches through the tools: `cs336 train` with all of them on, `--resume`, and
`cs336 generate` / `load_model` of the run's checkpoint (the layers themselves: project_tests/basics)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

RECIPE_FLAGS = ["--qk-norm", "--tie-embeddings", "--logit-softcap", "5", "--ffn-type", "relu2", "--d-ff", "none"]


def _byte_tokenizer(directory: Path) -> Path:
    from cs336_lab.tokenizer_files import save_tokenizer

    vocab = {i: bytes([i]) for i in range(256)} | {256: b"<|endoftext|>"}
    save_tokenizer(vocab, [], directory, special_tokens=["<|endoftext|>"])
    return directory


@pytest.mark.slow
def test_every_switch_on_trains_resumes_and_generates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint of a model with every switch on round-trips: `--resume` continues it (a mistake: the tie or
    QK-norm gains lost on reload, e.g. a checkpoint loader that unties), and `cs336 generate` and `load_model`
    rebuild the same model (tied, capped) from the stored config."""
    from cs336_lab.cli import main
    from cs336_lab.generate import load_model

    text = b"the cat sat on the mat. " * 60
    tokens = np.frombuffer(text, dtype=np.uint8).astype(np.uint16)
    np.save(tmp_path / "train.npy", tokens)
    np.save(tmp_path / "valid.npy", tokens[:300])
    tokenizer = _byte_tokenizer(tmp_path / "tok")
    run = tmp_path / "run"
    common = [
        *("--train-data", str(tmp_path / "train.npy"), "--valid-data", str(tmp_path / "valid.npy")),
        *("--tokenizer-dir", str(tokenizer), "--out-dir", str(run), "--device", "cpu"),
        *("--vocab-size", "257", "--context-length", "16", "--d-model", "32", "--num-layers", "2"),
        *("--num-heads", "4", "--batch-size", "4", "--warmup-steps", "1", "--eval-batches", "1", "--lr-max", "0.01"),
        *("--eval-every", "3", "--checkpoint-every", "3", "--log-every", "1"),
        *RECIPE_FLAGS,
    ]
    assert main(["train", *common, "--max-steps", "3"]) == 0
    assert main(["train", *common, "--max-steps", "6", "--resume"]) == 0
    stored = json.loads((run / "config.json").read_text())["model"]
    assert {k: stored[k] for k in ("qk_norm", "tie_embeddings", "logit_softcap", "ffn_type", "d_ff")} == {
        "qk_norm": True,
        "tie_embeddings": True,
        "logit_softcap": 5.0,
        "ffn_type": "relu2",
        "d_ff": 128,
    }
    model, _ = load_model(run / "ckpt_latest.pt")
    assert model.lm_head.weight is model.token_embeddings.weight
    payload = torch.load(run / "ckpt_latest.pt", weights_only=False)
    assert payload["iteration"] == 6
    assert torch.equal(payload["model"]["layers.1.attn.k_norm.weight"], model.layers[1].attn.k_norm.weight)
    assert not torch.equal(model.layers[1].attn.k_norm.weight, torch.ones(8))  # trained, then reloaded
    with torch.no_grad():
        assert model(torch.tensor([list(b"the cat")])).abs().max() < 5.0
    capsys.readouterr()
    assert (
        main(["generate", "--checkpoint", str(run / "ckpt_latest.pt"), "--prompt", "the", "--max-new-tokens", "5"]) == 0
    )
    assert capsys.readouterr().out.startswith("the")
