"""
Child processes (Redis servers, omega-ws nodes) that never outlive the test
run.  Three layers, since a test can end in ways no C{finally} sees:

  - the fixtures stop what they started (the normal way);
  - at interpreter exit, whatever is still running is killed (a test that
    forgot, a fixture that raised);
  - where util-linux's C{setpriv} exists, the child also gets a parent-death
    signal, so that even a SIGKILLed pytest (a CI timeout) takes its
    children with it instead of leaving them on their ports.

The parent-death signal fires when the I{thread} that started the child
ends, so it is set only for children started from the main thread.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import threading
import weakref
from collections.abc import Sequence
from typing import Any

_SETPRIV = shutil.which("setpriv")
_children: weakref.WeakSet[subprocess.Popen[Any]] = weakref.WeakSet()


def popen(argv: Sequence[str], **options: Any) -> subprocess.Popen[Any]:
    """
    C{subprocess.Popen(argv, **options)}, killed at exit if still running.
    The child's pid is the program's own (C{setpriv} execs it), so signals
    sent to it reach the program.
    @raise FileNotFoundError: C{argv[0]} is not a program (checked here,
        since C{setpriv} would only exit with 127).
    """
    command = list(argv)
    if shutil.which(command[0]) is None:
        raise FileNotFoundError(f"no such program: {command[0]}")
    if _SETPRIV is not None and threading.current_thread() is threading.main_thread():
        command = [_SETPRIV, "--pdeathsig", "KILL", "--", *command]
    process: subprocess.Popen[Any] = subprocess.Popen(command, **options)
    _children.add(process)
    return process


@atexit.register
def _kill_the_rest() -> None:
    for process in list(_children):
        if process.poll() is None:
            process.kill()  # also ends a SIGSTOPped process
            process.wait(5)
