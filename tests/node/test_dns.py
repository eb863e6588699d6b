"""The DNS answers (pure: zone, resolver, rate limit) and the server's sockets on loopback."""
import asyncio
import socket
from ipaddress import IPv4Address, IPv4Network

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest
from hypothesis import given, settings, strategies as st
from prometheus_client import CollectorRegistry

from bgpd.dns.metrics import DnsMetrics
from bgpd.dns.ratelimit import RateLimiter
from bgpd.dns.resolver import UDP_PLAIN, Forward, Reply, Resolver, parse, wire
from bgpd.dns.server import DnsServer
from bgpd.dns.zone import SERVICE_LABEL, build

POOLS = (IPv4Network("10.246.0.0/24"),)
CLAIMS = {"claims/10.246.0.0-28/node1": {"owned": True, "at": 1},
          "claims/10.246.0.16-28/node2": {"owned": True, "at": 1},
          "claims/10.246.0.32-28/node3": {"owned": True, "at": 1}}
WEB = {SERVICE_LABEL: "web", "app": "web"}
ENDPOINTS = {
    "endpoints/node1/shop/web-1": {"ips": ["10.246.0.2"], "labels": WEB},
    "endpoints/node2/shop/web-2": {"ips": ["10.246.0.18"], "labels": WEB},
    "endpoints/node3/shop/web-3": {"ips": ["10.246.0.34"], "labels": WEB},
    "endpoints/node2/shop/db": {"ips": ["10.246.0.19"], "labels": {}},
    "endpoints/node2/shop/rogue": {"ips": ["10.246.0.3"], "labels": WEB},  # node1's address: no name
    "endpoints/node2/shop/odd_name": {"ips": ["10.246.0.20"], "labels": {}},  # not a DNS label
    "endpoints/node2/other/web-9": {"ips": ["10.246.0.21"], "labels": WEB},  # another namespace's service
}


def resolver(down=(), forwarding=False, endpoints=ENDPOINTS):
    r = Resolver("tortie.local", 5, POOLS, forwarding)
    r.set_zone(build(endpoints, CLAIMS, "node1", lambda n: True))
    r.alive = lambda n: n not in down
    return r


def ask(r, name, rdtype="A"):
    out = r.answer(dns.message.make_query(name, rdtype))
    assert isinstance(out, Reply)
    return out


def addresses(reply):
    return [rr.address for rrset in reply.message.answer for rr in rrset]


def test_pod_names_resolve_case_insensitively_with_ttl_and_authority():
    reply = ask(resolver(), "WEB-2.Shop.POD.tortie.local")
    assert addresses(reply) == ["10.246.0.18"] and reply.result == "noerror"
    assert reply.message.answer[0].ttl == 5 and reply.message.flags & dns.flags.AA


def test_a_service_answers_every_live_pod_in_rotating_order():
    r = resolver()
    query = dns.message.make_query("web.shop.svc.tortie.local", "A")
    answers = [addresses(Reply(dns.message.from_wire(wire(r.answer(query).message, query, True)), ""))
               for _ in range(4)]
    assert answers[:3] == [["10.246.0.2", "10.246.0.18", "10.246.0.34"], ["10.246.0.18", "10.246.0.34", "10.246.0.2"],
                           ["10.246.0.34", "10.246.0.2", "10.246.0.18"]]  # on the wire too, in turn
    assert answers[3] == answers[0]


def test_pods_of_nodes_not_alive_drop_out():
    r = resolver(down={"node3"})
    assert sorted(addresses(ask(r, "web.shop.svc.tortie.local"))) == ["10.246.0.18", "10.246.0.2"]
    assert ask(r, "web-3.shop.pod.tortie.local").result == "nxdomain"
    assert ask(r, dns.reversename.from_address("10.246.0.34"), "PTR").result == "nxdomain"


def test_endpoints_a_node_may_not_publish_or_name_get_no_name():
    zone = build(ENDPOINTS, CLAIMS, "node1", lambda n: True)
    assert set(zone.ignored) == {"endpoints/node2/shop/rogue", "endpoints/node2/shop/odd_name"}
    r = resolver()
    assert ask(r, "rogue.shop.pod.tortie.local").result == "nxdomain"
    assert ask(r, dns.reversename.from_address("10.246.0.3"), "PTR").result == "nxdomain"


def test_reverse_lookups_name_the_pod():
    reply = ask(resolver(), dns.reversename.from_address("10.246.0.19"), "PTR")
    assert [rr.target.to_text() for rr in reply.message.answer[0]] == ["db.shop.pod.tortie.local."]


def test_no_data_and_no_such_name_carry_the_soa():
    r = resolver()
    nodata = ask(r, "web-1.shop.pod.tortie.local", "AAAA")
    assert nodata.result == "nodata" and not nodata.message.answer and nodata.message.rcode() == dns.rcode.NOERROR
    assert nodata.message.authority[0].rdtype == dns.rdatatype.SOA
    missing = ask(r, "nope.shop.svc.tortie.local")
    assert missing.message.rcode() == dns.rcode.NXDOMAIN and missing.message.authority[0].ttl == 5
    assert ask(r, "shop.svc.tortie.local").result == "nodata"  # an empty non-terminal exists
    assert ask(r, "tortie.local", "SOA").result == "noerror"


def test_other_names_are_refused_without_upstreams_and_forwarded_with_them():
    assert ask(resolver(), "example.org").message.rcode() == dns.rcode.REFUSED
    assert ask(resolver(), dns.reversename.from_address("192.0.2.1"), "PTR").result == "refused"
    assert isinstance(resolver(forwarding=True).answer(dns.message.make_query("example.org", "A")), Forward)
    # names of the domain never leave the node, nor reverse names of the pools
    assert ask(resolver(forwarding=True), "nope.tortie.local").result == "nxdomain"
    assert ask(resolver(forwarding=True), dns.reversename.from_address("10.246.0.99"), "PTR").result == "nxdomain"


def test_large_answers_are_truncated_over_udp_and_whole_over_tcp():
    many = {f"endpoints/node1/shop/p{i}": {"ips": [f"10.246.0.{i}"], "labels": WEB} for i in range(1, 15)}
    claims = {"claims/10.246.0.0-24/node1": {"owned": True, "at": 1}}
    r = Resolver("tortie.local", 5, POOLS, False)
    many |= {f"endpoints/node1/shop/q{i}": {"ips": [f"10.246.0.{i}"], "labels": WEB} for i in range(100, 160)}
    r.set_zone(build(many, claims, "node1", lambda n: True))
    query = dns.message.make_query("web.shop.svc.tortie.local", "A", use_edns=False)
    reply = r.answer(query)
    udp = wire(reply.message, query, udp=True)
    assert len(udp) <= UDP_PLAIN and dns.message.from_wire(udp).flags & dns.flags.TC
    tcp = dns.message.from_wire(wire(reply.message, query, udp=False))
    assert not tcp.flags & dns.flags.TC and len(tcp.answer[0]) == 74


def test_not_a_query_is_not_answered():
    assert parse(b"") is None and parse(b"\x00" * 11) is None
    response = dns.message.make_response(dns.message.make_query("a.tortie.local", "A"))
    assert parse(response.to_wire()) is None  # a response: answering it could loop between two servers
    notify = dns.message.make_query("tortie.local", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert resolver().answer(notify).result == "notimp"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_never_raise(data):
    srv = DnsServer(resolver(), [], lambda a: True, RateLimiter(1e9, 1e9), DnsMetrics(CollectorRegistry()))
    for udp in (True, False):
        for _ in range(2):  # the second time from the cache, if it was answered
            out = srv.respond(data, udp)
            assert out is None or isinstance(out, bytes)


NAMES = st.lists(st.sampled_from(["web", "web-1", "shop", "pod", "svc", "tortie", "local", "in-addr", "arpa", "10",
                                  "246", "0", "2", "xn--a", "A" * 63, "*", "\\000"]), max_size=7)


@settings(max_examples=300, deadline=None)
@given(NAMES, st.integers(0, 65535), st.sampled_from([None, 0, 512, 4096]))
def test_any_question_gets_an_answer_that_encodes(labels, rdtype, payload):
    name = ".".join(labels) or "."
    try:
        query = dns.message.make_query(name, rdtype, use_edns=payload is not None, payload=payload or 1232)
    except dns.exception.DNSException:
        return
    out = resolver().answer(query)
    data = wire(out.message, query, udp=True)
    assert len(data) <= max(UDP_PLAIN, min(payload or 0, 1232))


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
                    max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["ips", "labels", "interface"]), JSON | st.just(["10.246.0.5"]) |
                       st.just({SERVICE_LABEL: "web"})), st.sampled_from(["node1", "node2"]))
def test_any_endpoint_value_builds_a_zone(value, node):
    zone = build({**ENDPOINTS, f"endpoints/{node}/shop/x": value}, CLAIMS, "node1", lambda n: True)
    r = Resolver("tortie.local", 5, POOLS, False)
    r.set_zone(zone)
    for name in ("x.shop.pod.tortie.local", "web.shop.svc.tortie.local"):
        wire(r.answer(dns.message.make_query(name, "A")).message, dns.message.make_query(name, "A"), True)


def test_rate_limit_per_source():
    limiter = RateLimiter(rate=10, burst=5, max_sources=2)
    assert [limiter.allow("a", 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert limiter.allow("b", 0.0) and limiter.allow("b", 0.0)  # another source has its own bucket
    assert limiter.allow("a", 0.1) and not limiter.allow("a", 0.1)  # one token back after 0.1 s
    assert not limiter.allow("c", 0.1)  # the table is full of busy sources: a new one waits
    assert limiter.allow("c", 10.0)  # once they are idle (full again) they are forgotten
    assert limiter.limited == 3


# --- the server's sockets, on loopback ---------------------------------------------------------------


@pytest.fixture
async def server():
    registry = CollectorRegistry()
    r = resolver()
    srv = DnsServer(r, [], lambda a: str(a) != "127.0.0.3", RateLimiter(rate=0.001, burst=20), DnsMetrics(registry))
    srv.port = await srv.start(["127.0.0.1"], 0)
    srv.registry = registry
    yield srv
    await srv.stop()


def metric(srv, name, **labels):
    return srv.registry.get_sample_value(name, labels) or 0


async def test_udp_and_tcp_answers_and_fallback(server):
    q = dns.message.make_query("web-1.shop.pod.tortie.local", "A")
    r = await dns.asyncquery.udp(q, "127.0.0.1", port=server.port, timeout=5)
    assert r.answer[0][0].address == "10.246.0.2"
    r = await dns.asyncquery.tcp(q, "127.0.0.1", port=server.port, timeout=5)
    assert r.answer[0][0].address == "10.246.0.2"
    assert metric(server, "tortie_dns_queries_total", qtype="A", result="noerror") == 2
    assert metric(server, "tortie_dns_query_duration_seconds_count", by="zone") == 2


async def test_malformed_and_foreign_sources_are_dropped_and_counted(server):
    good = dns.message.make_query("db.shop.pod.tortie.local", "A").to_wire()
    loop = asyncio.get_running_loop()
    # the garbage and the denied source are sent first: once the good query is answered, they were handled
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.sendto(b"\x12\x34garbage", ("127.0.0.1", server.port))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as denied:
            denied.bind(("127.0.0.3", 0))
            denied.sendto(good, ("127.0.0.1", server.port))
            s.setblocking(False)
            s.sendto(good, ("127.0.0.1", server.port))
            answer = await asyncio.wait_for(loop.sock_recv(s, 65535), 5)
    assert dns.message.from_wire(answer).answer[0][0].address == "10.246.0.19"
    assert metric(server, "tortie_dns_dropped_total", reason="malformed") == 1
    assert metric(server, "tortie_dns_dropped_total", reason="source") == 1


async def test_a_flood_from_one_source_does_not_starve_another(server):
    q = dns.message.make_query("db.shop.pod.tortie.local", "A")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood:
        flood.bind(("127.0.0.2", 0))
        for _ in range(100):
            flood.sendto(q.to_wire(), ("127.0.0.1", server.port))
        r = await dns.asyncquery.udp(q, "127.0.0.1", port=server.port, timeout=5, source="127.0.0.1")
        assert r.answer[0][0].address == "10.246.0.19"
    # the flood's first 20 (its burst) were answered, the rest dropped (a token per 1,000 s: none refilled)
    assert metric(server, "tortie_dns_dropped_total", reason="rate_limited") == 80


async def test_truncated_over_udp_then_complete_over_tcp(server):
    many = {f"endpoints/node1/shop/p{i}": {"ips": [f"10.246.0.{i}"], "labels": WEB} for i in range(1, 15)}
    server.resolver.set_zone(build(many, {"claims/10.246.0.0-24/node1": {"owned": True, "at": 1}}, "node1",
                                   lambda n: True))
    big = dns.message.make_query("web.shop.svc.tortie.local", "A", use_edns=False)
    r, used_tcp = await dns.asyncquery.udp_with_fallback(big, "127.0.0.1", port=server.port, timeout=5)
    assert len(r.answer[0]) == 14 and not used_tcp  # fits in 512 bytes
    more = {f"endpoints/node1/shop/q{i}": {"ips": [f"10.246.0.{i}"], "labels": WEB} for i in range(100, 160)}
    server.resolver.set_zone(build(many | more, {"claims/10.246.0.0-24/node1": {"owned": True, "at": 1}}, "node1",
                                   lambda n: True))
    r, used_tcp = await dns.asyncquery.udp_with_fallback(big, "127.0.0.1", port=server.port, timeout=5)
    assert len(r.answer[0]) == 74 and used_tcp
    assert metric(server, "tortie_dns_truncated_total") == 1


def test_cached_answers_follow_liveness_and_the_zone():
    down = set()
    r = resolver()
    r.alive = lambda n: n not in down
    srv = DnsServer(r, [], lambda a: True, RateLimiter(1e9, 1e9), DnsMetrics(CollectorRegistry()))
    q = dns.message.make_query("web-3.shop.pod.tortie.local", "A").to_wire()
    first, again = srv.respond(q, True), srv.respond(b"\x00\x07" + q[2:], True)
    assert again == b"\x00\x07" + first[2:]  # the same answer, with the second query's ID
    assert dns.message.from_wire(again).answer[0][0].address == "10.246.0.34"
    down.add("node3")
    assert dns.message.from_wire(srv.respond(q, True)).rcode() == dns.rcode.NXDOMAIN
    down.clear()
    assert dns.message.from_wire(srv.respond(q, True)).answer
    service = dns.message.make_query("web.shop.svc.tortie.local", "A").to_wire()
    firsts = [dns.message.from_wire(srv.respond(service, True)).answer[0][0].address for _ in range(3)]
    assert firsts == ["10.246.0.2", "10.246.0.18", "10.246.0.34"]  # service answers rotate: never replayed
    r.set_zone(build({k: v for k, v in ENDPOINTS.items() if "web-3" not in k}, CLAIMS, "node1", lambda n: True))
    assert dns.message.from_wire(srv.respond(q, True)).rcode() == dns.rcode.NXDOMAIN
