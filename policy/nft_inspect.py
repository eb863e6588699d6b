"""Reading nf_tables state over netlink, cheaply: the ruleset generation and a census of one table.

`nft list table` at 10,000 policies takes seconds (it parses and prints every expression). Drift checks only
need to know whether anything changed (the generation id, which every committed transaction of any table bumps)
and, when it did, whether our table still has the chains, rules per chain, sets and elements per set it should:
netlink dumps whose messages are counted, never decoded beyond names and flags, and each chain's rules
fingerprinted (a rule replaced by another changes no count: `fingerprint`).

Every thread keeps one netfilter socket per network namespace open (`connection()`): closing one makes the kernel
finish destroying what earlier transactions deleted (rules, chains, elements) first, which waits for an RCU grace
period (`nft_rcv_nl_event` -> flush of the destroy work: 8-16 ms here), with the commit mutex held.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
import struct
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from policy.kernel import ApplyError, Interrupted
from policy.nft_rules import string

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFPROTO_INET = 1
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLM_F_DUMP_INTR = 0x10
NLMSG_ERROR, NLMSG_DONE = 2, 3
MSG_GETCHAIN, MSG_GETRULE, MSG_GETSET, MSG_GETSETELEM, MSG_GETGEN = 4, 7, 10, 13, 16
NFT_SET_ELEM_INTERVAL_END = 1
NFT_SET_ANONYMOUS = 1


def _attrs(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    out = {}
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return out


def _u32(value: bytes | None) -> int:
    """A big-endian 32-bit attribute (flags); 0 when absent."""
    return struct.unpack("!L", value[:4])[0] if value and len(value) >= 4 else 0


def _name(value: bytes | None) -> str:
    return (value or b"").split(b"\0", 1)[0].decode(errors="replace")


class _Socket:
    def __init__(self, timeout: float = 5.0):
        self.s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.s.settimeout(timeout)
        self.s.bind((0, 0))
        self.seq = 0

    def __enter__(self) -> _Socket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.s.close()

    def request(self, msg: int, flags: int, attrs: bytes = b"", family: int = NFPROTO_INET,
                each: Callable[[bytes, int, int], Any] = _attrs) -> list:
        """Sends one request; returns `each(data, start, end)` of every answer's attributes (a dump's messages).
        ENOENT: no answer."""
        self.seq += 1
        body = struct.pack("=BBH", family, 0, 0) + attrs
        header = struct.pack("=LHHLL", 16 + len(body), (NFNL_SUBSYS_NFTABLES << 8) | msg, NLM_F_REQUEST | flags,
                             self.seq, 0)
        self.s.send(header + body)
        out: list[dict[int, bytes]] = []
        try:
            while True:
                data = self.s.recv(1 << 20)
                offset = 0
                while offset + 16 <= len(data):
                    length, kind, mflags, seq, _pid = struct.unpack_from("=LHHLL", data, offset)
                    if length < 16:
                        raise ApplyError("nf_tables sent a malformed netlink message")
                    if seq == self.seq:
                        if mflags & NLM_F_DUMP_INTR:
                            raise Interrupted()
                        if kind == NLMSG_DONE:
                            return out
                        if kind == NLMSG_ERROR:
                            (err,) = struct.unpack_from("=i", data, offset + 16)
                            if err == 0 or err == -errno.ENOENT:
                                return out if err == 0 else []
                            raise ApplyError(f"nf_tables: {os.strerror(-err)}")
                        out.append(each(data, offset + 20, offset + length))
                        if not flags & NLM_F_DUMP:
                            return out
                    offset += (length + 3) & ~3
        except socket.timeout:
            raise ApplyError("nf_tables did not answer a dump") from None


_open = threading.local()  # this thread's sockets: network namespace inode -> _Socket


@contextmanager
def connection() -> Iterator[_Socket]:
    """This thread's socket in its current network namespace, left open for the next use; a socket that saw an
    error (or a timeout) is closed, so that no stale answer is ever read as the next one's."""
    sockets = _open.__dict__.setdefault("by_netns", {})
    netns = os.stat("/proc/thread-self/ns/net").st_ino
    s = sockets.pop(netns, None) or _Socket()
    try:
        yield s
    except BaseException:
        s.s.close()
        raise
    sockets[netns] = s


def generation() -> int:
    """The ruleset generation: every committed nf_tables transaction (of any table, any tool) increments it."""
    with connection() as s:
        answer = s.request(MSG_GETGEN, 0, family=socket.AF_UNSPEC)
    if not answer or 1 not in answer[0]:
        raise ApplyError("nf_tables gave no generation id")
    return struct.unpack("!L", answer[0][1][:4])[0]


@dataclass
class Census:
    """What one table holds: rules per chain (every chain, empty ones with 0), each chain's fingerprint (its rules'
    expressions as the kernel lists them, counter values left out: `fingerprint`) and elements per set or map
    (interval sets count their ranges, not the end markers)."""

    exists: bool = False
    rules: dict[str, int] = field(default_factory=dict)
    elements: dict[str, int] = field(default_factory=dict)
    fingerprints: dict[str, int] = field(default_factory=dict)


def census(table: str) -> Census:
    """Raises Interrupted when the ruleset changed during the dumps."""
    with connection() as s:
        tname = string(1, table)
        sets = [_name(a.get(2)) for a in s.request(MSG_GETSET, NLM_F_DUMP, tname)
                if _name(a.get(1)) == table and not _u32(a.get(3)) & NFT_SET_ANONYMOUS]  # inline `{ ... }` sets
        chains = [_name(a.get(3)) for a in s.request(MSG_GETCHAIN, NLM_F_DUMP) if _name(a.get(1)) == table]
        if not chains and not sets:
            return Census()
        out = Census(True, {c: 0 for c in chains})
        per_chain = _rules_by_chain(s.request(MSG_GETRULE, NLM_F_DUMP, tname, each=_rule), table)
        out.rules.update((c, len(rules)) for c, rules in per_chain.items())
        out.fingerprints = {c: fingerprint(per_chain.get(c, [])) for c in chains}
        for name in sets:
            count = 0
            for a in s.request(MSG_GETSETELEM, NLM_F_DUMP, tname + string(2, name)):
                nested = a.get(3, b"")
                for elem in _elements(nested):
                    if not _u32(elem.get(3)) & NFT_SET_ELEM_INTERVAL_END:
                        count += 1
            out.elements[name] = count
        return out


def fingerprints(table: str, chains: Iterable[str]) -> dict[str, int]:
    """The fingerprints of these chains (one dump each, of that chain only); a chain that is not there is left
    out. Raises Interrupted when the ruleset changed during a dump."""
    out = {}
    with connection() as s:
        for chain in chains:
            rules = _rules_by_chain(s.request(MSG_GETRULE, NLM_F_DUMP, string(1, table) + string(2, chain),
                                              each=_rule), table).get(chain)
            out[chain] = fingerprint(rules or [])
    return out


# A counter expression as the kernel lists it: NFTA_LIST_ELEM { NFTA_EXPR_NAME "counter", NFTA_EXPR_DATA { bytes,
# packets (64-bit, each maybe after a 4-byte alignment pad) } }; its values change with traffic, its length with
# the alignment of where it lands in the dump.
_COUNTER = re.compile(rb"..\x01[\x00\x80]\x0c\x00\x01\x00counter\x00..\x02[\x00\x80](?:\x04\x00\x03\x00)?"
                      rb"\x0c\x00\x01\x00.{8}(?:\x04\x00\x03\x00)?\x0c\x00\x02\x00.{8}", re.S)


def fingerprint(rules: list[bytes]) -> int:
    """A chain's rules (their expressions attribute, in order) as 64 bits: any rule changed, added, removed or
    moved changes it; traffic (counter values) does not. Keyed by nothing secret: it detects changes by other
    tools, it is no signature."""
    h = hashlib.blake2b(digest_size=8)
    for r in rules:
        h.update(struct.pack("=L", len(r)))
        h.update(_COUNTER.sub(b"counter", r))
    return int.from_bytes(h.digest(), "big")


def _rules_by_chain(rules: list[tuple[bytes, bytes, bytes]], table: str) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for t, c, exprs in rules:
        if _name(t) == table:
            out.setdefault(_name(c), []).append(exprs)
    return out


def _rule(data: bytes, start: int, end: int) -> tuple[bytes, bytes, bytes]:
    """A rule's table and chain names, raw, and its expressions attribute. The kernel puts the names first
    (attributes 1 and 2), then the handle and position: with 50,000 rules this walk is most of the census's own
    time, so the expressions are taken as one attribute, not decoded."""
    length, kind = struct.unpack_from("=HH", data, start)
    second = start + ((length + 3) & ~3)
    length2, kind2 = struct.unpack_from("=HH", data, second)
    if (kind & 0x3FFF, kind2 & 0x3FFF) == (1, 2):
        rest = _attrs(data, second + ((length2 + 3) & ~3), end)
        return data[start + 4:start + length], data[second + 4:second + length2], rest.get(4, b"")
    attrs = _attrs(data, start, end)
    return attrs.get(1, b""), attrs.get(2, b""), attrs.get(4, b"")


def _elements(nested: bytes) -> list[dict[int, bytes]]:
    """The NFTA_LIST_ELEM entries of an element list (repeated attributes of one type: not a dict)."""
    out, offset = [], 0
    while offset + 4 <= len(nested):
        length, _kind = struct.unpack_from("=HH", nested, offset)
        if length < 4:
            break
        out.append(_attrs(nested, offset + 4, offset + length))
        offset += (length + 3) & ~3
    return out
