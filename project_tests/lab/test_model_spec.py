"""The one model spec (`cs336_common/model_spec.py`) and the trainer's config that nests it.

Declared and validated once; `--eps` and every old flag on the command line; `[model]` tables and the flat keys of
configs written before the nesting; old-format run checkpoints resume, generate and evaluate.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cs336_common.model_spec import ModelSpec, field_names
from cs336_lab.config import config_from_args, load_config
from cs336_lab.train_config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
SMALL = {"vocab_size": 64, "context_length": 16, "d_model": 16, "num_layers": 1, "num_heads": 2}


def naive_d_ff(d_model: int, ffn_type: str) -> int:
    if ffn_type in ("silu", "relu2"):
        return 4 * d_model
    width = 8 * d_model / 3
    return max(64, 64 * round(width / 64))


@pytest.mark.parametrize("d_model", [16, 64, 128, 512, 768, 1600])
@pytest.mark.parametrize("ffn_type", ["swiglu", "silu", "relu2"])
def test_d_ff_default_is_resolved_once_here(d_model: int, ffn_type: str) -> None:
    spec = ModelSpec(d_model=d_model, num_heads=2, ffn_type=ffn_type)
    assert spec.d_ff == naive_d_ff(d_model, ffn_type)
    assert ModelSpec(d_model=d_model, num_heads=2, d_ff=96).d_ff == 96


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"d_model": 30, "num_heads": 4}, ValueError, "divisible by num_heads"),
        ({"num_layers": 0}, ValueError, "num_layers must be a positive int"),
        ({"vocab_size": True}, ValueError, "vocab_size must be a positive int"),
        ({"d_ff": -1}, ValueError, "d_ff must be a positive int"),
        ({"eps": 0.0}, ValueError, "eps must be a positive finite number"),
        ({"rope_theta": float("nan")}, ValueError, "rope_theta must be a positive finite number"),
        ({"norm_position": "middle"}, ValueError, "norm_position must be one of"),
        ({"init": "he"}, ValueError, "init must be one of"),
        ({"use_rmsnorm": "yes"}, TypeError, "use_rmsnorm must be a bool"),
        ({"d_model": 6, "num_heads": 2}, ValueError, "RoPE needs an even head size"),
        ({"ffn_type": "relu"}, ValueError, "ffn_type must be one of"),
        ({"qk_norm": 1}, TypeError, "qk_norm must be a bool"),
        ({"tie_embeddings": "true"}, TypeError, "tie_embeddings must be a bool"),
        ({"logit_softcap": -1.0}, ValueError, "logit_softcap must be a finite number >= 0"),
        ({"logit_softcap": float("nan")}, ValueError, "logit_softcap must be a finite number >= 0"),
        ({"logit_softcap": float("inf")}, ValueError, "logit_softcap must be a finite number >= 0"),
        ({"logit_softcap": True}, ValueError, "logit_softcap must be a finite number >= 0"),
    ],
)
def test_bad_fields_are_refused_naming_the_field(changes: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        ModelSpec(**{**SMALL, **changes})


def test_round_trip_and_unknown_keys() -> None:
    spec = ModelSpec(**SMALL, eps=1e-6, ffn_type="silu", norm_position="post")
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match=r"unknown ModelSpec keys \['d_modle'\]"):
        ModelSpec.from_dict({**SMALL, "d_modle": 8})
    old_flat = {**SMALL, "lr_max": 0.1, "d_ff": None, "out_dir": "runs/x"}  # a config.json from before the nesting
    assert ModelSpec.from_run_config(old_flat) == ModelSpec(**SMALL)
    assert ModelSpec.from_run_config({"lr_max": 0.1, "model": spec.to_dict()}) == spec


def test_the_spec_matches_the_references_model_config_field_for_field() -> None:
    from cs336_basics.model import ModelConfig

    spec = ModelSpec(**SMALL, ffn_type="silu")
    assert [f.name for f in dataclasses.fields(ModelConfig)] == list(field_names())
    assert ModelConfig(**spec.to_dict()).to_dict() == spec.to_dict()  # same fields, same resolved d_ff
    recipe = ModelSpec(**SMALL, ffn_type="relu2", qk_norm=True, tie_embeddings=True, logit_softcap=15)
    assert ModelConfig(**recipe.to_dict()).to_dict() == recipe.to_dict()
    assert recipe.logit_softcap == 15.0 and isinstance(recipe.logit_softcap, float)
    assert recipe.non_default_extras() == {
        "ffn_type": "relu2",
        "qk_norm": True,
        "tie_embeddings": True,
        "logit_softcap": 15.0,
    }
    assert ModelSpec(**SMALL).non_default_extras() == {}  # the defaults are the handout's model


def test_the_recipe_flags_reach_the_built_model() -> None:
    """`--qk-norm --tie-embeddings --logit-softcap 30 --ffn-type relu2` on the command line build a model with
    QK-norm gains, a tied head, ReLU² (no w3) and the cap; the `--no-` forms and the defaults keep them off."""
    from cs336_lab.assignment import Assignment

    small = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    on = ["--qk-norm", "--tie-embeddings", "--logit-softcap", "30", "--ffn-type", "relu2", "--d-ff", "none"]
    config = _parse([*small, *on])
    assert config.model == ModelSpec(**SMALL, ffn_type="relu2", qk_norm=True, tie_embeddings=True, logit_softcap=30.0)
    model = Assignment.load().build_model(config.model, "cpu")
    keys = model.state_dict().keys()
    assert "layers.0.attn.q_norm.weight" in keys and "layers.0.ffn.w3.weight" not in keys
    assert model.lm_head.weight is model.token_embeddings.weight and model.config.logit_softcap == 30.0
    assert model.config.d_ff == 4 * SMALL["d_model"]
    off = _parse([*small, *on, "--no-qk-norm", "--no-tie-embeddings", "--logit-softcap", "0", "--ffn-type", "swiglu"])
    assert off.model == ModelSpec(**SMALL, d_ff=4 * SMALL["d_model"]) and _parse(small).model == ModelSpec(**SMALL)


def test_cs336_common_imports_none_of_the_wings() -> None:
    for path in (REPO / "cs336_common").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            assert not any(n.split(".")[0] in ("cs336_basics", "cs336_lab", "cs336_grading") for n in names), path
    code = (
        "import sys, cs336_common.model_spec; print(sorted(m for m in sys.modules if m.startswith(('cs336', 'torch'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['cs336_common', 'cs336_common.model_spec']"


def _parse(argv: list[str]) -> TrainConfig:
    from cs336_lab import train as train_mod

    parser = argparse.ArgumentParser()
    train_mod.add_subcommand(parser.add_subparsers(dest="command"))
    return config_from_args(TrainConfig, parser.parse_args(["train", *argv]))


def test_eps_and_every_model_flag_reach_the_spec() -> None:
    config = _parse(
        [
            "--d-model",
            "64",
            "--num-heads",
            "4",
            "--eps",
            "1e-6",
            "--no-use-rmsnorm",
            "--ffn-type",
            "silu",
            "--d-ff",
            "none",
            "--init",
            "orthogonal",
            "--lr-max",
            "0.01",
        ]
    )
    assert config.model == ModelSpec(
        d_model=64, num_heads=4, eps=1e-6, use_rmsnorm=False, ffn_type="silu", init="orthogonal"
    )
    assert config.model.d_ff == 256 and config.lr_max == 0.01


def test_the_eps_flag_reaches_the_built_model() -> None:
    from cs336_basics.layers import RMSNorm
    from cs336_lab.assignment import Assignment

    config = _parse([*(f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()), "--eps", "1e-3"])
    model = Assignment.load().build_model(config.model, "cpu")
    norms = [m for m in model.modules() if isinstance(m, RMSNorm)]
    assert norms and {m.eps for m in norms} == {1e-3}


def test_flat_keys_and_model_table_load_the_same_config(tmp_path: Path) -> None:
    flat, nested, both = tmp_path / "flat.toml", tmp_path / "nested.toml", tmp_path / "both.toml"
    flat.write_text("lr_max = 0.01\nd_model = 64\nnum_heads = 4\nffn_type = 'silu'\n")
    nested.write_text("lr_max = 0.01\n[model]\nd_model = 64\nnum_heads = 4\nffn_type = 'silu'\n")
    assert load_config(TrainConfig, flat) == load_config(TrainConfig, nested)
    assert load_config(TrainConfig, nested).model.ffn_type == "silu"
    both.write_text("d_model = 32\n[model]\nd_model = 64\nnum_heads = 4\n")
    with pytest.raises(ValueError, match="d_model is given twice"):
        load_config(TrainConfig, both)
    (tmp_path / "typo.toml").write_text("[model]\nd_modle = 64\n")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) model.d_modle"):
        load_config(TrainConfig, tmp_path / "typo.toml")
    assert _parse(["--config", str(nested), "--d-model", "32"]).model.d_model == 32  # flag beats file


@pytest.mark.parametrize("name", ["demo", "tinystories", "owt", "sweeps/base"])
def test_ready_configs_use_the_model_table(name: str) -> None:
    import tomllib

    data = tomllib.loads((REPO / "configs" / f"{name}.toml").read_text())
    assert set(data["model"]) <= set(field_names()) and not set(data) & set(field_names())
    load_config(TrainConfig, REPO / "configs" / f"{name}.toml")


def _flatten_to_old_format(config: dict) -> dict:
    """A config as `cs336 train` stored it before the nesting: model keys at the top, no eps, d_ff as given."""
    model = config.pop("model")
    model.pop("eps")
    return {**config, **model, "d_ff": None}


def test_an_old_format_run_resumes_generates_and_evaluates(tmp_path: Path) -> None:
    from cs336_lab.evaluate import evaluate
    from cs336_lab.generate import load_model
    from cs336_lab.run_checkpoint import read_run_checkpoint
    from cs336_lab.train import train

    tokens = np.tile(np.random.default_rng(0).integers(0, 64, size=40), 40).astype(np.uint16)
    np.save(tmp_path / "train.npy", tokens)
    np.save(tmp_path / "valid.npy", tokens[:400])
    config = TrainConfig(
        train_data=str(tmp_path / "train.npy"),
        valid_data=str(tmp_path / "valid.npy"),
        model=ModelSpec(**SMALL),
        batch_size=2,
        max_steps=2,
        warmup_steps=0,
        eval_every=2,
        eval_batches=1,
        log_every=1,
        checkpoint_every=2,
        out_dir=str(tmp_path / "run"),
        device="cpu",
        progress=False,
    )
    train(config)
    ckpt = tmp_path / "run" / "ckpt_latest.pt"
    payload = torch.load(ckpt, weights_only=False)
    payload["config"] = _flatten_to_old_format(payload["config"])  # the run as an older cs336 left it
    torch.save(payload, ckpt)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    (tmp_path / "run" / "config.json").write_text(json.dumps(_flatten_to_old_format(saved)))

    model, stored = load_model(ckpt)
    assert "model" not in stored and model.config.d_model == SMALL["d_model"]
    assert evaluate(ckpt, tmp_path / "valid.npy").predicted_tokens == 399
    old_file = load_config(TrainConfig, tmp_path / "run" / "config.json")  # the old config.json, as --config
    resumed = train(dataclasses.replace(old_file, max_steps=4, resume=True))
    assert resumed.steps == 4 and read_run_checkpoint(ckpt)["config"]["model"] == config.model.to_dict()
    with pytest.raises(ValueError, match="num_layers=1 in the checkpoint, 2 asked"):
        train(
            dataclasses.replace(
                old_file, model=dataclasses.replace(old_file.model, num_layers=2), max_steps=6, resume=True
            )
        )


def test_sweeps_over_model_fields_and_old_sweep_points_are_not_retrained(tmp_path: Path) -> None:
    from cs336_lab.config import from_dict, merge_config_data, to_jsonable
    from cs336_lab.sweep import expand_points, load_sweep_file, run_point

    (tmp_path / "base.toml").write_text(
        "lr_max = 0.01\nmax_steps = 4\nwarmup_steps = 1\n[model]\nd_model = 64\nnum_heads = 4\nd_ff = 128\n"
    )
    (tmp_path / "s.toml").write_text("d_ff = 96\n[sweep]\nbase = 'base.toml'\n[sweep.grid]\nd_model = [32, 64]\n")
    data, table = load_sweep_file(tmp_path / "s.toml")
    configs = [
        from_dict(TrainConfig, merge_config_data(TrainConfig, data, values, {"out_dir": str(tmp_path / n)}))
        for n, values, _ in expand_points(table["grid"])
    ]
    assert [(c.model.d_model, c.model.d_ff, c.model.num_heads, c.lr_max) for c in configs] == [
        (32, 96, 4, 0.01),
        (64, 96, 4, 0.01),
    ]
    # A point finished by an older cs336 recorded its config flat: it is the same config, so it is skipped.
    config = configs[0]
    old = _flatten_to_old_format(to_jsonable(dataclasses.replace(config, resume=False)))
    old["d_ff"] = 96
    Path(config.out_dir).mkdir()
    (Path(config.out_dir) / "status.json").write_text(json.dumps({"config": old, "status": "done"}))

    def must_not_train(_config):
        raise AssertionError("a finished point was trained again")

    assert run_point(config, must_not_train)["status"] == "done"


def test_docstring_examples() -> None:
    import doctest

    import cs336_common.model_spec

    assert doctest.testmod(cs336_common.model_spec).failed == 0


def test_the_tools_d_ff_formula_is_the_assignments() -> None:
    """The one formula has two homes on purpose: the assignment stands alone, the tools never import it."""
    from cs336_basics.layers import default_d_ff
    from cs336_common.model_spec import handout_d_ff, implied_d_ff

    for d_model in range(1, 4097):
        assert handout_d_ff(d_model) == default_d_ff(d_model), d_model
        assert implied_d_ff(d_model, "swiglu") == default_d_ff(d_model), d_model
        assert implied_d_ff(d_model, "silu") == 4 * d_model, d_model
        assert implied_d_ff(d_model, "relu2") == 4 * d_model, d_model
    from cs336_basics.model import ModelConfig

    for d_model in (2, 16, 48, 100, 512, 768, 1600, 4096):
        for ffn_type in ("swiglu", "silu", "relu2"):
            built = ModelConfig(
                vocab_size=8, context_length=4, d_model=d_model, num_layers=1, num_heads=1, ffn_type=ffn_type
            )
            assert built.d_ff == implied_d_ff(d_model, ffn_type), (d_model, ffn_type)
