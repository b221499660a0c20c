"""C{python -m omega_ws [options]}: the same server and options as C{twistd -n omega-ws}."""

from __future__ import annotations

import sys

from twisted.logger import globalLogBeginner

from .logs import make_observer
from .tap import Options, makeService


def main(argv: list[str] | None = None) -> None:
    """Run until SIGTERM or SIGINT; exit 0 after a clean stop, 1 or 2 on bad start."""
    options = Options()
    options.parseOptions(sys.argv[1:] if argv is None else argv)
    from twisted.internet import reactor

    globalLogBeginner.beginLoggingTo(
        [make_observer(options.config.log, sys.stdout)], redirectStandardIO=False
    )
    service = makeService(options)
    exit_code: list[int | str | None] = [0]

    def start() -> None:
        # Started once the reactor runs, so SIGTERM during start-up is handled too.
        try:
            service.startService()
        except SystemExit as e:  # a listener could not bind; the line is written
            exit_code[0] = e.code
            reactor.stop()
            return
        reactor.addSystemEventTrigger("before", "shutdown", service.stopService)

    reactor.callWhenRunning(start)
    reactor.run()
    sys.exit(exit_code[0])


if __name__ == "__main__":
    main()
