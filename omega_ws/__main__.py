"""C{python -m omega_ws [options]}: the same server and options as C{twistd -n omega-ws}."""

from __future__ import annotations

import sys

from twisted.logger import globalLogBeginner

from .logs import make_observer
from .tap import Options, makeService


def main(argv: list[str] | None = None) -> None:
    options = Options()
    options.parseOptions(sys.argv[1:] if argv is None else argv)
    from twisted.internet import reactor

    globalLogBeginner.beginLoggingTo(
        [make_observer(options.config.log, sys.stdout)], redirectStandardIO=False
    )
    service = makeService(options)
    service.startService()
    # SIGTERM and SIGINT stop the reactor, which stops the service first.
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
