"""The configuration reference names every key of the one schema (config.py)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from omega_ws.config import _SECTIONS

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _keys() -> list[tuple[str, str]]:
    return [(section, f.name) for section, cls in _SECTIONS.items()
            for f in dataclasses.fields(cls)]


def test_every_key_has_a_row_in_the_reference() -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = [f"{s}.{k}" for s, k in _keys() if f"| `{s}.{k}` |" not in text]
    assert not missing, f"keys without a row in docs/configuration.md: {missing}"


def test_every_key_is_in_the_complete_example() -> None:
    text = (DOCS / "configuration.md").read_text()
    example = text.split("## Complete example", 1)[1]
    tables = dict(re.findall(r"\n\[(\w+)\]\n(.*?)(?=\n\[|\n```)", example, re.S))
    missing = [f"{s}.{k}" for s, k in _keys()
               if not re.search(rf"^#? ?{k} = ", tables.get(s, ""), re.M)]
    assert not missing, f"keys missing from the complete example: {missing}"
