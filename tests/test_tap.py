"""
Tests for L{omega_ws.tap}: command-line options build the configuration
(defaults < file < environment < command line), a bad option or value is
one line on stderr and status 2, and L{makeService} wires a service
without starting it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import Application, IService, MultiService
from twisted.logger import ILogObserver

from omega_ws.config import ENVIRONMENT, Config
from omega_ws.devcert import make_self_signed
from omega_ws.service import OmegaService
from omega_ws.tap import Options, makeService


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Options reads os.environ: start every test from an empty configuration environment."""
    for variable in [*ENVIRONMENT, "OMEGA_WS_CONFIG"]:
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def parse(*arguments: str) -> Config:
    options = Options()
    options.parseOptions(list(arguments))
    return options.config


def get(config: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def write_toml(directory: Path, text: str) -> Path:
    path = directory / "omega-ws.toml"
    path.write_text(text)
    return path


def write_pair(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert_pem, key_pem = make_self_signed()
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "key.pem").write_bytes(key_pem)
    return directory / "cert.pem", directory / "key.pem"


def error_line(capsys: pytest.CaptureFixture[str], *arguments: str) -> str:
    """Parse C{arguments}, expecting exit status 2; the error after the prefix."""
    with pytest.raises(SystemExit) as exit_info:
        parse(*arguments)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("omega-ws: error: ") and err.endswith("\n")
    assert err.count("\n") == 1, err
    return err.removeprefix("omega-ws: error: ").rstrip("\n")


def test_no_options_gives_the_defaults() -> None:
    assert parse() == Config()


@pytest.mark.parametrize(("arguments", "key", "expected"), [
    (["--host", "0.0.0.0"], "server.host", "0.0.0.0"),
    (["--port", "0"], "server.port", 0),
    (["-p", "1234"], "server.port", 1234),
    (["--port=4321"], "server.port", 4321),
    (["--tls-port", "8443"], "server.tls_port", 8443),
    (["--max-message-size", "4096"], "server.max_message_size", 4096),
    (["--testee-port", "9001"], "server.testee_port", 9001),
    (["--admin-port", "0"], "admin.port", 0),
    (["--broker", "memory://"], "broker.url", "memory://"),
    (["--log-format", "json"], "log.format", "json"),
    (["--listen", "tcp:0"], "server.listen", ("tcp:0",)),
    (["--listen", "tcp:0", "--listen", "unix:/tmp/omega.sock"], "server.listen",
     ("tcp:0", "unix:/tmp/omega.sock")),
])
def test_option(arguments: list[str], key: str, expected: Any) -> None:
    config = parse(*arguments)
    assert get(config, key) == expected
    assert config.replace(**{key.split(".")[0]: {key.split(".")[1]: get(Config(), key)}}) == (
        Config())


def test_cert_and_key_paths_are_taken_as_given(
    tmp_path: Path, clean_environment: pytest.MonkeyPatch
) -> None:
    write_pair(tmp_path / "certs")
    clean_environment.chdir(tmp_path)
    config = parse("--cert", "certs/cert.pem", "--key", "certs/key.pem")
    assert (config.server.cert, config.server.key) == ("certs/cert.pem", "certs/key.pem")


def test_config_file_relative_paths(tmp_path: Path) -> None:
    cert, _ = write_pair(tmp_path / "etc" / "tls")
    path = write_toml(tmp_path / "etc", "[server]\ncert = 'tls/cert.pem'\nkey = 'tls/key.pem'\n")
    assert Path(parse("--config", str(path)).server.cert or "") == cert


def test_precedence(tmp_path: Path, clean_environment: pytest.MonkeyPatch) -> None:
    path = write_toml(tmp_path, "[server]\nport = 1\ntls_port = 2\nmax_message_size = 3000\n"
                                "listen = ['tcp:0']\n[log]\nlevel = 'debug'\n")
    clean_environment.setenv("WEBSOCKET_SSL_PORT", "20")
    clean_environment.setenv("WEBSOCKET_MESSAGE_SIZE_LIMIT", "30000")
    config = parse("-c", str(path), "--max-message-size", "300000", "--listen", "tcp:1")
    assert (config.server.port, config.server.tls_port, config.server.max_message_size) == (
        1, 20, 300000)
    assert config.log.level == "debug"
    assert config.server.listen == ("tcp:1",)  # --listen replaces server.listen


def test_config_file_from_environment(
    tmp_path: Path, clean_environment: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    chosen = write_toml(tmp_path / "a", "[server]\nport = 1\n")
    ignored = write_toml(tmp_path / "b", "[server]\nport = 2\n")
    clean_environment.setenv("OMEGA_WS_CONFIG", str(chosen))
    assert parse().server.port == 1
    clean_environment.setenv("OMEGA_WS_CONFIG", str(ignored))
    assert parse("--config", str(chosen)).server.port == 1
    clean_environment.setenv("OMEGA_WS_CONFIG", "")
    assert parse() == Config()


def test_environment_is_read(clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("WEBSOCKET_PORT", "7000")
    clean_environment.setenv("OMEGA_WS_TOKEN_SECRET", "s3cret")
    clean_environment.setenv("WEBSOCKET_HOST", "")
    config = parse()
    assert (config.server.port, config.server.host) == (7000, "localhost")
    assert config.auth.anonymous_allowed is False
    assert parse("--port", "7001").server.port == 7001


@pytest.mark.parametrize(("arguments", "start"), [
    (["--port", "70000"], "server.port:"),
    (["--port", "-1"], "server.port:"),
    (["--tls-port", "65536"], "server.tls_port:"),
    (["--admin-port", "99999"], "admin.port:"),
    (["--testee-port", "65536"], "server.testee_port:"),
    (["--port", "http"], "server.port:"),
    (["--max-message-size", "0"], "server.max_message_size:"),
    (["--log-format", "xml"], "log.format:"),
    (["--broker", "http://example.com"], "broker.url:"),
    (["--listen", "bogus:1"], "server.listen:"),
    (["--listen", "tcp:0", "--listen", "tcp:notaport"], "server.listen:"),
    (["--cert", "cert.pem"], "server.key:"),
    (["--key", "key.pem"], "server.cert:"),
    (["--cert", "absent.pem", "--key", "absent-key.pem"], "server.cert:"),
    (["--config", "/nonexistent/omega-ws.toml"], "config file /nonexistent/omega-ws.toml"),
    (["--bogus"], "option --bogus not recognized"),
    (["--port"], "option --port requires argument"),
    (["extra"], "Wrong number of arguments"),
])
def test_invalid_command_line(
    arguments: list[str], start: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert error_line(capsys, *arguments).startswith(start)


@pytest.mark.parametrize("content", ["[server]\nbogus = 1\n", "[nope]\n", "[server\n"])
def test_invalid_config_file(
    content: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_toml(tmp_path, content)
    message = error_line(capsys, "--config", str(path))
    assert message.startswith(("server.bogus:", "nope:", "config file "))


def test_invalid_environment_value(
    capsys: pytest.CaptureFixture[str], clean_environment: pytest.MonkeyPatch
) -> None:
    clean_environment.setenv("WEBSOCKET_PORT", "eighty")
    message = error_line(capsys)
    assert message.startswith("server.port:") and "WEBSOCKET_PORT" in message


@pytest.mark.parametrize("option", [
    "--port", "--tls-port", "--max-message-size", "--testee-port", "--admin-port",
])
def test_non_integer_option_names_the_option(
    option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    message = error_line(capsys, option, "many")
    assert f"(from {option})" in message, message


def test_make_service_is_not_started() -> None:
    options = Options()
    options.parseOptions(["--port", "0", "--admin-port", "0"])
    service = makeService(options)
    assert IService.providedBy(service)
    assert isinstance(service, MultiService)
    assert not service.running
    (child,) = list(service)
    assert isinstance(child, OmegaService)
    assert child.config is options.config
    assert not child.running


@pytest.mark.parametrize(("arguments", "replaced"), [
    ([], False), (["--log-format", "json"], True),
])
def test_make_service_log_observer(arguments: list[str], replaced: bool) -> None:
    options = Options()
    options.parseOptions(["--port", "0", "--admin-port", "0", *arguments])
    application = Application("omega-ws")
    makeService(options).setServiceParent(application)
    assert (application.getComponent(ILogObserver, None) is not None) is replaced
    assert not IService(application).running
