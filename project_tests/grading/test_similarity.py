"""Similarity across a batch (cs336_grading/staff/similarity.py, similarity_report.py).

Submissions built here: `ref` (this repository's cs336_basics + tests/adapters.py), `student` (the
independently written project_tests/suite/suite_student_*.py), `oracle` (oracle/*.py, torch built-ins), the
bare handout, and disguised copies (project_tests/suite/suite_disguise.py: identifiers renamed, definitions
reordered, comments rewritten, code reformatted).
"""

from __future__ import annotations

import csv
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from cs336_grading import cli as grading_cli
from cs336_grading.staff import similarity
from cs336_grading.staff.handout import PACKAGE_INIT, stub_adapters
from cs336_grading.staff.similarity_report import COLUMNS, SUMMARY_COLUMNS, find_similar
from cs336_lab import cli
from project_tests.suite.suite_disguise import disguise_submission

REPO = Path(__file__).resolve().parents[2]
ORACLE_SKIP = ("adapters.py", "use_oracle.py", "make_snapshots.py", "model_snapshots.py")


def _submission(root: Path, package: dict[str, str], adapters: str) -> Path:
    (root / "cs336_basics").mkdir(parents=True)
    (root / "tests").mkdir()
    for name, text in package.items():
        (root / "cs336_basics" / name).write_text(text)
    (root / "tests" / "adapters.py").write_text(adapters)
    return root


def _texts(paths: list[Path], rename: tuple[str, str] = ("", "")) -> dict[str, str]:
    return {p.name.replace(*rename): p.read_text() for p in paths}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of the independent implementations and the bare handout (not a batch: pick from it)."""
    root = tmp_path_factory.mktemp("sources")
    oracle_adapters = (REPO / "oracle" / "adapters.py").read_text()
    _submission(
        root / "ref", _texts(sorted((REPO / "cs336_basics").glob("*.py"))), (REPO / "tests" / "adapters.py").read_text()
    )
    _submission(
        root / "student",
        _texts(sorted((REPO / "project_tests" / "suite").glob("suite_student_*.py")), ("suite_student_", "")),
        oracle_adapters,
    )
    _submission(
        root / "oracle",
        _texts([p for p in sorted((REPO / "oracle").glob("*.py")) if p.name not in ORACLE_SKIP]),
        oracle_adapters,
    )
    _submission(
        root / "handout", {"__init__.py": PACKAGE_INIT}, stub_adapters((REPO / "tests" / "adapters.py").read_text())
    )
    disguise_submission(root / "ref", root / "ref_copy", seed=1)
    disguise_submission(root / "student", root / "student_copy", seed=2)
    return root


def _batch(tmp_path: Path, sources: Path, *names: str) -> Path:
    batch = tmp_path / "batch"
    for name in names:
        shutil.copytree(sources / name.split("|")[-1], batch / name.split("|")[0])
    return batch


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------ the algorithm


def test_tokens_ignore_names_comments_docstrings_and_layout() -> None:
    a = 'def add(x, y):\n    """Sum."""\n    return x + y  # plus\n'
    b = "# a helper\ndef plus(first,second):\n\n    return first \\\n            + second\n"
    assert [t for t, _ in similarity.normalised_tokens(a)] == [t for t, _ in similarity.normalised_tokens(b)]
    assert [t for t, _ in similarity.normalised_tokens(a)] != [
        t for t, _ in similarity.normalised_tokens(a.replace("+", "-"))
    ]
    assert similarity.normalised_tokens("def broken(:\n  '''unterminated")  # falls back, never raises


def test_winnowing_finds_every_long_shared_run() -> None:
    """Any run of `guarantee` tokens two files share gives a shared fingerprint (the winnowing guarantee)."""
    shared = "".join(f"v{i} = w{i} * {i} + u{i}\n" for i in range(8))  # ~48 tokens
    a = similarity.Code("a", {"x.py": "import os\n" * 30 + shared + "print(1)\n" * 20})
    b = similarity.Code("b", {"y.py": "for q in r:\n    pass\n" * 25 + shared})
    common = similarity.fingerprint_code(a).regions.keys() & similarity.fingerprint_code(b).regions.keys()
    assert common
    short_run = similarity.Code("c", {"z.py": "v0 = w0 * 0 + u0\n" + "while q:\n    break\n" * 20})  # 7 shared tokens
    assert not similarity.fingerprint_code(a).regions.keys() & similarity.fingerprint_code(short_run).regions.keys()


# ----------------------------------------------------------------------------------- the verdicts


@pytest.mark.parametrize("original", ["ref", "student"], ids=["reference", "student"])
def test_a_disguised_copy_is_flagged_and_independent_implementations_are_not(
    tmp_path: Path, sources: Path, original: str
) -> None:
    batch = _batch(tmp_path, sources, "ref", "student", "oracle", f"{original}_copy")
    result = find_similar([batch], tmp_path / "out")
    rows = _rows(tmp_path / "out" / "similarity.csv")
    flagged = {frozenset((r["a"], r["b"])) for r in rows if r["flagged"] == "yes"}
    assert flagged == {frozenset((original, f"{original}_copy"))}, rows[:4]
    independent = [p for p in result.pairs if f"{original}_copy" not in (p.a, p.b)]
    assert len(independent) <= 3 and all(p.score < 0.2 for p in independent), independent
    assert rows[0]["report"] and (tmp_path / "out" / rows[0]["report"]).is_file()


def test_a_submission_against_the_bare_handout_is_not_flagged_and_boilerplate_never_counts(
    tmp_path: Path, sources: Path
) -> None:
    batch = _batch(tmp_path, sources, "ref", "handout", "alice|handout", "bob|handout")
    result = find_similar([batch], tmp_path / "out")
    assert result.kept["handout"] == result.kept["alice"] == set()  # the kit's own code: no fingerprint
    assert result.pairs == []  # three identical kits share nothing that counts
    assert result.total_pairs == 6


def test_a_reference_set_is_matched_but_never_compared_with_itself(tmp_path: Path, sources: Path) -> None:
    batch = _batch(tmp_path, sources, "alice|ref_copy", "bob|oracle")
    references = _batch(tmp_path / "refs", sources, "ref", "ref2|ref")
    result = find_similar([batch], tmp_path / "out", references=[references])
    top = result.pairs[0]
    assert (top.a, top.b, top.b_is_reference) in {("alice", "ref:ref", True), ("alice", "ref:ref2", True)}
    assert top.score >= 0.5
    assert all(not (p.a.startswith("ref:") and p.b.startswith("ref:")) for p in result.pairs)
    assert result.total_pairs == 1 + 2 * 2


# ------------------------------------------------------------------------------------ the outputs


def test_csv_columns_and_the_summary_flag(tmp_path: Path, sources: Path) -> None:
    batch = _batch(tmp_path, sources, "ref", "ref_copy", "student")
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.csv").write_text(
        "student,total,flags,status\nref,40,,graded\nref_copy,40,,graded\nstudent,38,,graded\n"
    )
    find_similar([batch], out)
    rows = _rows(out / "similarity.csv")
    assert list(rows[0]) == COLUMNS
    assert (rows[0]["a"], rows[0]["b"], rows[0]["b_kind"], rows[0]["flagged"]) == ("ref", "ref_copy", "student", "yes")
    assert "cs336_basics/" in rows[0]["files"] and float(rows[0]["score"]) >= 0.5
    summary = {r["student"]: r for r in _rows(out / "summary.csv")}
    assert list(summary["ref"]) == ["student", "total", "flags", "status", *SUMMARY_COLUMNS]
    assert summary["ref"]["similarity_flag"] == summary["ref_copy"]["similarity_flag"] == "flagged"
    assert summary["ref"]["similar_to"] == "ref_copy" and summary["student"]["similarity_flag"] == ""
    assert (out / "similarity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    find_similar([batch], out)  # run again: the columns are refreshed, not repeated
    assert list(_rows(out / "summary.csv")[0]) == ["student", "total", "flags", "status", *SUMMARY_COLUMNS]


def test_the_pages_escape_everything_a_student_wrote(tmp_path: Path, sources: Path) -> None:
    hostile = "<img src=x onerror=alert(1)>"
    batch = _batch(tmp_path, sources, f"{hostile}|ref", "ref_copy")
    code = (batch / hostile / "cs336_basics" / "layers.py").read_text()
    (batch / hostile / "cs336_basics" / "layers.py").write_text(code + '\nX = "</pre><script>alert(1)</script>"\n')
    (batch / hostile / "cs336_basics" / "model.py").rename(batch / hostile / "cs336_basics" / "<b>model.py")
    find_similar([batch], tmp_path / "out")
    page = next((tmp_path / "out" / "similarity").glob("*.html")).read_text()
    assert "<script" not in page and "<img" not in page and "<b>" not in page
    assert "&lt;script&gt;" in page and "&lt;img src=x onerror=alert(1)&gt;" in page and "&lt;b&gt;model.py" in page
    assert "Content-Security-Policy" in page


# ------------------------------------------------------------------------------- hostile layouts


def test_symlinks_are_never_followed_and_zips_are_read_in_memory(tmp_path: Path, sources: Path) -> None:
    secret = tmp_path / "secret.py"
    secret.write_text("STAFF_SECRET = 1\n")
    alice = shutil.copytree(sources / "student", tmp_path / "batch" / "alice")
    os.symlink(secret, alice / "cs336_basics" / "leak.py")
    os.symlink(tmp_path, alice / "cs336_basics" / "outside")
    code = similarity.load_code(similarity.batch.Entry("alice", alice))
    assert "cs336_basics/leak.py" not in code.files and not any("outside" in p for p in code.files)
    assert any("leak.py" in s for s in code.skipped)
    archive = tmp_path / "bob.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("hw1/cs336_basics/model.py", "x = 1\n")
        zf.writestr("hw1/tests/adapters.py", "y = 2\n")
        zf.writestr("../evil.py", "z = 3\n")
        link = zipfile.ZipInfo("hw1/cs336_basics/link.py")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, str(secret))
    code = similarity.load_code(similarity.batch.Entry("bob", archive))
    assert code.files == {"cs336_basics/model.py": "x = 1\n", "tests/adapters.py": "y = 2\n"}
    assert len(code.skipped) == 2 and not (tmp_path / "evil.py").exists()


def test_oversized_files_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(similarity, "MAX_FILE_BYTES", 100)
    root = _submission(tmp_path / "carol", {"big.py": "x = 1\n" * 50, "small.py": "y = 2\n"}, "z = 3\n")
    code = similarity.load_code(similarity.batch.Entry("carol", root))
    assert set(code.files) == {"cs336_basics/small.py", "tests/adapters.py"}
    assert code.skipped == ("big.py (over the file size cap)",) or "big.py" in code.skipped[0]


# ------------------------------------------------------------------------------------- commands


def test_the_similarity_command(tmp_path: Path, sources: Path) -> None:
    batch = _batch(tmp_path, sources, "ref", "ref_copy")
    assert cli.main(["similarity", str(batch), "--out-dir", str(tmp_path / "out"), "--threshold", "0.4"]) == 0
    assert _rows(tmp_path / "out" / "similarity.csv")[0]["flagged"] == "yes"
    assert cli.main(["similarity", str(batch), "--out-dir", str(tmp_path / "out"), "--threshold", "1.5"]) == 2


@pytest.mark.parametrize("off", [False, True], ids=["after-batch", "no-similarity"])
def test_grade_out_dir_runs_the_check_after_the_batch(
    tmp_path: Path, sources: Path, monkeypatch: pytest.MonkeyPatch, off: bool
) -> None:
    batch = _batch(tmp_path, sources, "ref", "ref_copy")
    monkeypatch.setattr(grading_cli.batch, "main", lambda args: 0)  # the grading itself is test_batch_grading's
    argv = ["grade", str(batch), "--out-dir", str(tmp_path / "out")] + (["--no-similarity"] if off else [])
    assert cli.main(argv) == 0
    assert (tmp_path / "out" / "similarity.csv").exists() is not off
