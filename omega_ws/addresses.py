"""
What counts as one client address, for the per-address limits.

An IPv4 address is one address; an IPv4 address seen through an IPv6
socket (C{::ffff:a.b.c.d}) is that IPv4 address; an IPv6 client is given
a whole prefix (a /64 by default, C{server.ipv6_prefix}), as ISPs hand
out; every loopback address (127.0.0.0/8, ::1) is this machine, one
address.  Behind a reverse proxy every client has the proxy's address
(C{X-Forwarded-For} is not trusted), so the per-address limits then
count the proxy.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

__all__ = ["LOOPBACK", "address_key", "parse_ip"]

LOOPBACK = "loopback"


def parse_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """C{host} as an IP address (an IPv4 one seen through IPv6 as itself), or None."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@lru_cache(maxsize=4096)
def address_key(host: str, ipv6_prefix: int = 64) -> str:
    """The key C{host} is counted under; a host that is not an IP is itself."""
    address = parse_ip(host)
    if address is None:
        return host
    if address.is_loopback:
        return LOOPBACK
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    network = ipaddress.IPv6Network((address, ipv6_prefix), strict=False)
    return str(network)
