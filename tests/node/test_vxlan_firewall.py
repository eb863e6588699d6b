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
from ipaddress import IPv4Address as A, IPv4Network as N
from bgpd.dataplane.overlay_firewall import OverlayFirewall
from bgpd.overlay.firewall import OverlayRules
from policy.kernel import run
backend = sys.argv[1]
fw = OverlayFirewall(backend)
show = (lambda: run(["nft", "list", "table", "ip", "tortie-overlay"])) if backend == "nft" else \\
       (lambda: run(["iptables-legacy-save"]) + run(["ipset", "list"]))
nodes = (A("10.93.1.2"), A("10.93.2.3"))
full = OverlayRules(4789, nodes, (N("10.247.0.0/24"),), (N("10.247.0.0/24"), N("10.248.0.0/24")), True)
out = {}
fw.apply(full); fw.apply(full)
out["full"] = show()
out["present"] = fw.present()
fw.apply(OverlayRules(4790, nodes[:1], (), (N("10.247.0.0/24"),)))
out["changed"] = show()
fw.apply(OverlayRules(None, (), (), (N("10.247.0.0/24"),)))
out["empty"] = run(["nft", "list", "ruleset"]) + run(["iptables-legacy-save"]) + run(["ipset", "list", "-n"])
fw.apply(full); fw.remove(); fw.remove()
out["present_after_remove"] = fw.present()
out["removed"] = run(["nft", "list", "ruleset"]) + run(["iptables-legacy-save"]) + run(["ipset", "list", "-n"])
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
        assert "udp dport 4790" in changed and "10.93.2.3" not in changed and "masquerade" not in changed
    else:
        assert "--dport 4789 -m set ! --match-set tortie-vtep-src src -j DROP" in full
        assert "-A INPUT -j TORTIE-VXLAN-IN" in full and full.count("-A POSTROUTING -j TORTIE-NAT-OUT") == 1
        assert "! --match-set tortie-nodes dst -j MASQUERADE" in full
        assert "--dport 4790" in changed and "MASQUERADE" not in changed
    assert out["present"] and not out["present_after_remove"]
    for gone in ("tortie-overlay", "TORTIE-", "tortie-"):
        assert gone not in out["empty"] and gone not in out["removed"]
