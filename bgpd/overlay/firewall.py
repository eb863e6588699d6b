"""The overlay's firewall rules, pure: accept VXLAN only from cluster nodes, and NAT outgoing per pool.

Per family, in tables and chains of their own (never the policy's), each applied in one transaction: nft
`table ip tortie-overlay` and `table ip6 tortie-overlay` (replaced whole), or the chains TORTIE-VXLAN-IN
(filter) and TORTIE-NAT-OUT (nat) of iptables and ip6tables over ipsets of the family, swapped in whole.
A family with nothing to enforce has no table, chains or sets of ours.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from config.node import NodeConfig

NFT_TABLE = "tortie-overlay"
IPT_GUARD, IPT_NAT = "TORTIE-VXLAN-IN", "TORTIE-NAT-OUT"
VERSIONS = (4, 6)
NFT_FAMILY = {4: "ip", 6: "ip6"}
_NFT_MATCH = {4: "ip", 6: "ip6"}
_NFT_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
_IPSET_FAMILY = {4: "inet", 6: "inet6"}
IPTABLES = {4: ("iptables-legacy", "iptables-legacy-restore"), 6: ("ip6tables-legacy", "ip6tables-legacy-restore")}
_SET_KINDS = {"vtep-src": "hash:ip", "nat-pools": "hash:net", "pools": "hash:net", "nodes": "hash:ip"}


def ipset_name(kind: str, version: int) -> str:
    """tortie-<kind> for IPv4 (the names before IPv6 came), tortie6-<kind> for IPv6."""
    return f"tortie{'6' if version == 6 else ''}-{kind}"


def ipsets(version: int) -> tuple[str, ...]:
    """Our ipsets of one family."""
    return tuple(ipset_name(kind, version) for kind in _SET_KINDS)


@dataclass(frozen=True)
class OverlayRules:
    vxlan_port: int | None  # drop VXLAN to this port from other sources than `nodes`; None: no pool uses VXLAN
    nodes: tuple[IPv4Address | IPv6Address, ...]  # the other nodes' underlay addresses, of both families
    nat_pools: tuple[IPv4Network | IPv6Network, ...]  # pools with nat_outgoing
    pools: tuple[IPv4Network | IPv6Network, ...]  # every pool: pod-to-pod is never NATed
    exclude_nodes: bool = False  # NAT outgoing leaves traffic to the nodes' addresses alone too
    vxlan_versions: frozenset[int] = frozenset({4})  # underlay families with a VTEP: the guard is theirs

    def of(self, version: int) -> OverlayRules:
        """The rules of one family (its guard only if it has a VTEP)."""
        def mine(items):
            return tuple(i for i in items if i.version == version)
        port = self.vxlan_port if version in self.vxlan_versions else None
        return replace(self, vxlan_port=port, nodes=mine(self.nodes), nat_pools=mine(self.nat_pools),
                       pools=mine(self.pools), vxlan_versions=frozenset({version}) & self.vxlan_versions)

    @property
    def empty(self) -> bool:
        return self.vxlan_port is None and not self.nat_pools

    def versions(self) -> tuple[int, ...]:
        """The families with something to enforce."""
        return tuple(v for v in VERSIONS if not self.of(v).empty)


def _elements(items) -> str:
    return f" elements = {{ {', '.join(map(str, items))} }};" if items else ""


def _nft_table(r: OverlayRules, version: int) -> list[str]:
    match, kind, family = _NFT_MATCH[version], _NFT_TYPE[version], NFT_FAMILY[version]
    lines = [f"table {family} {NFT_TABLE} {{",
             f"  set vtep-sources {{ type {kind};{_elements(r.nodes)} }}",
             f"  set nodes {{ type {kind};{_elements(r.nodes)} }}",
             f"  set pools {{ type {kind}; flags interval;{_elements(r.pools)} }}",
             f"  set nat-pools {{ type {kind}; flags interval;{_elements(r.nat_pools)} }}"]
    if r.vxlan_port is not None:
        lines += ["  chain vxlan-in {", "    type filter hook input priority -10; policy accept;",
                  f"    udp dport {r.vxlan_port} {match} saddr != @vtep-sources counter drop", "  }"]
    if r.nat_pools:
        hosts = f" {match} daddr != @nodes" if r.exclude_nodes else ""
        lines += ["  chain nat-out {", "    type nat hook postrouting priority srcnat; policy accept;",
                  f"    {match} saddr @nat-pools {match} daddr != @pools{hosts} counter masquerade", "  }"]
    return lines + ["}"]


def render_nft(r: OverlayRules) -> str:
    """One nft transaction that replaces our table of each family (or only removes it when that family has
    nothing to enforce)."""
    lines = []
    for v in VERSIONS:
        lines += [f"table {NFT_FAMILY[v]} {NFT_TABLE}", f"delete table {NFT_FAMILY[v]} {NFT_TABLE}"]
        if not r.of(v).empty:
            lines += _nft_table(r.of(v), v)
    return "\n".join(lines) + "\n"


def render_ipset(r: OverlayRules, version: int) -> str:
    """`ipset restore` of one family's sets: each filled as <name>-new, then swapped in (the rules never see a
    partial set)."""
    r = r.of(version)
    contents = dict(zip(_SET_KINDS, (r.nodes, r.nat_pools, r.pools, r.nodes)))
    lines = []
    for kind, items in contents.items():
        name, create = ipset_name(kind, version), f"{_SET_KINDS[kind]} family {_IPSET_FAMILY[version]} -exist"
        lines += [f"create {name} {create}", f"create {name}-new {create}", f"flush {name}-new"]
        lines += [f"add {name}-new {i}" for i in items]
        lines += [f"swap {name}-new {name}", f"destroy {name}-new"]
    return "\n".join(lines) + "\n"


def render_iptables(r: OverlayRules, version: int) -> str:
    """`ip(6)tables-restore --noflush` of one family: our two chains, filled anew (their jumps:
    `IPTABLES_JUMPS`)."""
    r = r.of(version)
    guard = ([f"-A {IPT_GUARD} -p udp --dport {r.vxlan_port} -m set ! --match-set {ipset_name('vtep-src', version)}"
              " src -j DROP"] if r.vxlan_port is not None else [])
    hosts = f" -m set ! --match-set {ipset_name('nodes', version)} dst" if r.exclude_nodes else ""
    nat = ([f"-A {IPT_NAT} -m set --match-set {ipset_name('nat-pools', version)} src -m set ! --match-set "
            f"{ipset_name('pools', version)} dst{hosts} -j MASQUERADE"] if r.nat_pools else [])
    return "\n".join(["*filter", f":{IPT_GUARD} - [0:0]", f"-F {IPT_GUARD}", *guard, "COMMIT",
                      "*nat", f":{IPT_NAT} - [0:0]", f"-F {IPT_NAT}", *nat, "COMMIT"]) + "\n"


IPTABLES_JUMPS = (("filter", "INPUT", IPT_GUARD), ("nat", "POSTROUTING", IPT_NAT))


def rules_for(node: NodeConfig) -> OverlayRules:
    """What the node's configuration asks of the firewall."""
    vxlan = frozenset(p.cidr.version for p in node.pools if p.vxlan != "never")
    return OverlayRules(node.vxlan.port if vxlan else None,
                        tuple(sorted(node.other_nodes(4)) + sorted(node.other_nodes(6))),
                        tuple(p.cidr for p in node.pools if p.nat_outgoing), tuple(p.cidr for p in node.pools),
                        node.nat_outgoing_exclude_nodes, vxlan)
