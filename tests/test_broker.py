"""Tests for L{omega_ws.broker}: the in-memory broker and publications."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from omega_ws.broker import BrokerUnavailable, MemoryBroker, Publication, make_broker
from omega_ws.config import BrokerConfig, Config


def _started() -> MemoryBroker:
    broker = MemoryBroker(Clock())
    broker.start()
    return broker


def _result(d: Deferred[Publication]) -> Publication:
    """The result of an already-fired Deferred (the memory broker never waits)."""
    results: list[object] = []
    d.addBoth(results.append)
    assert len(results) == 1, "Deferred has not fired"
    assert isinstance(results[0], Publication), results[0]
    return results[0]


def test_offsets_count_from_one_per_channel() -> None:
    broker = _started()
    offsets = [
        (channel, _result(broker.publish(channel, b"{}")).offset)
        for channel in ["a", "a", "b", "a", "b", "c"]
    ]
    assert offsets == [("a", 1), ("a", 2), ("b", 1), ("a", 3), ("b", 2), ("c", 1)]


def test_publication_carries_channel_and_data_verbatim() -> None:
    broker = _started()
    data = '{"k": "vé",  "n":1}'.encode()
    publication = _result(broker.publish("market.trap", data))
    assert publication.channel == "market.trap"
    assert publication.data is data


def test_epoch_is_stable_within_a_broker() -> None:
    broker = _started()
    # One epoch per channel stream, stable while the stream lives.
    epochs = {_result(broker.publish("a", b"{}")).epoch for _ in range(3)}
    assert len(epochs) == 1
    (epoch,) = epochs
    assert isinstance(epoch, str)
    assert epoch != ""


def test_epoch_is_stable_across_stop_and_start_of_one_broker() -> None:
    # Offsets survive stop/start of the same broker, so the stream is not lost.
    broker = _started()
    first = _result(broker.publish("a", b"{}"))
    broker.stop()
    broker.start()
    second = _result(broker.publish("a", b"{}"))
    assert (second.epoch, second.offset) == (first.epoch, 2)


def test_epochs_differ_between_brokers() -> None:
    epochs = {_result(_started().publish("a", b"{}")).epoch for _ in range(20)}
    assert len(epochs) == 20


def test_healthy_only_while_started() -> None:
    broker = MemoryBroker(Clock())
    assert broker.healthy is False
    fired: list[object] = []
    broker.start().addCallback(fired.append)
    assert fired == [None]
    assert broker.healthy is True
    broker.stop().addCallback(fired.append)
    assert fired == [None, None]
    assert broker.healthy is False
    broker.start()
    assert broker.healthy is True


def test_publish_hands_each_publication_to_the_handler_before_firing() -> None:
    broker = _started()
    handled: list[Publication] = []
    broker.set_handler(handled.append)
    d = broker.publish("a", b'{"x":1}')
    assert len(handled) == 1
    assert _result(d) is handled[0]
    broker.publish("b", b"{}")
    assert [(p.channel, p.offset) for p in handled] == [("a", 1), ("b", 1)]


def test_publish_without_handler_is_harmless() -> None:
    assert _result(_started().publish("a", b"{}")).offset == 1


def test_set_handler_replaces_the_previous_handler() -> None:
    broker = _started()
    first: list[Publication] = []
    second: list[Publication] = []
    broker.set_handler(first.append)
    broker.set_handler(second.append)
    broker.publish("a", b"{}")
    assert (len(first), len(second)) == (0, 1)


def test_subscribe_and_unsubscribe_are_accepted() -> None:
    broker = _started()
    broker.subscribe("a")
    broker.unsubscribe("a")
    broker.unsubscribe("never-subscribed")


def test_encoded_computes_once_per_wire_format_and_caches() -> None:
    publication = Publication("a", 7, "e1", b'{"x":1}')
    calls: list[tuple[str, Publication]] = []

    def encoder(name: str) -> Callable[[Publication], object]:
        def encode(p: Publication) -> object:
            calls.append((name, p))
            return (name, p.offset, p.data)
        return encode

    raw = publication.encoded("raw", encoder("raw"))
    assert raw == ("raw", 7, b'{"x":1}')
    assert publication.encoded("raw", encoder("raw-again")) is raw
    centrifuge = publication.encoded("centrifuge", encoder("centrifuge"))
    assert centrifuge == ("centrifuge", 7, b'{"x":1}')
    assert publication.encoded("centrifuge", encoder("other")) is centrifuge
    assert publication.encoded("raw", encoder("third")) is raw
    assert calls == [("raw", publication), ("centrifuge", publication)]


def test_encoded_retries_after_a_failing_encoder() -> None:
    publication = Publication("a", 1, "e", b"{}")

    def failing(p: Publication) -> object:
        raise ValueError("boom")

    with pytest.raises(ValueError):
        publication.encoded("raw", failing)
    assert publication.encoded("raw", lambda p: "ok") == "ok"


def test_publications_do_not_share_their_cache() -> None:
    one = Publication("a", 1, "e", b"{}")
    two = Publication("a", 2, "e", b"{}")
    assert one.encoded("raw", lambda p: p.offset) == 1
    assert two.encoded("raw", lambda p: p.offset) == 2


def test_publication_repr() -> None:
    assert repr(Publication("ch", 3, "ab12", b"12345")) == "<Publication ch@ab12:3 5 bytes>"


def test_make_broker_memory() -> None:
    config = Config.from_mapping({"channels": {"history_size": 2}})
    broker = make_broker(config, Clock())
    assert isinstance(broker, MemoryBroker)
    assert make_broker(config, Clock()) is not broker
    broker.start()
    for _ in range(3):
        broker.publish("a", b"{}")
    kept: list[object] = []
    broker.history("a", None, None, False).addCallback(kept.append)
    assert [p.offset for p in kept[0][0]] == [2, 3]  # history_size from the config


@pytest.mark.parametrize("url", ["", "mem://", "ftp://example.org/", "MEMORY"])
def test_make_broker_rejects_unknown_urls(url: str) -> None:
    # The configuration refuses these first; the factory refuses them too.
    config = dataclasses.replace(Config(), broker=BrokerConfig(url=url))
    with pytest.raises(ValueError, match="unsupported broker URL"):
        make_broker(config, Clock())


def test_publish_fails_while_stopped() -> None:
    broker = _started()
    broker.stop()
    failures: list[object] = []
    broker.publish("a", b"{}").addErrback(failures.append)
    [failure] = failures
    assert failure.check(BrokerUnavailable)  # type: ignore[attr-defined]
