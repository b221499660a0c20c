"""
C{python -m omega_ws.handoff}: restarts that refuse no connection, without systemd.

It binds the listening sockets itself and runs the server on them as
systemd's socket activation does (C{LISTEN_FDS}, C{LISTEN_FDNAMES},
C{LISTEN_PID}): the server adopts them with C{--listen
systemd:domain=INET:name=ws}, and takes an inherited socket named
C{admin} as its admin listener.  The sockets outlive every server
process, so a connection that comes while no process accepts waits in
the kernel's accept queue instead of being refused.

  - SIGHUP: a rolling restart.  A new server starts on the same sockets;
    once it says C{READY=1} (on the C{NOTIFY_SOCKET} this program gives
    it), the old one gets SIGTERM: it stops accepting, tells its clients
    to reconnect (1001, Centrifuge 3001) and drains, while the new one
    accepts.  With C{--stop-first} the old one is stopped first and the
    new one started once it has exited, as C{systemctl restart} does.
  - SIGTERM, SIGINT: stop every server, then exit.
  - A server that exits by itself after it was ready is started again;
    one that never gets ready ends this program (status 1), unless an
    older one still serves.

Standard library only, POSIX only.  See docs/restarts.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import os
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Listener", "Supervisor", "bind", "main", "make_parser", "parse_socket", "spawn"]

_PREFIX = "omega-ws handoff: "
_PR_SET_PDEATHSIG = 1
_libc: ctypes.CDLL | None = None
with contextlib.suppress(OSError):  # loaded before any fork: the child only calls it
    _libc = ctypes.CDLL(None, use_errno=True)  # the C library's symbols, already loaded


def say(message: str) -> None:
    """One line on stdout, in one write: the servers write to the same pipe."""
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), (_PREFIX + message + "\n").encode())


# -- the sockets ------------------------------------------------------------------------------


@dataclass
class Listener:
    """One listening socket, passed to every server under C{name}."""

    name: str
    host: str
    port: int
    sock: socket.socket | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_socket(spec: str) -> Listener:
    """
    C{NAME=HOST:PORT} (C{ws=0.0.0.0:9886}, C{admin=[::1]:9888}) as a L{Listener}.
    @raise ValueError: anything else.
    """
    name, sep, address = spec.partition("=")
    host, colon, port = address.rpartition(":")
    if not sep or not colon or not name or ":" in name or not port.isdigit():
        raise ValueError(f"{spec!r}: expected NAME=HOST:PORT, e.g. ws=0.0.0.0:9886")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or int(port) > 65535:
        raise ValueError(f"{spec!r}: expected NAME=HOST:PORT, e.g. ws=0.0.0.0:9886")
    return Listener(name, host, int(port))


def bind(listener: Listener, backlog: int) -> Listener:
    """Bind and listen (port 0: any free port, written back); @raise OSError."""
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((listener.host, listener.port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    listener.sock = sock
    listener.port = sock.getsockname()[1]
    return listener


# -- one server process -----------------------------------------------------------------------


@dataclass(eq=False)
class Child:
    pid: int
    notify: socket.socket
    notify_path: str
    started: float
    ready: bool = False
    stop_sent: float | None = None
    killed: bool = False


def spawn(argv: Sequence[str], listeners: Sequence[Listener], notify_path: str,
          env: dict[str, str]) -> int:
    """
    Fork and exec C{argv} with the sockets as descriptors 3, 4, ... and
    systemd's variables for them; its pid.
    """
    fds = [listener.sock.fileno() for listener in listeners if listener.sock is not None]
    child_env = {k: v for k, v in env.items()
                 if not k.startswith(("LISTEN_", "WATCHDOG_"))}
    # systemd's watchdog, if it watches this program: the current server feeds it.
    if env.get("WATCHDOG_USEC") and env.get("WATCHDOG_PID", str(os.getpid())) == str(
            os.getpid()):
        child_env["WATCHDOG_USEC"] = env["WATCHDOG_USEC"]
    child_env.update(LISTEN_FDS=str(len(fds)),
                     LISTEN_FDNAMES=":".join(listener.name for listener in listeners),
                     NOTIFY_SOCKET=notify_path)
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; it execs or exits
        try:
            _exec(list(argv), fds, child_env, parent)
        finally:
            os._exit(127)
    return pid


def _exec(argv: list[str], fds: list[int], env: dict[str, str],
          parent: int) -> None:  # pragma: no cover - in the child
    try:
        # Out of the way of 3..3+n first, then into place (inheritable).
        moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3 + len(fds)) for fd in fds]
        for index, fd in enumerate(moved):
            os.dup2(fd, 3 + index)
        env["LISTEN_PID"] = str(os.getpid())
        if "WATCHDOG_USEC" in env:
            env["WATCHDOG_PID"] = env["LISTEN_PID"]
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        if _libc is not None:  # this program killed: its servers stop too
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            return
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        os.write(2, f"{_PREFIX}cannot run {argv[0]}: {e}\n".encode())


# -- the supervisor ---------------------------------------------------------------------------


@dataclass
class Options:
    argv: list[str]
    listeners: list[Listener]
    ready_timeout: float = 30.0
    stop_timeout: float = 20.0
    stop_first: bool = False


@dataclass(eq=False)
class Supervisor:
    """The loop: one current server, perhaps a starting one, the old ones draining."""

    options: Options
    current: Child | None = None
    starting: Child | None = None
    stopping: list[Child] = field(default_factory=list)
    exit_code: int | None = None
    _start_after_stop: bool = False
    _stopping_all: bool = False
    _signals: list[int] = field(default_factory=list)
    _sequence: int = 0

    def __post_init__(self) -> None:
        self._folder = tempfile.mkdtemp(prefix="omega-ws-handoff-")
        self._selector = selectors.DefaultSelector()
        self._wakeup_r, self._wakeup_w = os.pipe()
        os.set_blocking(self._wakeup_w, False)
        os.set_blocking(self._wakeup_r, False)
        self._selector.register(self._wakeup_r, selectors.EVENT_READ)

    @property
    def children(self) -> list[Child]:
        return [c for c in (self.current, self.starting, *self.stopping) if c is not None]

    def run(self) -> int:
        """Until stopped; the exit status."""
        signal.set_wakeup_fd(self._wakeup_w)
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(signum, self._on_signal)
        try:
            self.start_new()
            while self.children or self.exit_code is None:
                self.step(0.25)
                if self.exit_code is not None and not self._stopping_all:
                    self.stop_all()
        finally:
            signal.set_wakeup_fd(-1)
            self.close()
        return self.exit_code or 0

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def step(self, timeout: float) -> None:
        """Wait up to C{timeout} for a signal or a message, then act on what came."""
        for key, _ in self._selector.select(timeout):
            if key.fd == self._wakeup_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wakeup_r, 512)
            else:
                self._read_notify(key.data)
        signals, self._signals = self._signals, []
        for signum in signals:
            if signum == signal.SIGHUP:
                self.restart()
            elif signum in (signal.SIGTERM, signal.SIGINT):
                say(f"{signal.Signals(signum).name}: stopping")
                if self.exit_code is None:
                    self.exit_code = 0
                self.stop_all()
        self.reap()
        self._check_timeouts()

    # -- starting ---------------------------------------------------------------------------

    def start_new(self) -> None:
        """Start a server; it becomes the current one once ready."""
        self._sequence += 1
        path = os.path.join(self._folder, f"notify-{self._sequence}")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(path)
        notify.setblocking(False)
        pid = spawn(self.options.argv, self.options.listeners, path, dict(os.environ))
        child = Child(pid, notify, path, time.monotonic())
        self._selector.register(notify, selectors.EVENT_READ, child)
        self.starting = child
        say(f"started pid {pid}")

    def restart(self) -> None:
        """SIGHUP: start a new server, then stop the current one (or the other way)."""
        if self._stopping_all:
            return
        if self.starting is not None or self._start_after_stop:
            say("SIGHUP: a restart is already under way")
            return
        say("SIGHUP: restarting")
        if self.options.stop_first and self.current is not None:
            self.terminate(self.current)
            self.current = None
            self._start_after_stop = True
        else:
            self.start_new()

    def _read_notify(self, child: Child) -> None:
        while True:
            try:
                message = child.notify.recv(4096).decode("utf-8", "replace")
            except (BlockingIOError, OSError):
                return
            lines = message.split("\n")
            if "READY=1" in lines and not child.ready:
                child.ready = True
                self._became_ready(child)
            elif child is self.current:  # its status and watchdog pings are the service's
                passed = [line for line in lines
                          if line == "WATCHDOG=1" or line.startswith("STATUS=")]
                if passed:
                    _notify_own("\n".join(passed))

    def _became_ready(self, child: Child) -> None:
        took = time.monotonic() - child.started
        say(f"pid {child.pid} is ready ({took:.2f} s)")
        if child is not self.starting:
            return
        old, self.current, self.starting = self.current, child, None
        if old is not None:
            self.terminate(old)
        _notify_own(f"READY=1\nSTATUS=serving with pid {child.pid}")

    # -- stopping ---------------------------------------------------------------------------

    def terminate(self, child: Child) -> None:
        """SIGTERM: it stops accepting, closes its clients for reconnection, drains, exits."""
        if child.stop_sent is None:
            say(f"stopping pid {child.pid}")
            child.stop_sent = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
        if child not in self.stopping:
            self.stopping.append(child)

    def stop_all(self) -> None:
        """Stop everything: the sockets close, every server gets SIGTERM."""
        self._stopping_all = True
        self._start_after_stop = False
        _notify_own("STOPPING=1")
        for listener in self.options.listeners:
            if listener.sock is not None:
                listener.sock.close()
                listener.sock = None
        for child in (self.current, self.starting):
            if child is not None:
                self.terminate(child)
        self.current = self.starting = None

    def reap(self) -> None:
        """Note every server that exited, and start or stop what that calls for."""
        for child in self.children:
            try:
                pid, status = os.waitpid(child.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = child.pid, 0
            if pid == 0:
                continue
            code = os.waitstatus_to_exitcode(status)
            say(f"pid {child.pid} exited with {code}")
            self._forget(child)
            self._exited(child, code)
        if self._start_after_stop and not self.stopping:
            self._start_after_stop = False
            self.start_new()

    def _exited(self, child: Child, code: int) -> None:
        if child in self.stopping:
            self.stopping.remove(child)
        elif child is self.starting:
            self.starting = None
            if self.current is None:
                say(f"pid {child.pid} exited before it was ready; giving up")
                self.exit_code = 1
            else:
                say(f"the new server exited before it was ready; pid {self.current.pid} "
                    "still serves")
        elif child is self.current:
            self.current = None
            if not self._stopping_all:
                say(f"pid {child.pid} exited unexpectedly; starting another")
                if self.starting is None:
                    self.start_new()

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        starting = self.starting
        if starting is not None and now - starting.started > self.options.ready_timeout:
            say(f"pid {starting.pid} not ready in {self.options.ready_timeout:g} s")
            self.starting = None
            self.terminate(starting)
            if self.current is None:
                self.exit_code = 1
        for child in self.stopping:
            sent = child.stop_sent
            if sent is not None and not child.killed and now - sent > self.options.stop_timeout:
                say(f"pid {child.pid} still running {self.options.stop_timeout:g} s "
                    "after SIGTERM: SIGKILL")
                child.killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)

    def _forget(self, child: Child) -> None:
        self._selector.unregister(child.notify)
        child.notify.close()
        with contextlib.suppress(OSError):
            os.unlink(child.notify_path)

    def close(self) -> None:
        for listener in self.options.listeners:
            if listener.sock is not None:
                listener.sock.close()
                listener.sock = None
        shutil.rmtree(self._folder, ignore_errors=True)


def _notify_own(state: str) -> None:
    """Tell this program's own service manager, if it has one (Type=notify)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())


# -- the command line -------------------------------------------------------------------------


def _socket_argument(spec: str) -> Listener:
    try:
        return parse_socket(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m omega_ws.handoff",
        description="Hold the listening sockets and run the server on them (systemd's "
                    "LISTEN_FDS protocol), so that restarts refuse no connection.  SIGHUP: "
                    "rolling restart; SIGTERM/SIGINT: stop.",
        epilog="Example: python -m omega_ws.handoff --socket ws=0.0.0.0:9886 "
               "--socket admin=127.0.0.1:9888 -- twistd --nodaemon --pidfile= omega-ws "
               "--listen systemd:domain=INET:name=ws --host 127.0.0.1 --port 0")
    parser.add_argument("--socket", action="append", type=_socket_argument, required=True,
                        metavar="NAME=HOST:PORT", dest="listeners",
                        help="a listening socket, passed under NAME (repeatable); an "
                             "IPv6 host in brackets")
    parser.add_argument("--backlog", type=int, default=1024,
                        help="accept queue length of each socket (default: 1024)")
    parser.add_argument("--ready-timeout", type=float, default=30.0,
                        help="seconds a new server has to send READY=1 (default: 30)")
    parser.add_argument("--stop-timeout", type=float, default=20.0,
                        help="seconds from SIGTERM to SIGKILL (default: 20)")
    parser.add_argument("--stop-first", action="store_true",
                        help="on SIGHUP stop the old server before starting the new one "
                             "(when a listener cannot be shared, e.g. wss:// on a fixed port)")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="the server command, after --")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        parser.error("no server command (put it after --)")
    try:
        for listener in args.listeners:
            bind(listener, args.backlog)
            say(f"socket {listener.name} listening on {listener.address}")
    except OSError as e:
        parser.exit(1, f"{_PREFIX}error: cannot listen on {listener.address}: {e}\n")
    options = Options(command, args.listeners, args.ready_timeout, args.stop_timeout,
                      args.stop_first)
    return Supervisor(options).run()


if __name__ == "__main__":
    sys.exit(main())
