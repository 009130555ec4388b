"""How `cs336 similarity` scales: `python -m bench.bench_similarity [N ...]` times synthetic batches.

A batch of N submissions is made from the three independent implementations (this repository's
`cs336_basics`, `project_tests/suite/suite_student_*.py`, `oracle/`): each submission takes each file from one
of them at random, keeps a random 70% of its top-level definitions, and is disguised
(`project_tests/suite/suite_disguise.py`). So every submission shares code with about a third of the batch:
far more sharing than a real class, which is the costly case for the inverted index. Each N is timed twice:
with the default `max_share` (code held by >20% of the batch is ignored) and with none (`max_share=1`).
"""

from __future__ import annotations

import ast
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from cs336_grading.staff.similarity_report import find_similar
from project_tests.suite.suite_disguise import disguise

REPO = Path(__file__).resolve().parents[1]


def _bases() -> list[dict[str, str]]:
    oracle = [
        p
        for p in sorted((REPO / "oracle").glob("*.py"))
        if p.name not in ("adapters.py", "use_oracle.py", "__init__.py")
    ]
    return [
        {p.name: p.read_text() for p in sorted((REPO / "cs336_basics").glob("*.py"))}
        | {"adapters": (REPO / "tests/adapters.py").read_text()},
        {p.name: p.read_text() for p in sorted((REPO / "project_tests" / "suite").glob("suite_student_*.py"))},
        {p.name: p.read_text() for p in oracle},
    ]


def _subset(source: str, rng: random.Random) -> str:
    tree = ast.parse(source)
    tree.body = [s for s in tree.body if not isinstance(s, ast.FunctionDef | ast.ClassDef) or rng.random() < 0.7]
    return ast.unparse(tree)


def make_batch(root: Path, n: int, seed: int = 0) -> Path:
    """N disguised, partly overlapping submissions under `root` (see the module docstring)."""
    rng = random.Random(seed)
    files = [(name, text) for base in _bases() for name, text in base.items()]
    for i in range(n):
        sub = root / f"s{i:04d}"
        (sub / "cs336_basics").mkdir(parents=True)
        (sub / "tests").mkdir()
        for name, text in rng.sample(files, k=len(files) // 3):
            target = sub / "tests" / "adapters.py" if name == "adapters" else sub / "cs336_basics" / name
            target.write_text(disguise(_subset(text, rng), seed=rng.randrange(10**6)))
        if not (sub / "tests" / "adapters.py").exists():
            (sub / "tests" / "adapters.py").write_text("")
    return root


def main(sizes: list[int]) -> list[dict[str, float]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        batch = make_batch(Path(tmp) / "batch", max(sizes))
        subs = sorted(batch.iterdir())
        for n in sizes:
            for share in (0.2, 1.0):
                t0 = time.monotonic()
                result = find_similar(subs[:n], Path(tmp) / f"out{n}-{share}", max_share=share, threshold=0.5)
                rows.append(
                    {
                        "submissions": n,
                        "pairs": result.total_pairs,
                        "max_share": share,
                        "sharing_pairs": len(result.pairs),
                        "seconds": round(time.monotonic() - t0, 1),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [50, 100, 200, 300])
