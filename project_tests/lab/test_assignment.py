"""The tools' typed door into an assignment package (`cs336_lab/assignment.py`).

Each test writes a small package under its own name into a temporary directory on `sys.path`, so the real
`cs336_basics` is never touched; `Assignment.load(package=...)` resolves it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cs336_common.model_spec import ModelSpec
from cs336_lab.assignment import Assignment, AssignmentError

REQUIRED_SOURCE = """
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn


    class TransformerLM(nn.Module):
        def __init__(self, vocab_size, context_length, d_model, num_layers, num_heads, d_ff, rope_theta):
            super().__init__()
            self.embedding = nn.Embedding(vocab_size, d_model)
            self.head = nn.Linear(d_model, vocab_size)

        def forward(self, x):
            return self.head(self.embedding(x))


    def cross_entropy(logits, targets):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


    AdamW = torch.optim.AdamW


    def get_lr_cosine_schedule(it, max_learning_rate, min_learning_rate, warmup_iters, cosine_cycle_iters):
        return max_learning_rate


    def gradient_clipping(parameters, max_l2_norm):
        torch.nn.utils.clip_grad_norm_(list(parameters), max_l2_norm)


    def get_batch(dataset, batch_size, context_length, device):
        starts = np.random.randint(0, len(dataset) - context_length, size=batch_size)
        w = torch.from_numpy(np.stack([dataset[s : s + context_length + 1] for s in starts]).astype(np.int64))
        return w[:, :-1].to(device), w[:, 1:].to(device)
"""
TOKENIZER_SOURCE = """
    def train_bpe(input_path, vocab_size, special_tokens):
        return {i: bytes([i]) for i in range(256)}, []


    class Tokenizer:
        def __init__(self, vocab, merges, special_tokens=None):
            self.vocab = vocab
"""


def _package(root: Path, name: str, modules: dict[str, str], init: str = "") -> str:
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(init))
    for module, source in modules.items():
        (package / f"{module}.py").write_text(textwrap.dedent(source))
    return name


@pytest.fixture
def on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_package_without_extras_falls_back(on_path: Path) -> None:
    name = _package(on_path, "plain_student", {"model": REQUIRED_SOURCE, "tokenizer": TOKENIZER_SOURCE})
    door = Assignment.load(name)
    assert (door.ModelConfig, door.complete, door.fast_cross_entropy, door.has_chunking) == (None, None, None, False)
    assert door.keyword_extras == frozenset() and dict(door.found_in)["get_batch"] == f"{name}.model"
    assert "absent (optional)" in door.describe() and "none declared" in door.describe()
    # The handout's keyword constructor; moved to the device afterwards.
    model = door.build_model(ModelSpec(vocab_size=300, context_length=8, d_model=16, num_layers=1, num_heads=2), "cpu")
    assert model.head.out_features == 300
    with pytest.raises(AssignmentError, match=r"--norm-position post needs plain_student\.ModelConfig"):
        door.build_model(ModelSpec(norm_position="post"), "cpu")
    # Reproducible batches without `generator=`: the same generator state draws the same batch.
    tokens = np.arange(100)
    first = door.sample_batch(tokens, 4, 8, "cpu", np.random.default_rng(5))
    again = door.sample_batch(tokens, 4, 8, "cpu", np.random.default_rng(5))
    assert torch.equal(first[0], again[0])
    # train_bpe gets no undeclared keywords (this one would raise TypeError on them).
    vocab, merges = door.run_train_bpe("unused.txt", 256, [], num_workers=2, show_progress=True)
    assert len(vocab) == 256 and merges == []


def test_a_broken_module_is_an_error_naming_it(on_path: Path) -> None:
    broken = "import torch\nraise RuntimeError('half-written file')\n"
    name = _package(
        on_path, "broken_student", {"model": REQUIRED_SOURCE, "tokenizer": TOKENIZER_SOURCE, "scratch": broken}
    )
    with pytest.raises(AssignmentError, match=r"broken_student\.scratch failed to import: RuntimeError: half-written"):
        Assignment.load(name)


def test_a_missing_required_name_says_where_it_looked(on_path: Path) -> None:
    name = _package(on_path, "partial_student", {"model": REQUIRED_SOURCE})
    with pytest.raises(AssignmentError, match=r"provides no Tokenizer, train_bpe: .*searched model"):
        Assignment.load(name)


def test_declared_extras_are_used_and_unknown_ones_refused(on_path: Path) -> None:
    with_generator = REQUIRED_SOURCE.replace(
        "def get_batch(dataset, batch_size, context_length, device):",
        "def get_batch(dataset, batch_size, context_length, device, generator=None):\n"
        "        return ('generator', generator)\n\n\n    def _unused(dataset, batch_size, context_length, device):",
    )
    name = _package(
        on_path,
        "declaring_student",
        {"model": with_generator, "tokenizer": TOKENIZER_SOURCE},
        init="CS336_EXTRAS = ('get_batch.generator',)\n",
    )
    rng = np.random.default_rng(0)
    assert Assignment.load(name).sample_batch(np.arange(50), 2, 4, "cpu", rng) == ("generator", rng)
    bad = _package(
        on_path,
        "typo_student",
        {"model": REQUIRED_SOURCE, "tokenizer": TOKENIZER_SOURCE},
        init="CS336_EXTRAS = ('get_batch.generatr',)\n",
    )
    with pytest.raises(AssignmentError, match=r"unknown extras \['get_batch.generatr'\]"):
        Assignment.load(bad)


def test_a_top_level_export_wins_and_other_modules_are_not_imported(on_path: Path) -> None:
    init = "from .model import *\nfrom .tokenizer import *\n"
    name = _package(
        on_path,
        "exporting_student",
        {"model": REQUIRED_SOURCE, "tokenizer": TOKENIZER_SOURCE, "scratch": "raise RuntimeError('never imported')\n"},
        init=init
        + "ModelConfig = complete = find_chunk_boundaries = read_chunk_text = None\nworker_context = None\n"
        + "MuonAdamW = muon_param_groups = cross_entropy_with_z_loss = wsd_lr_schedule = None\n",
    )
    door = Assignment.load(name)
    assert dict(door.found_in)["TransformerLM"] == name and f"{name}.scratch" not in sys.modules


def test_the_door_is_not_resolved_at_import() -> None:
    modules = [
        "cs336_lab.cli",
        "cs336_lab.accounting",
        "cs336_lab.train",
        "cs336_lab.generate",
        "cs336_lab.evaluate",
        "cs336_lab.sweep",
        "cs336_lab.demo",
        "cs336_lab.pipeline",
        "cs336_lab.sampling",
        "cs336_lab.batches",
        "cs336_lab.parallel_encode",
        "cs336_lab.tokenizer_files",
        "cs336_lab.assignment",
    ]
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint('cs336_basics' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_reference_declares_its_extras() -> None:
    door = Assignment.load()
    assert door.keyword_extras == {"get_batch.generator", "train_bpe.num_workers", "train_bpe.show_progress"}
    assert door.ModelConfig is not None and door.complete is not None and door.has_chunking
