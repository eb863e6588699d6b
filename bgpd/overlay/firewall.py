"""The overlay's firewall rules, pure: accept VXLAN only from cluster nodes, and NAT outgoing per pool.

Rendered for the node's policy backend, in tables and chains of their own (never the policy's), each
applied in one transaction: nft `table ip tortie-overlay` (replaced whole), or iptables chains
TORTIE-VXLAN-IN (filter) and TORTIE-NAT-OUT (nat) over ipsets swapped in whole.
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from config.node import NodeConfig

NFT_TABLE = "tortie-overlay"
IPT_GUARD, IPT_NAT = "TORTIE-VXLAN-IN", "TORTIE-NAT-OUT"
IPSETS = ("tortie-vtep-src", "tortie-nat-pools", "tortie-pools", "tortie-nodes")


@dataclass(frozen=True)
class OverlayRules:
    vxlan_port: int | None  # drop VXLAN to this port from other sources than `nodes`; None: no pool uses VXLAN
    nodes: tuple[IPv4Address, ...]  # the other nodes' underlay addresses
    nat_pools: tuple[IPv4Network, ...]  # pools with nat_outgoing
    pools: tuple[IPv4Network, ...]  # every pool: pod-to-pod is never NATed
    exclude_nodes: bool = False  # NAT outgoing leaves traffic to the nodes' addresses alone too

    @property
    def empty(self) -> bool:
        return self.vxlan_port is None and not self.nat_pools


def _elements(items) -> str:
    return f" elements = {{ {', '.join(map(str, items))} }};" if items else ""


def render_nft(r: OverlayRules) -> str:
    """One nft transaction that replaces our table (or only removes it when there is nothing to enforce)."""
    lines = [f"table ip {NFT_TABLE}", f"delete table ip {NFT_TABLE}"]
    if r.empty:
        return "\n".join(lines) + "\n"
    lines += [f"table ip {NFT_TABLE} {{",
              f"  set vtep-sources {{ type ipv4_addr;{_elements(r.nodes)} }}",
              f"  set nodes {{ type ipv4_addr;{_elements(r.nodes)} }}",
              f"  set pools {{ type ipv4_addr; flags interval;{_elements(r.pools)} }}",
              f"  set nat-pools {{ type ipv4_addr; flags interval;{_elements(r.nat_pools)} }}"]
    if r.vxlan_port is not None:
        lines += ["  chain vxlan-in {", "    type filter hook input priority -10; policy accept;",
                  f"    udp dport {r.vxlan_port} ip saddr != @vtep-sources counter drop", "  }"]
    if r.nat_pools:
        hosts = " ip daddr != @nodes" if r.exclude_nodes else ""
        lines += ["  chain nat-out {", "    type nat hook postrouting priority srcnat; policy accept;",
                  f"    ip saddr @nat-pools ip daddr != @pools{hosts} counter masquerade", "  }"]
    return "\n".join(lines + ["}"]) + "\n"


def render_ipset(r: OverlayRules) -> str:
    """`ipset restore`: each set filled as <name>-new, then swapped in (the rules never see a partial set)."""
    contents = dict(zip(IPSETS, (r.nodes, r.nat_pools, r.pools, r.nodes)))
    lines = []
    for name, items in contents.items():
        kind = "hash:ip" if name in ("tortie-vtep-src", "tortie-nodes") else "hash:net"
        lines += [f"create {name} {kind} -exist", f"create {name}-new {kind} -exist", f"flush {name}-new"]
        lines += [f"add {name}-new {i}" for i in items]
        lines += [f"swap {name}-new {name}", f"destroy {name}-new"]
    return "\n".join(lines) + "\n"


def render_iptables(r: OverlayRules) -> str:
    """`iptables-restore --noflush`: our two chains, filled anew (their jumps: `iptables_jumps`)."""
    guard = ([f"-A {IPT_GUARD} -p udp --dport {r.vxlan_port} -m set ! --match-set tortie-vtep-src src -j DROP"]
             if r.vxlan_port is not None else [])
    hosts = " -m set ! --match-set tortie-nodes dst" if r.exclude_nodes else ""
    nat = ([f"-A {IPT_NAT} -m set --match-set tortie-nat-pools src -m set ! --match-set tortie-pools dst{hosts}"
            " -j MASQUERADE"] if r.nat_pools else [])
    return "\n".join(["*filter", f":{IPT_GUARD} - [0:0]", f"-F {IPT_GUARD}", *guard, "COMMIT",
                      "*nat", f":{IPT_NAT} - [0:0]", f"-F {IPT_NAT}", *nat, "COMMIT"]) + "\n"


IPTABLES_JUMPS = (("filter", "INPUT", IPT_GUARD), ("nat", "POSTROUTING", IPT_NAT))



def rules_for(node: NodeConfig) -> OverlayRules:
    """What the node's configuration asks of the firewall."""
    return OverlayRules(node.vxlan.port if node.uses_vxlan() else None, tuple(sorted(node.other_nodes())),
                        tuple(p.cidr for p in node.pools if p.nat_outgoing), tuple(p.cidr for p in node.pools),
                        node.nat_outgoing_exclude_nodes)
