"""What to answer to a DNS query, pure: from the zone, or forward it, or refuse it.

`parse()` turns bytes into a query or None (malformed: dropped and counted by the caller, never an exception);
`Resolver.answer()` decides; `wire()` encodes a response for the transport it goes back over (UDP answers that
do not fit what the client can take are truncated with the TC bit set: the client asks again over TCP).

Encoded answers are kept (`Resolver.cached()`, `remember()`) by the query's bytes past its ID, for as long as the
zone and the liveness of the nodes they were built from stay the same: a repeated question costs a dict lookup
instead of a parse and an encode (about 15 times faster). Service answers rotate, so they are built every time.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from bgpd.dns.zone import Address, Zone, in_pools

UDP_PLAIN = 512  # RFC 1035: the most a client without EDNS takes over UDP
UDP_MAX = 1232  # the EDNS payload we offer and honour at most (DNS flag day 2020: no IP fragmentation)
REVERSE = dns.name.from_text("in-addr.arpa.")
REVERSE6 = dns.name.from_text("ip6.arpa.")
RECORD = {4: dns.rdatatype.A, 6: dns.rdatatype.AAAA}  # the record type of an address of each family
SOA_TIMERS = "3600 600 86400"  # refresh retry expire: nobody transfers this zone
CACHE_SIZE = 20000  # encoded answers kept; the cache starts again empty when full


@dataclass(frozen=True)
class Reply:
    message: dns.message.Message
    result: str  # for the metric: noerror, nodata, nxdomain, refused, formerr, notimp
    depends: dict[str, bool] | None = None  # node -> its liveness the answer was built with; None: not reusable


@dataclass(frozen=True)
class Forward:
    query: dns.message.Message


def parse(wire: bytes) -> dns.message.Message | None:
    """A query, or None for anything that is not one (malformed, or a response: never answer those)."""
    try:
        message = dns.message.from_wire(wire)
    except (dns.exception.DNSException, ValueError, TypeError, IndexError, KeyError, UnicodeError):
        return None
    return None if message.flags & dns.flags.QR else message


def wire(response: dns.message.Message, query: dns.message.Message, udp: bool) -> bytes:
    """The response's bytes; over UDP at most what the client advertised (512 without EDNS), else truncated
    with TC set (whole RRsets are dropped, so a client never sees half an answer). Records keep their order
    (dnspython shuffles them by default): a service's rotation is ours."""
    limit = (min(max(query.payload, UDP_PLAIN), UDP_MAX) if query.edns >= 0 else UDP_PLAIN) if udp else 65535
    return response.to_wire(max_size=limit, prefer_truncation=True, want_shuffle=False)


class Resolver:
    def __init__(self, domain: str, ttl: int, pools: tuple[IPv4Network | IPv6Network, ...], forwarding: bool):
        self.domain = dns.name.from_text(domain)
        self.ttl, self.pools, self.forwarding = ttl, pools, forwarding
        self.zone = Zone()
        self.alive: Callable[[str], bool] = lambda node: True
        self._turns: dict[tuple[str, str, int], int] = {}  # (namespace, service, qtype) -> answers: the rotation
        self._consulted: dict[str, bool] = {}  # node -> liveness, as asked while building the current answer
        self._rotated = False
        self._cache: dict[tuple[bytes, bool], tuple[bytes, str, str, dict[str, bool]]] = {}
        self._soa = dns.rrset.from_text(self.domain, ttl, "IN", "SOA",
                                        f"ns.{self.domain} hostmaster.{self.domain} 1 {SOA_TIMERS} {ttl}")

    def set_zone(self, zone: Zone) -> None:
        self.zone = zone
        self._turns = {k: n for k, n in self._turns.items() if k[:2] in zone.services}
        self._cache.clear()

    def cached(self, data: bytes, udp: bool) -> tuple[bytes, str, str] | None:
        """(the answer's bytes with the query's ID, its qtype, its result) if this question was answered from the
        current zone and the nodes it depended on are as alive as they were."""
        hit = self._cache.get((data[2:], udp))
        if hit is None or any(self.alive(node) != alive for node, alive in hit[3].items()):
            return None
        return data[:2] + hit[0][2:], hit[1], hit[2]

    def remember(self, data: bytes, udp: bool, out: bytes, qtype: str, reply: Reply) -> None:
        if reply.depends is not None:
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[(data[2:], udp)] = (out, qtype, reply.result, reply.depends)

    def _recorded(self, node: str) -> bool:
        alive = self._consulted[node] = self.alive(node)
        return alive

    def answer(self, query: dns.message.Message) -> Reply | Forward:
        self._consulted, self._rotated = {}, False
        out = self._answer(query)
        if isinstance(out, Reply) and not self._rotated:
            out = replace(out, depends=self._consulted)
        return out

    def _answer(self, query: dns.message.Message) -> Reply | Forward:
        if query.opcode() != dns.opcode.QUERY:
            return self._reply(query, dns.rcode.NOTIMP, "notimp")
        if len(query.question) != 1:
            return self._reply(query, dns.rcode.FORMERR, "formerr")
        q = query.question[0]
        if q.rdclass not in (dns.rdataclass.IN, dns.rdataclass.ANY):
            return self._reply(query, dns.rcode.REFUSED, "refused")
        if q.name.is_subdomain(self.domain):
            return self._ours(query, q.name.relativize(self.domain).labels, q.rdtype)
        if (address := _reverse(q.name)) is not None and in_pools(address, self.pools):
            return self._ptr(query, address, q.rdtype)
        if self.forwarding:
            return Forward(query)
        return self._reply(query, dns.rcode.REFUSED, "refused")

    # --- our names ---------------------------------------------------------------------------------
    def _ours(self, query: dns.message.Message, labels: tuple[bytes, ...], rdtype: int) -> Reply:
        try:
            name = tuple(label.decode("ascii").lower() for label in labels)
        except UnicodeDecodeError:
            name = ("",) * 4  # no such name
        if name == ():
            return self._records(query, [], rdtype, soa_answer=True)
        if len(name) == 3 and name[2] == "pod":
            entry = self.zone.pod(name[1], name[0], self._recorded)
            return self._records(query, None if entry is None else list(entry.ips), rdtype)
        if len(name) == 3 and name[2] == "svc":
            ips = self.zone.service(name[1], name[0], self._recorded)
            if not ips:
                return self._records(query, None, rdtype)
            asked = [ip for ip in ips if rdtype in (RECORD[ip.version], dns.rdatatype.ANY)]
            if len(asked) > 1:  # each record type rotates on its own: A and AAAA questions come in pairs
                self._rotated = True
                turn = self._turns.get((name[1], name[0], rdtype), 0)
                self._turns[(name[1], name[0], rdtype)] = turn + 1
                k = turn % len(asked)
                asked = asked[k:] + asked[:k]
            return self._records(query, asked, rdtype)
        if len(name) < 3 and name[-1] in ("pod", "svc"):  # empty non-terminals: the name exists, without data
            return self._records(query, [], rdtype)
        return self._records(query, None, rdtype)

    def _records(self, query: dns.message.Message, ips: list[Address] | None, rdtype: int,
                 soa_answer: bool = False) -> Reply:
        """ips None: no such name; [] or a type we have no data of: the name exists (NODATA). A records for
        the IPv4 addresses, AAAA for the IPv6 ones (both for ANY)."""
        response = self._response(query)
        response.flags |= dns.flags.AA
        qname = query.question[0].name
        if ips is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._soa)
            return Reply(response, "nxdomain")
        if soa_answer and rdtype in (dns.rdatatype.SOA, dns.rdatatype.ANY):
            response.answer.append(self._soa)
        for kind in (dns.rdatatype.A, dns.rdatatype.AAAA):
            of_kind = [str(ip) for ip in ips if RECORD[ip.version] == kind]
            if of_kind and rdtype in (kind, dns.rdatatype.ANY):
                response.answer.append(dns.rrset.from_text_list(qname, self.ttl, "IN", kind, of_kind))
        if not response.answer:
            response.authority.append(self._soa)
            return Reply(response, "nodata")
        return Reply(response, "noerror")

    def _ptr(self, query: dns.message.Message, address: Address, rdtype: int) -> Reply:
        entry = self.zone.ptr(address, self._recorded)
        response = self._response(query)
        response.flags |= dns.flags.AA
        if entry is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return Reply(response, "nxdomain")
        if rdtype not in (dns.rdatatype.PTR, dns.rdatatype.ANY):
            return Reply(response, "nodata")
        target = f"{entry.pod}.{entry.namespace}.pod.{self.domain}"
        response.answer.append(dns.rrset.from_text(query.question[0].name, self.ttl, "IN", "PTR", target))
        return Reply(response, "noerror")

    # --- helpers -----------------------------------------------------------------------------------
    def _response(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query, our_payload=UDP_MAX)
        if self.forwarding:
            response.flags |= dns.flags.RA
        return response

    def _reply(self, query: dns.message.Message, rcode: int, result: str) -> Reply:
        response = self._response(query)
        if rcode != dns.rcode.REFUSED:
            response.question = []  # a FORMERR/NOTIMP query's questions are not worth echoing
        response.set_rcode(rcode)
        return Reply(response, result)

    def failure(self, query: dns.message.Message) -> dns.message.Message:
        """SERVFAIL for a forwarded query no upstream answered."""
        response = self._response(query)
        response.set_rcode(dns.rcode.SERVFAIL)
        return response


def _reverse(name: dns.name.Name) -> Address | None:
    """The address of a complete reverse name: four decimal labels under in-addr.arpa, or 32 nibbles under
    ip6.arpa (RFC 3596); None for anything else (a partial name, a label that is not a digit)."""
    if name.is_subdomain(REVERSE):
        labels = name.relativize(REVERSE).labels
        if len(labels) != 4 or not all(label.isdigit() and len(label) <= 3 for label in labels):
            return None
        try:
            return IPv4Address(".".join(label.decode() for label in reversed(labels)))
        except ValueError:
            return None
    if name.is_subdomain(REVERSE6):
        labels = name.relativize(REVERSE6).labels
        if len(labels) != 32 or not all(len(label) == 1 and label in _NIBBLES for label in labels):
            return None
        return IPv6Address(bytes.fromhex(b"".join(reversed(labels)).decode()))
    return None


_NIBBLES = frozenset(bytes([c]) for c in b"0123456789abcdefABCDEF")
