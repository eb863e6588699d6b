"""DNS for dual-stack and IPv6 pods: AAAA records beside A, services answering each family with its own
rotation, PTR under ip6.arpa for pool addresses (nibble names, RFC 3596), IPv6 pods allowed to ask, and
malformed ip6.arpa names never taken for an address; a UDP round trip from an IPv6 pod-pool source."""
from __future__ import annotations

import json
import subprocess
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest
from hypothesis import given, strategies as st
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from bgpd.dns.address import PROTO
from bgpd.dns.client import pod_dns, resolv_conf
from bgpd.dns.metrics import DnsMetrics
from bgpd.dns.ratelimit import RateLimiter
from bgpd.dns.resolver import Reply, Resolver, _reverse
from bgpd.dns.server import DnsServer
from bgpd.dns.service import DnsService
from bgpd.dns.zone import SERVICE_LABEL, build, in_pools
from config.datastore.keys import cidr_segment
from config.node import NodeConfig
from tests.netns import requires_root, run_in_netns

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


def node_config(tmp_path, pools, **dns_settings) -> NodeConfig:
    return NodeConfig.model_validate({
        "name": "node1", "router_id": "10.95.0.1", "asn": 64512, "listen_address": "10.95.0.1",
        "listen_address6": "fd95::1", "pools": [{"cidr": p} for p in pools], "dns": dns_settings,
        "datastore": {"type": "files", "path": str(tmp_path)}})


def test_pods_are_told_the_server_of_each_of_their_families(tmp_path):
    node = node_config(tmp_path, ["10.246.0.0/24", "fd00:246::/56"])
    search = ["shop.svc.tortie.local", "svc.tortie.local"]
    for ips, servers in ((["10.246.0.2"], ["169.254.1.1"]), (["fd00:246::2"], ["fd00:a9fe::101"]),
                         (["10.246.0.2", "fd00:246::2"], ["169.254.1.1", "fd00:a9fe::101"])):
        assert pod_dns(node, "shop", map(ip_address, ips)) == {"nameservers": servers, "search": search}
    assert resolv_conf(pod_dns(node, "shop", [ip_address("fd00:246::2")])) == (
        "nameserver fd00:a9fe::101\nsearch shop.svc.tortie.local svc.tortie.local\n")
    assert pod_dns(node_config(tmp_path, ["fd00:246::/56"], enabled=False), "shop", [ip_address("fd00:246::2")]) == {}


def test_the_server_gets_an_ipv6_address_on_nodes_with_ipv6_pools(tmp_path):
    assert DnsService(None, node_config(tmp_path, ["10.246.0.0/24"]), None).local_addresses() == [
        IPv4Address("169.254.1.1")]
    assert DnsService(None, node_config(tmp_path, ["fd00:246::/56"], address6="fd53::1"), None).local_addresses() == [
        IPv4Address("169.254.1.1"), IPv6Address("fd53::1")]


@pytest.mark.parametrize("pools, dns_settings, error", [
    (["fd00:246::/56"], {"address6": "fe80::1"}, "dns.address6"),  # needs the pod's interface as zone
    (["fd00:246::/56"], {"address6": "ff02::1"}, "dns.address6"),
    (["fd00:246::/56"], {"address6": "::ffff:10.1.1.1"}, "dns.address6"),
    (["fd00:246::/56"], {"address6": "10.1.1.1"}, "dns.address6"),
    (["fd00:a9fe::/64"], {}, "dns.address6: fd00:a9fe::101 is inside pool fd00:a9fe::/64"),
    (["169.254.0.0/16"], {}, "dns.address: 169.254.1.1 is inside pool 169.254.0.0/16"),
])
def test_server_addresses_pods_cannot_reach_are_refused(tmp_path, pools, dns_settings, error):
    with pytest.raises(ValidationError) as e:
        node_config(tmp_path, pools, **dns_settings)
    assert error in str(e.value).replace("\n", " ")


@pytest.mark.parametrize("pool", ["fd00::/48", "fd00::/64", "fd00:10:244::/56"])
def test_the_default_server_address_leaves_the_usual_example_pools_free(tmp_path, pool):
    assert str(node_config(tmp_path, [pool]).dns.address6) == "fd00:a9fe::101"


MARKS = """
import asyncio, json
from ipaddress import IPv6Address
from pyroute2 import IPRoute
from bgpd.dns.address import ensure_address, remove_address

def lo():
    return {a.get('address'): (a.get('proto'), a.get('cacheinfo')['ifa_preferred'])
            for a in IPRoute().get_addr(family=10, index=1)}

ours, foreign = IPv6Address('fd53::1'), IPv6Address('fd53::2')
out = {"made": asyncio.run(ensure_address(ours)), "foreign": asyncio.run(ensure_address(foreign)), "lo": lo()}
asyncio.run(remove_address(ours))
asyncio.run(remove_address(foreign))
print(json.dumps({**out, "after": sorted(lo())}))
"""


@requires_root
@pytest.mark.netns
def test_the_ipv6_address_is_marked_deprecated_and_only_ours_is_removed(make_netns):
    ns = make_netns("dns6addr")
    subprocess.run(["ip", "-n", ns, "addr", "add", "fd53::2/128", "dev", "lo", "nodad"], check=True)  # somebody's
    r = run_in_netns(ns, MARKS)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert (got["made"], got["foreign"]) == (True, False)
    assert got["lo"]["fd53::1"] == [PROTO, 0] and got["lo"]["fd53::2"][0] != PROTO  # ours: marked, deprecated
    assert got["after"] == ["::1", "fd53::2"]
