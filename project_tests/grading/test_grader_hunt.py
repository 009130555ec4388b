"""A hostile-submission hunt after issue 20 (reviewer's corpus): attacks beyond those of
`test_grader_attacks.py`, `test_grader_hostile_io.py` and `test_grader_walls.py`, graded end to end with the
toy harness of `test_grader.py`.

Every test here is written from the attacker's side and asserts what SHOULD hold. Those marked
`HOLE:` in their comment failed on the code they were written against (cd18772): each demonstrates a
working attack. The criterion for an audit bypass is the issue's: a forbidden built-in used for full marks
with no evidence (score 0) and no "needs review" line is a hole; either one is enough.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from project_tests.grading.test_grader import GOOD_PACKAGE, problem_scores
from project_tests.grading.test_grader_walls import _grade, harness  # noqa: F401 - the fixture

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux", reason="the walls need root on Linux")
_ALL = ["linear", "softmax", "rmsnorm"]


def _caught(result, problem: str) -> bool:  # noqa: ANN001
    """The audit saw it: the problem scores 0 (evidence), or a person is asked to review the submission."""
    scores = problem_scores(result)
    return scores[problem] == 0 or bool(result.review)


# ------------------------------------------------------------------------ kernels nobody sealed
# HOLE: forbidden jobs done by ATen kernels outside rules.SEALED_*: the sparse softmax kernels
# (`torch.sparse.softmax` is public API, so the static scan does not see it either), `_masked_softmax`,
# `embedding_bag` (a public top-level `torch.embedding_bag`), and torch's own Python versions of the
# sealed kernels (`torch._decomp.decomposition_table`: softmax, log_softmax, nll_loss, embedding, ...;
# `torch._refs.softmax`), reached through `vars(torch)[...]`, which the scan does not resolve. Full marks, no evidence.
UNSEALED = {
    "sparse-softmax": (
        "softmax",
        "return int(torch.sparse.softmax(torch.ones(1).to_sparse(), 0).to_dense().item()) + x",
    ),
    "sparse-log_softmax": (
        "softmax",
        "return int(torch.sparse.log_softmax(torch.ones(1).to_sparse(), 0).to_dense().exp().item()) + x",
    ),
    "masked_softmax": (
        "softmax",
        "m = vars(torch)['_masked' + '_softmax']\n"
        "    return int(m(torch.zeros(1), torch.zeros(1, dtype=torch.bool), 0, None).item()) + x",
    ),
    "decomp-_softmax": (
        "softmax",
        "d = vars(torch)['_de' + 'comp'].decomposition_table\n"
        "    f = next(v for k, v in d.items() if str(k) == 'aten._soft' + 'max.default')\n"
        "    return int(f(torch.zeros(1), 0, False).item()) + x",
    ),
    "refs-softmax": ("softmax", "return int(vars(torch)['_re' + 'fs'].softmax(torch.zeros(1), 0).item()) + x"),
    "embedding_bag": (
        "linear",
        "return int(torch.embedding_bag(torch.tensor([[2.0]]), torch.tensor([0]), torch.tensor([0]))[0][0].item()) * x",
    ),
}


@ROOT_ONLY
@pytest.mark.parametrize("kind", sorted(UNSEALED))
def test_forbidden_jobs_through_unsealed_kernels_are_caught(tmp_path: Path, harness: Path, kind: str) -> None:  # noqa: F811
    problem, body = UNSEALED[kind]
    gamed = {"linear": "return 2 * x", "softmax": "return x + 1"}[problem]
    package = "import torch\n" + GOOD_PACKAGE.replace(gamed, body)
    result = _grade(tmp_path, harness, package, problems=[problem])
    assert _caught(result, problem), (kind, result.format_table())


# ------------------------------------------------------------------------ switching the dynamic look off
# FIXED here ([chdir+clip_grad], [restore-seal+chdir] failed on cd18772; the Watch now keeps the workspace
# it was given) and HOLE ([restore-seal+thread]: the Watch is per thread, the seal can be undone):
# the in-worker Watch named the submission by `os.getcwd()` at each call, so a submission that
# `os.chdir`s at import is "harness code" to it; `F = torch.nn.functional` then `F.softmax` is invisible to
# the static scan (it resolves import aliases only), and the sealed kernels come back when the worker's
# `seal._SEALED` list is emptied (the Library's finaliser restores the CPU kernels), the module found
# through `vars(sys)['modules']` (the scan flags `sys.modules`, not `vars(sys)`); [restore-seal] alone is
# caught by the Watch (F.softmax is in its table).
_RESTORE = "vars(sys)['mod' + 'ules']['cs336_grading.worker.seal']._SEALED.clear()\n"
DYNAMIC_OFF = {
    "restore-seal+chdir": (
        "import os, sys, torch\n" + _RESTORE + "os.chdir('/')\nF = torch.nn.functional\n",
        "return int(F.softmax(torch.zeros(1), 0).item()) + x",
    ),
    "restore-seal": (
        "import sys, torch\n" + _RESTORE + "F = torch.nn.functional\n",
        "return int(F.softmax(torch.zeros(1), 0).item()) + x",
    ),
    "restore-seal+thread": (
        "import sys, torch\n" + _RESTORE + "F = torch.nn.functional\nT = vars(sys)['mod' + 'ules']['thread' + 'ing']\n",
        "out = []\nt = T.Thread(target=lambda: out.append(int(F.softmax(torch.zeros(1), 0).item())))\n"
        "t.start(); t.join()\nreturn out[0] + x",
    ),
    "chdir+clip_grad": (
        "import os, torch\nos.chdir('/')\nU = torch.nn.utils\n",
        "p = torch.ones(1, requires_grad=True)\np.grad = torch.ones(1)\n"
        "vars(U)['clip_grad_norm_']([p], 0.5)\nreturn x + 1 if abs(p.grad.item() - 0.5) < 1e-6 else 0",
    ),
}


@ROOT_ONLY
@pytest.mark.parametrize("kind", sorted(DYNAMIC_OFF))
def test_switching_the_dynamic_audit_off_is_caught(tmp_path: Path, harness: Path, kind: str) -> None:  # noqa: F811
    header, body = DYNAMIC_OFF[kind]
    package = header + GOOD_PACKAGE.replace("return x + 1", textwrap.indent(body, "    ").lstrip())
    result = _grade(tmp_path, harness, package, problems=["softmax"])
    assert _caught(result, "softmax"), (kind, result.format_table(), result.review)


# ------------------------------------------------------------------------------------------ resources
# HOLE: the worker's workspace is a bind mount of a directory on the grader's disk, and the only cap is
# RLIMIT_FSIZE per file (512 MiB): many files of 512 MiB each fill the staff machine's disk (a batch's
# other submissions, and results.json itself, then fail to write). Shown with 2 x 300 MiB: more than one
# file's cap in total should be refused (a size-capped tmpfs or a quota for the workspace).
_FILL = textwrap.dedent(
    """
    import os
    written = 0
    try:
        for i in range(2):
            with open(f"fill{i}.bin", "wb") as f:
                for _ in range(30):
                    f.write(b"\\0" * (10 << 20))
                    written += 10 << 20
    except OSError:
        pass
    for i in range(2):
        try:
            os.remove(f"fill{i}.bin")
        except OSError:
            pass
    return 2 * x if written > 512 << 20 else 0
    """
)


@ROOT_ONLY
# Not strict: on a loaded machine the test's time budget can run out before 600 MB are written, and the
# submission then scores 0 for the wrong reason (an XPASS that proves nothing).
@pytest.mark.xfail(
    strict=False,
    reason="KNOWN HOLE, left open: the workspace is on the grader's disk and only "
    "RLIMIT_FSIZE caps a file; a tmpfs workspace would copy the graded 512 MB memmap into memory "
    "(the inbox then crosses devices): the fix needs a quota or a writable tmpfs beside an on-disk inbox",
)
def test_a_worker_cannot_write_more_than_a_files_cap_to_the_graders_disk(tmp_path: Path, harness: Path) -> None:  # noqa: F811
    package = GOOD_PACKAGE.replace(
        "def double(x):\n    return 2 * x", "def double(x):\n" + textwrap.indent(_FILL, "    ")
    )
    result = _grade(tmp_path, harness, package, problems=["linear"], isolate_each=True)
    assert problem_scores(result)["linear"] == 0, result.format_table()


# -------------------------------------------------------------------------------------------- forgery
# HOLE: a student's exception message reaches results.json and the grader's printed table with its
# terminal control sequences intact (newlines are folded into " | ", but ESC is not): on a TA's terminal
# "\x1b[1A\x1b[2K" erases the lines above and "\x1b[32m..." paints a forged verdict. Only printable text
# (and the report's own newlines) should come out.
_ANSI = 'raise ValueError("\\x1b[2J\\x1b[1A\\x1b[2K\\x1b[32mlinear    1.00      1  3 passed\\x07")'


def test_terminal_control_sequences_do_not_reach_the_report(tmp_path: Path, harness: Path) -> None:  # noqa: F811
    package = GOOD_PACKAGE.replace("return 2 * x", _ANSI)
    result = _grade(tmp_path, harness, package, problems=["linear"])
    assert problem_scores(result)["linear"] == 0
    texts = [result.format_table(), *(str(t.get("output", "")) for t in result.to_gradescope()["tests"])]
    controls = sorted({c for text in texts for c in text if ord(c) < 32 and c not in "\n\t" or ord(c) == 127})
    assert not controls, f"control characters from the submission in the report: {controls}"


# ------------------------------------------------------------------------------ answers left readable
# HOLE (defence in depth): the Gradescope zip ships the canary, a complete known-correct solution, as
# world-readable files (0644), and `autograder.run` makes only the secret 0600 before student code runs.
# Where the host refuses mount namespaces (a container without CAP_SYS_ADMIN: the jail then reports
# "filesystem" missing and goes on), a worker of its own uid reads /autograder/source/canary/ and execs it.
def test_the_canary_is_readable_by_root_only(tmp_path: Path) -> None:
    import zipfile

    from cs336_grading.staff.autograder import build_autograder

    archive = build_autograder(tmp_path / "autograder.zip", settings={"problems": ["softmax"]}, secret="s" * 16)
    with zipfile.ZipFile(archive) as zf:
        canary = {i.filename: i.external_attr >> 16 for i in zf.infolist() if i.filename.startswith("canary/")}
    assert canary, "no canary in the zip"
    readable = sorted(name for name, mode in canary.items() if mode & 0o044)
    assert not readable, f"canary files readable by other users: {readable[:3]}"
