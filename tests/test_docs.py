"""
The documentation stands on its own and agrees with the code:

- the configuration reference (docs/configuration.md) has a row for every
  key of the one schema (config.py), with its type, default, environment
  variable and command-line option as the schema and tap.py define them,
  and the complete example holds every key at its default;
- the README's table of the first keys agrees with the same schema;
- README.md, docs/*.md and contrib/**/*.md refer to nothing outside the
  repository, and every relative link (and #anchor) in them points at
  something that is there; the README lists every docs page, and every path
  in its Layout table exists;
- every metric a running server exports is explained in docs/operations.md;
- the reverse-proxy configurations in contrib/proxy/ are the ones
  docs/deployment.md shows, and nginx and Caddy accept them (when installed).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from omega_ws.config import _SECTIONS, ENVIRONMENT, Config, ConfigError
from omega_ws.devcert import make_self_signed
from omega_ws.metrics import _BROKER_FIGURES, Metrics
from omega_ws.tap import _CLI_KEYS, Options

from .conftest import StartServer
from .support import http

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PROXY = ROOT / "contrib" / "proxy"


def _keys() -> list[tuple[str, str]]:
    return [(section, f.name) for section, cls in _SECTIONS.items()
            for f in dataclasses.fields(cls)]


def _default(section: str, name: str) -> Any:
    return getattr(getattr(Config(), section), name)


def _base_type(section: str, name: str) -> Any:
    """The key's type without its None: int, float, bool, str or tuple."""
    hint = typing.get_type_hints(_SECTIONS[section])[name]
    if isinstance(hint, types.UnionType):
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    return tuple if typing.get_origin(hint) is tuple else hint


def _as_toml(value: Any) -> str:
    """A default as the reference writes it: TOML, whole floats without '.0'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return json.dumps(list(value))
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _reference() -> str:
    return (DOCS / "configuration.md").read_text()


def _rows() -> dict[str, dict[str, str]]:
    """configuration.md's key rows, by key: type, default, env, cli, meaning."""
    rows = {}
    for line in _reference().splitlines():
        match = re.match(r"\| `(\w+\.\w+)` \|(.*)\|\s*$", line)
        if match:
            cells = [cell.strip() for cell in match.group(2).split("|")]
            assert len(cells) == 5, f"{match.group(1)}: expected 6 cells, got {line!r}"
            rows[match.group(1)] = dict(zip(("type", "default", "env", "cli", "meaning"),
                                            cells, strict=True))
    return rows


def _cli_options() -> dict[str, set[str]]:
    """Configuration key -> every command-line spelling that sets it (tap.py)."""
    shorts = {long: short for long, short, *_ in Options.optParameters if short}
    options: dict[str, set[str]] = {}
    for option, key in {**_CLI_KEYS, "listen": "server.listen"}.items():
        spellings = options.setdefault(key, set())
        spellings.add("--" + option)
        if option in shorts:
            spellings.add("-" + shorts[option])
    return options


# Keys that are checked only alongside another one.
_CONTEXT: dict[str, dict[str, dict[str, Any]]] = {
    "broker.prefix": {"broker": {"url": "redis://127.0.0.1:6379/0"}},  # memory:// ignores it
}


def _accepts(key: str, value: Any) -> bool:
    section, name = key.split(".")
    mapping = {s: dict(values) for s, values in _CONTEXT.get(key, {}).items()}
    mapping.setdefault(section, {})[name] = value
    try:
        Config.from_mapping(mapping)
    except ConfigError:
        return False
    return True


# -- the configuration reference -----------------------------------------------------------


def test_every_key_has_a_row_in_the_reference() -> None:
    text = _reference()
    missing = [f"{s}.{k}" for s, k in _keys() if f"| `{s}.{k}` |" not in text]
    assert not missing, f"keys without a row in docs/configuration.md: {missing}"


def test_every_row_is_a_key() -> None:
    known = {f"{s}.{k}" for s, k in _keys()}
    assert not set(_rows()) - known, "rows in docs/configuration.md for keys that do not exist"


def test_documented_defaults_are_the_schemas() -> None:
    wrong = []
    for key, row in _rows().items():
        default = _default(*key.split("."))
        cell = row["default"]
        if default is None:
            if not cell.startswith("unset"):
                wrong.append(f"{key}: the default is unset, the reference says {cell!r}")
            continue
        shown = re.match(r"`([^`]*)`", cell)
        if shown is None or shown.group(1) != _as_toml(default):
            wrong.append(f"{key}: the default is {_as_toml(default)}, the reference says {cell!r}")
    assert not wrong, "\n".join(wrong)


_TYPE_WORDS: dict[Any, tuple[str, ...]] = {
    bool: ("boolean",),
    int: ("integer",),
    float: ("seconds", "number"),
    str: ("string", "path", "channel name"),
    tuple: ("list of strings",),
}


def test_documented_types_are_the_schemas() -> None:
    wrong = []
    for key, row in _rows().items():
        base = _base_type(*key.split("."))
        cell = row["type"]
        if base is str and cell.startswith("`"):
            # An enumeration: every value listed is accepted, and only those.
            values = re.findall(r"`\"?([^`\"]*)\"?`", cell)
            refused = [v for v in values if not _accepts(key, v)]
            if refused or _accepts(key, "not-" + values[0]):
                wrong.append(f"{key}: {cell!r} is not the set of values the schema accepts")
        elif not cell.startswith(_TYPE_WORDS[base]):
            wrong.append(f"{key}: the schema's type is {base.__name__}, the reference says "
                         f"{cell!r} (use one of {_TYPE_WORDS[base]})")
    assert not wrong, "\n".join(wrong)


def test_documented_bounds_are_the_schemas() -> None:
    """'integer 0–65535', '≥ 1', '> 0', 'not empty': the edges are accepted, past them not."""
    wrong = []
    for key, row in _rows().items():
        base = _base_type(*key.split("."))
        cell = row["type"]
        step = 1 if base is int else 0.5
        inside: list[Any] = []
        outside: list[Any] = []
        if match := re.search(r"(\d+)–(\d+)", cell):
            low, high = int(match.group(1)), int(match.group(2))
            inside += [low, high]
            outside += [low - 1, high + 1]
        if match := re.search(r"≥ (\d+)", cell):
            inside.append(int(match.group(1)))
            outside.append(int(match.group(1)) - step)
        if "> 0" in cell:
            inside.append(step)
            outside.append(0)
        if "not empty" in cell:
            outside.append([] if base is tuple else "")
        for value in inside:
            if not _accepts(key, value):
                wrong.append(f"{key} = {value!r} is refused, but the reference says {cell!r}")
        for value in outside:
            if _accepts(key, value):
                wrong.append(f"{key} = {value!r} is accepted, but the reference says {cell!r}")
    assert not wrong, "\n".join(wrong)


def test_documented_environment_variables_are_the_schemas() -> None:
    wrong = []
    for key, row in _rows().items():
        documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", row["env"]))
        real = {variable for variable, target in ENVIRONMENT.items() if target == key}
        if documented != real:
            wrong.append(f"{key}: environment {sorted(real)}, the reference says {row['env']!r}")
    assert not wrong, "\n".join(wrong)


def test_documented_command_line_options_are_the_real_ones() -> None:
    options = _cli_options()
    wrong = []
    for key, row in _rows().items():
        documented = set(re.findall(r"`(--?[a-z][a-z-]*)`", row["cli"]))
        real = options.get(key, set())
        if documented != real:
            wrong.append(f"{key}: options {sorted(real)}, the reference says {row['cli']!r}")
    assert not wrong, "\n".join(wrong)


def test_every_key_is_in_the_complete_example() -> None:
    example = _reference().split("## Complete example", 1)[1]
    tables = dict(re.findall(r"\n\[(\w+)\]\n(.*?)(?=\n\[|\n```)", example, re.S))
    missing = [f"{s}.{k}" for s, k in _keys()
               if not re.search(rf"^#? ?{k} = ", tables.get(s, ""), re.M)]
    assert not missing, f"keys missing from the complete example: {missing}"


def test_the_complete_example_shows_the_defaults() -> None:
    """
    A key set in the example has its default unless its comment says
    "default ..."; a key left commented out is one whose default is unset.
    The example itself is a valid configuration.
    """
    block = _reference().split("## Complete example", 1)[1].split("```toml\n", 1)[1]
    block = block.split("```", 1)[0]
    wrong = []
    section = ""
    for line in block.splitlines():
        if header := re.fullmatch(r"\[(\w+)\]", line):
            section = header.group(1)
            continue
        entry = re.match(r"(#\s?)?(\w+) = (.*?)(?:\s+#\s*(.*))?$", line)
        if not entry or not section:
            continue
        commented, name, value, comment = entry.groups()
        default = _default(section, name)
        if commented:
            if default is not None:
                wrong.append(f"{section}.{name} is commented out, but its default is {default!r}")
        elif not (comment or "").startswith("default"):
            parsed = tomllib.loads(f"v = {value}")["v"]
            if _as_toml(tuple(parsed) if isinstance(parsed, list) else parsed) != _as_toml(
                    default):
                wrong.append(f"{section}.{name} = {value} but its default is {_as_toml(default)}"
                             " (say '# default ...' if the example differs on purpose)")
    assert not wrong, "\n".join(wrong)
    document = tomllib.loads(block)
    document["server"].pop("cert"), document["server"].pop("key")  # files the example names
    Config.from_mapping(document)


def test_readme_table_of_first_keys_agrees_with_the_schema() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    known = {f"{s}.{k}" for s, k in _keys()}
    options = _cli_options()
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows, "no table of keys in the README's Configuration section"
    wrong = []
    for line in rows:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        keys: list[str] = []
        for token in re.findall(r"`([a-z_]+(?:\.[a-z_]+)?)`", cells[0]):
            name = token if "." in token else f"{keys[-1].split('.')[0]}.{token}" if keys else ""
            if name in known:
                keys.append(name)
        if not keys:
            wrong.append(f"no key in {cells[0]!r}")
            continue
        for variable in re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[1]):
            if ENVIRONMENT.get(variable) not in keys:
                wrong.append(f"{variable} does not set any of {keys}")
        for option in re.findall(r"`(--?[a-z][a-z-]*)`", cells[2]):
            if not any(option in options.get(key, ()) for key in keys):
                wrong.append(f"{option} does not set any of {keys}")
        parts = cells[3].split(" / ")
        defaults = [_default(*key.split(".")) for key in keys]
        if len(parts) != len(keys):
            if not (all(d is None for d in defaults) and cells[3].startswith("unset")):
                wrong.append(f"{keys}: defaults {defaults}, the README says {cells[3]!r}")
            continue
        for key, part, default in zip(keys, parts, defaults, strict=True):
            shown = re.match(r"`([^`]*)`", part)
            if default is None:
                ok = part.startswith("unset")
            else:
                ok = (shown is not None
                      and shown.group(1).strip('"') == _as_toml(default).strip('"'))
            if not ok:
                wrong.append(f"{key}: default {_as_toml(default)}, the README says {part!r}")
    assert not wrong, "\n".join(wrong)


# -- nothing outside the repository; every link resolves ------------------------------------


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md")),
            *sorted((ROOT / "contrib").rglob("*.md"))]


def _prose(path: Path) -> list[str]:
    """The page's lines with fenced code blocks blanked (line numbers kept)."""
    lines, fenced = [], False
    for line in path.read_text().splitlines():
        if re.match(r"\s*(```|~~~)", line):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower case, punctuation dropped, - for spaces."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose(path):
        if match := re.match(r"(#{1,6})\s+(.*?)\s*#*\s*$", line):
            slug = _slug(match.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    anchors.update(re.findall(r'<a (?:name|id)="([^"]+)"', path.read_text()))
    return anchors


def _links(path: Path) -> list[tuple[int, str]]:
    found = []
    for number, line in enumerate(_prose(path), 1):
        line = re.sub(r"`[^`]*`", "", line)
        found += [(number, target) for target in re.findall(r"\]\(\s*<?([^)\s>]+)>?", line)]
        found += [(number, target) for target in re.findall(r"^\s*\[[^\]]+\]:\s*(\S+)", line)]
    return found


def test_slugs_are_githubs() -> None:
    assert _slug("`POST /api/<method>`: the server API") == "post-apimethod-the-server-api"
    assert _slug("`[channels]`") == "channels"
    assert _slug("Presence and `presence_stats`") == "presence-and-presence_stats"
    assert _slug("**Sizing** from the benchmark") == "sizing-from-the-benchmark"


def test_docs_refer_to_nothing_outside_the_repository() -> None:
    outside = re.compile(r"SPEC\b|(?i:shared folder|\bthe issue\b|issue's)")
    found = [f"{page.relative_to(ROOT)}:{number}: {line.strip()}"
             for page in _pages()
             for number, line in enumerate(page.read_text().splitlines(), 1)
             if outside.search(line)]
    for page in _pages():
        for number, target in _links(page):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                if target.startswith("file:"):
                    found.append(f"{page.relative_to(ROOT)}:{number}: {target}")
                continue
            path = target.split("#", 1)[0]
            resolved = (page.parent / path).resolve()
            if path.startswith("/") or not resolved.is_relative_to(ROOT):
                found.append(f"{page.relative_to(ROOT)}:{number}: {target} is outside the "
                             "repository")
    assert not found, "references to things outside the repository:\n" + "\n".join(found)


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in _pages():
        for number, target in _links(page):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}:{number}: {target}"
            if not resolved.exists():
                broken.append(f"{where}: no such file")
                continue
            if anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{where}: no heading with that anchor in {path or 'this page'}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_listed_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    unlisted = [page.name for page in sorted(DOCS.glob("*.md"))
                if f"(docs/{page.name})" not in readme]
    assert not unlisted, f"docs pages the README does not link to: {unlisted}"


def test_every_path_in_the_readme_layout_exists() -> None:
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    missing = []
    for line in layout.splitlines():
        if not line.startswith("| `"):
            continue
        tokens = re.findall(r"`([^`]+)`", line.split("|")[1])
        first = ROOT / tokens[0]
        base = first if tokens[0].endswith("/") else first.parent
        for token in tokens:
            path = ROOT / token if "/" in token else base / token
            if not path.exists():
                missing.append(token)
    assert not missing, f"paths in the README's Layout table that do not exist: {missing}"


# -- every metric is explained in docs/operations.md ----------------------------------------


def _metric_names(exposition: str) -> set[str]:
    return {name for name in re.findall(r"^# TYPE (\S+) \w+$", exposition, re.M)
            if not name.endswith("_created")}


@pytest_twisted.ensureDeferred
async def test_every_metric_is_explained_in_operations(serve: StartServer) -> None:
    server = await serve()
    status, _, text = await http("GET", "127.0.0.1", server.admin_port, "/metrics")
    assert status == 200
    names = _metric_names(text.decode())
    # The broker's figures: each broker exports some; the Redis broker's too.
    every_figure = Metrics(dict, lambda: True, lambda: {name: 0 for name, *_ in _BROKER_FIGURES})
    names |= _metric_names(every_figure.render().decode())
    assert "omega_ws_admin_refusals_total" in names
    operations = (DOCS / "operations.md").read_text()
    missing = sorted(name for name in names if f"`{name}`" not in operations)
    assert not missing, f"metrics not explained in docs/operations.md: {missing}"
    # ... and every metric the docs name exists.
    named = {name for page in _pages()
             for name in re.findall(r"\bomega_ws_[a-z_]*[a-z](?![a-z_.(])", page.read_text())}
    unknown = sorted(named - names)
    assert not unknown, f"the docs name metrics that do not exist: {unknown}"


# -- the reverse-proxy configurations -------------------------------------------------------


def _deployment() -> str:
    return (DOCS / "deployment.md").read_text()


@pytest.mark.parametrize("name", ["nginx.conf", "Caddyfile"])
def test_proxy_configurations_are_the_ones_the_deployment_page_shows(name: str) -> None:
    shipped = (PROXY / name).read_text()
    blocks = re.findall(r"```\w*\n(.*?)```", _deployment(), re.S)
    assert shipped in blocks, f"docs/deployment.md does not show contrib/proxy/{name} as it is"
    assert f"contrib/proxy/{name}" in _deployment()


def _pki(tmp_path: Path) -> tuple[Path, Path]:
    cert_pem, key_pem = make_self_signed()
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    return cert, key


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    cert, key = _pki(tmp_path)
    snippet = re.sub(r"/etc/letsencrypt/live/[^/]+/(fullchain|privkey)\.pem",
                     lambda m: str(cert if m.group(1) == "fullchain" else key),
                     (PROXY / "nginx.conf").read_text())
    (tmp_path / "omega-ws.conf").write_text(snippet)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {tmp_path};\n"
        f"  proxy_temp_path {tmp_path};\n  include {tmp_path}/omega-ws.conf;\n}}\n")
    command = ["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed")
def test_caddy_accepts_the_configuration(tmp_path: Path) -> None:
    result = subprocess.run(
        ["caddy", "validate", "--adapter", "caddyfile", "--config", str(PROXY / "Caddyfile")],
        capture_output=True, text=True, timeout=60,
        env={"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path),
             "XDG_CONFIG_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
