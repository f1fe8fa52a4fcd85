"""The Python examples in the docs run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
# Pages whose examples are self-contained (no server, no cloud endpoint).
RUNNABLE = ["quickstart.md", "concepts.md", "stdlib.md", "structlog.md", "state.md", "store.md"]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _blocks() -> list[tuple[str, int, str]]:
    found = []
    for name in RUNNABLE:
        for i, code in enumerate(BLOCK.findall((DOCS / name).read_text(encoding="utf-8"))):
            found.append((name, i, code))
    return found


@pytest.mark.parametrize(("page", "index", "code"), _blocks(), ids=lambda v: str(v)[:20])
def test_doc_example_runs(
    page: str, index: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each ```python block of a runnable page executes without error."""
    monkeypatch.chdir(tmp_path)
    import logging

    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        exec(compile(code, f"{page}[{index}]", "exec"), {"__name__": f"docs_{index}"})
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
