"""The audit's static look (`cs336_grading/grader/audit.py`) on small sources: what counts as a forbidden
built-in (the problem scores 0) and what only asks a person to review, without grading anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from cs336_grading.grader import audit
from cs336_grading.untrusted import printable


def _package(tmp_path: Path, source: str) -> tuple[Path, Path]:
    package = tmp_path / "cs336_basics"
    package.mkdir()
    (package / "layers.py").write_text(source)
    adapters = tmp_path / "tests" / "adapters.py"
    adapters.parent.mkdir()
    adapters.write_text("")
    return package, adapters


FORBIDDEN = {
    "assigned-alias": ("import torch\nF = torch.nn.functional\ndef f(x):\n    return F.softmax(x, -1)\n", "softmax"),
    "alias-of-alias": (
        "import torch\nnn = torch.nn\nG = nn.functional\ndef f(x):\n    return G.silu(x)\n",
        "positionwise_feedforward",
    ),
    "sparse-softmax": ("import torch\ndef f(x):\n    return torch.sparse.softmax(x, 0)\n", "softmax"),
    "embedding_bag": ("import torch\ndef f(w, i):\n    return torch.embedding_bag(w, i, i)\n", "embedding"),
    "masked-softmax": ("import torch\ndef f(x, m):\n    return torch._masked_softmax(x, m, 0, None)\n", "softmax"),
}


@pytest.mark.parametrize("case", sorted(FORBIDDEN))
def test_forbidden_built_ins_are_evidence(tmp_path: Path, case: str) -> None:
    source, problem = FORBIDDEN[case]
    findings = audit.scan(*_package(tmp_path, source))
    assert problem in [p for p, _ in findings], findings


REVIEWED = {
    "vars-of-torch": "import torch\nd = vars(torch)['_de' + 'comp']\n",
    "dict-of-module": "import torch, sys\nm = sys.__dict__['mod' + 'ules']\n",
    "computed-getattr": "import torch\nname = '_re' + 'fs'\nr = getattr(torch, name)\n",
    "globals": "import torch\ng = globals()['__builtins__']\n",
}


@pytest.mark.parametrize("case", sorted(REVIEWED))
def test_lookups_the_audit_cannot_follow_need_review(tmp_path: Path, case: str) -> None:
    assert audit.review(*_package(tmp_path, REVIEWED[case])), f"{case} passed without review"


HONEST = {
    "own-attributes": "import torch\nclass C:\n    def get(self, name):\n        return getattr(self, name)\n",
    "pickling": "import torch\nclass T:\n    def __getstate__(self):\n        return dict(self.__dict__)\n",
    "constant-getattr": "import torch\ndef ctx(model):\n    return getattr(model, 'config', None)\n",
    "plain-maths": "import torch\nexp = torch.exp\ndef softmax(x):\n    e = exp(x - x.amax(-1, keepdim=True))\n    return e / e.sum(-1, keepdim=True)\n",
}


@pytest.mark.parametrize("case", sorted(HONEST))
def test_honest_code_is_neither_evidence_nor_review(tmp_path: Path, case: str) -> None:
    package, adapters = _package(tmp_path, HONEST[case])
    assert audit.scan(package, adapters) == [] and audit.review(package, adapters) == []


def test_control_characters_are_spelled_out() -> None:
    assert printable("a\x1b[2J\x07\x9bz\n\t") == "a\\x1b[2J\\x07\\x9bz\n\t"
