"""With wireguard.required, the other direction of the refusal, pure: pod traffic from another node's pods
must arrive through the WireGuard device. A packet with a pool source that is not one of ours, to a pool
address, arriving on any other interface (the underlay, the VXLAN device) is dropped before routing.

Rendered for the node's policy backend in a table or chain of its own: nft `table ip tortie-wireguard`
(replaced whole, one transaction), or iptables raw chain TORTIE-WG-GUARD over ipsets swapped in whole.
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network

NFT_TABLE = "tortie-wireguard"
IPT_CHAIN = "TORTIE-WG-GUARD"
IPSETS = ("tortie-wg-pools", "tortie-wg-local")
IPTABLES_JUMP = ("raw", "PREROUTING", IPT_CHAIN)


@dataclass(frozen=True)
class GuardRules:
    device: str  # the WireGuard device: the only way in for other nodes' pod traffic
    pools: tuple[IPv4Network, ...]
    local: tuple[IPv4Network, ...]  # our blocks and borrowed /32s: our own pods' sources


def _elements(items) -> str:
    return f" elements = {{ {', '.join(map(str, items))} }};" if items else ""


def render_nft(r: GuardRules) -> str:
    return "\n".join([
        f"table ip {NFT_TABLE}", f"delete table ip {NFT_TABLE}", f"table ip {NFT_TABLE} {{",
        f"  set pools {{ type ipv4_addr; flags interval;{_elements(r.pools)} }}",
        f"  set local {{ type ipv4_addr; flags interval;{_elements(r.local)} }}",
        "  chain guard {", "    type filter hook prerouting priority raw; policy accept;",
        f'    iifname != "{r.device}" ip saddr @pools ip saddr != @local ip daddr @pools counter drop', "  }",
        "}"]) + "\n"


def render_ipset(r: GuardRules) -> str:
    """`ipset restore`: each set filled as <name>-new, then swapped in (the rule never sees a partial set)."""
    lines = []
    for name, items in zip(IPSETS, (r.pools, r.local)):
        lines += [f"create {name} hash:net -exist", f"create {name}-new hash:net -exist", f"flush {name}-new"]
        lines += [f"add {name}-new {i}" for i in items]
        lines += [f"swap {name}-new {name}", f"destroy {name}-new"]
    return "\n".join(lines) + "\n"


def render_iptables(r: GuardRules) -> str:
    """`iptables-restore --noflush`: our chain, filled anew (its jump: IPTABLES_JUMP)."""
    return "\n".join([
        "*raw", f":{IPT_CHAIN} - [0:0]", f"-F {IPT_CHAIN}",
        f"-A {IPT_CHAIN} -m set --match-set tortie-wg-local src -j RETURN",
        f"-A {IPT_CHAIN} ! -i {r.device} -m set --match-set tortie-wg-pools src "
        "-m set --match-set tortie-wg-pools dst -j DROP", "COMMIT"]) + "\n"
