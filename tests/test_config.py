"""
Tests for L{omega_ws.config}: the defaults of SPEC section 2, the order
defaults < TOML file < environment < command line, path resolution, and
every validation error (one line, starting with the key it is about).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet import endpoints
from twisted.python.systemd import ListenFDs

from omega_ws.config import ENVIRONMENT, Config, ConfigError, load_config, valid_channel
from omega_ws.devcert import make_self_signed

# SPEC section 2, column by column.
DEFAULTS: list[tuple[str, Any]] = [
    ("server.host", "localhost"), ("server.port", 9886), ("server.tls_port", 9887),
    ("server.cert", None), ("server.key", None), ("server.listen", ()),
    ("server.max_message_size", 1048576), ("server.max_connections", 10000),
    ("server.allowed_origins", ("*",)), ("server.backlog", 1024),
    ("server.handshake_timeout", 5), ("server.max_handshake_size", 16384),
    ("server.max_connections_per_ip", 0), ("server.max_queue_size", 1048576),
    ("server.publish_rate", 0), ("server.publish_burst", 50), ("server.compression", False),
    ("server.compression_window_bits", 11), ("server.testee_port", None),
    ("heartbeat.ping_interval", 20), ("heartbeat.ping_timeout", 10),
    ("monitor.interval", 60), ("monitor.idle_timeout", 300),
    ("reconnect.max_attempts", 3), ("reconnect.delay", 5), ("reconnect.session_ttl", 120),
    ("channels.default", "broadcast"), ("channels.history_size", 1000),
    ("channels.history_ttl", 300), ("channels.allow_client_publish", True),
    ("auth.token_secret", None), ("auth.token_public_key", None),
    ("admin.host", "127.0.0.1"), ("admin.port", 9888), ("admin.enabled", True),
    ("admin.api_key", None), ("broker.url", "memory://"), ("broker.prefix", "omega-ws"),
    ("log.format", "text"), ("log.level", "info"),
]
SPEC_ENVIRONMENT = {
    "WEBSOCKET_HOST": "server.host", "WEBSOCKET_PORT": "server.port",
    "WEBSOCKET_SSL_PORT": "server.tls_port", "SSL_CERT_PATH": "server.cert",
    "SSL_KEY_PATH": "server.key", "WEBSOCKET_MESSAGE_SIZE_LIMIT": "server.max_message_size",
    "OMEGA_WS_MAX_CONNECTIONS": "server.max_connections",
    "WEBSOCKET_MAX_RECONNECT_ATTEMPTS": "reconnect.max_attempts",
    "WEBSOCKET_RECONNECT_DELAY": "reconnect.delay", "OMEGA_WS_TOKEN_SECRET": "auth.token_secret",
    "OMEGA_WS_API_KEY": "admin.api_key", "OMEGA_WS_BROKER": "broker.url",
}


def get(config: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def write_pair(directory: Path, prefix: str = "") -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert_pem, key_pem = make_self_signed()
    cert, key = directory / f"{prefix}cert.pem", directory / f"{prefix}key.pem"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    return cert, key


def write_toml(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "omega-ws.toml"
    path.write_text(text)
    return path


def assert_one_line(error: pytest.ExceptionInfo[ConfigError], start: str) -> str:
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(start), message
    return message


@pytest.mark.parametrize(("key", "expected"), DEFAULTS)
def test_defaults(key: str, expected: Any) -> None:
    for config in (load_config(environ={}), Config(), Config.from_mapping({})):
        assert get(config, key) == expected


def test_environment_names_match_spec() -> None:
    assert ENVIRONMENT == SPEC_ENVIRONMENT


@pytest.mark.parametrize(("variable", "text", "expected"), [
    ("WEBSOCKET_HOST", "0.0.0.0", "0.0.0.0"), ("WEBSOCKET_PORT", "0", 0),
    ("WEBSOCKET_SSL_PORT", "8443", 8443), ("WEBSOCKET_MESSAGE_SIZE_LIMIT", "4096", 4096),
    ("OMEGA_WS_MAX_CONNECTIONS", "7", 7), ("WEBSOCKET_MAX_RECONNECT_ATTEMPTS", "9", 9),
    ("WEBSOCKET_RECONNECT_DELAY", "2.5", 2.5), ("OMEGA_WS_TOKEN_SECRET", "s3cret", "s3cret"),
    ("OMEGA_WS_API_KEY", "k3y", "k3y"), ("OMEGA_WS_BROKER", "memory://node", "memory://node"),
])
def test_environment_variable(variable: str, text: str, expected: Any) -> None:
    assert get(load_config(environ={variable: text}), ENVIRONMENT[variable]) == expected


def test_environment_certificate_paths_are_taken_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pair(tmp_path / "certs")
    path = write_toml(tmp_path / "etc", "[server]\nport = 1\n")
    monkeypatch.chdir(tmp_path)
    environ = {"SSL_CERT_PATH": "certs/cert.pem", "SSL_KEY_PATH": "certs/key.pem"}
    config = load_config(path, environ=environ)
    assert (config.server.cert, config.server.key) == ("certs/cert.pem", "certs/key.pem")
    overrides = {"server.cert": "certs/cert.pem", "server.key": "certs/key.pem"}
    config = load_config(path, environ={}, overrides=overrides)
    assert (config.server.cert, config.server.key) == ("certs/cert.pem", "certs/key.pem")


@pytest.mark.parametrize("variable", [*SPEC_ENVIRONMENT, "OMEGA_WS_CONFIG"])
def test_empty_environment_value_counts_as_unset(variable: str, tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[server]\nport = 1\nhost = 'filehost'\n")
    assert load_config(environ={variable: ""}) == Config()
    assert load_config(path, environ={variable: ""}).server.port == 1


def test_precedence(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[server]\nport = 1\ntls_port = 2\nmax_message_size = 3\n")
    environ = {"WEBSOCKET_SSL_PORT": "20", "WEBSOCKET_MESSAGE_SIZE_LIMIT": "30"}
    config = load_config(path, environ=environ, overrides={"server.max_message_size": "300"})
    assert (config.server.port, config.server.tls_port, config.server.max_message_size) == (
        1, 20, 300)
    assert config.server.host == "localhost"


def test_config_file_from_environment(tmp_path: Path) -> None:
    chosen = write_toml(tmp_path / "a", "[server]\nport = 1\n")
    ignored = write_toml(tmp_path / "b", "[server]\nport = 2\n")
    assert load_config(environ={"OMEGA_WS_CONFIG": str(chosen)}).server.port == 1
    environ = {"OMEGA_WS_CONFIG": str(ignored), "WEBSOCKET_HOST": "envhost"}
    config = load_config(chosen, environ=environ)
    assert (config.server.port, config.server.host) == (1, "envhost")


def test_overrides_take_strings_or_typed_values() -> None:
    overrides = {"server.port": "0", "server.listen": ("tcp:0",), "admin.enabled": False}
    config = load_config(environ={}, overrides=overrides)
    assert (config.server.port, config.server.listen, config.admin.enabled) == (
        0, ("tcp:0",), False)
    with pytest.raises(ConfigError) as error:
        load_config(environ={}, overrides={"server.bogus": 1})
    assert_one_line(error, "server.bogus:")


def test_toml_paths_resolve_against_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    cert, key = write_pair(etc / "tls")
    (etc / "jwt.pem").write_bytes(rsa_public_pem())
    path = write_toml(etc, "[server]\ncert = 'tls/cert.pem'\nkey = 'tls/key.pem'\n"
                           "[auth]\ntoken_public_key = 'jwt.pem'\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for config in (load_config(path, environ={}),
                   load_config(Path("../etc/omega-ws.toml"), environ={})):
        assert Path(config.server.cert or "").resolve() == cert.resolve()
        assert Path(config.server.key or "").resolve() == key.resolve()
        assert Path(config.auth.token_public_key or "").resolve() == (etc / "jwt.pem").resolve()
        assert config.auth.anonymous_allowed is False


def test_from_mapping_resolves_only_with_base_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pair(tmp_path)
    monkeypatch.chdir(tmp_path)
    values = {"server": {"cert": "cert.pem", "key": "key.pem"}}
    assert Config.from_mapping(values, tmp_path).server.cert == str(tmp_path / "cert.pem")
    assert Config.from_mapping(values).server.key == "key.pem"


@pytest.mark.parametrize(("auth", "environ", "expected"), [
    ("", {}, True), ("", {"OMEGA_WS_TOKEN_SECRET": "s"}, False), ("token_secret = 's'", {}, False),
    ("allow_anonymous = true", {"OMEGA_WS_TOKEN_SECRET": "s"}, True),
    ("allow_anonymous = false", {}, False),
])
def test_anonymous_allowed(auth: str, environ: dict[str, str], expected: bool,
                           tmp_path: Path) -> None:
    path = write_toml(tmp_path, f"[auth]\n{auth}\n")
    assert load_config(path, environ=environ).auth.anonymous_allowed is expected


def test_replace() -> None:
    original = Config()
    changed = original.replace(server={"port": 0, "listen": ["tcp:0"]}, log={"level": "debug"})
    assert (changed.server.port, changed.server.listen, changed.log.level) == (
        0, ("tcp:0",), "debug")
    assert changed.server.tls_port == 9887
    assert original == Config()
    with pytest.raises(ConfigError) as error:
        original.replace(server={"nope": 1})
    assert_one_line(error, "server.nope:")
    with pytest.raises(ConfigError) as error:
        original.replace(admin={"port": 70000})
    assert_one_line(error, "admin.port:")


@pytest.mark.parametrize(("name", "valid"), [
    ("broadcast", True), ("news:sport.uk", True), ("user@42_x-y", True), ("a" * 255, True),
    ("", False), ("a" * 256, False), ("has space", False), ("slash/no", False),
    ("caf\u00e9", False), ("trailing\n", False),
])
def test_valid_channel(name: str, valid: bool) -> None:
    assert valid_channel(name) is valid


@pytest.mark.parametrize("port", [0, 65535])
def test_port_bounds_accepted(port: int) -> None:
    config = Config.from_mapping({"server": {"port": port, "tls_port": port,
                                             "testee_port": port}, "admin": {"port": port}})
    assert (config.server.port, config.server.testee_port, config.admin.port) == (port,) * 3


@pytest.mark.parametrize("line", [
    "server.port = 65536", "server.port = -1", "server.tls_port = 70000", "admin.port = 70000",
    "server.testee_port = -5", "server.bogus = 1", "server.port = '80'", "server.port = true",
    "server.port = 1.5", "server.compression = 1", "admin.enabled = 'yes'",
    "server.listen = [1]", "server.listen = 'tcp:0'", "server.allowed_origins = ['*', 2]",
    "heartbeat.ping_interval = '20'", "server.listen = ['bogus:1']",
    "server.listen = ['tcp:notaport']", "log.format = 'xml'", "log.level = 'loud'",
    "broker.url = 'http://x'", "broker.url = 'nats://x'", "channels.default = ''",
    "channels.default = 'two words'", "server.compression_window_bits = 8",
    "server.compression_window_bits = 16", "heartbeat.ping_interval = 0",
    "heartbeat.ping_timeout = -1", "monitor.interval = 0", "monitor.idle_timeout = -0.5",
    "heartbeat.ping_interval = nan", "auth.token_public_key = 'missing.pem'",
    "reconnect.session_ttl = nan", "channels.history_ttl = nan", "server.publish_rate = nan",
])
def test_invalid_file_value(line: str, tmp_path: Path) -> None:
    key = line.split(" = ")[0]
    section, assignment = line.split(".", 1)
    path = write_toml(tmp_path, f"[{section}]\n{assignment}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, environ={})
    assert_one_line(error, key + ":")


@pytest.mark.parametrize(("toml", "key"), [
    ("[nope]\nport = 1", "nope:"), ("port = 1", "port:"), ("server = 1", "server:"),
])
def test_invalid_file_structure(toml: str, key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write_toml(tmp_path, toml + "\n"), environ={})
    assert_one_line(error, key)


@pytest.mark.parametrize(("variable", "text"), [
    ("WEBSOCKET_PORT", "lots"), ("WEBSOCKET_SSL_PORT", "8443.5"),
    ("WEBSOCKET_MESSAGE_SIZE_LIMIT", "1MB"), ("OMEGA_WS_MAX_CONNECTIONS", "many"),
    ("WEBSOCKET_MAX_RECONNECT_ATTEMPTS", "three"), ("WEBSOCKET_RECONNECT_DELAY", "5s"),
    ("WEBSOCKET_PORT", "65536"), ("WEBSOCKET_SSL_PORT", "-1"),
    ("WEBSOCKET_RECONNECT_DELAY", "nan"),
])
def test_invalid_environment_value(variable: str, text: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(environ={variable: text})
    message = assert_one_line(error, ENVIRONMENT[variable] + ":")
    assert text in message
    if not text.lstrip("-").isdigit() and text != "nan":
        assert variable in message


@pytest.mark.parametrize("case", ["missing", "directory", "bad syntax", "bad value"])
def test_unreadable_or_invalid_config_file(case: str, tmp_path: Path) -> None:
    path = {"missing": tmp_path / "absent.toml", "directory": tmp_path}.get(case)
    if path is None:
        body = "[server\nport = 1\n" if case == "bad syntax" else "[server]\nport = \n"
        path = write_toml(tmp_path, body)
    arguments: list[tuple[Path | None, dict[str, str]]] = [
        (path, {}), (None, {"OMEGA_WS_CONFIG": str(path)})]
    for given, environ in arguments:
        with pytest.raises(ConfigError) as error:
            load_config(given, environ=environ)
        assert str(path) in assert_one_line(error, "config file ")


@pytest.mark.parametrize(("cert", "key", "bad_key"), [
    ("cert", None, "server.key"), (None, "key", "server.cert"),
    ("absent", "key", "server.cert"), ("cert", "absent", "server.key"),
    ("junk", "key", "server.cert"), ("cert", "junk", "server.key"),
    ("cert", "other-cert", "server.key"), ("cert", "other-key", "server.key"),
])
def test_invalid_tls(cert: str | None, key: str | None, bad_key: str, tmp_path: Path) -> None:
    write_pair(tmp_path)
    write_pair(tmp_path, "other-")
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    server = {name: str(tmp_path / f"{value}.pem")
              for name, value in (("cert", cert), ("key", key)) if value is not None}
    with pytest.raises(ConfigError) as error:
        Config.from_mapping({"server": server})
    assert_one_line(error, bad_key + ":")


def test_valid_tls_pair(tmp_path: Path) -> None:
    cert, key = write_pair(tmp_path)
    config = load_config(environ={"SSL_CERT_PATH": str(cert), "SSL_KEY_PATH": str(key)})
    assert (config.server.cert, config.server.key) == (str(cert), str(key))


@pytest.mark.parametrize("description", [
    "systemd:domain=INET:index=0", "systemd:domain=INET:name=omega-ws",
])
def test_systemd_listen_without_inherited_sockets(
    description: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The parser reads LISTEN_FDS once, at import: make sure it saw none.
    monkeypatch.setattr(endpoints._SystemdParser, "_sddaemon", ListenFDs([], []))
    with pytest.raises(ConfigError) as error:
        Config.from_mapping({"server": {"listen": [description]}})
    assert description in assert_one_line(error, "server.listen:")


def test_valid_listen_strings(tmp_path: Path) -> None:
    listen = ["tcp:0:interface=127.0.0.1", f"unix:{tmp_path / 'ws.sock'}"]
    assert Config.from_mapping({"server": {"listen": listen}}).server.listen == tuple(listen)


def test_empty_admin_host_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^admin\.host: must not be empty$"):
        Config.from_mapping({"admin": {"host": ""}})


def rsa_public_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_token_public_key_must_be_a_pem_public_key(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-key.pem"
    bad.write_text("public key")
    with pytest.raises(ConfigError) as error:
        Config.from_mapping({"auth": {"token_public_key": str(bad)}})
    assert_one_line(error, "auth.token_public_key:")
    good = tmp_path / "key.pem"
    good.write_bytes(rsa_public_pem())
    config = Config.from_mapping({"auth": {"token_public_key": str(good)}})
    assert config.auth.anonymous_allowed is False


def test_invalid_toml_is_named_as_such(tmp_path: Path) -> None:
    broken = tmp_path / "x.toml"
    broken.write_text("[server\nport = 1\n")
    with pytest.raises(ConfigError, match=r"^config file .*x\.toml: invalid TOML \("):
        load_config(str(broken))
