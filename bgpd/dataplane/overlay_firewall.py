"""Applies the overlay's firewall rules (bgpd/overlay/firewall.py) with the node's policy backend's tools,
per family: nft (both families in one transaction), or iptables / ip6tables over ipsets.

Blocking subprocess calls: run them in a worker thread.
"""
from __future__ import annotations

from bgpd.overlay.firewall import (IPT_GUARD, IPT_NAT, IPTABLES, IPTABLES_JUMPS, NFT_FAMILY, NFT_TABLE, VERSIONS,
                                   OverlayRules, ipsets, render_ipset, render_iptables, render_nft)
from policy.kernel import ApplyError, run

_NO_RULES = OverlayRules(None, (), (), ())


class OverlayFirewall:
    def __init__(self, backend: str):
        self.backend = backend

    def apply(self, rules: OverlayRules) -> None:
        """Raises ApplyError, the previous rules of the family that failed still in force, if the tools refuse."""
        if self.backend == "nft":
            run(["nft", "-f", "-"], render_nft(rules))
            return
        wanted = rules.versions()
        for version in VERSIONS:
            if version not in wanted:
                self._remove_iptables(version)
                continue
            tool, restore = IPTABLES[version]
            run(["ipset", "restore"], render_ipset(rules, version))
            run([restore, "--noflush"], render_iptables(rules, version))
            for table, chain, target in IPTABLES_JUMPS:
                try:
                    run([tool, "-t", table, "-C", chain, "-j", target])
                except ApplyError:
                    run([tool, "-t", table, "-I", chain, "1", "-j", target])

    def present(self, rules: OverlayRules) -> bool:
        """Our table (nft), or our chains' jumps (iptables), of every family `rules` enforce something in are
        in the kernel: False once someone removed one."""
        if self.backend == "nft":
            tables = run(["nft", "list", "tables"]).splitlines()
            return all(f"table {NFT_FAMILY[v]} {NFT_TABLE}" in tables for v in rules.versions())
        for version in rules.versions():
            for table, chain, target in IPTABLES_JUMPS:
                try:
                    run([IPTABLES[version][0], "-t", table, "-C", chain, "-j", target])
                except ApplyError:
                    return False
        return True

    def remove(self) -> None:
        if self.backend == "nft":
            run(["nft", "-f", "-"], render_nft(_NO_RULES))
            return
        for version in VERSIONS:
            self._remove_iptables(version)

    def _remove_iptables(self, version: int) -> None:
        tool, restore = IPTABLES[version]
        for table, chain, target in IPTABLES_JUMPS:
            try:
                run([tool, "-t", table, "-D", chain, "-j", target])
            except ApplyError:
                pass  # not there
        run([restore, "--noflush"],
            f"*filter\n:{IPT_GUARD} - [0:0]\n-X {IPT_GUARD}\nCOMMIT\n*nat\n:{IPT_NAT} - [0:0]\n-X {IPT_NAT}\nCOMMIT\n")
        ours = [n for n in run(["ipset", "list", "-n"]).split() if n in ipsets(version)]
        run(["ipset", "restore"], "".join(f"destroy {n}\n" for n in ours))
