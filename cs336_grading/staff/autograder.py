"""The Gradescope autograder: `cs336 autograder OUT.zip` builds the zip that Gradescope runs.

    cs336 autograder build/autograder.zip --leaderboard staff/leaderboard.toml --jobs 2

Gradescope unpacks the zip into `/autograder/source`, runs `setup.sh` once to build the image, and for every
submission copies the student's upload into `/autograder/submission`, runs `run_autograder` and shows
`/autograder/results/results.json`. The zip holds:

    README.md           the base image to pick, the memory and CPUs to request, the expected grading time
    setup.sh            installs Python >= 3.11 and the packages pinned to the versions this grader was installed with
    requirements.txt    (torch from PyTorch's CPU index: Gradescope's machines have no GPU)
    run_autograder      python -m cs336_grading.staff.autograder run --root /autograder
    autograder.json     the grading settings (problems, time and memory limits, jobs, leaderboard)
    cs336_grading/      this package, with the pristine harness as cs336_grading/harness/
    cs336_common/       the helpers it shares with the tools (atomic writes, GPT-2 files, state dicts)
    grading-secret      the course secret: the snapshot tests grade held-out cases drawn from it (`heldout.py`)
    canary/             the known-correct canary (the reference `cs336_basics` + the harness's adapters.py)
    leaderboard/        the staff's leaderboard config and held-out text (when --leaderboard is given)

Pick Gradescope's Ubuntu 24.04 base image (Python 3.12; the grader needs >= 3.11; `--base-image` names
another, and one without a usable Python is refused at build time: see `autograder_setup.py`). A run: find the
submission (loose files, a top folder, or one uploaded `.zip`); grade the canary with the same settings and
secret, and stop with a results.json naming the environment if it loses a point (`canary.py`); score the
leaderboard entry with the grader's own code and delete the held-out text from disk, both before any student
code runs; grade under the secret; write results.json (Gradescope's fields, plus `leaderboard` for an
entry). The root is a parameter (`--root`, or `CS336_AUTOGRADER_ROOT` for `run_autograder`), so the whole
flow runs under a temporary directory in tests.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import re
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import cs336_common
from cs336_common.atomic import atomic_open, atomic_write_json
from cs336_grading.grader import canary, heldout
from cs336_grading.staff.autograder_setup import DEFAULT_BASE_IMAGE, RUN_AUTOGRADER, check_base_image, readme, setup_sh

log = logging.getLogger(__name__)

SETTINGS_FILE = "autograder.json"
SECRET_FILE = "grading-secret"
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
DEFAULT_TOTAL_TIMEOUT_S = 540.0  # Gradescope stops an autograder after 10 minutes by default


def pinned_requirements() -> list[str]:
    """`name==version` for every dependency (dev extras included) of the installed `cs336-basics`."""
    from cs336_grading.staff.handout import _installed_requirements

    base, dev, _ = _installed_requirements()
    pins = []
    for requirement in [*base, *dev]:
        name = re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0]
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            raise RuntimeError(f"{name} (required by cs336-basics) is not installed: cannot pin its version") from None
    return sorted(pins, key=str.lower)


def build_autograder(
    out: str | os.PathLike[str],
    *,
    harness: str | os.PathLike[str] | None = None,
    leaderboard: str | os.PathLike[str] | None = None,
    settings: dict[str, Any] | None = None,
    base_image: str = DEFAULT_BASE_IMAGE,
    secret: str | None = None,
    with_canary: bool = True,
) -> Path:
    """Write the autograder zip to `out` (atomically); see the module docstring.

    `secret` is the course's grading secret (default: a fresh random one; keep it to regrade with
    `cs336 grade --secret-file`); `with_canary=False` leaves the canary out (no environment check).
    """
    from cs336_grading.grader.grade import default_harness
    from cs336_grading.pytest_run.sandbox import Harness

    check_base_image(base_image)  # before any work: an image without Python >= 3.11 is refused here
    pristine = Harness.load(harness if harness is not None else default_harness())
    settings = {"total_timeout": DEFAULT_TOTAL_TIMEOUT_S, **(settings or {})}
    files: dict[str, bytes] = {
        "setup.sh": setup_sh(base_image, TORCH_INDEX).encode(),
        "run_autograder": RUN_AUTOGRADER.encode(),
        "requirements.txt": "".join(f"{pin}\n" for pin in pinned_requirements()).encode(),
    }
    for package in (Path(__file__).resolve().parents[1], Path(cs336_common.__file__).resolve().parent):
        for path in sorted(package.rglob("*")):  # cs336_grading/ and the helpers it shares, cs336_common/
            rel = path.relative_to(package)
            if (
                path.is_file()
                and "__pycache__" not in rel.parts
                and rel.parts[0] != "harness"
                and path.suffix != ".pyc"
            ):
                files[f"{package.name}/{rel.as_posix()}"] = path.read_bytes()
    for rel, content in pristine.files.items():
        if rel.startswith("tests/"):
            files["cs336_grading/harness/" + rel.removeprefix("tests/")] = content
    if leaderboard is not None:
        from cs336_grading.staff.leaderboard import LeaderboardConfig

        config = LeaderboardConfig.load(leaderboard)
        text_name = "leaderboard/" + config.validation_text.name
        files[text_name] = config.validation_text.read_bytes()
        files["leaderboard/leaderboard.toml"] = config.to_toml(config.validation_text.name).encode()
        settings["leaderboard"] = "leaderboard/leaderboard.toml"
    files[SETTINGS_FILE] = (json.dumps(settings, indent=2) + "\n").encode()
    files[SECRET_FILE] = (heldout.check_secret(secret if secret is not None else heldout.new_secret()) + "\n").encode()
    if with_canary:
        canary_files = canary.reference_files(pristine.files["tests/adapters.py"])
        files |= {f"{canary.CANARY_DIR}/{rel}": content for rel, content in canary_files.items()}
    files["README.md"] = readme(base_image, settings).encode()
    private = {SECRET_FILE, *(name for name in files if name.startswith(f"{canary.CANARY_DIR}/"))}
    return _write_zip(Path(out), files, executable={"setup.sh", "run_autograder"}, private=private)


def _write_zip(out: Path, files: dict[str, bytes], executable: set[str], private: set[str]) -> Path:
    with atomic_open(out, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in sorted(files.items()):
            info = zipfile.ZipInfo(name, date_time=(2025, 1, 1, 0, 0, 0))  # same bytes for the same inputs
            info.external_attr = (0o755 if name in executable else 0o600 if name in private else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, content)
    return out


# -------------------------------------------------------------------------------- inside Gradescope


def find_submission(directory: Path) -> Path:
    """What to grade in Gradescope's submission folder: the folder itself, or the one `.zip` uploaded in it."""
    if not directory.is_dir():
        raise FileNotFoundError(f"expected the submission folder {directory}, found none")
    has_code = any(p.name == "adapters.py" or p.name == "cs336_basics" for p in _walk(directory, max_depth=3))
    # A broken zip is graded too (a zero grade that says it is unreadable), after any whole one.
    zips = sorted(
        (p for p in directory.iterdir() if p.suffix.lower() == ".zip"),
        key=lambda p: (not zipfile.is_zipfile(p), p.name),
    )
    return zips[0] if zips and not has_code else directory


def _walk(root: Path, max_depth: int) -> list[Path]:
    found, frontier = [], [root]
    for _ in range(max_depth + 1):
        frontier = [c for d in frontier for c in sorted(d.iterdir()) if not c.name.startswith(".")]
        found += frontier
        frontier = [c for c in frontier if c.is_dir()]
    return found


def run(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Grade `root/submission` into `root/results/results.json` with the settings in `root/source`."""
    from cs336_grading.grader import grade as grader
    from cs336_grading.pytest_run.sandbox import SubmissionError

    t0 = time.monotonic()
    root = Path(root)
    source = root / "source"
    settings = json.loads((source / SETTINGS_FILE).read_text(encoding="utf-8"))
    leaderboard_config = settings.pop("leaderboard", None)
    secret = _secret(source / SECRET_FILE)
    if (source / canary.CANARY_DIR).is_dir():  # before any student code: a broken environment grades nobody
        os.chmod(source / canary.CANARY_DIR, 0o700)  # a complete solution: root's alone (workers run as others)
        seconds = canary.check(source / canary.CANARY_DIR, settings, secret)
        log.info("the canary scored full marks in %.0f s", seconds)
        # NOTE: Gradescope's limit covers the whole run: the canary's time comes out of the submission's.
        settings["total_timeout"] = max(60.0, float(settings.get("total_timeout", DEFAULT_TOTAL_TIMEOUT_S)) - seconds)
    submission = find_submission(root / "submission")
    board = _score_leaderboard(source / leaderboard_config, submission) if leaderboard_config else None
    try:
        payload = grader.grade(submission, **settings, secret=secret).to_gradescope()
    except SubmissionError as e:  # the student's fault: a zero grade that says why
        payload = grader.GradeResult((), 0.0, warnings=(f"ungradable submission: {e}",)).to_gradescope()
    if board is not None:
        if board.entry is not None:
            payload["leaderboard"] = board.entry
        payload["output"] = f"{payload['output']}\n{board.message}"
    payload["execution_time"] = round(time.monotonic() - t0, 1)
    atomic_write_json(root / "results" / "results.json", payload)
    return payload


def _secret(path: Path) -> str | None:
    """The course secret shipped in the zip (kept readable by root only), or None (public snapshots)."""
    if not path.is_file():
        log.warning("no %s in the autograder: grading the public snapshots, which students have", path.name)
        return None
    os.chmod(path, 0o600)  # NOTE: unzipping may not keep the zip's modes; workers run as other users
    return heldout.read_secret(path)


def _score_leaderboard(config_path: Path, submission: Path) -> Any:
    """Score the entry before any student code runs, then delete the held-out text from disk."""
    from cs336_grading.staff.leaderboard import LeaderboardConfig, LeaderboardResult, score_source

    config = LeaderboardConfig.load(config_path)
    try:
        text = config.validation_text.read_text(encoding="utf-8")
    except OSError as e:  # e.g. a container reused after a run deleted it: grade anyway, without an entry
        log.error("the held-out text is unreadable: %s", e)
        return LeaderboardResult(None, "leaderboard: not scored (the held-out text is missing; tell the staff)")
    try:  # NOTE: student code runs later in this very container; it must not find the held-out text
        config.validation_text.unlink()
    except OSError as e:
        log.warning("could not delete the held-out text %s: %s", config.validation_text, e)
    return score_source(config, submission, text=text)


def _run_main(argv: list[str]) -> int:
    """`python -m cs336_grading.staff.autograder run --root DIR` (what `run_autograder` calls)."""
    parser = argparse.ArgumentParser(prog="python -m cs336_grading.staff.autograder")
    parser.add_argument("action", choices=["run"])
    parser.add_argument("--root", default="/autograder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        payload = run(args.root)
    except Exception as e:  # the grader's failure, not the student's: say so where the student looks
        log.exception("the autograder failed")
        why = (
            f"Grading stopped before your submission ran: {e}"
            if isinstance(e, canary.CanaryError)
            else (f"The autograder itself failed ({type(e).__name__}: {e})")
        )
        atomic_write_json(
            Path(args.root) / "results" / "results.json",
            {
                "score": 0.0,
                "output": f"{why}; this is not your fault: please tell the course staff.",
                "visibility": "visible",
                "tests": [],
            },
        )
        return 1
    print(f"score {payload['score']}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------- CLI


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `cs336 autograder OUT.zip`."""
    parser = subparsers.add_parser(
        "autograder", help="build the Gradescope autograder zip", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out", help="the zip to write (upload it as the assignment's autograder)")
    parser.add_argument("--harness", default=None, help="pristine tests (default: the installed harness)")
    parser.add_argument("--leaderboard", default=None, help="the staff's leaderboard config (TOML)")
    parser.add_argument("--problems", default=None, help="comma-separated subset of problems to grade")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per test (default: the grader's)")
    parser.add_argument("--memory-mb", type=int, default=None, help="address-space limit per test process")
    parser.add_argument(
        "--total-timeout",
        type=float,
        default=DEFAULT_TOTAL_TIMEOUT_S,
        help="seconds for the whole grade (Gradescope's default limit is 600)",
    )
    parser.add_argument("--jobs", type=int, default=None, help="parallel test processes on Gradescope")
    parser.add_argument(
        "--base-image",
        default=DEFAULT_BASE_IMAGE,
        help=f"Gradescope's base image: ubuntu-24.04 or ubuntu-22.04 (default {DEFAULT_BASE_IMAGE})",
    )
    parser.add_argument(
        "--secret-file",
        default=None,
        help=f"the course's grading secret (default: ${heldout.SECRET_ENV}, else a new one saved "
        "as OUT.secret): held-out cases are drawn from it",
    )
    parser.add_argument(
        "--no-canary",
        action="store_true",
        help="leave out the canary (the known-correct submission graded before each run)",
    )
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    settings: dict[str, Any] = {"total_timeout": args.total_timeout}
    if args.problems:
        settings["problems"] = [p.strip() for p in args.problems.split(",") if p.strip()]
    for key in ("timeout", "memory_mb", "jobs"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key) or None
    secret = heldout.secret_from(args.secret_file)
    if secret is None:  # the staff regrade with `cs336 grade --secret-file OUT.secret` and get the same draws
        secret = heldout.new_secret()
        log.info("new grading secret: %s (keep it private)", heldout.write_secret(f"{args.out}.secret", secret))
    out = build_autograder(
        args.out,
        harness=args.harness,
        leaderboard=args.leaderboard,
        settings=settings,
        secret=secret,
        with_canary=not args.no_canary,
        base_image=args.base_image,
    )
    log.info(
        "wrote %s: upload it as the Gradescope autograder (base image %s; see its README.md)", out, args.base_image
    )
    return 0


if __name__ == "__main__":
    sys.exit(_run_main(sys.argv[1:]))
