"""Tests for L{omega_ws.addresses.address_key}: what counts as one address."""

from __future__ import annotations

from omega_ws.addresses import LOOPBACK, address_key


def test_every_loopback_address_is_one() -> None:
    assert {address_key(h) for h in ("127.0.0.1", "127.0.0.2", "127.9.9.9", "::1",
                                     "::ffff:127.0.0.1")} == {LOOPBACK}


def test_ipv4_addresses_count_alone_also_when_seen_through_ipv6() -> None:
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("192.0.2.8") != address_key("192.0.2.7")


def test_ipv6_clients_are_grouped_by_prefix() -> None:
    a, b = "2001:db8:1:2:aaaa::1", "2001:db8:1:2:bbbb::2"
    assert address_key(a) == address_key(b) == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key(a)
    assert address_key(a, 128) != address_key(b, 128)
    assert address_key(a, 48) == address_key("2001:db8:1:ffff::1", 48)


def test_a_scoped_or_odd_host_is_handled() -> None:
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("not-an-ip") == "not-an-ip"
