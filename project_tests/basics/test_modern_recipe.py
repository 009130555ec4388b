"""The optimisation side of the modern recipe: Muon (oracle: `torch.optim.Muon`), its split of the model's
parameters, `MuonAdamW` (oracles: `torch.optim.Muon` + `torch.optim.AdamW`), z-loss (oracle: `torch.logsumexp`
and `F.cross_entropy`) and the warm-up/stable/decay schedule (hand-computed values).

Each test names in its docstring the mistake it was checked to catch (the code mutated by hand, or a mutant
built here)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

import cs336_basics.muon as muon_module
from cs336_basics.loss import cross_entropy_with_z_loss
from cs336_basics.model import ModelConfig, TransformerLM
from cs336_basics.muon import Muon, MuonAdamW, muon_param_groups, newton_schulz
from cs336_basics.optimizer import wsd_lr_schedule

# wide, tall and square matrices: the tall one is transposed inside the iteration
SHAPES = [(16, 40), (48, 12), (24, 24)]
TIGHT = {"rtol": 1e-6, "atol": 1e-7}


def _run_both(steps: int = 6, adjust_lr_fn: str = "original", **ours) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The same random matrices and gradients stepped by our `Muon` (bf16 iteration, as torch's) and by
    `torch.optim.Muon`; returns both parameter lists."""
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(*s, generator=gen) for s in SHAPES]
    mine = [torch.nn.Parameter(w.clone()) for w in weights]
    theirs = [torch.nn.Parameter(w.clone()) for w in weights]
    options = {"lr": 0.02, "weight_decay": 0.1, "momentum": 0.95, "adjust_lr_fn": adjust_lr_fn}
    a = Muon(mine, **{**options, "ns_dtype": torch.bfloat16, **ours})
    b = torch.optim.Muon(theirs, **options)
    for _ in range(steps):
        for p, q in zip(mine, theirs):
            g = torch.randn(p.shape, generator=gen)
            p.grad, q.grad = g.clone(), g.clone()
        a.step()
        b.step()
    assert not any(torch.equal(p, w) for p, w in zip(mine, weights))  # it moved
    return mine, theirs


@pytest.mark.parametrize("adjust_lr_fn", ["original", "match_rms_adamw"])
def test_muon_equals_torch_muon(adjust_lr_fn: str) -> None:
    """Six steps on wide, tall and square matrices equal torch.optim.Muon's (to fp32 rounding).
    Checked to fail on: decay not scaled by lr (`θ·(1-λ)`), the adjusted lr used for the decay, the
    "match_rms_adamw" factor without its 0.2, momentum as `μB + g` without Nesterov's look-ahead."""
    mine, theirs = _run_both(adjust_lr_fn=adjust_lr_fn)
    for p, q in zip(mine, theirs):
        torch.testing.assert_close(p, q, **TIGHT)


def _no_normalisation(G, coefficients, steps, eps, dtype):
    a, b, c = coefficients
    X = G.to(dtype)
    X = X.T if G.size(0) > G.size(1) else X
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if G.size(0) > G.size(1) else X


def _no_transpose(G, coefficients, steps, eps, dtype):
    a, b, c = coefficients
    X = G.to(dtype)
    X = X / X.norm().clamp(min=eps)
    for _ in range(steps):
        A = X @ X.T
        X = torch.addmm(X, torch.addmm(A, A, A, beta=b, alpha=c), X, beta=a)
    return X


MUTANTS: dict[str, tuple[dict, Callable | None]] = {
    "cubic-coefficients": ({"ns_coefficients": (1.5, -0.5, 0.0)}, None),
    "4-steps": ({"ns_steps": 4}, None),
    "6-steps": ({"ns_steps": 6}, None),
    "no-nesterov": ({"nesterov": False}, None),
    "no-normalisation": ({}, _no_normalisation),
    "no-transpose": ({}, _no_transpose),
}


@pytest.mark.parametrize("mutant", MUTANTS, ids=list(MUTANTS))
def test_muon_comparison_rejects_mistakes(mutant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above fails on each plausible mistake: wrong Newton–Schulz coefficients or step count,
    plain momentum instead of Nesterov's, no normalisation before the iteration, no transpose of a tall
    matrix (the same polynomial, other rounding: caught because the comparison is that tight)."""
    changes, newton_schulz_mutant = MUTANTS[mutant]
    if newton_schulz_mutant is not None:
        monkeypatch.setattr(muon_module, "newton_schulz", newton_schulz_mutant)
    mine, theirs = _run_both(**changes)
    assert any(not torch.allclose(p, q, **TIGHT) for p, q in zip(mine, theirs))


def test_muon_in_float32_is_the_same_algorithm() -> None:
    """The CPU default (a float32 iteration) differs from torch's bf16 one by rounding only."""
    mine, theirs = _run_both(ns_dtype=torch.float32)
    for p, q in zip(mine, theirs):
        torch.testing.assert_close(p, q, rtol=0, atol=2e-3)


def test_newton_schulz_orthogonalises() -> None:
    """Singular values of any scale end near 1 (within the quintic's 0.7-1.2 band); the singular vectors are
    kept. Checked to fail on a missing normalisation (a 100x matrix diverges)."""
    gen = torch.Generator().manual_seed(2)
    for shape in SHAPES:
        G = 100 * torch.randn(*shape, generator=gen)
        ortho = newton_schulz(G)
        s = torch.linalg.svdvals(ortho)
        assert s.min() > 0.6 and s.max() < 1.25, s
        U, _, Vh = torch.linalg.svd(G, full_matrices=False)
        assert F.cosine_similarity((U @ Vh).flatten(), ortho.flatten(), dim=0) > 0.95


def _tiny_lm(**extra) -> TransformerLM:
    config = ModelConfig(vocab_size=50, context_length=8, d_model=16, num_layers=2, num_heads=2, d_ff=24, **extra)
    return TransformerLM(config)


def _names(model: torch.nn.Module, params: list[torch.Tensor]) -> set[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}


def test_muon_param_groups_split_by_role() -> None:
    """Muon: q/k/v/output and the FFN matrices of every block (the names of docs/INTERFACE.md); AdamW: the
    embedding, the lm_head and the gains. Checked to fail on: a split by `ndim == 2` alone (embedding and
    lm_head to Muon), gains to Muon."""
    model = _tiny_lm()
    muon_group, adamw_group = muon_param_groups(model)
    assert muon_group["use_muon"] is True and adamw_group["use_muon"] is False
    block = ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.output_proj", "ffn.w1", "ffn.w2", "ffn.w3"]
    assert _names(model, muon_group["params"]) == {f"layers.{i}.{m}.weight" for i in range(2) for m in block}
    gains = {f"layers.{i}.{n}.weight" for i in range(2) for n in ("ln1", "ln2")} | {"ln_final.weight"}
    assert _names(model, adamw_group["params"]) == {"token_embeddings.weight", "lm_head.weight"} | gains


def test_a_tied_lm_head_is_in_one_group_only() -> None:
    """`lm_head.weight is token_embeddings.weight`: one parameter, in the AdamW group once, and MuonAdamW
    (torch refuses a parameter in two groups) builds. Checked to fail on collecting by name with
    `named_parameters(remove_duplicate=False)` (the tied weight twice)."""
    model = _tiny_lm()
    model.lm_head.weight = model.token_embeddings.weight
    groups = muon_param_groups(model)
    all_params = [p for g in groups for p in g["params"]]
    assert len({id(p) for p in all_params}) == len(all_params) == len(list(model.parameters()))
    assert any(p is model.token_embeddings.weight for p in groups[1]["params"])
    MuonAdamW(groups, lr=1e-3)


def test_muon_adamw_equals_torch_muon_plus_torch_adamw() -> None:
    """One MuonAdamW over a tiny LM's parameters equals torch.optim.Muon on the hidden matrices plus
    torch.optim.AdamW on the rest, for the same gradients; its state_dict resumes exactly. Checked to fail on
    the Muon groups stepped by AdamW too and a group's own lr ignored (the defaults' 2e-3 for
    Muon)."""
    torch.manual_seed(0)
    model = _tiny_lm()
    oracle = copy.deepcopy(model)
    groups = muon_param_groups(model)
    groups[0]["lr"] = 0.01
    ours = MuonAdamW(groups, lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1, ns_dtype=torch.bfloat16)
    oracle_groups = muon_param_groups(oracle)
    muon = torch.optim.Muon(oracle_groups[0]["params"], lr=0.01, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW(oracle_groups[1]["params"], lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(4)
    for step in range(4):
        if step == 2:  # a checkpoint round trip half-way
            state = copy.deepcopy(ours.state_dict())
            ours = MuonAdamW(muon_param_groups(model), lr=5.0, weight_decay=0.0, ns_dtype=torch.bfloat16)
            ours.load_state_dict(state)
        for p, q in zip(model.parameters(), oracle.parameters()):  # the same gradients for both
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        for opt in (ours, muon, adamw):
            opt.step()
    for (name, p), q in zip(model.named_parameters(), oracle.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_muon_refuses_what_it_cannot_step() -> None:
    with pytest.raises(ValueError, match="2-d matrices only, got a parameter of shape"):
        Muon([torch.nn.Parameter(torch.ones(3))])
    with pytest.raises(ValueError, match="adjust_lr_fn must be"):
        Muon([torch.nn.Parameter(torch.ones(2, 2))], adjust_lr_fn="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="momentum must be in"):
        MuonAdamW([torch.nn.Parameter(torch.ones(2, 2))], momentum=1.0)


# ============================================================================ z-loss


@pytest.mark.parametrize("z_loss", [0.0, 1e-4, 0.5], ids=["none", "palm", "large"])
def test_z_loss_equals_the_oracle(z_loss: float) -> None:
    """`F.cross_entropy + z · mean(logsumexp²)`, value and gradient, for logits of any scale. Checked to fail
    on: the term subtracted (wrong sign), `logsumexp` not squared, the sum instead of the mean."""
    gen = torch.Generator().manual_seed(3)
    logits = (5 * torch.randn(3, 7, 11, generator=gen) + 2).requires_grad_()
    targets = torch.randint(0, 11, (3, 7), generator=gen)
    oracle_logits = logits.detach().clone().requires_grad_()
    expected = F.cross_entropy(oracle_logits.flatten(0, 1), targets.flatten())
    expected = expected + z_loss * torch.logsumexp(oracle_logits, dim=-1).pow(2).mean()
    loss = cross_entropy_with_z_loss(logits, targets, z_loss)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(logits.grad, oracle_logits.grad)


def test_z_loss_is_stable_and_checked() -> None:
    big = torch.tensor([[1e4, 0.0, -1e4]])
    assert math.isclose(cross_entropy_with_z_loss(big, torch.tensor([0]), 1e-4).item(), 1e-4 * 1e8, rel_tol=1e-6)
    with pytest.raises(ValueError, match="z_loss must be a finite number >= 0, got -1"):
        cross_entropy_with_z_loss(big, torch.tensor([0]), -1.0)


# ============================================================================ warm-up/stable/decay


@pytest.mark.parametrize(
    ("it", "expected"),
    [(0, 0.0), (5, 0.5), (10, 1.0), (50, 1.0), (79.9, 1.0), (80, 1.0), (81, 0.955), (90, 0.55), (99, 0.145),
     (100, 0.1), (150, 0.1)],
)  # fmt: skip
def test_wsd_schedule_breakpoints(it: float, expected: float) -> None:
    """lr_max 1, lr_min 0.1, warm-up 10, 100 iterations, decay over the last 20%: the decay starts at 80.
    Checked to fail on the decay starting at `decay_fraction · T` (20) or at the warm-up's end, and on a
    decay that ends at 0 instead of lr_min."""
    assert wsd_lr_schedule(it, 1.0, 0.1, 10, 100, 0.2) == pytest.approx(expected, abs=1e-12)


def test_wsd_schedule_edges() -> None:
    """A decay longer than the stable phase starts at the warm-up's end; no decay: the peak to the end."""
    assert wsd_lr_schedule(10, 1.0, 0.0, 10, 20, decay_fraction=1.0) == 1.0
    assert wsd_lr_schedule(15, 1.0, 0.0, 10, 20, decay_fraction=1.0) == 0.5
    assert wsd_lr_schedule(19, 1.0, 0.0, 10, 20, decay_fraction=0.0) == 1.0
    with pytest.raises(ValueError, match="decay_fraction must be in"):
        wsd_lr_schedule(1, 1.0, 0.0, 10, 20, decay_fraction=1.5)
    with pytest.raises(ValueError, match="warmup_iters <= total_iters"):
        wsd_lr_schedule(1, 1.0, 0.0, 30, 20)
