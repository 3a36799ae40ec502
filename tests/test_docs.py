"""Every ```python block in README.md and docs/*.md runs, so the documentation cannot rot."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks():
    for document in DOCUMENTS:
        text = document.read_text()
        # Blocks in one document share a namespace, like a notebook, so run them together.
        code = "\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.S))
        if code:
            yield pytest.param(code, id=document.relative_to(ROOT).as_posix())


@pytest.mark.parametrize("code", _blocks())
def test_code_blocks_run(code):
    exec(compile(code, "<doc>", "exec"), {"__name__": "__doc__"})
