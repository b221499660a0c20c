"""
One configuration object for the whole server.

It is built in this order, later wins: defaults < TOML file (``--config`` or
``OMEGA_WS_CONFIG``) < environment < command line, and validated as a whole
before any service is built.  Every problem is reported as a L{ConfigError}
whose message is one line naming the key, e.g.
``server.port: 70000 is out of range (0-65535)``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_checks import (
    ConfigError,
    at_least,
    check_broker,
    check_listen,
    check_public_key,
    check_tls,
    positive,
)

__all__ = [
    "Config",
    "ConfigError",
    "ENVIRONMENT",
    "load_config",
    "origin_pattern",
    "valid_channel",
]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "localhost"
    port: int = 9886
    tls_port: int = 9887
    cert: str | None = None
    key: str | None = None
    listen: tuple[str, ...] = ()
    max_message_size: int = 1048576
    max_connections: int = 10000
    allowed_origins: tuple[str, ...] = ("*",)
    backlog: int = 1024
    handshake_timeout: float = 5.0
    max_handshake_size: int = 16384
    max_connections_per_ip: int = 0
    # Addresses that count as one for max_connections_per_ip and the
    # per-address buckets: an IPv6 client gets a whole /64 (configurable).
    ipv6_prefix: int = 64
    max_queue_size: int = 1048576
    # Fragments one message may arrive in (each costs a frame's parsing and
    # an object until the message is whole).
    max_message_fragments: int = 1024
    publish_rate: float = 0.0
    publish_burst: int = 50
    # Shared by every connection of one address (and of one token user);
    # None derives it: 10 x publish_rate and 10 x publish_burst.  0 = off.
    address_publish_rate: float | None = None
    # Centrifuge subscribe commands per second per connection (burst: the
    # 128-channel limit); 0 = no limit.
    subscribe_rate: float = 20.0
    compression: bool = False
    compression_window_bits: int = 11
    compression_no_context_takeover: bool = True
    testee_port: int | None = None


@dataclass(frozen=True, slots=True)
class HeartbeatConfig:
    ping_interval: float = 20.0
    ping_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    interval: float = 60.0
    idle_timeout: float = 300.0


@dataclass(frozen=True, slots=True)
class ReconnectConfig:
    max_attempts: int = 3
    delay: float = 5.0
    session_ttl: float = 120.0
    # Raw sessions held at once (live and disconnected); past it the least
    # recently used held session is dropped.
    max_sessions: int = 100000


@dataclass(frozen=True, slots=True)
class ChannelsConfig:
    default: str = "broadcast"
    history_size: int = 1000
    history_ttl: float = 300.0
    history_max_bytes: int = 16 * 1024 * 1024
    history_total_bytes: int = 256 * 1024 * 1024
    # Channel streams kept at once; past it the least recently used go.
    max_streams: int = 100000
    allow_client_publish: bool = True


@dataclass(frozen=True, slots=True)
class AuthConfig:
    token_secret: str | None = None
    token_public_key: str | None = None
    # None means "derived": anonymous access is allowed when no token key is set.
    allow_anonymous: bool | None = None
    # How long past its token's exp a Centrifuge connection may stay without a
    # refresh before it is closed with 3005 (Centrifugo's client_expired_close_delay).
    expired_close_delay: float = 25.0

    @property
    def anonymous_allowed(self) -> bool:
        if self.allow_anonymous is not None:
            return self.allow_anonymous
        return self.token_secret is None and self.token_public_key is None


@dataclass(frozen=True, slots=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = 9888
    enabled: bool = True
    api_key: str | None = None
    # Origins (besides the admin listener's own) whose browser pages may
    # call /api/*: a dashboard served elsewhere.  Patterns with *.
    allowed_origins: tuple[str, ...] = ()
    max_connections: int = 64
    # Seconds a client has to send a whole request head.
    request_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    url: str = "memory://"
    prefix: str = "omega-ws"


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: str = "text"
    level: str = "info"


@dataclass(frozen=True, slots=True)
class Config:
    """The validated configuration; build it with L{load_config} or L{Config.from_mapping}."""

    server: ServerConfig = field(default_factory=ServerConfig)
    heartbeat: HeartbeatConfig = field(default_factory=HeartbeatConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)
    channels: ChannelsConfig = field(default_factory=ChannelsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base_dir: Path | None = None) -> Config:
        """
        Defaults overlaid with C{values}, nested as in the TOML file
        (C{{"server": {"port": 0}}}); relative paths resolve against
        C{base_dir}.  Raises L{ConfigError}.
        """
        flat = _flatten(values, "the configuration")
        if base_dir is not None:
            flat = _resolve_paths(flat, base_dir)
        return _build(flat)

    def replace(self, **sections: Mapping[str, Any]) -> Config:
        """A copy with some keys changed, e.g. C{config.replace(server={"port": 0})}."""
        flat = {f"{s}.{k}": v for s, values in sections.items() for k, v in values.items()}
        for name in flat:
            _check_known(name, "replace()")
        return _build({**_as_flat(self), **flat})


_SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "heartbeat": HeartbeatConfig,
    "monitor": MonitorConfig,
    "reconnect": ReconnectConfig,
    "channels": ChannelsConfig,
    "auth": AuthConfig,
    "admin": AdminConfig,
    "broker": BrokerConfig,
    "log": LogConfig,
}

# Environment variables: the seed's names and ours.  An empty value counts as unset.
ENVIRONMENT: dict[str, str] = {
    "WEBSOCKET_HOST": "server.host",
    "WEBSOCKET_PORT": "server.port",
    "WEBSOCKET_SSL_PORT": "server.tls_port",
    "SSL_CERT_PATH": "server.cert",
    "SSL_KEY_PATH": "server.key",
    "WEBSOCKET_MESSAGE_SIZE_LIMIT": "server.max_message_size",
    "OMEGA_WS_MAX_CONNECTIONS": "server.max_connections",
    "WEBSOCKET_MAX_RECONNECT_ATTEMPTS": "reconnect.max_attempts",
    "WEBSOCKET_RECONNECT_DELAY": "reconnect.delay",
    "OMEGA_WS_TOKEN_SECRET": "auth.token_secret",
    "OMEGA_WS_API_KEY": "admin.api_key",
    "OMEGA_WS_BROKER": "broker.url",
}
CONFIG_ENV = "OMEGA_WS_CONFIG"

_PATH_KEYS = ("server.cert", "server.key", "auth.token_public_key")
_CHANNEL_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,255}\Z")
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


def origin_pattern(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """
    Browser origins as C{server.allowed_origins} and C{admin.allowed_origins}
    give them: C{*} stands for any run of characters, a pattern must match a
    whole C{Origin} (use C{fullmatch}), case does not matter.  None for none.
    """
    if not patterns:
        return None
    return re.compile(
        "|".join(re.escape(p).replace(r"\*", ".*") for p in patterns), re.IGNORECASE)


def valid_channel(name: str) -> bool:
    """Channel names are 1-255 characters of C{[A-Za-z0-9_.:@-]}."""
    return _CHANNEL_RE.match(name) is not None


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    option_names: Mapping[str, str] | None = None,
) -> Config:
    """
    Build the configuration: defaults < TOML file < environment < C{overrides}.

    @param path: the TOML file; when None, C{OMEGA_WS_CONFIG} names it, if set.
    @param environ: the environment (C{os.environ} when None).
    @param overrides: flat keys (C{"server.port"}) from the command line;
        values are strings or already typed.
    @param option_names: the command-line option each override came from
        (C{{"admin.port": "--admin-port"}}), to name it in error messages.
    @raise ConfigError: on any invalid value, unknown key or unreadable file.
    """
    environ = os.environ if environ is None else environ
    if path is None and environ.get(CONFIG_ENV):
        path = environ[CONFIG_ENV]
    flat: dict[str, Any] = {}
    if path is not None:
        flat.update(_read_toml(Path(path)))
    for variable, key in ENVIRONMENT.items():
        value = environ.get(variable)
        if value:
            flat[key] = _from_text(key, value, variable)
    for key, value in (overrides or {}).items():
        _check_known(key, "the command line")
        source = (option_names or {}).get(key, "the command line")
        flat[key] = _from_text(key, value, source) if isinstance(value, str) else value
    return _build(flat)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as stream:
            document = tomllib.load(stream)
    except OSError as e:
        raise ConfigError(f"config file {path}: cannot read it ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:  # before ValueError: it is one
        raise ConfigError(f"config file {path}: invalid TOML ({e})") from None
    except ValueError as e:  # a NUL byte in the path
        raise ConfigError(f"config file {path!r}: not a valid path ({e})") from None
    flat = _flatten(document, f"config file {path}")
    return _resolve_paths(flat, path.resolve().parent)


def _printable(name: str) -> str:
    """A name as it can stand in a one-line message (quoted if it has control characters)."""
    return name if name.isprintable() else repr(name)


def _flatten(document: Mapping[str, Any], where: str) -> dict[str, Any]:
    flat = {}
    for section, values in document.items():
        if section not in _SECTIONS:
            raise ConfigError(f"{_printable(section)}: unknown section in {where}")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{section}: must be a table of keys in {where}")
        for name, value in values.items():
            key = f"{section}.{name}"
            _check_known(key, where)
            flat[key] = value
    return flat


def _resolve_paths(flat: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    resolved = dict(flat)
    for key in _PATH_KEYS:
        value = resolved.get(key)
        if isinstance(value, str) and value:
            try:
                resolved[key] = str(base_dir / Path(value).expanduser())
            except RuntimeError as e:  # ~user with no such user
                raise ConfigError(f"{key}: {value!r}: {e}") from None
    return resolved


def _field_type(key: str) -> Any:
    section, name = key.split(".", 1)
    hints = typing.get_type_hints(_SECTIONS[section])
    return hints[name]


def _check_known(key: str, where: str) -> None:
    section, _, name = key.partition(".")
    if section not in _SECTIONS or name not in {
        f.name for f in dataclasses.fields(_SECTIONS[section])
    }:
        raise ConfigError(f"{_printable(key)}: unknown key in {where}")


def _base_type(hint: Any) -> Any:
    """C{int | None} -> C{int}; other hints unchanged."""
    if isinstance(hint, types.UnionType):
        (base,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return base
    return hint


def _from_text(key: str, text: str, source: str) -> Any:
    """Parse an environment or command-line string into the key's type."""
    base = _base_type(_field_type(key))
    try:
        if base is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if base is int:
            return int(text)
        if base is float:
            number = float(text)
            if not math.isfinite(number):
                raise ValueError
            return number
        if typing.get_origin(base) is tuple:
            return tuple(item.strip() for item in text.split(",") if item.strip())
    except ValueError:
        raise ConfigError(
            f"{key}: {text!r} (from {source}) is not a valid {_type_name(base)}"
        ) from None
    return text


def _type_name(base: Any) -> str:
    if typing.get_origin(base) is tuple:
        return "list of strings"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}[base]


def _coerce(key: str, value: Any) -> Any:
    """Check a typed value (from TOML or Python) against the key's type."""
    hint = _field_type(key)
    base = _base_type(hint)
    if value is None and base is not hint:
        return None
    ok = False
    if base is bool:
        ok = isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base is float:
        try:
            ok = (isinstance(value, int | float) and not isinstance(value, bool)
                  and math.isfinite(value))
        except OverflowError:  # an integer too large for a float
            ok = False
        value = float(value) if ok else value
    elif base is str:
        ok = isinstance(value, str | os.PathLike)
        value = os.fspath(value) if ok else value
    elif typing.get_origin(base) is tuple:
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    if not ok:
        raise ConfigError(f"{key}: {value!r} is not a valid {_type_name(base)}")
    return value


def _as_flat(config: Config) -> dict[str, Any]:
    return {
        f"{section}.{f.name}": getattr(getattr(config, section), f.name)
        for section in _SECTIONS
        for f in dataclasses.fields(_SECTIONS[section])
    }


def _build(flat: Mapping[str, Any]) -> Config:
    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    for key, value in flat.items():
        section, name = key.split(".", 1)
        sections[section][name] = _coerce(key, value)
    config = Config(**{name: _SECTIONS[name](**values) for name, values in sections.items()})
    _validate(config)
    return config


def _validate(config: Config) -> None:
    s = config.server
    _validate_numbers(config)
    if not s.host:
        raise ConfigError("server.host: must not be empty")
    if not config.admin.host:
        raise ConfigError("admin.host: must not be empty")
    if not s.allowed_origins:
        raise ConfigError('server.allowed_origins: must not be empty (use ["*"] to allow all)')
    positive("heartbeat.ping_interval", config.heartbeat.ping_interval)
    positive("heartbeat.ping_timeout", config.heartbeat.ping_timeout)
    positive("monitor.interval", config.monitor.interval)
    positive("monitor.idle_timeout", config.monitor.idle_timeout)
    at_least("reconnect.max_attempts", config.reconnect.max_attempts, 0)
    at_least("reconnect.delay", config.reconnect.delay, 0)
    at_least("reconnect.session_ttl", config.reconnect.session_ttl, 0)
    at_least("reconnect.max_sessions", config.reconnect.max_sessions, 1)
    at_least("auth.expired_close_delay", config.auth.expired_close_delay, 0)
    at_least("channels.history_size", config.channels.history_size, 0)
    at_least("channels.history_ttl", config.channels.history_ttl, 0)
    at_least("channels.history_max_bytes", config.channels.history_max_bytes, 0)
    at_least("channels.history_total_bytes", config.channels.history_total_bytes, 0)
    at_least("channels.max_streams", config.channels.max_streams, 1)
    at_least("admin.max_connections", config.admin.max_connections, 1)
    positive("admin.request_timeout", config.admin.request_timeout)
    if not valid_channel(config.channels.default):
        raise ConfigError(
            f"channels.default: {config.channels.default!r} is not a valid channel name "
            "(1-255 characters of A-Z a-z 0-9 _ . : @ -)"
        )
    if config.log.format not in ("text", "json"):
        raise ConfigError(f"log.format: {config.log.format!r} is not 'text' or 'json'")
    if config.log.level not in LOG_LEVELS:
        raise ConfigError(
            f"log.level: {config.log.level!r} is not one of {', '.join(LOG_LEVELS)}"
        )
    check_broker(config.broker.url, config.broker.prefix)
    check_tls(s.cert, s.key)
    if config.auth.token_secret is not None and not config.auth.token_secret:
        raise ConfigError("auth.token_secret: must not be empty (leave it unset instead)")
    if config.auth.token_public_key is not None:
        check_public_key(config.auth.token_public_key)
    check_listen(s.listen)



def _validate_numbers(config: Config) -> None:
    """Ports, sizes, rates and times of the server section."""
    s = config.server
    for key, port in (
        ("server.port", s.port),
        ("server.tls_port", s.tls_port),
        ("server.testee_port", s.testee_port),
        ("admin.port", config.admin.port),
    ):
        if port is not None and not 0 <= port <= 65535:
            raise ConfigError(f"{key}: {port} is out of range (0-65535)")
    at_least("server.max_message_size", s.max_message_size, 1)
    at_least("server.max_connections", s.max_connections, 1)
    at_least("server.backlog", s.backlog, 1)
    at_least("server.max_handshake_size", s.max_handshake_size, 1024)
    at_least("server.max_connections_per_ip", s.max_connections_per_ip, 0)
    at_least("server.max_queue_size", s.max_queue_size, 1024)
    at_least("server.max_message_fragments", s.max_message_fragments, 1)
    if not 1 <= s.ipv6_prefix <= 128:
        raise ConfigError(f"server.ipv6_prefix: {s.ipv6_prefix} is out of range (1-128)")
    if s.address_publish_rate is not None:
        at_least("server.address_publish_rate", s.address_publish_rate, 0)
    at_least("server.subscribe_rate", s.subscribe_rate, 0)
    at_least("server.publish_rate", s.publish_rate, 0)
    at_least("server.publish_burst", s.publish_burst, 1)
    # Autobahn's timers work in whole seconds; a shorter timeout would fire at once.
    at_least("server.handshake_timeout", s.handshake_timeout, 1)
    if not 9 <= s.compression_window_bits <= 15:
        raise ConfigError(
            f"server.compression_window_bits: {s.compression_window_bits} is out of range (9-15)"
        )
