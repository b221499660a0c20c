"""The admin HTTP listener over a real socket: health, metrics, server API."""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from .conftest import StartServer
from .support import aio, api, closed, connect, http, recv, send

ensure_deferred = pytest_twisted.ensureDeferred


@ensure_deferred
async def test_health_ok_and_503_when_the_broker_is_down(serve: StartServer) -> None:
    server = await serve()
    status, headers, body = await http("GET", "127.0.0.1", server.admin_port, "/health")
    assert (status, json.loads(body)["status"]) == (200, "ok")
    assert headers["content-type"] == "application/json"
    await server.service.broker.stop()
    status, _, body = await http("GET", "127.0.0.1", server.admin_port, "/health")
    assert status == 503
    assert json.loads(body)["problems"] == ["broker unreachable"]


@ensure_deferred
async def test_publish_api_reaches_raw_clients(serve: StartServer) -> None:
    server = await serve()
    ws = await connect(f"ws://127.0.0.1:{server.port}/market.trap")
    status, body = await api(server.admin_port, "publish",
                             {"channel": "market.trap", "data": {"px": 101.5}})
    assert status == 200
    assert body["result"]["offset"] == 1
    assert isinstance(body["result"]["epoch"], str)
    assert await recv(ws) == '{"px":101.5}'
    status, body = await api(server.admin_port, "publish",
                             {"channel": "market.trap", "data": {"px": 102}})
    assert body["result"]["offset"] == 2
    assert await recv(ws) == '{"px":102}'
    await aio(ws.close())


@pytest.mark.parametrize(
    ("method", "body", "status", "code"),
    [
        ("publish", b"{not json", 400, 107),
        ("publish", b"[1]", 400, 107),
        ("publish", {"data": {}}, 400, 107),
        ("publish", {"channel": "a"}, 400, 107),
        ("publish", {"channel": "bad name", "data": {}}, 200, 102),  # method-level: 200
        ("nope", {}, 404, 104),
    ],
)
@ensure_deferred
async def test_api_errors_in_centrifugo_shape(
    serve: StartServer, method: str, body: object, status: int, code: int
) -> None:
    server = await serve()
    got_status, got = await api(server.admin_port, method, body)
    assert got_status == status
    assert got["error"]["code"] == code
    assert got["error"]["message"]


@ensure_deferred
async def test_api_key_is_required_when_configured(serve: StartServer) -> None:
    server = await serve(admin={"api_key": "s3cret"})
    status, body = await api(server.admin_port, "publish", {"channel": "a", "data": 1})
    assert (status, body["error"]["code"]) == (401, 101)
    status, body = await api(server.admin_port, "publish", {"channel": "a", "data": 1},
                             api_key="wrong")
    assert status == 401
    status, body = await api(server.admin_port, "publish", {"channel": "a", "data": 1},
                             api_key="s3cret")
    assert (status, body["result"]["offset"]) == (200, 1)
    # Centrifugo's older header form works too.
    status, _, payload = await http(
        "POST", "127.0.0.1", server.admin_port, "/api/info", b"{}",
        {"Authorization": "apikey s3cret"})
    assert status == 200
    assert json.loads(payload)["result"]["nodes"][0]["name"] == "omega-ws"


@ensure_deferred
async def test_metrics_count_connections_messages_and_closes(serve: StartServer) -> None:
    server = await serve(server={"max_message_size": 100})
    url = f"ws://127.0.0.1:{server.port}/m"
    a, b = await connect(url), await connect(url)
    await send(a, '{"hello": 1}')
    await recv(a)
    await recv(b)
    status, headers, text = await http("GET", "127.0.0.1", server.admin_port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    metrics = text.decode()
    assert 'omega_ws_connections{state="CONNECTED",transport="raw"} 2.0' in metrics
    assert 'omega_ws_messages_received_total{transport="raw"} 1.0' in metrics
    assert 'omega_ws_messages_published_total{source="raw"} 1.0' in metrics
    assert "omega_ws_messages_delivered_total 2.0" in metrics
    assert "omega_ws_bytes_out_total 24.0" in metrics
    assert "omega_ws_broker_up 1.0" in metrics
    await send(b, "nope")
    assert (await closed(b))[0] == 1003
    await aio(a.close())
    _, _, text = await http("GET", "127.0.0.1", server.admin_port, "/metrics")
    metrics = text.decode()
    assert 'omega_ws_closes_total{code="1003"} 1.0' in metrics
    assert 'omega_ws_closes_total{code="1000"} 1.0' in metrics
    assert 'omega_ws_state_transitions_total{state="ERROR"} 1.0' in metrics
    assert 'omega_ws_state_transitions_total{state="DISCONNECTED"} 1.0' in metrics
    assert 'omega_ws_invalid_messages_total{reason="invalid_format"} 1.0' in metrics


@ensure_deferred
async def test_admin_can_be_disabled(serve: StartServer) -> None:
    server = await serve(admin={"enabled": False})
    with pytest.raises(LookupError):
        server.admin_port  # noqa: B018


@ensure_deferred
async def test_nan_is_not_json_and_never_reaches_clients(serve: StartServer) -> None:
    server = await serve()
    status, body = await api(server.admin_port, "publish", b'{"channel": "a", "data": NaN}')
    assert (status, body["error"]["code"]) == (400, 107)
    with pytest.raises(ValueError, match="Out of range float values"):
        server.publish("a", {"x": float("inf")})
    with pytest.raises(ValueError, match="not JSON-serializable"):
        server.publish("a", {"x": object()})


@ensure_deferred
async def test_get_and_head_on_the_api_are_405(serve: StartServer) -> None:
    server = await serve()
    for method in ("GET", "HEAD"):
        status, headers, _ = await http(method, "127.0.0.1", server.admin_port, "/api/publish")
        assert status == 405
        assert headers["allow"] == "POST"


@ensure_deferred
async def test_api_data_over_the_message_size_limit_is_refused(serve: StartServer) -> None:
    server = await serve(server={"max_message_size": 64})
    status, body = await api(server.admin_port, "publish", {"channel": "a", "data": "x" * 100})
    assert (status, body["error"]["code"]) == (400, 107)
    assert "max_message_size" in body["error"]["message"]
