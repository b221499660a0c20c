"""
The twistd plugin's half: command-line L{Options} and L{makeService}.

Wiring only.  C{python -m omega_ws} uses the same two, so both ways of
running take the same options and behave the same.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.logger import ILogObserver
from twisted.python import usage
from twisted.python.failure import Failure

from .config import Config, ConfigError, load_config
from .logs import make_observer
from .service import OmegaService, StartupError

__all__ = ["Options", "makeService"]

# Command-line option -> configuration key.
_CLI_KEYS = {
    "host": "server.host",
    "port": "server.port",
    "tls-port": "server.tls_port",
    "cert": "server.cert",
    "key": "server.key",
    "max-message-size": "server.max_message_size",
    "testee-port": "server.testee_port",
    "admin-port": "admin.port",
    "broker": "broker.url",
    "log-format": "log.format",
}


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Real-time WebSocket broadcast server.  Configuration: defaults < TOML file "
        "(--config or OMEGA_WS_CONFIG) < environment < these options."
    )
    optParameters = [
        ["config", "c", None, "TOML configuration file (default: $OMEGA_WS_CONFIG)."],
        ["host", None, None, "Interface for ws:// and wss:// [localhost]."],
        ["port", "p", None, "ws:// port, 0 for any free port [9886]."],
        ["tls-port", None, None, "wss:// port, used when a certificate is set [9887]."],
        ["cert", None, None, "PEM certificate for wss://."],
        ["key", None, None, "PEM private key for wss://."],
        ["max-message-size", None, None, "Largest message in bytes [1048576]."],
        ["testee-port", None, None, "Port of the conformance echo endpoint [off]."],
        ["admin-port", None, None, "Admin HTTP port on admin.host [9888]."],
        ["broker", None, None, "Broker URL [memory://]."],
        ["log-format", None, None, "text or json [text]."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self.config = Config()

    def opt_listen(self, description: str) -> None:
        """Extra WebSocket listener as a Twisted endpoint string (repeatable),
        e.g. systemd:domain=INET:index=0.  Replaces server.listen."""
        self["listen"].append(description)

    def postOptions(self) -> None:
        """Build and validate the whole configuration; raise UsageError if invalid."""
        overrides: dict[str, Any] = {
            key: self[option] for option, key in _CLI_KEYS.items() if self[option] is not None
        }
        if self["listen"]:
            overrides["server.listen"] = tuple(self["listen"])
        try:
            self.config = load_config(
                self["config"], overrides=overrides,
                option_names={key: "--" + option for option, key in _CLI_KEYS.items()})
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Like usage.Options', but a bad option or value ends the process with
        one line on stderr and status 2 instead of a page of usage text."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            sys.stderr.write(f"omega-ws: error: {e}\n")
            raise SystemExit(2) from None


class CommandLineService(MultiService):
    """
    The server as the command line runs it: a bind error ends the process
    with one line and status 1 rather than a traceback, and a non-default
    log format or level replaces twistd's log observer.
    """

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.server = OmegaService(config)
        self.server.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        # twistd asks the application for an observer before its own default.
        log = self.config.log
        if (log.format, log.level) != ("text", "info") and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, make_observer(log, sys.stdout))

    def startService(self) -> None:
        try:
            super().startService()
        except StartupError as e:
            _say(e)
            raise SystemExit(1) from None
        # A broker that connects first may still fail to start: same line, then stop.
        self.server.ready.addErrback(self._failed_later)

    def _failed_later(self, failure: Failure) -> None:
        _say(failure.value)
        reactor = self.server.reactor
        # twistd ends with status 0 whatever stopped its reactor; a start
        # that failed must not look like a clean stop to systemd.
        reactor.addSystemEventTrigger("after", "shutdown", _exit_failed)
        reactor.stop()


def _exit_failed() -> None:
    for stream in (sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    os._exit(1)


def _say(error: BaseException) -> None:
    # The real stderr: twistd has redirected sys.stderr into the log.
    (sys.__stderr__ or sys.stderr).write(f"omega-ws: error: {error}\n")


def makeService(options: Options) -> IService:
    return CommandLineService(options.config)
