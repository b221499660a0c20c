"""Tests for L{omega_ws.api}: the server API methods, called directly (no sockets)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from omega_ws import __version__
from omega_ws.api import ApiError, ApiMethod, api_methods
from omega_ws.broker.history import Publication
from omega_ws.config import Config
from omega_ws.registry import ClientInfo
from omega_ws.service import OmegaService


class Api:
    """A server that is built but not listening, and its API methods."""

    def __init__(self, **sections: dict[str, Any]) -> None:
        self.clock = Clock()
        self.service = OmegaService(Config.from_mapping(sections), self.clock)
        self.service.broker.start()
        self.methods: dict[str, ApiMethod] = api_methods(self.service)

    def __call__(self, method: str, body: dict[str, Any]) -> Any:
        result = self.methods[method](body)
        if not isinstance(result, Deferred):
            return result
        results: list[Any] = []
        result.addBoth(results.append)
        assert len(results) == 1, "Deferred has not fired"
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]


@pytest.fixture
def api() -> Api:
    return Api()


def _error(api: Api, method: str, body: dict[str, Any]) -> ApiError:
    with pytest.raises(ApiError) as raised:
        api(method, body)
    return raised.value


def test_methods() -> None:
    assert sorted(Api().methods) == sorted([
        "publish", "broadcast", "history", "presence", "presence_stats", "channels",
        "disconnect", "info"])


# -- publish / broadcast ------------------------------------------------------------


def test_publish_gives_offset_and_epoch(api: Api) -> None:
    first = api("publish", {"channel": "news", "data": {"n": 1}})
    second = api("publish", {"channel": "news", "data": [1, 2]})
    other = api("publish", {"channel": "other", "data": "x"})
    assert first["offset"] == 1 and second["offset"] == 2 and other["offset"] == 1
    assert set(first) == {"offset", "epoch"}
    assert first["epoch"] == second["epoch"] != other["epoch"]


def test_publish_bad_requests(api: Api) -> None:
    invalid = _error(api, "publish", {"channel": "bad channel", "data": 1})
    assert (invalid.code, invalid.http_status) == (102, 200)
    for body in ({"data": 1}, {"channel": 5, "data": 1}, {"channel": "a"}):
        e = _error(api, "publish", body)
        assert (e.code, e.http_status) == (107, 400), body


def test_broadcast_with_one_invalid_channel(api: Api) -> None:
    api("publish", {"channel": "b", "data": 0})
    result = api("broadcast", {"channels": ["a", "no such/channel", "b"], "data": {"x": 1}})
    responses = result["responses"]
    assert len(responses) == 3
    assert responses[0] == {"result": {"offset": 1, "epoch": responses[0]["result"]["epoch"]}}
    assert responses[1]["error"]["code"] == 102
    assert set(responses[1]) == {"error"}
    assert responses[2]["result"]["offset"] == 2
    history = api("history", {"channel": "b", "limit": -1})
    assert [p["data"] for p in history["publications"]] == [0, {"x": 1}]


def test_broadcast_bad_requests(api: Api) -> None:
    for body in ({"data": 1}, {"channels": "a", "data": 1}, {"channels": ["a", 1], "data": 1},
                 {"channels": ["a"]}):
        e = _error(api, "broadcast", body)
        assert (e.code, e.http_status) == (107, 400), body
    assert api("broadcast", {"channels": [], "data": 1}) == {"responses": []}


# -- history ---------------------------------------------------------------------------


def _publish(api: Api, channel: str, count: int) -> str:
    epoch = ""
    for n in range(1, count + 1):
        epoch = api("publish", {"channel": channel, "data": {"n": n}})["epoch"]
    return epoch


def test_history_limit_semantics(api: Api) -> None:
    epoch = _publish(api, "h", 5)

    def offsets(**body: Any) -> list[int]:
        result = api("history", {"channel": "h", **body})
        assert (result["epoch"], result["offset"]) == (epoch, 5)
        return [p["offset"] for p in result["publications"]]

    assert offsets() == []
    assert offsets(limit=0) == []
    assert offsets(limit=None) == []
    assert offsets(limit=-1) == [1, 2, 3, 4, 5]
    assert offsets(limit=2) == [1, 2]
    assert offsets(limit=100) == [1, 2, 3, 4, 5]
    assert offsets(limit=2, reverse=True) == [5, 4]
    assert offsets(limit=-1, since={"epoch": epoch, "offset": 3}) == [4, 5]
    assert offsets(limit=1, since={"epoch": epoch, "offset": 3}) == [4]
    assert offsets(limit=-1, since={"offset": 3}) == [4, 5]
    assert offsets(limit=-1, since={"epoch": epoch, "offset": 3}, reverse=True) == [2, 1]
    with pytest.raises(ApiError) as error:  # another epoch: as Centrifugo, 112
        offsets(limit=-1, since={"epoch": "other", "offset": 3})
    assert error.value.code == 112


def test_history_publication_shape(api: Api) -> None:
    api("publish", {"channel": "h", "data": {"text": "héllo", "n": [1, None]}})
    result = api("history", {"channel": "h", "limit": -1})
    assert result["publications"] == [{"data": {"text": "héllo", "n": [1, None]}, "offset": 1}]


def test_history_of_an_unknown_channel(api: Api) -> None:
    result = api("history", {"channel": "never", "limit": -1})
    assert result["publications"] == [] and result["offset"] == 0
    assert isinstance(result["epoch"], str) and result["epoch"]


def test_history_bad_requests(api: Api) -> None:
    assert _error(api, "history", {"channel": "bad channel"}).code == 102
    for body in ({}, {"channel": "h", "limit": "3"}, {"channel": "h", "limit": True},
                 {"channel": "h", "since": 3}):
        e = _error(api, "history", body)
        assert (e.code, e.http_status) == (107, 400), body


@pytest.mark.parametrize("offset", [None, [1], {"n": 1}, "x"])
def test_history_malformed_since_offset_is_a_bad_request(api: Api, offset: Any) -> None:
    """The admin resource answers ApiError(400) and ValueError with 400, anything else 500."""
    with pytest.raises((ApiError, ValueError)) as raised:
        api("history", {"channel": "h", "limit": -1, "since": {"offset": offset}})
    assert not isinstance(raised.value, ApiError) or raised.value.http_status == 400


# -- presence / channels ------------------------------------------------------------------


def test_empty_server(api: Api) -> None:
    api("publish", {"channel": "a", "data": 1})
    assert api("presence", {"channel": "a"}) == {"presence": {}}
    assert api("presence_stats", {"channel": "a"}) == {"num_clients": 0, "num_users": 0}
    assert api("channels", {}) == {"channels": {}}
    assert api("channels", {"pattern": "a*"}) == {"channels": {}}
    assert _error(api, "presence", {"channel": "bad channel"}).code == 102
    assert _error(api, "presence_stats", {}).http_status == 400


class _Member:
    def __init__(self, client_id: str, user: str) -> None:
        self.info = ClientInfo(client_id, "peer", "raw", 0.0)
        self.info.user = user

    def deliver(self, publication: Publication) -> None:
        pass


def test_presence_and_channels_with_subscribers(api: Api) -> None:
    hub = api.service.hub
    for client_id, user, channel in [("c1", "u1", "news"), ("c2", "u1", "news"),
                                     ("c3", "u2", "news"), ("c4", "u3", "sport")]:
        hub.subscribe(channel, _Member(client_id, user))
    presence = api("presence", {"channel": "news"})["presence"]
    assert presence == {"c1": {"client": "c1", "user": "u1"}, "c2": {"client": "c2", "user": "u1"},
                        "c3": {"client": "c3", "user": "u2"}}
    assert api("presence_stats", {"channel": "news"}) == {"num_clients": 3, "num_users": 2}
    assert api("channels", {}) == {"channels": {"news": {"num_clients": 3},
                                                "sport": {"num_clients": 1}}}
    assert api("channels", {"pattern": "s*"}) == {"channels": {"sport": {"num_clients": 1}}}


# -- disconnect -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [
    {"code": 2999}, {"code": 5000}, {"code": 1000}, {"code": "3000"}, {"code": 3000.0},
    {"code": 3000, "reason": 5},
])
def test_disconnect_invalid_code(api: Api, spec: dict[str, Any]) -> None:
    e = _error(api, "disconnect", {"user": "u", "disconnect": spec})
    assert (e.code, e.http_status) == (107, 400)


def test_disconnect_valid(api: Api) -> None:
    assert api("disconnect", {"user": "u"}) == {}
    assert api("disconnect", {"user": "u", "disconnect": {"code": 3000, "reason": "r"}}) == {}
    assert api("disconnect", {"user": "u", "client": "c", "disconnect": {"code": 4999}}) == {}
    assert _error(api, "disconnect", {}).http_status == 400
    assert _error(api, "disconnect", {"user": "u", "client": 3}).http_status == 400


# -- info ---------------------------------------------------------------------------------------


def test_info_fields(api: Api) -> None:
    api("publish", {"channel": "a", "data": 1})
    nodes = api("info", {})["nodes"]
    assert len(nodes) == 1
    node = nodes[0]
    assert node == {"uid": api.service.node_id, "name": "omega-ws", "version": __version__,
                    "num_clients": 0, "num_users": 0, "num_subs": 0, "num_channels": 0,
                    "uptime": 0}
    assert isinstance(node["uid"], str) and len(node["uid"]) == 36
    assert Api()("info", {})["nodes"][0]["uid"] != node["uid"]


def test_info_uptime_counts_from_start() -> None:
    reactor = MemoryReactorClock()
    reactor.advance(1000.0)
    service = OmegaService(Config.from_mapping({}), reactor)
    service.startService()
    try:
        reactor.advance(42.7)
        uptime = api_methods(service)["info"]({})
        assert isinstance(uptime, dict)
        assert uptime["nodes"][0]["uptime"] == 42
    finally:
        service.stopService()
