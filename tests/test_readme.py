"""The README's "A new rule" and "A new transform" examples run as written (their asserts are
the checks: values worked out by hand in the README from the equations)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import symopt

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


@pytest.mark.parametrize("section", ["A new rule", "A new transform"])
def test_readme_example_runs(section: str) -> None:
    blocks = _python_blocks(section)
    assert blocks, f"no python example under {section!r}"
    before = dict(symopt.OPTIMIZERS)
    try:
        for block in blocks:
            exec(compile(block, f"README.md ({section})", "exec"), {})
    finally:
        for name in set(symopt.OPTIMIZERS) - set(before):
            del symopt.OPTIMIZERS[name]
