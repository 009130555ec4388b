"""The leaderboard: rules checked on the submitted files, the value computed by the grader's own model.

Fast tests use an untrained model over a byte-level tokenizer; the slow one trains a tiny model inside the
test and compares the leaderboard value with `cs336 evaluate`'s.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from cs336_basics.model import ModelConfig, TransformerLM
from cs336_grading.staff.leaderboard import LeaderboardConfig, LeaderboardResult, score
from cs336_lab.evaluate import evaluate
from cs336_lab.run_checkpoint import save_run_checkpoint
from cs336_lab.tokenizer_files import save_tokenizer

CONFIG = ModelConfig(vocab_size=258, context_length=16, d_model=32, num_layers=2, num_heads=4, rope_theta=1000.0)
TEXT = "The quick brown fox jumps over the lazy dog.<|endoftext|>A second story, shorter.\n" * 4


def make_config(tmp_path: Path, **rules: object) -> LeaderboardConfig:
    (tmp_path / "held_out.txt").write_text(TEXT, encoding="utf-8")
    values = {"validation_text": "held_out.txt", "context_length": 16, "max_vocab_size": 258, "max_parameters": 60_000}
    values |= rules
    path = tmp_path / "leaderboard.toml"
    path.write_text("[leaderboard]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return LeaderboardConfig.load(path)


def make_submission(root: Path, *, config: ModelConfig = CONFIG, payload: object = None, top: str = "") -> Path:
    """A submission with leaderboard/{model.pt, vocab.json, merges.txt}: a byte tokenizer plus one merge."""
    folder = root / top / "leaderboard"
    folder.mkdir(parents=True)
    merges = [(b"t", b"h")]
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"th", 257: b"<|endoftext|>"}
    save_tokenizer(vocab, merges, folder, special_tokens=["<|endoftext|>"])
    torch.manual_seed(0)
    model = TransformerLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)
    if payload is None:
        save_run_checkpoint(
            folder / "model.pt", model, None, 5, config=config.to_dict() | {"tokenizer_dir": str(folder)}
        )
    else:
        torch.save(payload(model) if callable(payload) else payload, folder / "model.pt")
    return root


def rejected(result: LeaderboardResult, reason: str) -> bool:
    assert result.entry is None, result
    assert reason in result.message, result.message
    return True


def test_the_entry_equals_cs336_evaluate(tmp_path: Path) -> None:
    rules = make_config(tmp_path)
    submission = make_submission(tmp_path / "alice", top="hw1")  # a top folder is tolerated
    result = score(rules, submission)
    assert result.entry is not None, result.message
    (entry,) = result.entry
    assert set(entry) == {"name", "value", "order"} and entry["order"] == "asc"
    checkpoint = submission / "hw1" / "leaderboard" / "model.pt"
    reference = evaluate(checkpoint, rules.validation_text, context_length=16)
    assert entry["value"] == pytest.approx(reference.bits_per_byte, abs=1e-6)
    assert result.details["loss"] == pytest.approx(reference.loss, abs=1e-6)
    assert result.details["predicted_tokens"] == reference.predicted_tokens
    loss_rules = make_config(tmp_path, metric="loss", name="loss")
    assert score(loss_rules, submission).entry[0]["value"] == pytest.approx(reference.loss, abs=1e-6)


def test_a_forged_loss_in_the_checkpoint_changes_nothing(tmp_path: Path) -> None:
    rules = make_config(tmp_path)
    honest = score(rules, make_submission(tmp_path / "honest"))
    forged = score(
        rules,
        make_submission(
            tmp_path / "forged",
            payload=lambda m: {
                "model": m.state_dict(),
                "iteration": 1,
                "loss": 0.0001,
                "bits_per_byte": 0.0001,
                "config": CONFIG.to_dict() | {"val_loss": 0.0001},
            },
        ),
    )
    assert forged.entry == honest.entry


def test_plain_dict_with_config_json(tmp_path: Path) -> None:
    rules = make_config(tmp_path)
    submission = make_submission(
        tmp_path / "bob", payload=lambda m: {"model": m.state_dict(), "optimizer": {}, "iteration": 9}
    )
    assert rejected(score(rules, submission), "put num_heads in leaderboard/config.json")
    (submission / "leaderboard" / "config.json").write_text(json.dumps({"num_heads": 4, "rope_theta": 1000.0}))
    assert score(rules, submission).entry == score(rules, make_submission(tmp_path / "carol")).entry


def test_no_folder_means_not_entered(tmp_path: Path) -> None:
    (tmp_path / "dave" / "cs336_basics").mkdir(parents=True)
    assert rejected(score(make_config(tmp_path), tmp_path / "dave"), "not entered")


@pytest.mark.parametrize(
    "rules, reason",
    [
        (dict(max_parameters=10_000), "parameters, over the limit of 10,000"),
        (dict(max_vocab_size=100), "the vocabulary has 258 rows, over the limit of 100"),
        (dict(max_checkpoint_mb=0.01), "over the limit of 10,485"),
    ],
    ids=["parameters", "vocabulary", "file-size"],
)
def test_rules_from_the_config(tmp_path: Path, rules: dict[str, object], reason: str) -> None:
    assert rejected(score(make_config(tmp_path, **rules), make_submission(tmp_path / "eve")), reason)


def _post_norm(tmp_path: Path) -> Path:
    return make_submission(tmp_path / "s", config=ModelConfig(**{**CONFIG.to_dict(), "norm_position": "post"}))


def _extra_key(tmp_path: Path) -> Path:
    return make_submission(
        tmp_path / "s",
        payload=lambda m: {
            "model": {**m.state_dict(), "bias": torch.zeros(3)},
            "iteration": 0,
            "config": CONFIG.to_dict(),
        },
    )


def _nan(tmp_path: Path) -> Path:
    def payload(m: TransformerLM) -> dict[str, object]:
        state = m.state_dict()
        state["ln_final.weight"][0] = float("nan")
        return {"model": state, "iteration": 0, "config": CONFIG.to_dict()}

    return make_submission(tmp_path / "s", payload=payload)


def _missing_byte(tmp_path: Path) -> Path:
    root = make_submission(tmp_path / "s")
    vocab_path = root / "leaderboard" / "vocab.json"
    data = json.loads(vocab_path.read_text(encoding="utf-8"))
    del data["vocab"]["65"]
    vocab_path.write_text(json.dumps(data), encoding="utf-8")
    return root


def _two_checkpoints(tmp_path: Path) -> Path:
    root = make_submission(tmp_path / "s")
    shutil.copy(root / "leaderboard" / "model.pt", root / "leaderboard" / "other.pt")
    return root


@pytest.mark.parametrize(
    "build, reason",
    [
        (_post_norm, "the handout's architecture (norm_position='pre'), got 'post'"),
        (_extra_key, "unexpected ['bias']"),
        (_nan, "expected finite floating-point weights in ln_final.weight"),
        (_missing_byte, "needs all 256 bytes; missing 1"),
        (_two_checkpoints, "expected exactly one checkpoint"),
    ],
    ids=["post-norm", "extra-key", "nan", "missing-byte", "two-checkpoints"],
)
def test_broken_rules_get_a_reason_and_no_entry(tmp_path: Path, build, reason: str) -> None:  # type: ignore[no-untyped-def]
    assert rejected(score(make_config(tmp_path), build(tmp_path)), reason)


class _Payload:
    """A pickle that would run code when loaded without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_a_checkpoint_that_runs_code_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    root = make_submission(tmp_path / "mallory")
    with open(root / "leaderboard" / "model.pt", "wb") as f:
        pickle.dump({"model": _Payload(marker), "iteration": 0}, f)
    assert rejected(score(make_config(tmp_path), root), "cannot read model.pt as a weights-only checkpoint")
    assert not marker.exists()


def test_bad_configs_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown leaderboard key"):
        make_config(tmp_path, max_params=3)
    with pytest.raises(ValueError, match="metric must be one of"):
        make_config(tmp_path, metric="accuracy")
    (tmp_path / "empty.toml").write_text("[leaderboard]\n")
    with pytest.raises(ValueError, match="lacks"):
        LeaderboardConfig.load(tmp_path / "empty.toml")


@pytest.mark.slow
def test_a_model_trained_in_the_test_scores_as_cs336_evaluate_says(tmp_path: Path) -> None:
    from project_tests.lab.tiny_run import CONTEXT_LENGTH, VOCAB_SIZE, make_tiny_run

    run = make_tiny_run(tmp_path / "run")
    folder = tmp_path / "student" / "leaderboard"
    folder.mkdir(parents=True)
    shutil.copy(run.checkpoint, folder / "model.pt")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(run.tokenizer_dir / name, folder / name)
    shutil.copy(run.valid_text, tmp_path / "held_out_copy.txt")
    rules = tmp_path / "rules.toml"
    rules.write_text(
        f"[leaderboard]\nvalidation_text = 'held_out_copy.txt'\ncontext_length = {CONTEXT_LENGTH}\n"
        f"max_vocab_size = {VOCAB_SIZE}\nmax_parameters = 100000\n"
    )
    result = score(LeaderboardConfig.load(rules), tmp_path / "student")
    reference = evaluate(run.checkpoint, run.valid_text)
    assert result.entry is not None, result.message
    assert result.entry[0]["value"] == pytest.approx(reference.bits_per_byte, abs=1e-6)
    assert result.details["loss"] == pytest.approx(reference.loss, abs=1e-6)


def test_results_of_a_zipped_submission_get_the_leaderboard_field(tmp_path: Path) -> None:
    from cs336_grading.staff.leaderboard import add_to_results

    make_config(tmp_path)
    source = make_submission(tmp_path / "frank", top="hw1")
    archive = tmp_path / "frank.zip"
    shutil.make_archive(str(archive.with_suffix("")), "zip", source)
    payload = {"score": 3.0, "output": "Total: 3.00 / 3", "tests": []}
    result = add_to_results(payload, tmp_path / "leaderboard.toml", archive)
    assert payload["leaderboard"] == result.entry == score(make_config(tmp_path), source).entry
    assert payload["output"].startswith("Total: 3.00 / 3\nleaderboard: validation bits/byte = ")
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("hw1/tests/adapters.py", "")
    payload = {"score": 0.0, "output": "Total: 0.00 / 3"}
    assert add_to_results(payload, tmp_path / "leaderboard.toml", empty).entry is None
    assert "leaderboard" not in payload and "not entered" in payload["output"]


def test_an_unexpected_failure_is_no_entry_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cs336_grading.staff import trusted_lm

    def explode(*args: object, **kwargs: object) -> float:
        raise OverflowError("something nobody foresaw")

    monkeypatch.setattr(trusted_lm, "total_nats", explode)
    result = score(make_config(tmp_path), make_submission(tmp_path / "grace"))
    assert rejected(result, "could not be scored (OverflowError: something nobody foresaw)")


def test_a_checkpoint_with_a_model_table_is_read_as_cs336_train_writes_it(tmp_path: Path) -> None:
    rules = make_config(tmp_path)

    def nested(switches: dict[str, object]):  # type: ignore[no-untyped-def]
        return lambda model: {
            "model": model.state_dict(),
            "iteration": 0,
            "config": {"lr_max": 0.1, "model": CONFIG.to_dict() | switches},
        }

    assert score(rules, make_submission(tmp_path / "a", payload=nested({}))).entry is not None
    post = make_submission(tmp_path / "b", payload=nested({"norm_position": "post"}))
    assert rejected(score(rules, post), "the leaderboard scores the handout's architecture (norm_position='pre')")


def test_a_tied_model_scores_as_cs336_evaluate_says_and_other_recipe_switches_are_refused(tmp_path: Path) -> None:
    """Tied embeddings (issue 24) are the handout's forward with lm_head.weight = token_embeddings.weight, both
    keys in the state dict: scored like any model (a mistake: refusing them, or a loader needing one key). QK-norm,
    ReLU² and the soft-cap change the forward: each refused with a one-line reason naming the switch."""
    rules = make_config(tmp_path)
    tied = make_submission(tmp_path / "tied", config=dataclasses.replace(CONFIG, tie_embeddings=True))
    result = score(rules, tied)
    assert result.entry is not None, result.message
    reference = evaluate(tied / "leaderboard" / "model.pt", rules.validation_text, context_length=16)
    assert result.details["loss"] == pytest.approx(reference.loss, abs=1e-6)
    for name, switch in {
        "qk": {"qk_norm": True},
        "cap": {"logit_softcap": 30.0},
        "relu2": {"ffn_type": "relu2"},
    }.items():
        key, value = next(iter(switch.items()))
        other = make_submission(tmp_path / name, config=dataclasses.replace(CONFIG, **switch))
        outcome = score(rules, other)
        assert rejected(outcome, f"the leaderboard scores the handout's architecture ({key}="), outcome.message
        assert f"got {value!r}" in outcome.message and "\n" not in outcome.message
