"""Renders a ruleset for hosts without nftables: `ipset restore` input and `iptables-restore --noflush` input.

iptables has no verdict maps and no per-base-chain accept, so the layout differs from nft's:
- dispatch chains TT-FORWARD / TT-INPUT / TT-OUTPUT (jumped to from the built-in chains) walk the endpoints'
  interfaces, egress first, then ingress; established / related traffic is accepted before any of it;
- an Allow or Pass sets the mark bit ALLOW_MARK and returns to the endpoint chain, which returns when the bit is
  set and drops after its last policy; the dispatch chain clears the bit between the two checks.
Our chains end by returning, never by accepting, so other tools' rules in the built-in chains still apply.
Isolated interfaces (pods that could not be compiled) are dropped first in every dispatch chain, in and out.
ipset names carry a slot letter (a/b) that alternates on every full apply: the new sets are filled before the
rules switch to them, so a failed apply leaves the old rules with their old sets.
"""
from __future__ import annotations

import ipaddress
from typing import Iterable

from policy.ir import EndpointChain, Match, NamedSet, PolicyChain, Ruleset
from policy.names import IPSET_PREFIX, IPT_PREFIX

ALLOW_MARK = 0x100000
ALLOW_CHAIN = f"{IPT_PREFIX}ALLOW"
DISPATCH = {  # our chain -> (built-in chain, [(interface option, dispatch map)]), egress before ingress
    f"{IPT_PREFIX}FORWARD": ("FORWARD", [("-i", "workload_egress"), ("-o", "workload_ingress")]),
    f"{IPT_PREFIX}INPUT": ("INPUT", [("-i", "workload_egress"), ("-i", "host_ingress")]),
    f"{IPT_PREFIX}OUTPUT": ("OUTPUT", [("-o", "host_egress"), ("-o", "workload_ingress")]),
}
_PORT_PROTO = {6: "tcp", 17: "udp", 132: "sctp", 136: "udplite"}
_SET_TYPE = {"addr": "hash:ip", "net": "hash:net", "nport": "hash:ip,port"}


def chain_name(name: str) -> str:
    """pi_0123456789ab -> TT-PI-0123456789ab (18 characters; iptables allows 28)."""
    return IPT_PREFIX + name.upper().replace("_", "-")


def ipset_name(name: str, slot: str) -> str:
    return f"{IPSET_PREFIX}{name}-{slot}"


def ipset_element(s: NamedSet, e: str) -> str:
    if s.kind != "nport":
        return e
    ip, proto, port = e.split(",")
    return f"{ip},{_PORT_PROTO[int(proto)]}:{port}"


def ipset_create(s: NamedSet, slot: str) -> str:
    fam = "inet6" if s.family == 6 else "inet"
    return f"create {ipset_name(s.name, slot)} {_SET_TYPE[s.kind]} family {fam} maxelem 1048576 -exist"


def ipset_script(sets: Iterable[NamedSet], slot: str) -> str:
    """Creates (or empties) and fills the given sets in `slot`."""
    lines = []
    for s in sorted(sets, key=lambda s: s.name):
        name = ipset_name(s.name, slot)
        lines += [ipset_create(s, slot), f"flush {name}"]
        lines += (f"add {name} {ipset_element(s, e)}" for e in sorted(s.elements))
    return "\n".join(lines) + "\n"


def _range(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}:{last}"


def _cidr_range(cidr: str) -> str:
    net = ipaddress.ip_network(cidr)
    return f"{net[0]}-{net[-1]}"


def match_args(m: Match, slot: str) -> str:
    a: list[str] = []
    if m.protocol is not None:
        a.append(f"-p {m.protocol}")
    if m.not_protocol is not None:
        a.append(f"! -p {m.not_protocol}")
    for p in m.ports:  # cheap comparisons before set lookups
        a.append(f"-m multiport {'! ' if p.negate else ''}--{p.side[0]}ports {_range(p.first, p.last)}")
    for x in m.addrs:
        neg = "! " if x.negate else ""
        if x.set:
            a.append(f"-m set {neg}--match-set {ipset_name(x.set, slot)} {x.side}")
        else:
            a.append(f"-m iprange {neg}--{x.side}-range {_cidr_range(x.cidr or '')}")
    for n in m.named_ports:
        a.append(f"-m set {'! ' if n.negate else ''}--match-set {ipset_name(n.set, slot)} {n.side},{n.side}")
    icmp, opt = ("icmp6", "--icmpv6-type") if m.family == 6 or m.protocol == 58 else ("icmp", "--icmp-type")
    if m.icmp_type is not None:
        code = f"/{m.icmp_code}" if m.icmp_code is not None else ""
        a.append(f"-m {icmp} {opt} {m.icmp_type}{code}")
    if m.not_icmp_type is not None:
        a.append(f"-m {icmp} ! {opt} {m.not_icmp_type}")
    if m.not_icmp_code is not None:
        a.append(f"-m {icmp} ! {opt} {m.icmp_type}/{m.not_icmp_code}")
    return " ".join(a)


def _policy_rules(c: PolicyChain, family: int, slot: str) -> list[str]:
    out = []
    name = chain_name(c.name)
    for r in c.rules:
        if r.match.family not in (None, family):
            continue
        if family == 4 and r.match.protocol == 58 or family == 6 and r.match.protocol == 1:
            continue
        args = match_args(r.match, slot)
        args = args + " " if args else ""
        comment = f'-m comment --comment "r{r.rule}"'
        if r.action == "log":
            prefix = f"tortie {c.name} r{r.rule} "[:29]  # the LOG target's limit
            out.append(f'-A {name} {args}{comment} -j LOG --log-prefix "{prefix}"')
        elif r.action == "deny":
            out.append(f"-A {name} {args}{comment} -j DROP")
        else:
            out.append(f"-A {name} {args}{comment} -g {ALLOW_CHAIN}")
    return out


def _endpoint_rules(c: EndpointChain) -> list[str]:
    name = chain_name(c.name)
    out = [f"-A {name} -m conntrack --ctstate INVALID -j DROP"]
    for p in c.policies:
        out += [f"-A {name} -j {chain_name(p)}", f"-A {name} -m mark --mark {ALLOW_MARK:#x}/{ALLOW_MARK:#x} -j RETURN"]
    out.append(f'-A {name} -m comment --comment "default deny" -j DROP')
    return out


def _dispatch_rules(rs: Ruleset, family: int) -> list[str]:
    clear = f"-j MARK --set-xmark 0x0/{ALLOW_MARK:#x}"
    out = [f"-A {ALLOW_CHAIN} -j MARK --set-xmark {ALLOW_MARK:#x}/{ALLOW_MARK:#x}"]
    for chain, (_builtin, checks) in DISPATCH.items():
        for opt in sorted({opt for opt, _ in checks}):
            out += (f"-A {chain} {opt} {iface} -j DROP" for iface in sorted(rs.isolated))
        out.append(f"-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
        if family == 6:  # neighbour and router discovery is never subject to policy (as in Calico)
            out += (f"-A {chain} -p ipv6-icmp -m icmp6 --icmpv6-type {t} -j RETURN" for t in range(133, 137))
        for opt, vmap in checks:
            out.append(f"-A {chain} {clear}")
            out += (f"-A {chain} {opt} {iface} -j {chain_name(target)}"
                    for iface, target in sorted(rs.dispatch[vmap].items()))
        out.append(f"-A {chain} {clear}")
    return out


def all_chains(rs: Ruleset) -> list[str]:
    return [ALLOW_CHAIN, *DISPATCH, *(chain_name(n) for n in sorted(rs.policy_chains)),
            *(chain_name(n) for n in sorted(rs.endpoint_chains))]


def restore_script(rs: Ruleset, family: int, slot: str, *, chains: Iterable[str] | None = None,
                   remove: Iterable[str] = (), jumps: Iterable[str] = ()) -> str:
    """`iptables-restore --noflush` input for the filter table. `chains`: the IR chain names to (re)write, with
    the dispatch chains always rewritten (default: all); `remove`: iptables chains to delete; `jumps`: built-in
    chains that still need their jump to our dispatch chain."""
    names = sorted([*rs.policy_chains, *rs.endpoint_chains] if chains is None else chains)
    pol = {n: rs.policy_chains[n] for n in names if n in rs.policy_chains}
    eps = {n: rs.endpoint_chains[n] for n in names if n in rs.endpoint_chains}
    remove = list(remove)
    lines = ["*filter"]
    declared = [ALLOW_CHAIN, *DISPATCH, *(chain_name(n) for n in pol), *(chain_name(n) for n in eps), *remove]
    lines += (f":{c} - [0:0]" for c in declared)
    for c in pol.values():
        lines += _policy_rules(c, family, slot)
    for e in eps.values():
        lines += _endpoint_rules(e)
    lines += _dispatch_rules(rs, family)
    lines += (f"-X {c}" for c in remove)
    for builtin in jumps:
        ours = next(c for c, (b, _) in DISPATCH.items() if b == builtin)
        lines.append(f"-I {builtin} 1 -j {ours}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
