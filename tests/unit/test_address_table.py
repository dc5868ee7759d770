"""The SSRF guard's address table (item 8 of issue 11), by itself.

``shared.adapters.netguard.refusal`` decides from an explicit table of ranges, never
from ``ipaddress``'s ``is_global`` / ``is_private``, whose answers change
between Python versions (3.11 and early 3.12 call NAT64 local-use,
IPv4-translated and site-local addresses global). This file needs only pytest
and certifi (which ``shared.adapters.netguard`` imports), so it runs under any
interpreter the functions may be deployed on:

    python3.12 -m pytest tests/unit/test_address_table.py --noconftest -p no:cacheprovider
"""

from __future__ import annotations

import ipaddress
import re

import pytest

from shared.adapters.netguard import REFUSED_V4, REFUSED_V6, Refused, public_address, refusal

REFUSED = {
    # IPv4
    "0.1.2.3": "'this network'",
    "10.0.0.1": "private-use",
    "100.64.0.1": "carrier-grade NAT",
    "127.0.0.1": "loopback",
    "169.254.169.254": "metadata server",
    "172.31.255.255": "private-use",
    "192.0.0.9": "IETF protocol assignments",
    "192.0.2.1": "documentation",
    "192.88.99.1": "6to4 relay anycast",
    "192.168.1.1": "private-use",
    "198.19.0.1": "benchmarking",
    "198.51.100.7": "documentation",
    "203.0.113.9": "documentation",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "broadcast",
    # IPv6
    "::": "unspecified",
    "::1": "loopback",
    "::a9fe:a9fe": "IPv4-compatible",
    "::ffff:0:a9fe:a9fe": "IPv4-translated",
    "64:ff9b:1::a9fe:a9fe": "NAT64 local-use",
    "100::1": "discard-only",
    "100:0:0:1::1": "dummy prefix",
    "2001::a9fe:a9fe": "IETF protocol assignments",  # Teredo
    "2001:2::1": "IETF protocol assignments",  # benchmarking
    "2001:db8::1": "documentation",
    "3fff::1": "documentation",
    "5f00::1": "segment routing",
    "fc00::1": "unique local",
    "fd12:3456::1": "unique local",
    "fe80::1": "link-local",
    "fec0::1": "site-local",
    "ff02::1": "multicast",
    "4000::1": "outside global unicast",
    "::ffff:127.0.0.1": "carries 127.0.0.1: loopback",
    "::ffff:169.254.169.254": "carries 169.254.169.254: link-local",
    "64:ff9b::a9fe:a9fe": "carries 169.254.169.254",
    "64:ff9b::a00:1": "carries 10.0.0.1: private-use",
    "2002:a9fe:a9fe::1": "carries 169.254.169.254",
    "2002:c0a8:101::": "carries 192.168.1.1",
}
PUBLIC = {
    "8.8.8.8": "8.8.8.8",
    "1.1.1.1": "1.1.1.1",
    "142.250.180.14": "142.250.180.14",
    "100.63.255.255": "100.63.255.255",  # just below carrier-grade NAT
    "100.128.0.0": "100.128.0.0",  # just above it
    "172.32.0.1": "172.32.0.1",
    "2606:4700::1111": "2606:4700::1111",
    "2a00:1450:4001::200e": "2a00:1450:4001::200e",
    "::ffff:8.8.8.8": "8.8.8.8",  # mapped: connect over IPv4 to the checked address
    "64:ff9b::808:808": "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    "2002:808:808::1": "2002:808:808::1",  # 6to4 of 8.8.8.8
}


@pytest.mark.parametrize(("text", "why"), list(REFUSED.items()))
def test_refused_addresses_name_their_range(text: str, why: str) -> None:
    address = ipaddress.ip_address(text)
    reason = refusal(address)
    assert reason is not None and why in reason, reason
    with pytest.raises(Refused, match=re.escape(f"{address} is not a public address ({reason})")):
        public_address(text, text)


@pytest.mark.parametrize(("text", "connect_to"), list(PUBLIC.items()))
def test_public_addresses_pass(text: str, connect_to: str) -> None:
    assert refusal(ipaddress.ip_address(text)) is None
    assert str(public_address(text, "refs.example.test")) == connect_to


def test_the_table_does_not_ask_ipaddress_what_is_global(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse_to_answer(self: object) -> bool:
        raise AssertionError("the guard asked ipaddress for its own classification")

    for cls in (ipaddress.IPv4Address, ipaddress.IPv6Address):
        for name in ("is_global", "is_private", "is_reserved", "is_link_local", "is_loopback"):
            monkeypatch.setattr(cls, name, property(refuse_to_answer))
    for text in [*REFUSED, *PUBLIC]:
        refusal(ipaddress.ip_address(text))


def test_the_tables_name_the_ranges_the_issue_asks_for() -> None:
    v6 = {str(net) for net, _ in REFUSED_V6}
    assert {"64:ff9b:1::/48", "::ffff:0:0:0/96", "fec0::/10"} <= v6
    assert {"169.254.0.0/16", "100.64.0.0/10"} <= {str(net) for net, _ in REFUSED_V4}
