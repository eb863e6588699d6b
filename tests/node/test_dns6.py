"""DNS for dual-stack and IPv6 pods: AAAA records beside A, services answering each family with its own
rotation, PTR under ip6.arpa for pool addresses (nibble names, RFC 3596), IPv6 pods allowed to ask, and
malformed ip6.arpa names never taken for an address; a UDP round trip from an IPv6 pod-pool source."""
from __future__ import annotations

from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address

import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest
from hypothesis import given, strategies as st
from prometheus_client import CollectorRegistry

from bgpd.dns.metrics import DnsMetrics
from bgpd.dns.ratelimit import RateLimiter
from bgpd.dns.resolver import Reply, Resolver, _reverse
from bgpd.dns.server import DnsServer
from bgpd.dns.zone import SERVICE_LABEL, build, in_pools
from config.datastore.keys import cidr_segment

POOLS = (IPv4Network("10.246.0.0/24"), IPv6Network("fd00:246::/56"))
CLAIMS = {f"claims/{cidr_segment(block)}/{node}": {"owned": True, "at": 1} for block, node in (
    ("10.246.0.0/28", "node1"), ("10.246.0.16/28", "node2"), ("fd00:246::/122", "node1"),
    ("fd00:246::40/122", "node2"))}
WEB = {SERVICE_LABEL: "web"}
ENDPOINTS = {
    "endpoints/node1/shop/web-1": {"ips": ["10.246.0.2", "fd00:246::2"], "labels": WEB},  # dual-stack
    "endpoints/node2/shop/web-2": {"ips": ["10.246.0.18", "fd00:246::42"], "labels": WEB},
    "endpoints/node2/shop/web-3": {"ips": ["fd00:246::43"], "labels": WEB},  # IPv6 only
    "endpoints/node2/shop/db": {"ips": ["10.246.0.19"], "labels": {}},  # IPv4 only
    "endpoints/node2/shop/rogue": {"ips": ["fd00:246::3"], "labels": WEB},  # node1's IPv6 block: no name
}


def resolver(down=()):
    r = Resolver("tortie.local", 5, POOLS, forwarding=False)
    r.set_zone(build(ENDPOINTS, CLAIMS, "node1", lambda n: True))
    r.alive = lambda n: n not in down
    return r


def ask(r, name, rdtype):
    out = r.answer(dns.message.make_query(name, rdtype))
    assert isinstance(out, Reply)
    return out


def records(reply, rdtype=None):
    return [rr.to_text() for rrset in reply.message.answer if rdtype is None or rrset.rdtype == rdtype
            for rr in rrset]


def test_a_dual_stack_pod_has_a_and_aaaa():
    r = resolver()
    assert records(ask(r, "web-1.shop.pod.tortie.local", "A")) == ["10.246.0.2"]
    aaaa = ask(r, "web-1.shop.pod.tortie.local", "AAAA")
    assert records(aaaa) == ["fd00:246::2"] and aaaa.result == "noerror" and aaaa.message.answer[0].ttl == 5
    both = ask(r, "web-1.shop.pod.tortie.local", "ANY")
    assert records(both, dns.rdatatype.A) == ["10.246.0.2"] and records(both, dns.rdatatype.AAAA) == ["fd00:246::2"]


def test_a_pod_of_one_family_has_no_data_of_the_other():
    r = resolver()
    for name, rdtype in (("web-3.shop.pod.tortie.local", "A"), ("db.shop.pod.tortie.local", "AAAA")):
        reply = ask(r, name, rdtype)
        assert reply.result == "nodata" and reply.message.rcode() == dns.rcode.NOERROR and not reply.message.answer
        assert reply.message.authority[0].rdtype == dns.rdatatype.SOA
    assert records(ask(r, "web-3.shop.pod.tortie.local", "AAAA")) == ["fd00:246::43"]
    assert ask(r, "rogue.shop.pod.tortie.local", "AAAA").result == "nxdomain"  # another node's address


def test_a_service_answers_each_family_rotating_on_its_own():
    r = resolver()
    six = [records(ask(r, "web.shop.svc.tortie.local", "AAAA")) for _ in range(3)]
    assert six == [["fd00:246::2", "fd00:246::42", "fd00:246::43"], ["fd00:246::42", "fd00:246::43", "fd00:246::2"],
                   ["fd00:246::43", "fd00:246::2", "fd00:246::42"]]
    # A questions in between (a resolver asks both) neither skip nor repeat an AAAA rotation step
    four = [records(ask(r, "web.shop.svc.tortie.local", "A")) for _ in range(2)]
    assert four == [["10.246.0.2", "10.246.0.18"], ["10.246.0.18", "10.246.0.2"]]
    assert records(ask(r, "web.shop.svc.tortie.local", "AAAA"))[0] == "fd00:246::2"
    # node2 down: its pods drop out of both families
    down = resolver(down={"node2"})
    assert records(ask(down, "web.shop.svc.tortie.local", "AAAA")) == ["fd00:246::2"]
    assert records(ask(down, "web.shop.svc.tortie.local", "A")) == ["10.246.0.2"]


def test_ptr_under_ip6_arpa_names_the_pod():
    r = resolver()
    name = dns.reversename.from_address("fd00:246::42")
    assert str(name).endswith(".ip6.arpa.") and len(name.labels) == 32 + 3
    reply = ask(r, name, "PTR")
    assert [rr.target.to_text() for rr in reply.message.answer[0]] == ["web-2.shop.pod.tortie.local."]
    assert ask(r, dns.reversename.from_address("fd00:246::99"), "PTR").result == "nxdomain"  # in a pool, no pod
    assert ask(r, dns.reversename.from_address("fd00:246::42"), "A").result == "nodata"
    # a reverse name outside the pools is not ours: refused here (forwarded with upstreams)
    assert ask(r, dns.reversename.from_address("2001:db8::1"), "PTR").result == "refused"
    assert ask(r, dns.reversename.from_address("fd00:246::3"), "PTR").result == "nxdomain"  # the rogue's


@given(st.integers(0, 2**128 - 1))
def test_every_ipv6_reverse_name_reads_back_as_its_address(n):
    address = IPv6Address(n)
    assert _reverse(dns.reversename.from_address(str(address))) == address


@pytest.mark.parametrize("name", [
    "ip6.arpa.", "6.4.2.0.0.0.d.f.ip6.arpa.",  # partial: a zone cut, not an address
    "2." + "0." * 30 + "d.f.ip6.arpa.",  # 33 nibbles
    "g." + "0." * 30 + "f.ip6.arpa.", "10." + "0." * 30 + "f.ip6.arpa.",  # 32 labels, one not a nibble
])
def test_malformed_ip6_arpa_names_are_no_address(name):
    assert _reverse(dns.name.from_text(name)) is None


def test_ipv6_pod_sources_are_in_the_pools():
    assert in_pools(ip_address("fd00:246::2"), POOLS) and not in_pools(ip_address("fd01::2"), POOLS)
    assert not in_pools(ip_address("::ffff:10.246.0.2"), POOLS)  # a mapped address is not the IPv4 one


async def test_aaaa_over_udp_from_an_ipv6_source():
    srv = DnsServer(resolver(), [], lambda a: a.is_loopback or in_pools(a, POOLS), RateLimiter(rate=100, burst=100),
                    DnsMetrics(CollectorRegistry()))
    port = await srv.start(["::1"], 0)
    try:
        q = dns.message.make_query("web-2.shop.pod.tortie.local", "AAAA")
        r = await dns.asyncquery.udp(q, "::1", port=port, timeout=5)
        assert [rr.address for rr in r.answer[0]] == ["fd00:246::42"]
        r = await dns.asyncquery.tcp(dns.message.make_query(dns.reversename.from_address("fd00:246::2"), "PTR"),
                                     "::1", port=port, timeout=5)
        assert r.answer[0][0].target.to_text() == "web-1.shop.pod.tortie.local."
    finally:
        await srv.stop()
