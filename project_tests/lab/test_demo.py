"""`cs336 demo` end to end on a tiny corpus and a tiny model (the full 5-minute run is `make demo`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from cs336_lab import demo
from cs336_lab.cli import main
from cs336_lab.config import load_config
from cs336_lab.demo import (
    DEMO_TRAINING,
    DemoConfig,
    demo_train_config,
    format_summary,
    run_demo,
)
from cs336_lab.threads import fastest_thread_count

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = {
    "context_length": 32,
    "d_model": 32,
    "num_layers": 1,
    "num_heads": 2,
    "d_ff": 64,
    "batch_size": 4,
    "eval_every": 2,
    "eval_batches": 2,
    "log_every": 1,
}


def tiny_config(out: Path, **changes) -> DemoConfig:
    base = DemoConfig(
        out=str(out),
        num_train_stories=40,
        num_valid_stories=8,
        vocab_size=300,
        max_steps=4,
        max_time_s=120.0,
        device="cpu",
        prompts=("Once upon a time", "Tom"),
        max_new_tokens=8,
        num_workers=1,
        threads=1,
        progress=False,
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(tiny_config(out), **TINY_MODEL)


def test_demo_writes_every_stage(demo_run):
    out, result = demo_run
    for rel in [
        "corpus/train.txt",
        "corpus/valid.txt",
        "tokenizer",
        "tokens/train.npy",
        "tokens/valid.npy",
        "model/ckpt_latest.pt",
        "model/config.json",
        "model/metrics.jsonl",
        "samples.txt",
        "steps.json",
    ]:
        assert (out / rel).exists(), rel
    assert set(result.timings) == {"corpus", "tokenizer", "tokens", "model"}
    assert result.steps == 4
    assert [s for s, _ in result.val_curve] == [2, 4]
    assert result.val_curve[-1][1] < result.val_curve[0][1] + 0.5  # sane numbers, not a quality check
    assert [s.startswith(p) for s, p in zip(result.samples, ["Once upon a time", "Tom"])] == [True, True]
    saved = json.loads((out / "model" / "config.json").read_text())["model"]
    assert saved["d_model"] == 32
    from cs336_lab.tokenizer_files import load_tokenizer

    assert saved["vocab_size"] == load_tokenizer(out / "tokenizer").vocab_size


def test_summary_reports_the_curve_and_samples(demo_run):
    _, result = demo_run
    text = format_summary(result)
    first, last = result.val_curve[0][1], result.val_curve[-1][1]
    assert f"first {first:.3f} (step 2)" in text and f"last {last:.3f} (step 4)" in text and "best" in text
    assert "== samples" in text and "Once upon a time" in text
    assert "M parameters" in text


def test_second_run_skips_finished_steps(demo_run):
    out, first = demo_run
    again = run_demo(tiny_config(out), **TINY_MODEL)
    assert again.timings == {}
    assert again.val_curve == first.val_curve


def test_changed_setting_redoes_that_step_and_the_rest(tmp_path):
    config = tiny_config(tmp_path, num_train_stories=20, num_valid_stories=4, max_steps=2)
    run_demo(config, **TINY_MODEL)
    changed = run_demo(dataclasses.replace(config, vocab_size=290), **TINY_MODEL)
    assert set(changed.timings) == {"tokenizer", "tokens", "model"}
    forced = run_demo(dataclasses.replace(config, vocab_size=290, force=True), **TINY_MODEL)
    assert set(forced.timings) == {"corpus", "tokenizer", "tokens", "model"}


def test_cli_demo(tmp_path, monkeypatch, capsys):
    for key, value in TINY_MODEL.items():
        monkeypatch.setitem(DEMO_TRAINING, key, value)
    argv = [
        "-q",
        "demo",
        "--out",
        str(tmp_path),
        "--num-train-stories",
        "20",
        "--num-valid-stories",
        "4",
        "--vocab-size",
        "280",
        "--max-steps",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        "--num-workers",
        "1",
        "--max-new-tokens",
        "5",
        "--threads",
        "1",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "validation loss (nats/token): first" in out and "Once upon a time" in out
    assert json.loads((tmp_path / "demo_config.json").read_text())["vocab_size"] == 280


def test_configs_demo_toml_mirrors_the_demo():
    from cs336_lab.train_config import TrainConfig

    from_file = load_config(TrainConfig, REPO / "configs" / "demo.toml")
    built = demo_train_config("runs/demo", vocab_size=DemoConfig().vocab_size)
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    differing = {name for name in names if getattr(from_file, name) != getattr(built, name)}
    assert differing == {"out_dir"}  # the file trains into runs/demo-train, beside the demo's own model


@pytest.mark.parametrize("name", ["demo", "tinystories", "owt"])
def test_ready_configs_load(name):
    from cs336_lab.train_config import TrainConfig

    load_config(TrainConfig, REPO / "configs" / f"{name}.toml")


def test_tinystories_config_is_the_handouts():
    from cs336_lab.train_config import TrainConfig

    c = load_config(TrainConfig, REPO / "configs" / "tinystories.toml").model
    t = load_config(TrainConfig, REPO / "configs" / "tinystories.toml")
    assert (c.vocab_size, c.context_length, c.d_model, c.d_ff, c.num_layers, c.num_heads, c.rope_theta) == (
        10_000,
        256,
        512,
        1344,
        4,
        16,
        10_000.0,
    )
    assert t.batch_size * c.context_length * t.max_steps * t.grad_accum_steps == 327_680_000


def test_demo_model_size_is_in_range():
    from cs336_basics.model import TransformerLM

    config = demo_train_config("runs/demo", vocab_size=DemoConfig().vocab_size)
    from cs336_basics.model import ModelConfig

    n = TransformerLM(ModelConfig(**config.model.to_dict())).num_parameters()
    assert 1_000_000 <= n <= 3_000_000


def test_failed_step_is_not_marked_done(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo, "train_tokenizer", broken)
    (tmp_path / "steps.json").write_text(json.dumps({"corpus": {}, "tokenizer": {"vocab_size": 300}, "model": {}}))
    with pytest.raises(RuntimeError, match="disk full"):
        run_demo(tiny_config(tmp_path, num_train_stories=5, num_valid_stories=2))
    assert list(json.loads((tmp_path / "steps.json").read_text())) == ["corpus"]


def test_fastest_thread_count_restores_torch_threads():
    import torch

    before = torch.get_num_threads()
    assert fastest_thread_count(1) == 1
    assert fastest_thread_count(2, repeats=2) in (1, 2)
    assert torch.get_num_threads() == before
