"""
Just enough of the Redis protocol (RESP2) to drive a test Redis from a plain
blocking socket: the tests then check the broker against Redis itself, not
against the client library the broker may use.
"""

from __future__ import annotations

import socket
from typing import BinaryIO, TypeAlias


class RedisError(Exception):
    """An error reply; the message is Redis's own (C{"ERR unknown command ..."})."""


class ProtocolError(Exception):
    """The reply is not RESP2 (or the connection closed in the middle of one)."""


# Simple strings are str (C{"OK"}, C{"PONG"}); bulk strings are bytes; a
# null bulk string or array is None.  Errors inside an array (EXEC) are
# RedisError values; a top-level error reply is raised.
Reply: TypeAlias = "None | int | str | bytes | RedisError | list[Reply]"
Arg: TypeAlias = "str | bytes | int | float"


def encode(*args: Arg) -> bytes:
    """One command as a RESP array of bulk strings, as every client sends it."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def read_reply(stream: BinaryIO) -> Reply:
    """The next reply from C{stream}. @raise RedisError: an error reply."""
    reply = _read(stream)
    if isinstance(reply, RedisError):
        raise reply
    return reply


def _read(stream: BinaryIO) -> Reply:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ProtocolError(f"connection closed in a reply: {line!r}")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        length = int(rest)
        if length < 0:
            return None
        data = stream.read(length + 2)
        if len(data) != length + 2:
            raise ProtocolError("connection closed in a bulk string")
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read(stream) for _ in range(count)]
    raise ProtocolError(f"not a RESP2 reply: {line!r}")


def call(host: str, port: int, *args: Arg, timeout: float = 5.0) -> Reply:
    """
    Send one command on a connection of its own and return its reply.
    A fresh connection each time keeps no state between calls (a restarted
    or paused server affects only the calls made while it is so).
    @raise RedisError: an error reply.
    @raise TimeoutError: connecting, or a wait for the reply's next bytes,
        took longer than C{timeout} (e.g. the server is paused).
    @raise OSError: cannot connect (e.g. ConnectionRefusedError).
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(encode(*args))
        with sock.makefile("rb") as stream:
            return read_reply(stream)
