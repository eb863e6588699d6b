"""Tortie's rules as nf_tables netlink expressions, the way nft 1.0.6 encodes render_nft's text for them.

With this, a policy change or a pod with a new list of policies reaches the kernel without `nft`, which reads
every set and chain of the table (25-120 ms at 10,000 policies) before changing one chain. A rule this module
does not know how to encode raises Unsupported, and the caller gives the whole change to `nft -f` instead.
tests/policy/test_policy_netlink_chains.py checks that nft lists what we send as the text render_nft writes.
"""
from __future__ import annotations

import ipaddress
import struct

from policy.ir import AddrMatch, EndpointChain, Match, PolicyChain

NLA_F_NESTED = 0x8000
NF_DROP, NF_ACCEPT, NFT_JUMP = 0, 1, -3
NFT_REG_VERDICT, NFT_REG_1, NFT_REG32_00 = 0, 1, 8
NFT_CT_STATE, CT_STATE_INVALID = 0, 1
NFT_META_NFPROTO, NFT_META_L4PROTO = 15, 16
NFT_PAYLOAD_NETWORK, NFT_PAYLOAD_TRANSPORT = 1, 2
NFT_CMP_EQ, NFT_CMP_NEQ, NFT_CMP_LTE, NFT_CMP_GTE = 0, 1, 3, 5
NFT_RANGE_NEQ = 1
NFT_LOOKUP_F_INV = 1
NFPROTO = {4: 2, 6: 10}  # NFPROTO_IPV4, NFPROTO_IPV6
ADDR = {4: (12, 16, 4), 6: (8, 24, 16)}  # family -> (source offset, destination offset, length)
VERDICT = {"allow": NF_ACCEPT, "pass": NF_ACCEPT, "deny": NF_DROP}


class Unsupported(ValueError):
    """A rule shape this encoder does not produce: apply the change with nft instead."""


def attr(kind: int, value: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)


def nest(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def string(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("!l" if value < 0 else "!L", value))


def _expr(name: str, *attrs: bytes) -> bytes:
    return nest(1, string(1, name), nest(2, *attrs))  # NFTA_LIST_ELEM: NFTA_EXPR_NAME, NFTA_EXPR_DATA


def _data(value: bytes) -> bytes:
    return attr(1, value)  # NFTA_DATA_VALUE


def _verdict(code: int, chain: str | None = None) -> bytes:
    return _expr("immediate", u32(1, NFT_REG_VERDICT),
                 nest(2, nest(2, u32(1, code), *([string(2, chain)] if chain else []))))


def _meta(key: int, reg: int = NFT_REG_1) -> bytes:
    return _expr("meta", u32(1, reg), u32(2, key))


def _cmp(op: int, value: bytes) -> bytes:
    return _expr("cmp", u32(1, NFT_REG_1), u32(2, op), nest(3, _data(value)))


def _payload(base: int, offset: int, length: int, reg: int = NFT_REG_1) -> bytes:
    return _expr("payload", u32(1, reg), u32(2, base), u32(3, offset), u32(4, length))


def _lookup(set_name: str, negate: bool) -> bytes:
    return _expr("lookup", string(1, set_name), u32(2, NFT_REG_1), *([u32(5, NFT_LOOKUP_F_INV)] if negate else []))


_COUNTER = _expr("counter", attr(1, bytes(8)), attr(2, bytes(8)))
_CT_INVALID_DROP = b"".join((
    _expr("ct", u32(1, NFT_REG_1), u32(2, NFT_CT_STATE)),
    _expr("bitwise", u32(1, NFT_REG_1), u32(2, NFT_REG_1), u32(3, 4),
          nest(4, _data(struct.pack("=L", CT_STATE_INVALID))), nest(5, _data(bytes(4)))),
    _cmp(NFT_CMP_NEQ, bytes(4)), _verdict(NF_DROP)))


def endpoint_rules(chain: EndpointChain) -> list[bytes]:
    """render_nft's endpoint rules: ct state invalid drop / jump <policy> ... / counter drop."""
    return [_CT_INVALID_DROP, *(_verdict(NFT_JUMP, p) for p in chain.policies), _COUNTER + _verdict(NF_DROP)]


def policy_rules(chain: PolicyChain) -> list[bytes]:
    """render_nft's policy rules (`_rules`), one NFTA_RULE_EXPRESSIONS payload each. Raises Unsupported."""
    out = []
    for r in chain.rules:
        exprs = _match(r.match)
        if r.action == "log":
            exprs += _expr("log", string(2, f"tortie {chain.name} r{r.rule} ")) + _COUNTER
        else:
            exprs += _COUNTER + _verdict(VERDICT[r.action])
        out.append(exprs)
    return out


def _match(m: Match) -> bytes:
    """The expressions of render_nft.match_text, in its order; nft's implicit `meta nfproto` dependency comes
    before the first address load."""
    out = []
    if m.family and not m.addrs and not m.named_ports:
        out += [_meta(NFT_META_NFPROTO), _cmp(NFT_CMP_EQ, bytes([NFPROTO[m.family]]))]
    if m.protocol is not None:
        out += [_meta(NFT_META_L4PROTO), _cmp(NFT_CMP_EQ, bytes([m.protocol]))]
    if m.not_protocol is not None:
        out += [_meta(NFT_META_L4PROTO), _cmp(NFT_CMP_NEQ, bytes([m.not_protocol]))]
    _no_merge([(p.side, p.negate or p.first != p.last, 2) for p in m.ports])
    for p in m.ports:
        out.append(_payload(NFT_PAYLOAD_TRANSPORT, 0 if p.side == "src" else 2, 2))
        if p.first == p.last:
            out.append(_cmp(NFT_CMP_NEQ if p.negate else NFT_CMP_EQ, struct.pack("!H", p.first)))
        elif p.negate:
            out.append(_expr("range", u32(1, NFT_REG_1), u32(2, NFT_RANGE_NEQ),
                             nest(3, _data(struct.pack("!H", p.first))), nest(4, _data(struct.pack("!H", p.last)))))
        else:  # nft writes a range as two comparisons
            out += [_cmp(NFT_CMP_GTE, struct.pack("!H", p.first)), _cmp(NFT_CMP_LTE, struct.pack("!H", p.last))]
    if m.addrs or m.named_ports:
        if m.family not in NFPROTO:
            raise Unsupported("an address match without its family")
        out += [_meta(NFT_META_NFPROTO), _cmp(NFT_CMP_EQ, bytes([NFPROTO[m.family]]))]
    _no_merge([(a.side, a.negate or a.set is not None or ipaddress.ip_network(a.cidr or "").prefixlen % 8 != 0,
                ipaddress.ip_network(a.cidr or "").prefixlen // 8 if a.cidr else 0) for a in m.addrs])
    for a in m.addrs:
        out += _address(a, m.family)  # type: ignore[arg-type]
    for n in m.named_ports:
        src, dst, length = ADDR[m.family]  # type: ignore[index]
        regs = length // 4  # the address fills this many 32-bit registers, then protocol and port follow
        out += [_payload(NFT_PAYLOAD_NETWORK, src if n.side == "src" else dst, length),
                _meta(NFT_META_L4PROTO, NFT_REG32_00 + regs),
                _payload(NFT_PAYLOAD_TRANSPORT, 0 if n.side == "src" else 2, 2, NFT_REG32_00 + regs + 1),
                _lookup(n.set, n.negate)]
    icmp = (m.icmp_type, m.icmp_code, m.not_icmp_type, m.not_icmp_code)
    if any(v is not None for v in icmp):
        if m.protocol not in (1, 58):
            raise Unsupported("an ICMP match without its protocol")
        if m.icmp_type is not None and m.icmp_code is not None:  # nft merges the two adjacent bytes into one load
            out += [_payload(NFT_PAYLOAD_TRANSPORT, 0, 2), _cmp(NFT_CMP_EQ, bytes([m.icmp_type, m.icmp_code]))]
            icmp = (None, None, m.not_icmp_type, m.not_icmp_code)
        for value, offset, op in zip(icmp, (0, 1, 0, 1), (NFT_CMP_EQ, NFT_CMP_EQ, NFT_CMP_NEQ, NFT_CMP_NEQ)):
            if value is not None:
                out += [_payload(NFT_PAYLOAD_TRANSPORT, offset, 1), _cmp(op, bytes([value]))]
    return b"".join(out)


def _no_merge(fields: list[tuple[str, bool, int]]) -> None:
    """nft merges a source field compared for equality in full and the destination field that follows it (they
    are adjacent in the header) into one load: that shape is left to nft. fields: (side, not a plain equality,
    bytes compared)."""
    for (side, other, size), (side2, other2, _size2) in zip(fields, fields[1:]):
        if side == "src" and side2 == "dst" and not other and not other2 and size in (2, 4, 16):
            raise Unsupported("adjacent header fields that nft merges")


def _address(a: AddrMatch, family: int) -> list[bytes]:
    src, dst, length = ADDR[family]
    offset = src if a.side == "src" else dst
    if a.set:
        return [_payload(NFT_PAYLOAD_NETWORK, offset, length), _lookup(a.set, a.negate)]
    net = ipaddress.ip_network(a.cidr or "", strict=False)
    op = NFT_CMP_NEQ if a.negate else NFT_CMP_EQ
    if net.prefixlen == 0:
        raise Unsupported("a /0 address match")
    if net.prefixlen % 8 == 0:  # nft loads only the prefix's bytes
        size = net.prefixlen // 8
        return [_payload(NFT_PAYLOAD_NETWORK, offset, size), _cmp(op, net.network_address.packed[:size])]
    return [_payload(NFT_PAYLOAD_NETWORK, offset, length),
            _expr("bitwise", u32(1, NFT_REG_1), u32(2, NFT_REG_1), u32(3, length), nest(4, _data(net.netmask.packed)),
                  nest(5, _data(bytes(length)))),
            _cmp(op, net.network_address.packed)]
