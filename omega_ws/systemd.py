"""
systemd's readiness protocol (C{Type=notify}), without a dependency: one
datagram to the socket named by C{NOTIFY_SOCKET}, when it is set.
"""

from __future__ import annotations

import os
import socket

from twisted.logger import Logger

__all__ = ["notify"]

_log = Logger()


def notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """
    Send C{state} (e.g. C{"READY=1"}) to systemd.  Returns whether a
    message was sent; never raises, since a missing systemd is normal.
    """
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as e:
        _log.warn("cannot notify systemd ({state}): {error}", state=state, error=e)
        return False
    return True
