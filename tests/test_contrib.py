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
