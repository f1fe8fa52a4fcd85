"""Small helpers the core tests share: a JSON-lines stream and a fresh logger per test."""

from __future__ import annotations

import io
import json
from typing import Any


class JsonLines(io.StringIO):
    """A text stream whose lines are JSON documents, parsed on demand."""

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.getvalue().splitlines() if line]

    def isatty(self) -> bool:
        return False
