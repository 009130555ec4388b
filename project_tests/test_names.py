"""One meaning per name: a name defined in two places means the same thing in both (issue 22, item 9).

The project's code is read as source (its ASTs), never imported: each top-level `def` and `class` of every
module of the wings, the bench, the oracle and both test folders is one definition of its name.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("cs336_basics", "cs336_common", "cs336_lab", "cs336_grading", "bench", "oracle", "tests", "project_tests")
PACKAGES = ("cs336_basics", "cs336_common", "cs336_lab", "cs336_grading")

# Each name that once meant two things, and the one thing it means now. Each is defined once.
SETTLED = {
    "evaluate": "`cs336 evaluate`: a checkpoint's loss over every token of a split (cs336_lab/evaluate.py)",
    "estimate_loss": "the training loop's validation loss over fixed batches (cs336_lab/batches.py)",
    "complete": "a package's batched text completion with a KV cache (cs336_basics/decoding.py)",
    "sample_completions": "the tools' completions: the package's `complete`, else a plain loop (cs336_lab/sampling.py)",
    "read_tokenizer": "a tokenizer directory -> (vocab, merges, special tokens) (cs336_lab/tokenizer_files.py)",
    "read_submitted_tokenizer": "a leaderboard submission's tokenizer -> (encode, byte lengths), as data only",
    "read_checkpoint": "a checkpoint file -> its checked dict (cs336_basics/checkpoint.py)",
    "read_submitted_checkpoint": "a leaderboard submission's one checkpoint -> (state dict, config), as data only",
    "_Run": "a training run's state between steps (cs336_lab/train.py)",
    "_GradingRun": "the state one grading run's steps share (cs336_grading/grader/grade.py)",
    "progress_bar": "a tqdm bar or a silent stand-in (cs336_basics/chunking.py)",
    "training_progress_bar": "the bar over a training run's steps (cs336_lab/run_log.py)",
    "worker_context": "the multiprocessing context for chunk workers, fork when safe (cs336_basics/chunking.py)",
    "pool_context": "the package's worker context, for the tools' encoding pool (cs336_lab/parallel_encode.py)",
    "compare": "`cs336 compare`: plot runs and tabulate them (cs336_lab/compare.py)",
    "compare_fingerprints": "the shared fingerprints of every pair of submissions (cs336_grading/staff/similarity.py)",
    "plot_scores": "a histogram of a batch's totals (cs336_grading/staff/batch.py)",
    "plot_pair_scores": "a histogram of every pair's similarity (cs336_grading/staff/similarity_report.py)",
    "write_report": "the similarity report of a batch (cs336_grading/staff/similarity_report.py)",
    "write_quality_report": "the bench's quality report, ours against the oracle (bench/quality.py)",
    "clipped_gradients": "the graded suite's scenario: gradients after the student's clipping (tests/scenarios.py)",
}

# The handout's names: every implementation of one (ours, the expected values, a mutant student) means the same.
HANDOUT = {
    "train_bpe",
    "Tokenizer",
    "Linear",
    "Embedding",
    "RMSNorm",
    "SwiGLU",
    "RotaryPositionalEmbedding",
    "softmax",
    "scaled_dot_product_attention",
    "MultiHeadSelfAttention",
    "TransformerBlock",
    "TransformerLM",
    "cross_entropy",
    "AdamW",
    "get_lr_cosine_schedule",
    "gradient_clipping",
    "get_batch",
    "save_checkpoint",
    "load_checkpoint",
}
# Another spelling of a handout name, and where it may still be defined (with what it means there).
OTHER_SPELLINGS = {
    "clip_gradients": {},
}
# Public names that several modules of the packages define on purpose, with one meaning.
PROTOCOLS = {
    "add_subcommand": "registers a module's `cs336` sub-command",
    "main": "a script's entry point",
}


def _definitions(folders: tuple[str, ...]) -> dict[str, list[str]]:
    """Name -> `path:line` of each top-level function or class of that name under `folders`."""
    found: dict[str, list[str]] = defaultdict(list)
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in tree.body:
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    found[node.name].append(f"{path.relative_to(ROOT).as_posix()}:{node.lineno}")
    return found


@pytest.fixture(scope="module")
def everywhere() -> dict[str, list[str]]:
    return _definitions(FOLDERS)


@pytest.mark.parametrize("name", sorted(SETTLED))
def test_each_settled_name_is_defined_once(everywhere: dict[str, list[str]], name: str) -> None:
    places = everywhere.get(name, [])
    assert len(places) <= 1, f"expected {name!r} defined once ({SETTLED[name]}), got {len(places)}: {places}"


def test_a_handout_name_has_no_other_spelling(everywhere: dict[str, list[str]]) -> None:
    for name, allowed in OTHER_SPELLINGS.items():
        places = [p for p in everywhere.get(name, []) if p.rsplit(":", 1)[0] not in allowed]
        assert not places, f"expected no {name!r} (the handout's name is gradient_clipping), got {places}"


def test_no_public_name_of_the_packages_means_two_things() -> None:
    clashes = {
        name: places
        for name, places in _definitions(PACKAGES).items()
        if len({p.rsplit(":", 1)[0] for p in places}) > 1
        and not name.startswith("_")
        and name not in HANDOUT
        and name not in PROTOCOLS
    }
    assert not clashes, f"expected each public name defined in one module of {PACKAGES}, got {clashes}"
