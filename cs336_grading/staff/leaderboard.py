"""The automated leaderboard: check a submitted checkpoint against the staff's rules, score it on held-out text.

The staff's config (TOML, a `[leaderboard]` table; paths relative to the file):

    [leaderboard]
    name = "validation bits/byte"   # the column on Gradescope
    metric = "bits_per_byte"        # or "loss" (nats/token; comparable only if the rules fix the tokenizer)
    validation_text = "valid.txt"   # held by the staff, never shown to students; NOTE: scored on Gradescope's
                                    # CPU inside its time limit: size it with `cs336 evaluate` on a CPU first
    context_length = 512            # windows the model is scored on (disjoint, as `cs336 evaluate` does)
    max_vocab_size = 32000
    max_parameters = 30_000_000     # every tensor of the model, embeddings and lm_head included

A submission enters with a folder `leaderboard/` (beside `cs336_basics/`, a top folder tolerated) holding
one checkpoint (`*.pt`: what `cs336 train` writes, or a plain `{"model", ...}` dict or a bare state dict),
its tokenizer (`vocab.json` + `merges.txt`, this project's format or GPT-2's) and, when the checkpoint stores
no config, `config.json` with `num_heads` (and `rope_theta`, `eps` when not the defaults; `special_tokens`
for a GPT-2 vocabulary). A rule broken gives a clear reason and no entry; a submission without the folder
simply does not enter.

Threat model: the student controls everything in the submission, including any code that would compute
the loss. So no student code runs here. The checkpoint is read with `torch.load(weights_only=True)` (tensors
and plain data only: reading it cannot run code), the tokenizer files are parsed as JSON and text, the
held-out text is encoded by tiktoken built from the submitted merges, and the loss is computed by the
grader's own forward pass of the handout's architecture (`trusted_lm.py`), in the grader's process. The
student's weights are the only thing that decides the value. Scoring in the worker sandbox instead would
have to trust a number the student's code reports and hand the held-out text to that code (which could
print it into its test output); the autograder also scores the leaderboard before any student code runs
and deletes the held-out text from disk first. The value equals `cs336 evaluate`'s for the same checkpoint
and text up to float32 rounding (another, equivalent order of operations: 3e-10 apart on the tests' tiny
trained model; the tests allow 1e-6).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import tomllib
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cs336_common.model_spec import HANDOUT_FIELDS, ModelSpec
from cs336_grading import untrusted
from cs336_grading.staff.leaderboard_files import RuleError, read_submitted_checkpoint, read_submitted_tokenizer

METRICS = ("bits_per_byte", "loss")
FOLDER = "leaderboard"
# The switches of a ModelSpec beyond the handout's fields, at the handout's values (eps may differ; init is moot;
# a tied model's state dict lists both token_embeddings.weight and lm_head.weight, equal: the handout's forward
# computes it as it is, so tie_embeddings may differ too, its matrix counted under both keys for the size limit).
_FREE = (*HANDOUT_FIELDS, "eps", "init", "tie_embeddings")
_STANDARD = {f.name: f.default for f in dataclasses.fields(ModelSpec) if f.name not in _FREE}


@dataclass(frozen=True)
class LeaderboardConfig:
    """The staff's rules (see the module docstring)."""

    validation_text: Path
    context_length: int
    max_vocab_size: int
    max_parameters: int
    name: str = "validation bits/byte"
    metric: str = "bits_per_byte"
    max_checkpoint_mb: float | None = None  # default: 16 bytes per allowed parameter + 64 MiB

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"leaderboard metric must be one of {METRICS}, got {self.metric!r}")
        for name in ("context_length", "max_vocab_size", "max_parameters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"leaderboard {name} must be a positive int, got {value!r}")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LeaderboardConfig:
        """Read the `[leaderboard]` table of a TOML file; unknown keys are errors."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"leaderboard config {path} does not exist")
        table = dict(tomllib.loads(path.read_text(encoding="utf-8")).get("leaderboard", {}))
        known = set(cls.__dataclass_fields__)
        if unknown := sorted(table.keys() - known):
            raise ValueError(f"{path}: unknown leaderboard key(s) {unknown}; expected some of {sorted(known)}")
        missing = sorted(
            k for k in ("validation_text", "context_length", "max_vocab_size", "max_parameters") if k not in table
        )
        if missing:
            raise ValueError(f"{path}: the [leaderboard] table lacks {missing}")
        table["validation_text"] = (path.parent / table["validation_text"]).resolve()
        return cls(**table)

    @property
    def max_checkpoint_bytes(self) -> int:
        mb = self.max_checkpoint_mb
        return int(mb * 2**20) if mb is not None else 16 * self.max_parameters + 64 * 2**20

    def to_toml(self, validation_text: str) -> str:
        """This config as TOML, with `validation_text` written as given (e.g. a path inside the autograder)."""
        values = {k: getattr(self, k) for k in self.__dataclass_fields__ if getattr(self, k) is not None}
        values["validation_text"] = validation_text
        return "[leaderboard]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


@dataclass(frozen=True)
class LeaderboardResult:
    """An entry (Gradescope's `leaderboard` field), or the reason there is none."""

    entry: list[dict[str, Any]] | None
    message: str
    details: dict[str, Any] = field(default_factory=dict)


def find_folder(root: Path, max_depth: int = 3) -> Path | None:
    """The submission's `leaderboard/` folder: the shallowest one under `root` (reached through no link)."""
    inside = root.resolve()
    for depth in range(max_depth + 1):
        found = sorted(
            p
            for p in root.glob("/".join(["*"] * depth + [FOLDER]))
            if not p.is_symlink() and p.is_dir() and p.resolve().parent.is_relative_to(inside)
        )
        if found:
            return found[0]
    return None


def score(config: LeaderboardConfig, submission: Path, *, text: str | None = None) -> LeaderboardResult:
    """Check `submission`'s leaderboard folder against the rules and score it (see the module docstring).

    `text` is the held-out text when the caller already read it (default: `config.validation_text`).
    """
    folder = find_folder(submission) if submission.is_dir() else None
    if folder is None:
        return LeaderboardResult(None, f"leaderboard: not entered (no {FOLDER}/ folder in the submission)")
    try:
        with tempfile.TemporaryDirectory(prefix="cs336-leaderboard-") as tmp:
            # The student's files are read once, as regular files, into a folder of the grader's own.
            copied = _copy_folder(folder, Path(tmp), config.max_checkpoint_bytes + 64 * 2**20)
            details = _check_and_score(config, copied, text)
    except RuleError as e:
        return LeaderboardResult(None, f"leaderboard: no entry: {e}")
    except Exception as e:  # hostile files must never cost the student the grade itself
        return LeaderboardResult(
            None, f"leaderboard: no entry: the entry could not be scored ({type(e).__name__}: {e})"[:500]
        )
    value = details[config.metric]
    entry = [{"name": config.name, "value": round(value, 6), "order": "asc"}]
    return LeaderboardResult(entry, f"leaderboard: {config.name} = {value:.6f} ({_summary(details)})", details)


def _summary(details: Mapping[str, Any]) -> str:
    return (
        f"{details['parameters']:,} parameters, vocabulary {details['vocab_size']}, "
        f"{details['predicted_tokens']} tokens scored, loss {details['loss']:.4f} nats/token"
    )


def _check_and_score(config: LeaderboardConfig, folder: Path, text: str | None) -> dict[str, Any]:
    import torch

    from cs336_grading.staff import trusted_lm

    state, ckpt_config = read_submitted_checkpoint(folder, config.max_checkpoint_bytes)
    extra = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    model_config = {**_model_fields(ckpt_config or {}), **_model_fields(extra)}
    for key, standard in _STANDARD.items():
        if model_config.get(key, standard) != standard:
            raise RuleError(
                f"the leaderboard scores the handout's architecture ({key}={standard!r}), got {model_config[key]!r}"
            )
    if "num_heads" not in model_config:
        raise RuleError(f"the number of heads is not in the weights: put num_heads in {FOLDER}/config.json")
    try:
        arch = trusted_lm.infer_architecture(
            state,
            num_heads=int(model_config["num_heads"]),
            rope_theta=float(model_config.get("rope_theta", 10_000.0)),
            eps=float(model_config.get("eps", 1e-5)),
            context_length=config.context_length,
        )
    except (ValueError, TypeError) as e:
        raise RuleError(str(e)) from e
    parameters = sum(t.numel() for t in state.values())
    if parameters > config.max_parameters:
        raise RuleError(f"the model has {parameters:,} parameters, over the limit of {config.max_parameters:,}")
    if arch.vocab_size > config.max_vocab_size:
        raise RuleError(f"the vocabulary has {arch.vocab_size} rows, over the limit of {config.max_vocab_size}")
    encode, token_bytes = read_submitted_tokenizer(folder, extra.get("special_tokens"), arch.vocab_size)
    if text is None:
        text = config.validation_text.read_text(encoding="utf-8")
    tokens = encode(text)
    if len(tokens) < 2:
        raise RuleError(f"the held-out text encodes to {len(tokens)} token(s): nothing to predict")
    nats = trusted_lm.total_nats(state, arch, torch.tensor(tokens), config.context_length)
    predicted = len(tokens) - 1
    num_bytes = sum(token_bytes[t] for t in tokens[1:])
    return {
        "loss": nats / predicted,
        "bits_per_byte": nats / math.log(2) / num_bytes,
        "predicted_tokens": predicted,
        "predicted_bytes": num_bytes,
        "parameters": parameters,
        "vocab_size": arch.vocab_size,
        "context_length": config.context_length,
    }


def _model_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    """A run config's model fields: its `model` table (`cs336 train` today), else its top-level keys (older runs)."""
    nested = config.get("model")
    return dict(nested) if isinstance(nested, Mapping) else dict(config)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise RuleError(f"{path.name} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise RuleError(f"{path.name} must hold a JSON object, got {type(data).__name__}")
    return data


def score_source(config: LeaderboardConfig, source: Path, *, text: str | None = None) -> LeaderboardResult:
    """`score` for a submission folder or zip (only the zip's `leaderboard/` members are extracted)."""
    if source.is_dir():
        return score(config, source, text=text)
    with tempfile.TemporaryDirectory(prefix="cs336-leaderboard-") as tmp:
        try:
            _extract_folder(source, Path(tmp), config.max_checkpoint_bytes + 64 * 2**20)
        except RuleError as e:
            return LeaderboardResult(None, f"leaderboard: no entry: {e}")
        return score(config, Path(tmp), text=text)


def _extract_folder(archive: Path, dest: Path, max_bytes: int) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.infolist() if FOLDER in Path(m.filename).parts[:-1] and not m.is_dir()]
        if sum(m.file_size for m in members) > max_bytes:
            raise RuleError(f"the {FOLDER}/ folder holds more than {max_bytes:,} bytes")
        for member in members:
            target = (dest / member.filename).resolve()
            if dest.resolve() not in target.parents:
                raise RuleError(f"zip member {member.filename!r} would be extracted outside the workspace")
            zf.extract(member, dest)


def _copy_folder(folder: Path, dest: Path, max_bytes: int) -> Path:
    """Copy the regular files at the top of `folder` into `dest/leaderboard/`; a link, FIFO or device there
    is a RuleError (never followed, never opened), and so is more than `max_bytes` in all."""
    target = dest / FOLDER
    target.mkdir()
    left = max_bytes
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False):
                continue
            try:
                fd = untrusted.open_regular(entry.path)
            except OSError as e:
                kind = untrusted.kind_of(entry.path)
                why = f"is {kind}: only regular files are read" if kind else f"cannot be read ({e.strerror})"
                raise RuleError(f"{FOLDER}/{entry.name} {why}") from None
            with os.fdopen(fd, "rb") as src, open(target / entry.name, "wb") as out:
                while block := src.read(min(1 << 20, left + 1)):
                    left -= len(block)
                    if left < 0:
                        raise RuleError(f"the {FOLDER}/ folder holds more than {max_bytes:,} bytes")
                    out.write(block)
    return target


def add_to_results(
    payload: dict[str, Any], config_path: Path, source: Path, *, text: str | None = None
) -> LeaderboardResult:
    """Add Gradescope's `leaderboard` field (when there is an entry) and the reason to a results payload."""
    result = score_source(LeaderboardConfig.load(config_path), source, text=text)
    if result.entry is not None:
        payload["leaderboard"] = result.entry
    payload["output"] = f"{payload.get('output', '')}\n{result.message}".strip()
    return result
