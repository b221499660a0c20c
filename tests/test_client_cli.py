"""`python -m omega_ws.client subscribe|publish`, as processes, against a real server."""

from __future__ import annotations

import asyncio
import re
import signal
import sys

import pytest
import pytest_twisted
import websockets

from omega_ws.client import main

from .conftest import StartServer
from .support import aio

ensure_deferred = pytest_twisted.ensureDeferred
CLIENT = [sys.executable, "-m", "omega_ws.client"]


async def spawn(*args: str, stdin: bytes | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *CLIENT, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)


async def line(stream: asyncio.StreamReader | None) -> str:
    assert stream is not None
    return (await asyncio.wait_for(stream.readline(), 10)).decode().rstrip("\n")


@ensure_deferred
async def test_subscribe_prints_what_publish_sends(serve: StartServer) -> None:
    server = await serve()
    url = f"ws://127.0.0.1:{server.port}/news"

    async def scenario() -> tuple[list[str], int | None, int | None, bytes]:
        watcher = await spawn("subscribe", "--client-id", "watcher", url)
        try:
            assert await line(watcher.stderr) == "[CONNECTED]"
            publisher = await spawn("publish", url, '{"headline": "one"}', '{"n": 2}')
            await asyncio.wait_for(publisher.wait(), 10)
            piped = await spawn("publish", url)
            _, piped_err = await asyncio.wait_for(piped.communicate(b'{"from": "stdin"}\n'), 10)
            seen = [await line(watcher.stdout) for _ in range(3)]
            return seen, publisher.returncode, piped.returncode, piped_err
        finally:
            watcher.terminate()
            await asyncio.wait_for(watcher.wait(), 10)

    seen, published, piped, _ = await aio(scenario(), 30)
    assert seen == ['{"headline": "one"}', '{"n": 2}', '{"from": "stdin"}']
    assert (published, piped) == (0, 0)


@ensure_deferred
async def test_bad_message_and_unreachable_server_are_one_line_and_nonzero() -> None:
    async def scenario() -> tuple[tuple[int | None, bytes], tuple[int | None, bytes]]:
        bad = await spawn("publish", "ws://127.0.0.1:1/x", "[1, 2]")
        _, bad_err = await asyncio.wait_for(bad.communicate(), 10)
        gone = await spawn("publish", "--max-attempts", "2", "--reconnect-delay", "0.05",
                           "ws://127.0.0.1:1/x", "{}")
        _, gone_err = await asyncio.wait_for(gone.communicate(), 20)
        return (bad.returncode, bad_err), (gone.returncode, gone_err)

    (bad_code, bad_err), (gone_code, gone_err) = await aio(scenario(), 40)
    assert bad_code == 2
    assert bad_err.decode().strip() == "omega-ws client: error: '[1, 2]': not a JSON object"
    assert gone_code == 1
    assert gone_err.decode().split() == ["[RECONNECTING]", "[ERROR]"]


@ensure_deferred
async def test_bad_stdin_lines_are_skipped_and_reported(serve: StartServer) -> None:
    server = await serve()
    received: list[object] = []

    class Collect:
        def deliver(self, publication: object) -> None:
            received.append(publication.data)  # type: ignore[attr-defined]

    server.service.hub.subscribe("feed", Collect())  # type: ignore[arg-type]

    async def scenario() -> tuple[int | None, bytes]:
        piped = await spawn("publish", f"ws://127.0.0.1:{server.port}/feed")
        _, err = await asyncio.wait_for(
            piped.communicate(b'{"a": 1}\nnot json\n[1]\n{"b": 2}\n'), 20)
        return piped.returncode, err

    code, err = await aio(scenario(), 30)
    assert code == 2
    assert err.decode().splitlines() == [
        "[CONNECTED]", "omega-ws client: error: line 2: not a JSON object",
        "omega-ws client: error: line 3: not a JSON object", "[DISCONNECTED]"]
    assert received == [b'{"a": 1}', b'{"b": 2}']


def _sigint_as_python_sets_it() -> None:
    """In the child: SIGINT at its default, even if the tests run as a background job."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@ensure_deferred
async def test_subscribe_stopped_by_a_signal_closes_and_ends_quietly(
        serve: StartServer, signum: signal.Signals) -> None:
    server = await serve()

    async def scenario() -> tuple[int | None, str, str]:
        watcher = await asyncio.create_subprocess_exec(
            *CLIENT, "subscribe", f"ws://127.0.0.1:{server.port}/news",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, preexec_fn=_sigint_as_python_sets_it)
        try:
            first = await line(watcher.stderr)
            watcher.send_signal(signum)
            out, err = await asyncio.wait_for(watcher.communicate(), 10)
            return watcher.returncode, first + "\n" + err.decode(), out.decode()
        finally:
            if watcher.returncode is None:
                watcher.kill()
                await watcher.wait()

    code, err, out = await aio(scenario(), 30)
    assert err == "[CONNECTED]\n[DISCONNECTED]\n"  # no traceback, nothing else
    assert out == ""
    assert code == -signum  # ended as killed by it: the shell sees 128 + signum
    closes = server.service.metrics.render().decode()  # type: ignore[attr-defined]
    assert 'omega_ws_closes_total{code="1000"} 1.0' in closes  # it closed, cleanly


@ensure_deferred
async def test_publish_sends_the_json_text_as_given(serve: StartServer) -> None:
    server = await serve()
    url = f"ws://127.0.0.1:{server.port}/news"
    given = ['{"a" :  1}', '{"z": 1, "a": {"é": "\u00fc"}}']

    async def scenario() -> tuple[list[str], int | None, int | None]:
        ws = await websockets.connect(url)
        try:
            publisher = await spawn("publish", url, *given)
            await asyncio.wait_for(publisher.communicate(), 10)
            piped = await spawn("publish", url)
            await asyncio.wait_for(piped.communicate(b'{"b"  :2}\r\n{ "c":  [ ] }\n'), 10)
            return ([str(await asyncio.wait_for(ws.recv(), 10)) for _ in range(4)],
                    publisher.returncode,
                    piped.returncode)
        finally:
            await ws.close()

    received, published, piped = await aio(scenario(), 30)
    assert [text.encode() for text in received] == [
        b'{"a" :  1}', '{"z": 1, "a": {"é": "\u00fc"}}'.encode(), b'{"b"  :2}',
        b'{ "c":  [ ] }']  # the bytes given, not re-serialised; a line without its CRLF
    assert (published, piped) == (0, 0)


def test_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ([], ["subscribe"], ["publish"]):
        with pytest.raises(SystemExit) as exited:
            main([*command, "--help"])
        assert exited.value.code == 0
        text = capsys.readouterr().out
        assert "Usage: python -m omega_ws.client" in text
        assert not re.search(r"\b[CLIB]\{", text), text
