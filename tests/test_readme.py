"""The README's promises that can go stale."""
from __future__ import annotations

from pathlib import Path

from ipfs_accelerate_py.providers.matrix import END, START, capability_matrix

README = Path(__file__).resolve().parents[1] / "README.md"


def test_capability_matrix_matches_the_providers():
    text = README.read_text(encoding="utf-8")
    current = START + text.split(START, 1)[1].split(END, 1)[0] + END
    assert current == capability_matrix(), "run: python -m ipfs_accelerate_py.providers.matrix"


def test_two_commands_come_first():
    text = README.read_text(encoding="utf-8")
    assert text.index("make demo") < text.index("## A ten-line tour")
    assert text.index("make test") < text.index("## A ten-line tour")
