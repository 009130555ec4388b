"""Names the upstream CS336 test modules import (`from .common import FIXTURES_PATH, gpt2_bytes_to_unicode`).

Kept so that an upstream test file dropped beside our adapters finds them; our own tests do not use it.
"""

from __future__ import annotations

from pathlib import Path

from cs336_common.gpt2_files import bytes_to_unicode

FIXTURES_PATH = (Path(__file__).resolve().parent) / "fixtures"


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to the printable character that stands for it in vocab.json/merges.txt."""
    return dict(bytes_to_unicode())  # a copy: the shared table is cached
