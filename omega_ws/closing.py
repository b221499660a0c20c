"""
Close frames: what a reason may hold.

RFC 6455 caps a control frame's payload at 125 bytes, two of them the close
code, so a reason is at most 123 bytes of UTF-8.  Reasons come from clients
of the server API too (C{disconnect}), so every close goes through
L{close_reason}, which cuts a longer one on a character boundary.
"""

from __future__ import annotations

__all__ = ["MAX_REASON_BYTES", "close_reason"]

MAX_REASON_BYTES = 123


def close_reason(text: str) -> bytes:
    """
    C{text} as UTF-8, cut to at most 123 bytes without splitting a
    character (lone surrogates, which UTF-8 cannot hold, become "?").
    """
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= MAX_REASON_BYTES:
        return encoded
    cut = encoded[:MAX_REASON_BYTES]
    # Drop the bytes of a character the cut split: decoding ignores a
    # truncated sequence at the end, and nothing else is invalid here.
    return cut.decode("utf-8", "ignore").encode("utf-8")
