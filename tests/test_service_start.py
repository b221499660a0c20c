"""The service waits for its broker: nothing listens before start() fired, stop() is awaited."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock

from omega_ws.broker import MemoryBroker
from omega_ws.config import Config
from omega_ws.service import OmegaService, StartupError


class SlowBroker(MemoryBroker):
    """A memory broker whose start and stop wait for the test to say so."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.starting: Deferred[None] = Deferred()
        self.stopping: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        return self.starting.addCallback(lambda _: super(SlowBroker, self).start())

    def stop(self) -> Deferred[None]:
        super().stop()
        return self.stopping


def _service(broker: MemoryBroker) -> OmegaService:
    reactor = MemoryReactorClock()
    service = OmegaService(Config.from_mapping({"admin": {"port": 0}, "server": {"port": 0}}),
                           reactor)
    broker.set_handler(service.hub._dispatch)
    service.broker = service.hub.broker = broker
    return service


def test_nothing_listens_until_the_broker_has_started() -> None:
    service = _service(SlowBroker(MemoryReactorClock()))
    broker = service.broker
    assert isinstance(broker, SlowBroker)
    service.startService()
    ready: list[object] = []
    service.ready.addBoth(ready.append)
    assert all(listener.port is None for listener in service.listeners)
    assert ready == [] and not service.running
    broker.starting.callback(None)
    assert ready == [None] and service.running
    assert all(listener.port is not None for listener in service.listeners)


def test_a_broker_that_fails_to_start_fails_ready_and_nothing_listens() -> None:
    service = _service(SlowBroker(MemoryReactorClock()))
    broker = service.broker
    assert isinstance(broker, SlowBroker)
    service.startService()
    outcome: list[Any] = []
    service.ready.addBoth(outcome.append)
    broker.starting.errback(ConnectionRefusedError("no broker"))
    assert outcome[0].check(StartupError)
    assert "broker.url: cannot start" in str(outcome[0].value)
    assert all(listener.port is None for listener in service.listeners)


def test_a_broker_that_fails_at_once_raises_from_start_service() -> None:
    class Refusing(MemoryBroker):
        def start(self) -> Deferred[None]:
            return fail(ConnectionRefusedError("no broker"))

    service = _service(Refusing(MemoryReactorClock()))
    try:
        service.startService()
    except StartupError as e:
        assert str(e).startswith("broker.url: cannot start")
    else:
        raise AssertionError("StartupError not raised")


def test_shutdown_waits_for_the_broker_to_stop() -> None:
    broker = SlowBroker(MemoryReactorClock())
    broker.starting = succeed(None)  # type: ignore[assignment]
    service = _service(broker)
    service.startService()
    stopped: list[object] = []
    service.stopService().addBoth(stopped.append)
    assert stopped == []
    broker.stopping.callback(None)
    assert stopped == [None]
