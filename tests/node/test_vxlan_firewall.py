"""The overlay's firewall rules in a fresh namespace, with the real tools of both backends: rendered rules
are accepted, re-applying is idempotent, a change replaces them whole, `present` tells whether they are in
the kernel, an empty configuration and `remove` leave nothing of ours."""
from __future__ import annotations

import subprocess
import sys
from ipaddress import IPv4Address as A, IPv4Network as N

import pytest

from tests.netns import requires_root

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(120)]

PROBE = """
import json, sys
from ipaddress import ip_address as A, ip_network as N
from bgpd.dataplane.overlay_firewall import OverlayFirewall
from bgpd.overlay.firewall import OverlayRules
from policy.kernel import run
backend = sys.argv[1]
fw = OverlayFirewall(backend)
show = (lambda: run(["nft", "list", "ruleset"])) if backend == "nft" else \\
       (lambda: run(["iptables-legacy-save"]) + run(["ip6tables-legacy-save"]) + run(["ipset", "list"]))
everything = lambda: (run(["nft", "list", "ruleset"]) + run(["iptables-legacy-save"]) + run(["ip6tables-legacy-save"])
                      + run(["ipset", "list", "-n"]))
nodes = (A("10.93.1.2"), A("10.93.2.3"), A("fd93::2"))
pools = (N("10.247.0.0/24"), N("10.248.0.0/24"), N("fd00:247::/64"))
full = OverlayRules(4789, nodes, (pools[0], pools[2]), pools, True, frozenset({4, 6}))
out = {}
fw.apply(full); fw.apply(full)
out["full"] = show()
out["present"] = fw.present(full)
changed = OverlayRules(4790, nodes[:1], (), pools[:1])
fw.apply(changed)
out["changed"] = show()
out["present_changed"] = fw.present(changed)
fw.apply(OverlayRules(None, (), (), pools))
out["empty"] = everything()
fw.apply(full); fw.remove(); fw.remove()
out["present_after_remove"] = fw.present(full)
out["removed"] = everything()
print(json.dumps(out))
"""


def probe(ns: str, backend: str) -> dict:
    import json
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PROBE, backend], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_rules_apply_replace_and_go(make_netns, backend):
    out = probe(make_netns("fw"), backend)
    full, changed = out["full"], out["changed"]
    if backend == "nft":
        assert "udp dport 4789 ip saddr != @vtep-sources" in full and "10.93.2.3" in full
        assert "ip saddr @nat-pools ip daddr != @pools ip daddr != @nodes" in full and "masquerade" in full
        assert "udp dport 4789 ip6 saddr != @vtep-sources" in full and "fd93::2" in full
        assert "ip6 saddr @nat-pools ip6 daddr != @pools ip6 daddr != @nodes" in full
        assert "udp dport 4790" in changed and "10.93.2.3" not in changed and "masquerade" not in changed
        assert "table ip6" not in changed
    else:
        assert "--dport 4789 -m set ! --match-set tortie-vtep-src src -j DROP" in full
        assert "--dport 4789 -m set ! --match-set tortie6-vtep-src src -j DROP" in full
        assert full.count("-A INPUT -j TORTIE-VXLAN-IN") == 2 and full.count("-A POSTROUTING -j TORTIE-NAT-OUT") == 2
        assert "! --match-set tortie-nodes dst -j MASQUERADE" in full
        assert "-m set --match-set tortie6-nat-pools src -m set ! --match-set tortie6-pools dst" in full
        assert "--dport 4790" in changed and "MASQUERADE" not in changed and "tortie6-" not in changed
        assert "TORTIE-NAT-OUT" in changed and changed.count("-A INPUT -j TORTIE-VXLAN-IN") == 1
    assert out["present"] and out["present_changed"] and not out["present_after_remove"]
    for gone in ("tortie-overlay", "TORTIE-", "tortie-"):
        assert gone not in out["empty"] and gone not in out["removed"]
