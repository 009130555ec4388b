"""The graded checks the mutant and rewrite corpus runs: labels for calls of the unchanged graded test functions.

A check is `CHECKS[label](fx)`, where `fx` carries what pytest's fixtures would give the test (the snapshot
loader, the fixture directory, a temporary directory, the small BPE vocabulary and its tiktoken encoders).
The graded modules imported their adapters by name, so `patch_adapters` replaces a name in every graded
module and in `tests.adapters` itself (the scenarios call it there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tests.adapters as adapters_module
from tests import test_data as data
from tests import test_functional as functional
from tests import test_model as model
from tests import test_nn_utils as nn_utils
from tests import test_optimizer as optimizer
from tests import test_serialization as serialization
from tests import test_tokenizer as tokenizer
from tests import test_train_bpe as train_bpe
from tests.cases import ENDOFTEXT
from tests.snapshot_io import read_npz

TESTS_DIR = Path(__file__).resolve().parents[2] / "tests"
GRADED_MODULES = (data, functional, model, nn_utils, optimizer, serialization, tokenizer, train_bpe)


@dataclass
class Fixtures:
    """What the graded tests receive from pytest fixtures."""

    tmp: Path
    _snapshots: dict[str, dict[str, np.ndarray]]

    def snap(self, name: str) -> dict[str, np.ndarray]:
        if name not in self._snapshots:
            self._snapshots[name] = read_npz(TESTS_DIR / "_snapshots" / f"{name}.npz")
        return self._snapshots[name]

    @property
    def dir(self) -> Path:
        return TESTS_DIR / "fixtures"

    @property
    def bpe(self) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
        return tokenizer.small_vocabulary(self.dir)

    @property
    def tik(self) -> Callable[[str], list[int]]:
        return tokenizer.tiktoken_ids(self.bpe, [ENDOFTEXT])

    @property
    def plain(self) -> Callable[[str], list[int]]:
        return tokenizer.tiktoken_ids(self.bpe, [])


def patch_adapters(monkeypatch: pytest.MonkeyPatch, replacements: dict[str, Callable[..., Any]]) -> None:
    """Swap adapters by name wherever the graded tests look them up."""
    for name, fn in replacements.items():
        assert hasattr(adapters_module, name), f"no adapter named {name}"
        monkeypatch.setattr(adapters_module, name, fn)
        for module in GRADED_MODULES:
            if hasattr(module, name):
                monkeypatch.setattr(module, name, fn)


def _model_checks() -> dict[str, Callable[[Fixtures], None]]:
    m = model
    return {
        "linear": lambda fx: m.test_linear_matches_snapshot("batched", fx.snap),
        "linear_bf16": lambda fx: m.test_linear_matches_snapshot("bf16", fx.snap),
        "linear_hand": lambda fx: m.test_linear_hand_worked(),
        "rmsnorm_hand": lambda fx: m.test_rmsnorm_hand_worked(),
        "embedding": lambda fx: m.test_embedding_matches_snapshot("3d", fx.snap),
        "rmsnorm_default": lambda fx: m.test_rmsnorm_matches_snapshot("default_eps", 1e-5, False, fx.snap),
        "rmsnorm_large_eps": lambda fx: m.test_rmsnorm_matches_snapshot("large_eps", 0.25, False, fx.snap),
        "rmsnorm_bf16": lambda fx: m.test_rmsnorm_matches_snapshot("bf16", 1e-5, True, fx.snap),
        "rmsnorm_fp16": lambda fx: m.test_rmsnorm_float16_upcasts(),
        "swiglu": lambda fx: m.test_swiglu_matches_snapshot(fx.snap),
        "rope_shared": lambda fx: m.test_rope_matches_snapshot("shared_positions", fx.snap),
        "rope_batch": lambda fx: m.test_rope_matches_snapshot("batch_positions", fx.snap),
        "rope_per_head": lambda fx: m.test_rope_matches_snapshot("per_head_positions", fx.snap),
        "rope_bf16": lambda fx: m.test_rope_matches_snapshot("bf16", fx.snap),
        "sdpa_masked": lambda fx: m.test_scaled_dot_product_attention_matches_snapshot("masked", fx.snap),
        "sdpa_shared": lambda fx: m.test_scaled_dot_product_attention_matches_snapshot("shared_mask", fx.snap),
        "sdpa_no_mask": lambda fx: m.test_scaled_dot_product_attention_matches_snapshot("no_mask", fx.snap),
        "sdpa_bf16": lambda fx: m.test_scaled_dot_product_attention_matches_snapshot("bf16", fx.snap),
        "mha": lambda fx: m.test_multihead_self_attention_matches_snapshot("nope", fx.snap),
        "mha_4d": lambda fx: m.test_multihead_self_attention_matches_snapshot("nope_4d", fx.snap),
        "mha_rope": lambda fx: m.test_multihead_self_attention_matches_snapshot("rope_positions", fx.snap),
        "mha_rope_default": lambda fx: m.test_multihead_self_attention_matches_snapshot(
            "rope_default_positions", fx.snap
        ),
        "mha_causal": lambda fx: m.test_multihead_self_attention_is_causal(fx.snap),
        "block": lambda fx: m.test_transformer_block_matches_snapshot(fx.snap),
        "lm": lambda fx: m.test_transformer_lm_matches_snapshot("short", fx.snap),
        "lm_full": lambda fx: m.test_transformer_lm_matches_snapshot("full_context", fx.snap),
        "lm_prefix": lambda fx: m.test_transformer_lm_prefix_is_causal(fx.snap),
        "softmax_dim0": lambda fx: functional.test_softmax_matches_snapshot(0, fx.snap),
        "softmax_dim1": lambda fx: functional.test_softmax_matches_snapshot(1, fx.snap),
        "softmax_dim-1": lambda fx: functional.test_softmax_matches_snapshot(-1, fx.snap),
        "softmax_stable": lambda fx: functional.test_softmax_is_stable_for_huge_inputs(fx.snap),
        "softmax_bf16": lambda fx: functional.test_softmax_bf16(fx.snap),
        "softmax_hand": lambda fx: functional.test_softmax_hand_worked(),
        "softmax_property": lambda fx: functional.test_softmax_properties(),
        "silu": lambda fx: functional.test_silu_matches_snapshot("float32", fx.snap),
        "silu_bf16": lambda fx: functional.test_silu_matches_snapshot("bf16", fx.snap),
        "silu_hand": lambda fx: functional.test_silu_hand_worked(),
    }


def _training_checks() -> dict[str, Callable[[Fixtures], None]]:
    n, o, s, d = nn_utils, optimizer, serialization, data
    return {
        "ce_uniform": lambda fx: n.test_cross_entropy_uniform_logits_give_log_vocab_size(),
        "ce_hand": lambda fx: n.test_cross_entropy_hand_worked_two_classes(),
        "ce_2d": lambda fx: n.test_cross_entropy_matches_torch((32, 60), 1.0),
        "ce_3d": lambda fx: n.test_cross_entropy_matches_torch((4, 8, 60), 1.0),
        "ce_scaled": lambda fx: n.test_cross_entropy_matches_torch((4, 8, 60), 1000.0),
        "ce_extreme": lambda fx: n.test_cross_entropy_extreme_values_stay_finite(),
        "ce_property": lambda fx: n.test_cross_entropy_property(),
        "ce_grad": lambda fx: n.test_cross_entropy_gradient_matches_torch(),
        "ce_snapshot": lambda fx: n.test_cross_entropy_snapshot("seq", fx.snap),
        "ce_snapshot_large": lambda fx: n.test_cross_entropy_snapshot("large", fx.snap),
        "clip_above": lambda fx: n.test_gradient_clipping_above_the_limit(1.0, 1.0),
        "clip_far_above": lambda fx: n.test_gradient_clipping_above_the_limit(1.0, 1e-2),
        "clip_tiny": lambda fx: n.test_gradient_clipping_above_the_limit(2e-5, 5e-5),
        "clip_below": lambda fx: n.test_gradient_clipping_below_the_limit_changes_nothing(),
        "clip_global": lambda fx: n.test_gradient_clipping_uses_the_global_norm(),
        "clip_model": lambda fx: n.test_gradient_clipping_on_a_model_matches_torch(),
        "adamw_trajectory": lambda fx: o.test_adamw_matches_torch_trajectory(),
        "adamw_first_step": lambda fx: o.test_adamw_first_step_hand_worked(),
        "adamw_snapshot": lambda fx: o.test_adamw_snapshot(fx.snap),
        "adamw_closure": lambda fx: o.test_adamw_step_accepts_a_closure(),
        "adamw_state_dict": lambda fx: o.test_adamw_state_dict_round_trip(),
        "cosine_curve": lambda fx: o.test_get_lr_cosine_schedule_whole_curve(),
        "cosine_tw_minus_1": lambda fx: o.test_get_lr_cosine_schedule_key_points(6, 6 / 7),
        "cosine_no_warmup": lambda fx: o.test_get_lr_cosine_schedule_without_warmup(),
        "checkpoint_resume": lambda fx: s.test_checkpointing_resume_is_exact("file-object"),
        "checkpoint_path": lambda fx: s.test_checkpointing_resume_is_exact("path"),
        "checkpoint_optimizer": lambda fx: s.test_checkpointing_restores_the_optimizer_state(),
        "checkpoint_iterations": lambda fx: s.test_checkpointing_iteration_round_trips(),
        "batch_shapes": lambda fx: d.test_get_batch_shapes_dtypes_and_targets(np.uint16, 4, 7),
        "batch_uniform": lambda fx: d.test_get_batch_starts_are_uniform_over_every_valid_start(),
        "batch_one_start": lambda fx: d.test_get_batch_when_only_one_start_is_valid(),
        "batch_too_short": lambda fx: d.test_get_batch_too_short_dataset_raises(),
        "batch_cuda99": lambda fx: d.test_get_batch_invalid_device_raises("cuda:99"),
        "batch_bad_device": lambda fx: d.test_get_batch_invalid_device_raises("not-a-device"),
        "batch_device_index": lambda fx: d.test_get_batch_places_tensors_on_the_given_device(),
        "batch_memmap": lambda fx: d.test_get_batch_on_a_memmap(fx.tmp, np.uint16),
    }


def _bpe_checks() -> dict[str, Callable[[Fixtures], None]]:
    t, b = tokenizer, train_bpe
    texts = t.TEXTS
    return {
        "encode_ascii": lambda fx: t.test_tokenizer_matches_tiktoken(fx.bpe, fx.tik, texts["ascii"]),
        "encode_special": lambda fx: t.test_tokenizer_matches_tiktoken(fx.bpe, fx.tik, texts["special"]),
        "encode_spaces": lambda fx: t.test_tokenizer_matches_tiktoken(fx.bpe, fx.tik, texts["space-runs"]),
        "encode_contractions": lambda fx: t.test_tokenizer_matches_tiktoken(fx.bpe, fx.tik, texts["contractions"]),
        "encode_emoji": lambda fx: t.test_tokenizer_matches_tiktoken(fx.bpe, fx.tik, texts["emoji"]),
        "encode_corpus": lambda fx: t.test_tokenizer_matches_tiktoken_on_corpus(fx.bpe, fx.tik, fx.dir),
        "encode_no_specials": lambda fx: t.test_tokenizer_without_special_tokens_treats_them_as_text(fx.bpe),
        "encode_overlapping": lambda fx: t.test_tokenizer_overlapping_special_tokens_take_the_longest(fx.bpe, fx.plain),
        "encode_added_special": lambda fx: t.test_tokenizer_adds_missing_special_tokens(fx.bpe, fx.plain),
        "encode_random": lambda fx: t.test_tokenizer_matches_tiktoken_random_text(
            small_bpe=fx.bpe, small_tiktoken=fx.tik
        ),
        "iterable_any_chunking": lambda fx: t.test_tokenizer_encode_iterable_any_chunking(
            small_bpe=fx.bpe, small_tiktoken=fx.tik
        ),
        "encode_two_instances": lambda fx: t.test_tokenizer_instances_share_no_state(fx.bpe),
        **{
            f"iterable_tricky_{name}": (
                lambda fx, c=chunks: t.test_tokenizer_encode_iterable_tricky_chunkings(fx.bpe, fx.tik, c)
            )
            for name, chunks in t.TRICKY_CHUNKINGS.items()
        },
        "decode_malformed": lambda fx: t.test_tokenizer_decode_malformed_bytes_become_replacement_characters(fx.bpe),
        "iterable_long_7": lambda fx: t.test_tokenizer_encode_iterable_long_input(fx.bpe, fx.tik, fx.dir, 0),
        "iterable_long_300": lambda fx: t.test_tokenizer_encode_iterable_long_input(fx.bpe, fx.tik, fx.dir, 1),
        "iterable_file": lambda fx: t.test_tokenizer_encode_iterable_file_object(fx.bpe, fx.tik, fx.dir),
        "iterable_memory": lambda fx: t.test_tokenizer_encode_iterable_memory_does_not_grow_with_the_input(
            fx.bpe, fx.tik, fx.dir, fx.tmp
        ),
        "train_hand": lambda fx: b.test_train_bpe_hand_worked(fx.tmp),
        "train_tie": lambda fx: b.test_train_bpe_tie_break_compares_bytes_not_ids(fx.tmp),
        "train_small": lambda fx: b.test_train_bpe_matches_naive_trainer(fx.dir, "bpe_corpus_small.txt", 300),
        "train_medium": lambda fx: b.test_train_bpe_matches_naive_trainer(fx.dir, "bpe_corpus_medium.txt", 243),
        "train_specials": lambda fx: b.test_train_bpe_special_tokens_are_never_merged(fx.dir),
        "train_overlapping": lambda fx: b.test_train_bpe_overlapping_special_tokens(fx.tmp),
        "train_speed": lambda fx: b.test_train_bpe_merges_are_incremental(fx.tmp),
        "train_random": lambda fx: b.test_train_bpe_random_corpora(tmp_path=fx.tmp),
    }


CHECKS: dict[str, Callable[[Fixtures], None]] = {**_model_checks(), **_training_checks(), **_bpe_checks()}
