"""Initialisation schemes (cs336_basics/init.py) against torch.nn.init and closed-form moments.

Statistical checks use large tensors and bounds of six standard errors of the statistic, derived from the
sample size: a correct scheme fails one of them with probability below 1e-8, a wrong constant (a factor 2 in
a variance, a fan_out for a fan_in) misses them by dozens of standard errors.
"""

from __future__ import annotations

import math
from typing import get_args

import pytest
import torch

from cs336_basics import init
from cs336_basics.model import ModelConfig, TransformerLM

SIGMAS = 6.0
# A Linear (tall and wide) and a grouped-conv weight (out, in/groups, kh, kw).
SHAPES = [(300, 2000), (2000, 300), (256, 32, 3, 3)]
SHAPE_IDS = ["wide", "tall", "conv"]


def _variance_bound(n: int, kurtosis: float = 3.0) -> float:
    """Six standard errors of the difference of two independent sample variances, relative to σ².

    Var(s²) ≈ σ⁴ (κ - 1) / n for a sample of size n and kurtosis κ (3 for a normal, 9/5 for a uniform,
    a little below 3 for a truncated normal); the difference of two samples doubles it.
    """
    return SIGMAS * math.sqrt(2 * (kurtosis - 1) / n)


def _check_like_torch(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Same mean (0) and variance as the torch.nn.init sample of the same shape, within six standard errors."""
    n = ours.numel()
    var_ours, var_theirs = ours.double().var().item(), theirs.double().var().item()
    assert abs(var_ours / var_theirs - 1) < _variance_bound(n), (var_ours, var_theirs)
    assert abs(ours.double().mean().item()) < SIGMAS * math.sqrt(var_theirs / n)


SCHEMES = {
    "xavier_normal": (init.xavier_normal_, torch.nn.init.xavier_normal_),
    "xavier_uniform": (init.xavier_uniform_, torch.nn.init.xavier_uniform_),
    "kaiming_normal_fan_in": (
        lambda w: init.kaiming_normal_(w, mode="fan_in"),
        lambda w: torch.nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu"),
    ),
    "kaiming_normal_fan_out": (
        lambda w: init.kaiming_normal_(w, mode="fan_out"),
        lambda w: torch.nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"),
    ),
    "kaiming_uniform_fan_in": (
        lambda w: init.kaiming_uniform_(w, mode="fan_in"),
        lambda w: torch.nn.init.kaiming_uniform_(w, mode="fan_in", nonlinearity="relu"),
    ),
    "kaiming_uniform_fan_out": (
        lambda w: init.kaiming_uniform_(w, mode="fan_out"),
        lambda w: torch.nn.init.kaiming_uniform_(w, mode="fan_out", nonlinearity="relu"),
    ),
}


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_scheme_matches_torch_statistics(scheme: str, shape: tuple[int, ...]) -> None:
    ours_fn, torch_fn = SCHEMES[scheme]
    torch.manual_seed(0)
    ours, theirs = ours_fn(torch.empty(shape)), torch_fn(torch.empty(shape))
    _check_like_torch(ours, theirs)
    if "uniform" in scheme:  # same support: the extremes of a million draws lie within 0.1% of the limit
        limit = theirs.abs().max().item()
        assert ours.abs().max().item() <= limit * (1 + 1e-3)
        assert ours.max().item() > limit * (1 - 1e-2) and ours.min().item() < -limit * (1 - 1e-2)


def test_kaiming_modes_differ_on_a_non_square_weight() -> None:
    # fan_in = 2000 and fan_out = 300: the standard deviations differ by √(2000/300) ≈ 2.6.
    fan_in = init.kaiming_normal_(torch.empty(300, 2000), mode="fan_in").std().item()
    fan_out = init.kaiming_normal_(torch.empty(300, 2000), mode="fan_out").std().item()
    assert fan_in == pytest.approx(math.sqrt(2 / 2000), rel=0.01)
    assert fan_out == pytest.approx(math.sqrt(2 / 300), rel=0.01)
    with pytest.raises(ValueError, match="mode must be"):
        init.kaiming_normal_(torch.empty(3, 4), mode="fan_avg")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "shape", [(50, 200), (200, 50), (64, 64), (16, 4, 3, 3)], ids=["wide", "tall", "square", "conv"]
)
def test_orthogonal_is_orthogonal(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    w = init.orthogonal_(torch.empty(shape), gain=2.0).reshape(shape[0], -1).double() / 2.0
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    assert torch.allclose(gram, torch.eye(gram.shape[0], dtype=torch.float64), atol=1e-5)
    theirs = torch.nn.init.orthogonal_(torch.empty(shape)).reshape(shape[0], -1).double()
    assert w.square().sum().item() == pytest.approx(theirs.square().sum().item(), rel=1e-5)  # = min(rows, cols)


def test_orthogonal_is_uniform_over_signs() -> None:
    # QR alone fixes the sign of R's diagonal (LAPACK's Householder QR: opposite to the column's first
    # entry), so Q[0, 0] would always have the same sign; corrected by sign(diag R), W[0, 0] is symmetric
    # about 0 (its mean within six standard errors of 0).
    torch.manual_seed(0)
    first = torch.stack([init.orthogonal_(torch.empty(4, 4))[0, 0] for _ in range(4000)]).double()
    assert abs(first.mean().item()) < SIGMAS * first.std().item() / math.sqrt(4000)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.orthogonal_(torch.empty(5))


def _truncated_normal_moments(mean: float, std: float, a: float, b: float) -> tuple[float, float]:
    """Mean and variance of N(mean, std²) restricted to [a, b] (the textbook closed form)."""
    alpha, beta = (a - mean) / std, (b - mean) / std
    pdf = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    mass = cdf(beta) - cdf(alpha)
    shift = (pdf(alpha) - pdf(beta)) / mass
    var = std**2 * (1 + (alpha * pdf(alpha) - beta * pdf(beta)) / mass - shift**2)
    return mean + std * shift, var


@pytest.mark.parametrize(
    ("mean", "std", "a", "b"),
    [(0.0, 1.0, -3.0, 3.0), (0.5, 1.0, -1.0, 2.0), (0.0, 0.02, -0.04, 0.01)],
    ids=["symmetric_3sigma", "asymmetric", "narrow"],
)
def test_truncated_normal_bounds_and_moments(mean: float, std: float, a: float, b: float) -> None:
    torch.manual_seed(0)
    n = 1_000_000
    w = init.trunc_normal_(torch.empty(n), std=std, a=a, b=b, mean=mean).double()
    assert w.min().item() >= a and w.max().item() <= b
    expected_mean, expected_var = _truncated_normal_moments(mean, std, a, b)
    assert abs(w.mean().item() - expected_mean) < SIGMAS * math.sqrt(expected_var / n)
    assert abs(w.var().item() / expected_var - 1) < _variance_bound(n) / math.sqrt(2)  # one sample only
    with pytest.raises(ValueError, match="a < b"):
        init.trunc_normal_(torch.empty(3), a=1.0, b=0.0)


def test_assignment_scheme_is_the_handouts_truncated_normal() -> None:
    # Bit for bit the draws of torch's trunc_normal_ with the handout's constants (so seeds keep their weights).
    for shape in [(64, 32), (10, 1000)]:
        torch.manual_seed(1)
        ours = init.assignment_linear_(torch.empty(shape))
        torch.manual_seed(1)
        std = math.sqrt(2 / (shape[0] + shape[1]))
        assert torch.equal(ours, torch.nn.init.trunc_normal_(torch.empty(shape), std=std, a=-3 * std, b=3 * std))
    torch.manual_seed(2)
    emb = init.assignment_embedding_(torch.empty(100, 16))
    torch.manual_seed(2)
    assert torch.equal(emb, torch.nn.init.trunc_normal_(torch.empty(100, 16), std=1.0, a=-3.0, b=3.0))
    assert torch.equal(init.ones_(torch.empty(7)), torch.ones(7))
    assert torch.equal(init.zeros_(torch.empty(7)), torch.zeros(7))


@pytest.mark.parametrize(
    ("shape", "groups", "expected"),
    [
        ((30, 20), 1, (20, 30)),
        ((128, 16, 3, 3), 4, (144, 1152)),
        ((8, 2, 5), 2, (10, 40)),
        ((6, 3, 2, 2, 2), 1, (24, 48)),
    ],
    ids=["linear", "grouped_conv2d", "grouped_conv1d", "conv3d"],
)
def test_fan_in_and_fan_out(shape: tuple[int, ...], groups: int, expected: tuple[int, int]) -> None:
    assert init.fan_in_and_fan_out(shape, groups=groups) == expected
    # torch's helper agrees (it takes the stored weight shape too and never divides by groups).
    assert init.fan_in_and_fan_out(shape) == torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))


def test_fan_in_and_fan_out_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.fan_in_and_fan_out((5,))
    with pytest.raises(ValueError, match="groups must be a positive divisor of out_channels=128"):
        init.fan_in_and_fan_out((128, 16, 3, 3), groups=3)


# ------------------------------------------------------------------------------------------- the model

TINY = dict(vocab_size=97, context_length=16, d_model=64, num_layers=2, num_heads=4)


def test_the_config_choices_are_the_schemes() -> None:
    assert set(get_args(init.InitScheme)) == set(init.LINEAR_SCHEMES)
    assert ModelConfig(**TINY).init == "assignment"
    with pytest.raises(ValueError, match="init must be one of"):
        ModelConfig(**TINY, init="he")  # type: ignore[arg-type]


def test_default_init_draws_exactly_the_layers_draws() -> None:
    # The default must not re-draw after the layers have drawn theirs: the RNG stream ends where it did.
    torch.manual_seed(0)
    TransformerLM(ModelConfig(**TINY))
    after_default = torch.randn(3)
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(**TINY, init="xavier_normal"))
    assert not torch.equal(torch.randn(3), after_default)
    assert model.config.init == "xavier_normal"


@pytest.mark.parametrize("scheme", sorted(init.LINEAR_SCHEMES))
def test_model_applies_the_scheme_to_every_linear(scheme: str) -> None:
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(**TINY, d_ff=192, init=scheme))
    for name, param in model.named_parameters():
        w = param.detach().double()
        if name.endswith("ln1.weight") or name.endswith("ln2.weight") or name == "ln_final.weight":
            assert torch.equal(w, torch.ones_like(w)), name
        elif name == "token_embeddings.weight":
            assert w.abs().max() <= 3.0 and w.std().item() == pytest.approx(0.987, abs=0.05), name
        elif scheme == "orthogonal":
            gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
            assert torch.allclose(gram, torch.eye(gram.shape[0], dtype=torch.float64), atol=1e-5), name
        else:
            fan_in, fan_out = w.shape[1], w.shape[0]
            var = {
                "assignment": 2 / (fan_in + fan_out) * 0.9733,
                "xavier_normal": 2 / (fan_in + fan_out),
                "xavier_uniform": 2 / (fan_in + fan_out),
                "kaiming_normal": 2 / fan_in,
                "kaiming_uniform": 2 / fan_in,
            }[scheme]
            assert abs(w.var().item() / var - 1) < _variance_bound(w.numel()), (name, w.var().item(), var)


@pytest.mark.parametrize("scheme", sorted(init.LINEAR_SCHEMES))
def test_loading_given_weights_replaces_the_initial_ones(scheme: str) -> None:
    # The adapters' way: build the model, load the given weights, run it; the scheme must leave no trace.
    torch.manual_seed(0)
    given = {k: torch.randn_like(v) for k, v in TransformerLM(ModelConfig(**TINY)).state_dict().items()}
    reference = TransformerLM(ModelConfig(**TINY))
    reference.load_state_dict(given)
    model = TransformerLM(ModelConfig(**TINY, init=scheme))
    model.load_state_dict(given)
    for key, value in model.state_dict().items():
        assert torch.equal(value, given[key]), key
    tokens = torch.randint(0, TINY["vocab_size"], (2, 16))
    assert torch.equal(model(tokens), reference(tokens))


def test_reset_parameters_redraws_with_the_scheme() -> None:
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(**TINY, init="orthogonal"))
    before = model.lm_head.weight.detach().clone()
    model.reset_parameters()
    after = model.lm_head.weight.detach().double()
    assert not torch.equal(before, model.lm_head.weight.detach())
    assert torch.allclose(after.T @ after, torch.eye(64, dtype=torch.float64), atol=1e-5)


def test_train_flag_sets_the_scheme() -> None:
    from cs336_lab.cli import build_parser
    from cs336_lab.config import config_from_args
    from cs336_lab.train import TrainConfig

    args = build_parser().parse_args(["train", "--init", "kaiming_uniform"])
    config = config_from_args(TrainConfig, args)
    assert config.model.init == "kaiming_uniform" and TrainConfig().model.init == "assignment"
    from cs336_lab.assignment import Assignment

    assert Assignment.load().build_model(config.model, "cpu").config.init == "kaiming_uniform"
    # The flag's choices are the spec's: an unknown scheme is refused when the command line is parsed.
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--init", "he"])


def test_docstring_examples() -> None:
    import doctest

    assert doctest.testmod(init).failed == 0
