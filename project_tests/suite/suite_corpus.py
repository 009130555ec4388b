"""The corpus that tests the graded suite: correct rewrites that must pass it, mutants that must fail it.

A rewrite is a set of adapters from an independent, differently written correct implementation (the
`suite_student_*` modules, or the oracle's torch built-ins) with the checks it must pass. A mutant is the
same implementation with one realistic mistake switched on, the checks that must catch it, and the name of
the catalogued mistake (`tests/mistakes_*.py`) its failure message must name, or None when the mistake is
not catalogued (then no hint may appear).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import oracle.adapters
from project_tests.suite import suite_student_bpe as student_bpe
from project_tests.suite import suite_student_model as student_model
from project_tests.suite import suite_student_training as student_training
from project_tests.suite.suite_checks import CHECKS


@dataclass(frozen=True)
class Mutant:
    adapters: dict[str, Any]
    checks: tuple[str, ...]
    hint: str | None
    crash_ok: bool = False  # an error other than a failed assertion also counts as caught (e.g. a stub)
    alone: bool = False  # its checks measure the process's memory: each runs in a fresh one (suite_alone.py)


def _model(fn: str, mistake: str) -> dict[str, Any]:
    return student_model.adapters(**{fn: {"mistake": mistake}})


def _training(fn: str, mistake: str) -> dict[str, Any]:
    return student_training.adapters(**{fn: {"mistake": mistake}})


ROPE = ("rope_shared", "rope_batch", "rope_per_head")
SDPA = ("sdpa_masked", "sdpa_shared", "sdpa_no_mask")

_MODEL_MUTANTS: dict[str, tuple[str, str, tuple[str, ...], str | None]] = {
    # name: (function, mistake switch, checks, catalogued mistake)
    "linear_reshaped": ("linear", "reshaped", ("linear",), "linear_reshaped"),
    # Issue 21: x @ W passes unless a weight is square; a weight stored (d_in, d_out) fails with a shape error,
    # which the failure names ("Likely cause: ..."; checked in test_suite_catches_bugs.py).
    "linear_no_transpose": ("linear", "no_transpose", ("linear_hand", "linear"), "linear_no_transpose"),
    "linear_stored_transposed": ("linear", "stored_transposed", ("linear", "linear_hand"), "linear_no_transpose"),
    "rmsnorm_eps_outside_default_eps": ("rmsnorm", "eps_outside", ("rmsnorm_default",), "rmsnorm_eps_outside"),
    "rmsnorm_eps_outside_hand": ("rmsnorm", "eps_outside", ("rmsnorm_hand",), "rmsnorm_eps_outside"),
    "rmsnorm_sum_hand": ("rmsnorm", "sum", ("rmsnorm_hand",), "rmsnorm_sum"),
    "rmsnorm_eps_outside": ("rmsnorm", "eps_outside", ("rmsnorm_large_eps",), "rmsnorm_eps_outside"),
    "rmsnorm_no_upcast": ("rmsnorm", "no_upcast", ("rmsnorm_fp16",), "rmsnorm_no_upcast"),
    "rmsnorm_float32_out": ("rmsnorm", "float32_out", ("rmsnorm_bf16",), None),
    "rmsnorm_sum": ("rmsnorm", "sum", ("rmsnorm_default", "rmsnorm_large_eps"), "rmsnorm_sum"),
    "rmsnorm_no_gain": ("rmsnorm", "no_gain", ("rmsnorm_default",), "rmsnorm_no_gain"),
    "rmsnorm_layernorm": ("rmsnorm", "layernorm", ("rmsnorm_default",), "rmsnorm_is_layernorm"),
    "softmax_last_dim": ("softmax", "last_dim", ("softmax_dim0", "softmax_dim1"), "softmax_last_dim"),
    "softmax_no_shift": ("softmax", "no_shift", ("softmax_stable",), "softmax_no_shift"),
    "softmax_all_elements": ("softmax", "all_elements", ("softmax_dim-1", "softmax_dim0"), "softmax_all_elements"),
    "silu_sigmoid": ("silu", "sigmoid", ("silu",), "silu_is_sigmoid"),
    "silu_gelu": ("silu", "gelu", ("silu",), "silu_is_gelu"),
    "silu_exp_ratio": ("silu", "exp_ratio", ("silu_hand",), "silu_exp_ratio"),
    "softmax_last_dim_hand": ("softmax", "last_dim", ("softmax_hand",), "softmax_last_dim"),
    "swiglu_gate_w3": ("swiglu", "gate_w3", ("swiglu",), "swiglu_gate_w3"),
    "swiglu_no_gate": ("swiglu", "no_gate", ("swiglu",), "swiglu_no_gate"),
    "swiglu_silu_of_product": ("swiglu", "silu_of_product", ("swiglu",), "swiglu_silu_of_product"),
    "swiglu_sigmoid_gate": ("swiglu", "sigmoid_gate", ("swiglu",), "swiglu_sigmoid_gate"),
    "rope_halves": ("rope", "halves", ROPE, "rope_halves"),
    "rope_ignores_positions": ("rope", "ignores_positions", ROPE, "rope_ignores_positions"),
    "rope_first_row_positions": ("rope", "first_row_positions", ROPE[1:], "rope_first_row_positions"),
    "rope_opposite": ("rope", "opposite", ROPE, "rope_opposite_direction"),
    "rope_exponent_k_over_d": ("rope", "exponent_k_over_d", ROPE, "rope_exponent_k_over_d"),
    "rope_exponent_off_by_one": ("rope", "exponent_off_by_one", ROPE, "rope_exponent_off_by_one"),
    "rope_half_precision_cache": ("rope", "half_precision_cache", ("rope_batch",), None),
    "sdpa_scale_dv": ("sdpa", "scale_dv", SDPA, "sdpa_scale_dv"),
    "sdpa_no_scale": ("sdpa", "no_scale", SDPA, "sdpa_no_scale"),
    "sdpa_scale_dk": ("sdpa", "scale_dk", SDPA, "sdpa_scale_dk"),
    "sdpa_mask_inverted": ("sdpa", "mask_inverted", SDPA[:2], "sdpa_mask_inverted"),
    "sdpa_mask_ignored": ("sdpa", "mask_ignored", SDPA[:2], "sdpa_mask_ignored"),
    "sdpa_softmax_over_queries": ("sdpa", "softmax_over_queries", SDPA, "sdpa_softmax_over_queries"),
    "sdpa_mask_zero": ("sdpa", "mask_zero", ("sdpa_masked",), None),
    "mha_no_causal_mask": ("mha", "no_causal_mask", ("mha", "mha_4d", "mha_rope", "mha_causal"), "mha_causal"),
    "mha_heads_order": ("mha", "heads_order", ("mha", "mha_rope"), "mha_heads"),
    "mha_rope_ignores_positions": ("mha", "rope_ignores_positions", ("mha_rope",), "mha_ignore_positions"),
    "mha_rope_on_v": ("mha", "rope_on_v", ("mha_rope", "mha_rope_default"), "mha_rope_v"),
    "mha_rope_whole": ("mha", "rope_whole", ("mha_rope",), "mha_rope_whole"),
    "mha_scale_by_model": ("mha", "scale_by_model", ("mha", "mha_rope"), "mha_scale_by_model"),
    "mha_no_output_proj": ("mha", "no_output_proj", ("mha",), None),
    "block_post_norm": ("block", "post_norm", ("block",), "block_post_norm"),
    "block_norms_swapped": ("block", "norms_swapped", ("block",), "block_norms_swapped"),
    "block_without_rope": ("block", "without_rope", ("block",), "block_without_rope"),
    "block_no_residual": ("block", "no_residual", ("block",), "block_no_residual"),
    "lm_no_final_norm": ("lm", "no_final_norm", ("lm", "lm_full"), "lm_no_final_norm"),
    "lm_default_theta": ("lm", "default_theta", ("lm", "lm_full"), "lm_default_theta"),
    "lm_without_rope": ("lm", "without_rope", ("lm", "lm_full"), "lm_without_rope"),
    "lm_probabilities": ("lm", "probabilities", ("lm",), "lm_probabilities"),
    "lm_tied_head": ("lm", "tied_head", ("lm",), None),
}

_TRAINING_MUTANTS: dict[str, tuple[str, str, tuple[str, ...], str | None]] = {
    "ce_summed": ("cross_entropy", "summed", ("ce_2d", "ce_3d"), "ce_summed"),
    "ce_mean_over_batch": ("cross_entropy", "mean_over_batch", ("ce_3d",), "ce_mean_over_batch_only"),
    "ce_log_of_softmax": ("cross_entropy", "log_of_softmax", ("ce_extreme",), "ce_log_of_softmax"),
    "ce_unshifted": ("cross_entropy", "unshifted", ("ce_extreme",), "ce_unshifted_logsumexp"),
    "ce_unshifted_property": ("cross_entropy", "unshifted", ("ce_property",), "ce_unshifted_logsumexp"),
    "ce_unshifted_large": ("cross_entropy", "unshifted", ("ce_snapshot_large",), "ce_unshifted_logsumexp"),
    "ce_summed_property": ("cross_entropy", "summed", ("ce_property",), "ce_summed"),
    "ce_summed_hand": ("cross_entropy", "summed", ("ce_uniform", "ce_hand"), "ce_summed"),
    "clip_per_parameter_hand": ("gradient_clipping", "per_parameter", ("clip_global",), "clip_per_parameter"),
    "clip_per_parameter": (
        "gradient_clipping",
        "per_parameter",
        ("clip_far_above", "clip_above"),
        "clip_per_parameter",
    ),
    "clip_always": ("gradient_clipping", "always", ("clip_below",), "clip_always"),
    "clip_sum_of_norms": ("gradient_clipping", "sum_of_norms", ("clip_above",), "clip_sum_of_norms"),
    "clip_by_value": ("gradient_clipping", "by_value", ("clip_far_above",), "clip_by_value"),
    "clip_no_eps": ("gradient_clipping", "no_eps", ("clip_tiny",), "clip_no_eps"),
    "adamw_coupled": ("adamw", "coupled", ("adamw_trajectory",), "adamw_coupled_l2"),
    "adamw_no_bias_correction": ("adamw", "no_bias_correction", ("adamw_trajectory",), "adamw_no_bias_correction"),
    "adamw_shared_step": ("adamw", "shared_step", ("adamw_trajectory",), "adamw_shared_step"),
    "adamw_cached_lr": ("adamw", "cached_lr", ("adamw_trajectory",), "adamw_cached_lr"),
    "adamw_decay_by_alpha_t": ("adamw", "decay_by_alpha_t", ("adamw_trajectory",), "adamw_decay_by_alpha_t"),
    "cosine_warmup_off_by_one": (
        "cosine",
        "warmup_off_by_one",
        ("cosine_curve", "cosine_tw_minus_1"),
        "cosine_warmup_off_by_one",
    ),
    "cosine_over_tc": ("cosine", "over_tc", ("cosine_curve",), "cosine_angle_over_tc"),
    "cosine_from_zero": ("cosine", "from_zero", ("cosine_curve",), "cosine_angle_from_zero"),
    "batch_device_ignored": ("get_batch", "device_ignored", ("batch_cuda99", "batch_device_index"), None),
    "batch_device_type_only": ("get_batch", "device_type_only", ("batch_device_index",), None),
    "checkpoint_no_optimizer": ("save_checkpoint", "no_optimizer", ("checkpoint_resume", "checkpoint_optimizer"), None),
    "checkpoint_iteration_lost": ("load_checkpoint", "iteration_lost", ("checkpoint_iterations",), None),
}

_CRASHING_MUTANTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # A stub that always raises must earn nothing from the error-case tests (issue 13, "wrong work" 2).
    "batch_always_raises": ("get_batch", "always_raises", ("batch_too_short", "batch_cuda99", "batch_bad_device")),
    "batch_off_by_one": ("get_batch", "off_by_one", ("batch_uniform",)),
    "batch_value_error_for_device": ("get_batch", "value_error_for_device", ("batch_cuda99", "batch_bad_device")),
}


def _bpe(tokenizer: dict[str, Any] | None = None, trainer: dict[str, Any] | None = None) -> dict[str, Any]:
    return student_bpe.adapters(tokenizer, trainer)


ENCODE = (
    "encode_ascii",
    "encode_corpus",
    "encode_overlapping",
    "encode_added_special",
    "iterable_long_7",
    "iterable_file",
)

# A whitespace run at a chunk's edge, flushed and encoded on its own, splits differently than in the whole text.
TRICKY_WHITESPACE = (
    "iterable_tricky_newlines-then-word",
    "iterable_tricky_spaces-then-word",
    "iterable_tricky_newline-space-word",
)

MUTANTS: dict[str, Mutant] = {
    **{name: Mutant(_model(fn, m), checks, hint) for name, (fn, m, checks, hint) in _MODEL_MUTANTS.items()},
    **{
        name: Mutant(
            student_training.adapters(adamw={"mistake": m}) if fn == "adamw" else _training(fn, m), checks, hint
        )
        for name, (fn, m, checks, hint) in _TRAINING_MUTANTS.items()
    },
    **{name: Mutant(_training(fn, m), checks, None, True) for name, (fn, m, checks) in _CRASHING_MUTANTS.items()},
    "train_ties_smaller": Mutant(
        _bpe(trainer={"tie": "smaller"}), ("train_hand", "train_tie", "train_small"), "train_ties_smaller"
    ),
    "train_ties_by_ids": Mutant(_bpe(trainer={"tie": "ids"}), ("train_tie",), "train_ties_by_ids"),
    "train_specials_not_split": Mutant(
        _bpe(trainer={"split_specials": False}), ("train_overlapping",), "train_specials_not_split"
    ),
    "train_no_pretokenization": Mutant(
        _bpe(trainer={"pretokenize": "none"}), ("train_small",), "train_no_pretokenization"
    ),
    "train_whitespace_split": Mutant(
        _bpe(trainer={"pretokenize": "split"}), ("train_small",), "train_whitespace_split"
    ),
    "train_naive_recount": Mutant(_bpe(trainer={"naive": True}), ("train_speed",), None),
    "encode_no_merges": Mutant(_bpe({"no_merges": True}), ENCODE, "encode_no_merges"),
    "encode_shortest_first": Mutant(
        _bpe({"shortest_first": True}), ("encode_overlapping",), "encode_specials_shortest_first"
    ),
    "encode_no_pretokenize": Mutant(
        _bpe({"no_pretokenize": True}), ("encode_spaces", "encode_contractions"), "encode_no_pretokenization"
    ),
    "encode_specials_as_text": Mutant(_bpe({"specials_as_text": True}), ("encode_special",), "encode_specials_as_text"),
    "encode_iterable_reads_all": Mutant(_bpe({"stream": "read_all"}), ("iterable_memory",), None, alone=True),
    "encode_iterable_per_chunk": Mutant(_bpe({"stream": "per_chunk"}), ("iterable_long_7",), None),
    "encode_iterable_flush_at_whitespace": Mutant(_bpe({"stream": "flush_at_whitespace"}), TRICKY_WHITESPACE, None),
    "encode_class_cache": Mutant(_bpe({"class_cache": True}), ("encode_two_instances",), None),
    "decode_strict": Mutant(_bpe({"strict_decode": True}), ("decode_malformed",), None, True),
}
SLOW_MUTANTS = {
    "train_naive_recount",
    "encode_iterable_reads_all",
    "encode_no_merges",
    "train_ties_smaller",
    "train_no_pretokenization",
    "train_whitespace_split",
}

# ------------------------------------------------------------------------------------------- rewrites

MODEL_CHECKS = tuple(
    label
    for label in CHECKS
    if label.split("_")[0]
    in {"linear", "embedding", "rmsnorm", "swiglu", "rope", "sdpa", "mha", "block", "lm", "softmax", "silu"}
) + ("softmax_property",)
TRAINING_CHECKS = tuple(
    label for label in CHECKS if label.split("_")[0] in {"ce", "clip", "adamw", "cosine", "checkpoint", "batch"}
)
BPE_CHECKS = tuple(label for label in CHECKS if label.split("_")[0] in {"encode", "decode", "iterable", "train"})
_ORACLE_MODEL = (
    "run_linear",
    "run_rmsnorm",
    "run_softmax",
    "run_silu",
    "run_swiglu",
    "run_rope",
    "run_scaled_dot_product_attention",
    "run_multihead_self_attention",
    "run_multihead_self_attention_with_rope",
    "run_transformer_block",
    "run_transformer_lm",
)

REWRITES: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "model_plain_float32": (student_model.adapters(), MODEL_CHECKS),
    "model_einsum_division_logsumexp": (
        student_model.adapters(
            linear={"einsum": True},
            rmsnorm={"division": True},
            silu={"division": True},
            sdpa={"einsum": True},
            softmax={"logsumexp": True},
        ),
        MODEL_CHECKS,
    ),
    "mha_per_head_loop": (
        student_model.adapters(mha={"per_head_loop": True}),
        ("mha", "mha_4d", "mha_rope", "mha_rope_default", "mha_causal", "block", "lm"),
    ),
    "mha_fused_qkv_projection": (
        student_model.adapters(mha={"fused": True}),
        ("mha", "mha_4d", "mha_rope", "mha_rope_default", "mha_causal"),
    ),
    "rope_float32_result_for_bf16": (student_model.adapters(rope={"keep_float32": True}), (*ROPE, "rope_bf16")),
    "softmax_computed_in_float32": (
        student_model.adapters(softmax={"upcast": True}),
        ("softmax_dim0", "softmax_dim-1", "softmax_stable", "softmax_property"),
    ),
    "oracle_torch_builtins": ({name: getattr(oracle.adapters, name) for name in _ORACLE_MODEL}, MODEL_CHECKS),
    # bf16 arithmetic (issue 21): each correct SiLU formula computed in bf16, and float32 then one cast.
    **{
        f"silu_bf16_{form}": (student_model.adapters(silu={"form": form}), ("silu", "silu_bf16", "silu_hand"))
        for form in ("reciprocal", "division", "sigmoid", "float32_then_cast")
    },
    "rmsnorm_gain_in_bf16_after_cast": (
        student_model.adapters(rmsnorm={"gain_after_cast": True}),
        ("rmsnorm_default", "rmsnorm_large_eps", "rmsnorm_bf16", "rmsnorm_hand"),
    ),
    "rope_bf16_arithmetic": (student_model.adapters(rope={"input_dtype_arithmetic": True}), (*ROPE, "rope_bf16")),
    "training_decay_after_update": (student_training.adapters(adamw={"decay": "after"}), TRAINING_CHECKS),
    "training_decay_before_update": (student_training.adapters(adamw={"decay": "before"}), TRAINING_CHECKS),
    "bpe_incremental_and_buffered_streaming": (student_bpe.adapters(), BPE_CHECKS),
}
