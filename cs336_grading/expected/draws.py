"""The graded cases of the snapshot tests: inputs drawn from a seed, expected values from torch built-ins.

    draw("model_linear", seed=1)                    # the public case: tests/_snapshots/model_linear.npz
    draw("model_linear", seed=s, heldout=True)      # a held-out case of the same layout (`heldout.py`)

One home for both: `make snapshots` (the oracle) writes `draw(name, PUBLIC_SEEDS[name])` to
`tests/_snapshots/<name>.npz`, and under grading with a course secret the graded tests' `load_snapshot`
returns `draw(name, <seed from the secret>, heldout=True)` instead, computed in the trusted pytest process.
A held-out draw has the keys, dtypes and (unless stated) shapes of the public one, so the tests read both
alike; it varies the shapes that a test reads from the arrays: Linear's batched case is square
(`d_in == d_out`, so a missing transpose shows) and its vector case has other, unequal sizes; SiLU's float32
case adds inputs beyond ±88 (where `exp(x)` overflows float32).

Keys are `<case>.<name>`; expectations are computed in float64 from the float32 inputs and stored as float32,
and bf16 cases store bf16-representable float32 values (npz has no bf16). The case tables (`RMSNORM_CASES`,
`ROPE_CASES`, `MHA`, `BLOCK`, `LM`, ...) live in `cases.py` beside this file; the tests read them too.

NOTE: the bytes of the committed snapshots depend on the order of every random draw below: reordering two
draws of a public case changes its file (`project_tests/suite/test_snapshot_drift.py` fails). Held-out-only
draws come after the public ones, or from their own generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cs336_grading.expected.cases import BLOCK, LM, MHA, RMSNORM_CASES, ROPE_CASES, SOFTMAX_DIMS
from cs336_grading.expected.model import (
    multihead_self_attention,
    rmsnorm,
    rope,
    swiglu,
    transformer_block,
    transformer_lm,
)


class _Rng:
    """Seeded generator of float32 tensors and int64 ids."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def normal(self, *shape: int, std: float = 1.0, bf16: bool = False) -> Tensor:
        t = torch.randn(shape, generator=self.g) * std
        return t.bfloat16().float() if bf16 else t

    def linear(self, d_out: int, d_in: int, bf16: bool = False) -> Tensor:
        """A weight at the handout's initial scale (std sqrt(2 / (d_in + d_out)))."""
        return self.normal(d_out, d_in, std=math.sqrt(2.0 / (d_in + d_out)), bf16=bf16)

    def gain(self, d: int, bf16: bool = False) -> Tensor:
        """RMSNorm gains away from 1 so that a missing or swapped norm shows."""
        t = 0.5 + torch.rand(d, generator=self.g)
        return t.bfloat16().float() if bf16 else t

    def ints(self, low: int, high: int, *shape: int) -> Tensor:
        return torch.randint(low, high, shape, generator=self.g)

    def positions(self, max_seq_len: int, *shape: int) -> Tensor:
        """Distinct, increasing, non-contiguous positions below max_seq_len, different for every row."""
        rows = [
            torch.randperm(max_seq_len, generator=self.g)[: shape[-1]].sort().values
            for _ in range(math.prod(shape[:-1]))
        ]
        return torch.stack(rows).reshape(shape)


def _np(arrays: dict[str, Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() if v.dtype != torch.float64 else v.float().numpy() for k, v in arrays.items()}


def _f64(t: Tensor) -> Tensor:
    return t.double()


def _linear_shapes(rng: _Rng, heldout: bool) -> list[tuple[str, int, int, tuple[int, ...], bool]]:
    """(case, d_out, d_in, x shape, bf16). Held out: batched is square, vector has other, unequal sizes."""
    if not heldout:
        return [
            ("batched", 40, 24, (2, 3, 5, 24), False),
            ("vector", 40, 24, (24,), False),
            ("bf16", 40, 24, (6, 24), True),
        ]
    square = int(rng.ints(12, 48, 1))
    d_in = int(rng.ints(8, 40, 1))
    d_out = d_in + int(rng.ints(1, 24, 1))  # never square
    batch = tuple(int(n) for n in rng.ints(2, 5, 3))
    return [
        ("batched", square, square, (*batch, square), False),
        ("vector", d_out, d_in, (d_in,), False),
        ("bf16", 40, 24, (6, 24), True),
    ]


def _linear(seed: int, heldout: bool) -> dict[str, np.ndarray]:
    rng, out = _Rng(seed), {}
    for case, d_out, d_in, x_shape, bf16 in _linear_shapes(_Rng(seed + 1), heldout):
        w, x = rng.linear(d_out, d_in, bf16), rng.normal(*x_shape, bf16=bf16)
        out |= {f"{case}.weights": w, f"{case}.in_features": x, f"{case}.expected": F.linear(_f64(x), _f64(w))}
    return _np(out)


def _embedding(seed: int, heldout: bool) -> dict[str, np.ndarray]:
    rng = _Rng(seed)
    w = rng.normal(50, 16)
    ids = rng.ints(0, 50, 3, 7)
    ids[0, 0], ids[0, 1], ids[1, 2] = 0, 49, 49  # both ends of the table and a repeat
    ids_3d = rng.ints(0, 50, 2, 2, 5)
    return _np(
        {
            "weights": w,
            "matrix.token_ids": ids,
            "matrix.expected": F.embedding(ids, w),
            "3d.token_ids": ids_3d,
            "3d.expected": F.embedding(ids_3d, w),
        }
    )


def _swiglu(seed: int, heldout: bool) -> dict[str, np.ndarray]:
    rng = _Rng(seed)
    d_model, d_ff = 32, 48
    w1, w2, w3 = rng.linear(d_ff, d_model), rng.linear(d_model, d_ff), rng.linear(d_ff, d_model)
    x = rng.normal(2, 5, d_model)
    expected = swiglu(_f64(x), _f64(w1), _f64(w2), _f64(w3))
    return _np({"w1": w1, "w2": w2, "w3": w3, "in_features": x, "expected": expected})


def _rmsnorm(seed: int, heldout: bool) -> dict[str, np.ndarray]:
    rng, out = _Rng(seed), {}
    for case, eps, scale, bf16 in RMSNORM_CASES:
        w, x = rng.gain(32, bf16), rng.normal(2, 5, 32, std=scale, bf16=bf16)
        out |= {f"{case}.weights": w, f"{case}.in_features": x, f"{case}.expected": rmsnorm(_f64(x), _f64(w), eps)}
    return _np(out)


def _silu(seed: int, heldout: bool) -> dict[str, np.ndarray]:
    rng, out = _Rng(seed), {}
    for case, bf16 in (("float32", False), ("bf16", True)):
        x = torch.cat([rng.normal(500, std=6.0, bf16=bf16), torch.tensor([-80.0, -30.0, -1e-3, 0.0, 1e-3, 30.0, 80.0])])
        if heldout and not bf16:  # beyond ±88.7 exp(x) overflows float32: e^x / (1 + e^x) gives NaN there
            far = 89.0 + 11.0 * torch.rand(4, generator=_Rng(seed + 1).g)
            x = torch.cat([x, far, -far])
        out |= {f"{case}.in_features": x, f"{case}.expected": F.silu(_f64(x))}
    return _np(out)


def _softmax(seed: int, heldout: bool) -> dict[str, np.ndarray]:
    rng = _Rng(seed)
    x = rng.normal(3, 4, 5, std=3.0)
    out = {"in_features": x}
    for dim in SOFTMAX_DIMS:
        out[f"dim{dim}.expected"] = F.softmax(_f64(x), dim=dim)
    # exp(100) overflows float32 and exp(-200) underflows to 0: without the max shift, NaN.
    stable = rng.normal(3, 6, std=3.0) + torch.tensor([[0.0], [100.0], [-200.0]])
    out |= {"stable.in_features": stable, "stable.expected": F.softmax(_f64(stable), dim=-1)}
    x_bf16 = rng.normal(4, 33, std=4.0, bf16=True)
    out |= {"bf16.in_features": x_bf16, "bf16.expected": F.softmax(_f64(x_bf16), dim=-1)}
    return _np(out)


def _sdpa(seed: int, heldout: bool) -> dict[str, np.ndarray]:
    rng = _Rng(seed)
    # d_k != d_v (8 vs 12) and queries != keys (5 vs 7): a scale by sqrt(d_v) or a transposed K shows.
    q, k, v = rng.normal(2, 3, 5, 8, std=2.0), rng.normal(2, 3, 7, 8, std=2.0), rng.normal(2, 3, 7, 12)
    mask = torch.rand(2, 3, 5, 7, generator=rng.g) < 0.6
    mask[..., 0] = True  # every query sees at least one key
    shared_mask = torch.rand(5, 7, generator=rng.g) < 0.6
    shared_mask[:, 2] = True
    out = {"Q": q, "K": k, "V": v, "mask": mask, "shared_mask": shared_mask}
    f64 = [_f64(t) for t in (q, k, v)]
    out["masked.expected"] = F.scaled_dot_product_attention(*f64, attn_mask=mask)
    out["shared_mask.expected"] = F.scaled_dot_product_attention(*f64, attn_mask=shared_mask)
    out["no_mask.expected"] = F.scaled_dot_product_attention(*f64)
    qb, kb, vb = rng.normal(3, 6, 16, bf16=True), rng.normal(3, 6, 16, bf16=True), rng.normal(3, 6, 16, bf16=True)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    out |= {"bf16.Q": qb, "bf16.K": kb, "bf16.V": vb, "bf16.mask": causal}
    out["bf16.expected"] = F.scaled_dot_product_attention(_f64(qb), _f64(kb), _f64(vb), attn_mask=causal)
    return _np(out)


def _rope(seed: int, heldout: bool) -> dict[str, np.ndarray]:
    rng, out = _Rng(seed), {}
    for case, _d_k, theta, max_seq_len, x_shape, pos_shape, bf16 in ROPE_CASES:
        x, pos = rng.normal(*x_shape, bf16=bf16), rng.positions(max_seq_len, *pos_shape)
        out |= {f"{case}.in_query_or_key": x, f"{case}.token_positions": pos}
        out[f"{case}.expected"] = rope(_f64(x), theta, pos)
    return _np(out)


def _mha(seed: int, heldout: bool) -> dict[str, np.ndarray]:
    rng = _Rng(seed)
    d, h = MHA["d_model"], MHA["num_heads"]
    weights = {name: rng.linear(d, d) for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight", "o_proj_weight")}
    w64 = [_f64(weights[n]) for n in ("q_proj_weight", "k_proj_weight", "v_proj_weight", "o_proj_weight")]
    x, x4 = rng.normal(2, 9, d), rng.normal(2, 2, 9, d)
    pos = rng.positions(MHA["max_seq_len"], 2, 9)
    out = dict(weights) | {"in_features": x, "4d.in_features": x4, "token_positions": pos}
    out["nope.expected"] = multihead_self_attention(_f64(x), *w64, h)
    out["nope_4d.expected"] = multihead_self_attention(_f64(x4), *w64, h)
    out["rope_default_positions.expected"] = multihead_self_attention(_f64(x), *w64, h, MHA["theta"])
    out["rope_positions.expected"] = multihead_self_attention(_f64(x), *w64, h, MHA["theta"], pos)
    return _np(out)


def _block_weights(rng: _Rng, d_model: int, d_ff: int, prefix: str = "") -> dict[str, Tensor]:
    w = {f"attn.{n}.weight": rng.linear(d_model, d_model) for n in ("q_proj", "k_proj", "v_proj", "output_proj")}
    w |= {"ln1.weight": rng.gain(d_model), "ln2.weight": rng.gain(d_model)}
    w |= {"ffn.w1.weight": rng.linear(d_ff, d_model), "ffn.w2.weight": rng.linear(d_model, d_ff)}
    w["ffn.w3.weight"] = rng.linear(d_ff, d_model)
    return {prefix + k: v for k, v in w.items()}


def _block(seed: int, heldout: bool) -> dict[str, np.ndarray]:
    rng = _Rng(seed)
    weights = _block_weights(rng, BLOCK["d_model"], BLOCK["d_ff"])
    x = rng.normal(2, 11, BLOCK["d_model"])
    expected = transformer_block(_f64(x), {k: _f64(v) for k, v in weights.items()}, BLOCK["num_heads"], BLOCK["theta"])
    return _np({f"weights.{k}": v for k, v in weights.items()} | {"in_features": x, "expected": expected})


def lm_weights(seed: int = 11) -> dict[str, Tensor]:
    """Random float32 LM weights for the `LM` architecture, at the handout's initial scales."""
    rng, c = _Rng(seed), LM
    w = {"token_embeddings.weight": rng.normal(c["vocab_size"], c["d_model"])}
    for i in range(c["num_layers"]):
        w |= _block_weights(rng, c["d_model"], c["d_ff"], prefix=f"layers.{i}.")
    w |= {"ln_final.weight": rng.gain(c["d_model"]), "lm_head.weight": rng.linear(c["vocab_size"], c["d_model"])}
    return w


def _lm(seed: int, heldout: bool) -> dict[str, np.ndarray]:
    weights = lm_weights(seed)
    rng = _Rng(seed + 1)
    out: dict[str, Tensor] = {f"weights.{k}": v for k, v in weights.items()}
    w64 = {k: _f64(v) for k, v in weights.items()}
    for case, shape in (("short", (3, 12)), ("full_context", (2, LM["context_length"]))):
        ids = rng.ints(0, LM["vocab_size"], *shape)
        out[f"{case}.in_indices"] = ids
        out[f"{case}.expected"] = transformer_lm(ids, w64, LM["num_layers"], LM["num_heads"], LM["rope_theta"])
    return _np(out)


def _adamw(seed: int, heldout: bool) -> dict[str, np.ndarray]:
    """A single-group trajectory of torch.optim.AdamW on a linear least-squares problem."""
    generator = torch.Generator().manual_seed(seed)
    steps, lr, betas, eps, weight_decay = 40, 1e-3, (0.9, 0.95), 1e-8, 0.1
    weight0 = torch.randn(4, 5, generator=generator) * 0.5
    bias0 = torch.randn(4, generator=generator) * 0.1
    inputs = torch.randn(steps, 8, 5, generator=generator)
    targets = torch.randn(steps, 8, 4, generator=generator)
    weight, bias = torch.nn.Parameter(weight0.clone()), torch.nn.Parameter(bias0.clone())
    optimizer = torch.optim.AdamW([weight, bias], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    weights, biases = [], []
    for step in range(steps):
        optimizer.zero_grad()
        F.mse_loss(inputs[step] @ weight.T + bias, targets[step]).backward()
        optimizer.step()
        weights.append(weight.detach().clone())
        biases.append(bias.detach().clone())
    return {
        "hyperparameters": np.array([lr, betas[0], betas[1], eps, weight_decay], dtype=np.float64),
        "weight0": weight0.numpy(),
        "bias0": bias0.numpy(),
        "inputs": inputs.numpy(),
        "targets": targets.numpy(),
        "expected_weights": torch.stack(weights).numpy(),
        "expected_biases": torch.stack(biases).numpy(),
    }


def _cross_entropy(seed: int, heldout: bool) -> dict[str, np.ndarray]:
    """Logits of several scales, 2-d and 3-d, with F.cross_entropy's values and gradients."""
    generator = torch.Generator().manual_seed(seed)
    arrays: dict[str, np.ndarray] = {}
    cases = {
        "flat": (torch.randn(16, 50, generator=generator), (16,)),
        "seq": (torch.randn(2, 6, 50, generator=generator) * 3, (2, 6)),
        "large": (torch.randn(2, 6, 50, generator=generator) * 1000, (2, 6)),
    }
    for name, (logits, target_shape) in cases.items():
        targets = torch.randint(0, logits.shape[-1], target_shape, generator=generator)
        leaf = logits.clone().requires_grad_(True)
        loss = F.cross_entropy(leaf.reshape(-1, leaf.shape[-1]), targets.reshape(-1))
        loss.backward()
        arrays[f"{name}_logits"] = logits.numpy()
        arrays[f"{name}_targets"] = targets.numpy()
        arrays[f"{name}_loss"] = loss.detach().reshape(1).numpy()  # NOTE: write_npz stores 0-d arrays as (1,)
        arrays[f"{name}_grad"] = leaf.grad.numpy()
    return arrays


Builder = Callable[[int, bool], dict[str, np.ndarray]]
BUILDERS: dict[str, Builder] = {
    "model_linear": _linear,
    "model_embedding": _embedding,
    "model_swiglu": _swiglu,
    "model_rmsnorm": _rmsnorm,
    "model_silu": _silu,
    "model_softmax": _softmax,
    "model_sdpa": _sdpa,
    "model_rope": _rope,
    "model_mha": _mha,
    "model_block": _block,
    "model_lm": _lm,
    "training_adamw": _adamw,
    "training_cross_entropy": _cross_entropy,
}
# The seeds of the public snapshots (`tests/_snapshots/`, shipped with the handout).
PUBLIC_SEEDS: dict[str, int] = {
    "model_linear": 1,
    "model_embedding": 2,
    "model_swiglu": 3,
    "model_rmsnorm": 4,
    "model_silu": 5,
    "model_softmax": 6,
    "model_sdpa": 7,
    "model_rope": 8,
    "model_mha": 9,
    "model_block": 10,
    "model_lm": 11,
    "training_adamw": 1234,
    "training_cross_entropy": 4321,
}


def draw(name: str, seed: int | None = None, *, heldout: bool = False) -> dict[str, np.ndarray]:
    """The arrays of the graded case `name`: the public snapshot by default, else drawn from `seed`.

    >>> public, held_out = draw("model_linear"), draw("model_linear", seed=7, heldout=True)
    >>> public["batched.weights"].shape, held_out["batched.weights"].shape[0] == held_out["batched.weights"].shape[1]
    ((40, 24), True)
    """
    if name not in BUILDERS:
        raise ValueError(f"expected a graded case among {', '.join(BUILDERS)}, got {name!r}")
    return BUILDERS[name](PUBLIC_SEEDS[name] if seed is None else seed, heldout)
