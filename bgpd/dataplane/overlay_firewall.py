"""Applies the overlay's firewall rules (bgpd/overlay/firewall.py) with the node's policy backend's tools.

Blocking subprocess calls: run them in a worker thread.
"""
from __future__ import annotations

from bgpd.overlay.firewall import (IPSETS, IPT_GUARD, IPT_NAT, IPTABLES_JUMPS, NFT_TABLE, OverlayRules,
                                   render_ipset, render_iptables, render_nft)
from policy.kernel import ApplyError, run


class OverlayFirewall:
    def __init__(self, backend: str):
        self.backend = backend

    def apply(self, rules: OverlayRules) -> None:
        """Raises ApplyError, the previous rules still in force, if the tools refuse."""
        if rules.empty:
            self.remove()
            return
        if self.backend == "nft":
            run(["nft", "-f", "-"], render_nft(rules))
            return
        run(["ipset", "restore"], render_ipset(rules))
        run(["iptables-legacy-restore", "--noflush"], render_iptables(rules))
        for table, chain, target in IPTABLES_JUMPS:
            try:
                run(["iptables-legacy", "-t", table, "-C", chain, "-j", target])
            except ApplyError:
                run(["iptables-legacy", "-t", table, "-I", chain, "1", "-j", target])

    def present(self) -> bool:
        """Our table (nft), or our chains' jumps (iptables), are in the kernel: False once someone removed them."""
        if self.backend == "nft":
            return f"table ip {NFT_TABLE}" in run(["nft", "list", "tables"]).splitlines()
        for table, chain, target in IPTABLES_JUMPS:
            try:
                run(["iptables-legacy", "-t", table, "-C", chain, "-j", target])
            except ApplyError:
                return False
        return True

    def remove(self) -> None:
        if self.backend == "nft":
            run(["nft", "-f", "-"], f"table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n")
            return
        for table, chain, target in IPTABLES_JUMPS:
            try:
                run(["iptables-legacy", "-t", table, "-D", chain, "-j", target])
            except ApplyError:
                pass  # not there
        run(["iptables-legacy-restore", "--noflush"],
            f"*filter\n:{IPT_GUARD} - [0:0]\n-X {IPT_GUARD}\nCOMMIT\n*nat\n:{IPT_NAT} - [0:0]\n-X {IPT_NAT}\nCOMMIT\n")
        ours = [n for n in run(["ipset", "list", "-n"]).split() if n in IPSETS]
        run(["ipset", "restore"], "".join(f"destroy {n}\n" for n in ours))
