"""`cs336 compare`: runs labelled by their folders, the overlay plot, the table of differing settings, final and best
values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cs336_lab.cli import main
from cs336_lab.compare import compare, differing_keys, load_run

BASE = {"lr_max": 1e-3, "batch_size": 16, "seed": 0, "out_dir": "somewhere", "device": "cpu"}
# matplotlib's first default colours (C0, C1, C2), the colours of the first three curves.
COLOURS = [(0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0x2C, 0xA0, 0x2C)]


def make_run(directory: Path, config: dict[str, Any], val: list[float], status: str | None = None) -> Path:
    """A run directory as `cs336 train` leaves it: config.json and metrics.jsonl (train loss every step)."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({**BASE, **config, "out_dir": str(directory)}))
    lines = []
    for i, loss in enumerate(val):
        step = 10 * (i + 1)
        lines.append(
            json.dumps(
                {
                    "step": step,
                    "tokens": 256 * step,
                    "time_s": 0.5 * step,
                    "train_loss": loss + 0.1,
                    "val_loss": loss,
                    "val_bpb": loss / 2,
                }
            )
        )
    (directory / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if status is not None:
        (directory / "status.json").write_text(json.dumps({"status": status}))
    return directory


@pytest.fixture
def three_runs(tmp_path: Path) -> list[Path]:
    return [
        make_run(tmp_path / "a", {"lr_max": 1e-3}, [6.0, 5.0, 4.0, 3.5]),
        make_run(tmp_path / "b", {"lr_max": 3e-3}, [6.0, 4.5, 3.0, 3.2]),
        make_run(tmp_path / "c", {"lr_max": 1e-2}, [6.0, 5.8, 5.9], status="diverged"),
    ]


def test_labels_name_only_what_differs(three_runs: list[Path]) -> None:
    # out_dir differs too, but where a run was written is not what was trained.
    assert differing_keys([json.loads((d / "config.json").read_text()) for d in three_runs]) == ["lr_max"]
    assert differing_keys([{"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 3]}, {"a": 1}]) == ["b"]


def _colour_pixels(image: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int((np.abs(image[..., :3].astype(int) - np.array(colour)).max(axis=-1) <= 8).sum())


def test_plot_has_one_curve_per_run_and_a_table(three_runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "plots" / "compare.png"
    table = compare(three_runs, out, x="tokens", metric="val_loss")
    with Image.open(out) as image:
        image.verify()  # a well-formed PNG
    with Image.open(out) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    # Each curve is drawn 2 px wide in its colour; the legend's swatches alone are a few dozen pixels.
    counts = [_colour_pixels(pixels, c) for c in COLOURS]
    assert all(n > 150 for n in counts), counts
    assert _colour_pixels(pixels, (0xD6, 0x27, 0x28)) < 20  # no fourth curve (C3, red)
    rows = table.strip().splitlines()
    assert len(rows) == 2 + 3 and (out.with_suffix(".md")).read_text() == table
    assert rows[0].startswith("| run | lr_max | final val_loss |")
    assert rows[2].startswith("| a | 0.001 | 3.5000 | 3.5000 | 40 | 10240 | done |")
    assert rows[3].startswith("| b | 0.003 | 3.2000 | 3.0000 | 40 |")
    assert rows[4].startswith("| c (diverged) | 0.01 | 5.9000 | 5.8000 | 30 |") and rows[4].endswith("diverged |")


@pytest.mark.parametrize(("metric", "final"), [("train_loss", "3.6000"), ("bpb", "1.7500")], ids=["train", "bpb"])
def test_other_metrics(three_runs: list[Path], tmp_path: Path, metric: str, final: str) -> None:
    table = compare(three_runs[:1], tmp_path / "one.png", x="time", metric=metric)
    assert table.splitlines()[2].startswith(f"| a | {final} |")  # a single run is labelled by its directory


def test_a_truncated_last_line_is_skipped(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", {}, [5.0, 4.0])
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 30, "val_lo')
    assert [r["step"] for r in load_run(run).records] == [10, 20]


def test_cli_writes_plot_and_table_and_rejects_a_non_run(
    three_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli.png"
    assert main(["compare", *map(str, three_runs), "--x", "steps", "--metric", "val_loss", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "| b | 0.003 |" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "nothing-here"), "--out", str(out)]) == 2
    assert main(["compare", str(three_runs[0]), "--metric", "accuracy"]) == 2  # argparse: not a choice


def test_cli_labels_runs_by_their_folders_and_adds_png(tmp_path: Path) -> None:
    """Issue 23: `cs336 compare lr1/model lr2/model --out cmp` (a subprocess) labels the curves `lr1/model` and
    `lr2/model`, lists the differing setting in the table, and writes cmp.png (not a file named `cmp`)."""
    import subprocess
    import sys

    runs = [
        make_run(tmp_path / "lr1" / "model", {"lr_max": 1e-3}, [6.0, 5.0]),
        make_run(tmp_path / "lr2" / "model", {"lr_max": 3e-3}, [6.0, 4.0]),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "cs336_lab.cli", "compare", *map(str, runs), "--out", "cmp"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (tmp_path / "cmp").exists()
    rows = (tmp_path / "cmp.md").read_text().splitlines()
    assert rows[0].startswith("| run | lr_max |")
    assert rows[2].startswith("| lr1/model | 0.001 | 5.0000 |") and rows[3].startswith("| lr2/model | 0.003 | 4.0000 |")
    assert "wrote cmp.png and cmp.md" in done.stderr
