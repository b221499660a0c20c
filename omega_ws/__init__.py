"""
omega-ws: a real-time WebSocket broadcast and pub/sub server on Twisted
and Autobahn.

Run it with C{twistd -n omega-ws} or C{python -m omega_ws}; embed it with
L{makeService} (a Twisted service) or L{start_server} / L{stop_server}.
"""

from ._version import __version__
from .broker import Publication
from .centrifuge import ReplyError
from .config import Config, ConfigError, load_config
from .registry import ClientInfo, ConnectionState
from .service import Server, StartupError, makeService, start_server, stop_server

__all__ = [
    "ClientInfo",
    "Config",
    "ConfigError",
    "ConnectionState",
    "Publication",
    "ReplyError",
    "Server",
    "StartupError",
    "__version__",
    "load_config",
    "makeService",
    "start_server",
    "stop_server",
]
