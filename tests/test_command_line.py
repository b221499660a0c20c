"""
The server as users start it: real `twistd -n omega-ws` and `python -m
omega_ws` processes on 127.0.0.1, driven with the `websockets` client and
stopped with signals; bad configuration; the plugin after a real install.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from omega_ws.devcert import write_pair

from .nodes import LOOPBACK_ARGS, PYTHON_M, REPO, TWISTD, Running, clean_env


@pytest.fixture
def running(tmp_path: Path) -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait(5)


def test_twistd_serves_notifies_systemd_and_stops_on_sigterm(
    tmp_path: Path, running: list[Running]
) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(20)
    server = Running(TWISTD + LOOPBACK_ARGS, clean_env(NOTIFY_SOCKET=str(tmp_path / "notify")),
                     tmp_path)
    running.append(server)
    ws_url, admin_url = server.urls()
    assert ws_url.startswith("ws://127.0.0.1:") and admin_url.startswith("http://127.0.0.1:")
    assert notify.recv(100) == b"READY=1"
    assert "wss:// listener is off" in server.output()
    with connect(ws_url + "/alerts", open_timeout=5) as a, \
            connect(ws_url + "/alerts", open_timeout=5) as b:
        a.send('{"severity": "high"}')
        assert b.recv(5) == '{"severity": "high"}'
        code = server.stop(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            b.recv(5)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1001, "going away")
    # twistd stops cleanly and then ends by the signal itself, by design.
    assert code in (0, -signal.SIGTERM), server.output()
    assert notify.recv(100) == b"STOPPING=1"
    assert "Traceback" not in server.output()


def test_python_m_with_tls_from_the_environment(tmp_path: Path, running: list[Running]) -> None:
    cert, key = write_pair(tmp_path / "certs")
    env = clean_env(SSL_CERT_PATH=str(cert), SSL_KEY_PATH=str(key), WEBSOCKET_SSL_PORT="0")
    server = Running(PYTHON_M + LOOPBACK_ARGS, env, tmp_path)
    running.append(server)
    ws_url, wss_url, _ = server.urls()
    assert wss_url.startswith("wss://127.0.0.1:")
    import ssl

    context = ssl.create_default_context(cafile=str(cert))
    secure_url = wss_url.replace("127.0.0.1", "localhost") + "/tls"
    with connect(secure_url, ssl=context, open_timeout=5) as secure, \
            connect(ws_url + "/tls", open_timeout=5) as plain:
        plain.send("{}")
        assert secure.recv(5) == "{}"
        assert server.stop(signal.SIGINT) == 0
        with pytest.raises(ConnectionClosed):
            secure.recv(5)
    assert "wss:// listener is off" not in server.output()


def test_json_log_format(tmp_path: Path, running: list[Running]) -> None:
    server = Running(PYTHON_M + LOOPBACK_ARGS + ["--log-format", "json"], clean_env(), tmp_path)
    running.append(server)
    server.urls()
    assert server.stop() == 0
    events = [json.loads(line) for line in server.lines if line.strip()]
    listening = [e for e in events if e.get("log_format") == "omega-ws listening on {url}"]
    assert [e["url"].split(":")[0] for e in listening] == ["ws", "http"]


BAD_CONFIGURATIONS = [
    (["--port", "70000"], {}, "server.port: 70000 is out of range"),
    (["--admin-port", "x"], {}, "admin.port: 'x'"),
    ([], {"WEBSOCKET_PORT": "-1"}, "server.port: -1 is out of range"),
    (["--config", "missing.toml"], {}, "config file missing.toml: cannot read it"),
    (["--config", "unknown.toml"], {}, "server.prot: unknown key"),
    (["--cert", "nope.pem", "--key", "nope.pem"], {}, "server.cert: cannot read"),
    (["--listen", "bogus:1"], {}, "server.listen: 'bogus:1' is not a valid endpoint"),
    (["--no-such-option"], {}, "option --no-such-option not recognized"),
]


@pytest.mark.parametrize("command", [TWISTD, PYTHON_M], ids=["twistd", "python-m"])
@pytest.mark.parametrize(("args", "env", "message"), BAD_CONFIGURATIONS)
def test_bad_configuration_is_one_clear_line(
    tmp_path: Path, command: list[str], args: list[str], env: dict[str, str], message: str
) -> None:
    (tmp_path / "unknown.toml").write_text("[server]\nprot = 1\n")
    result = subprocess.run(command + args, env=clean_env(**env), cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("omega-ws: error: ") and message in lines[0]


@pytest.mark.parametrize("command", [TWISTD, PYTHON_M], ids=["twistd", "python-m"])
def test_port_in_use_is_one_clear_line(tmp_path: Path, command: list[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            command + ["--host", "127.0.0.1", "--port", str(port), "--admin-port", "0"],
            env=clean_env(), cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    message = result.stderr.strip()
    assert message.startswith("omega-ws: error: server.port: cannot listen on")
    assert "Address already in use" in message and "\n" not in message


def test_plugin_is_discoverable_after_a_real_install(tmp_path: Path) -> None:
    """
    A non-editable install, with its dependencies, into a folder of its own;
    then Python without site-packages sees only that folder, so what twistd
    finds is what the install put there.
    """
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-build-isolation", "--target", str(target), str(REPO)],
        check=True, timeout=300, capture_output=True)
    assert (target / "twisted" / "plugins" / "omega_ws_plugin.py").exists()
    assert (target / "twisted" / "plugins" / "__init__.py").exists()  # Twisted's own
    isolated = [sys.executable, "-S"]
    env = {"PYTHONPATH": str(target), "PATH": os.environ["PATH"]}
    probe = (
        "from twisted.plugin import getPlugins\n"
        "from twisted.application.service import IServiceMaker\n"
        "import omega_ws, twisted.plugins.omega_ws_plugin as p\n"
        "names = [m.tapname for m in getPlugins(IServiceMaker)]\n"
        "print(names.count('omega-ws'), p.__file__, omega_ws.__file__)\n"
    )
    result = subprocess.run(isolated + ["-c", probe], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=True)
    count, plugin_file, package_file = result.stdout.split()
    assert count == "1"
    assert plugin_file.startswith(str(target)) and package_file.startswith(str(target))
    twistd = "from twisted.scripts.twistd import run; run()"
    usage = subprocess.run(isolated + ["-c", twistd, "--help"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert "omega-ws" in usage.stdout


def test_socket_activation_through_an_inherited_listener(
    tmp_path: Path, running: list[Running]
) -> None:
    """What systemd's socket unit does: fd 3 listening, LISTEN_PID/FDS/FDNAMES set."""
    inherited = socket.socket()
    inherited.bind(("127.0.0.1", 0))
    inherited.listen()
    port = inherited.getsockname()[1]
    fd = inherited.fileno()
    command = ["sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh", *PYTHON_M, *LOOPBACK_ARGS,
               "--listen", "systemd:domain=INET:name=ws"]
    server = Running(command, clean_env(LISTEN_FDS="1", LISTEN_FDNAMES="ws"), tmp_path,
                     preexec_fn=lambda: os.dup2(fd, 3), pass_fds=(3,))
    running.append(server)
    inherited.close()
    urls = server.urls()
    assert f"ws://127.0.0.1:{port}" in urls
    with connect(f"ws://127.0.0.1:{port}/activated", open_timeout=5) as ws:
        ws.send('{"via": "systemd"}')
        assert ws.recv(5) == '{"via": "systemd"}'
    assert server.stop() == 0


def _soft_file_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-file limit in /proc")


def test_the_open_file_limit_is_raised_for_max_connections(
    tmp_path: Path, running: list[Running]
) -> None:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 20000:
        pytest.fail(f"this test needs a hard open-file limit of 20,000 or more, not {hard}")

    def low_soft_limit() -> None:  # as many distributions start services: 1,024
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))

    server = Running(PYTHON_M + LOOPBACK_ARGS, clean_env(), tmp_path,
                     preexec_fn=low_soft_limit)
    running.append(server)
    server.urls()
    # server.max_connections (10,000) + admin.max_connections (64) + spare ones
    assert _soft_file_limit(server.proc.pid) == 10000 + 64 + 256
    assert "open file limit" not in server.output()
    server.stop()
    capped = Running(PYTHON_M + LOOPBACK_ARGS, clean_env(), tmp_path,
                     preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (512, 2048)))
    running.append(capped)
    capped.urls()
    assert _soft_file_limit(capped.proc.pid) == 2048
    assert "open file limit is 2048, below server.max_connections (10000)" in capped.output()
    capped.stop()
