"""Strict JSON parsing shared by the wire protocols and the admin API."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["compact", "loads_strict", "parse_json_object"]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_strict(text: str | bytes) -> Any:
    """
    C{json.loads}, but NaN and Infinity are not JSON, and input nested too
    deep to parse is an error like any other.
    @raise ValueError: not JSON (UnicodeDecodeError and JSONDecodeError included).
    """
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def parse_json_object(payload: bytes) -> dict[str, Any] | None:
    """The JSON object in C{payload} (UTF-8), or None if it is anything else."""
    try:
        value = loads_strict(payload.decode("utf-8"))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def compact(value: Any) -> bytes:
    """Compact JSON as UTF-8; raises ValueError for NaN and Infinity."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")
