"""The daemon's base path without pyroute2 (22 MiB): the underlay lookups (bgpd/dataplane/uplink.py) and a node
without VXLAN removing a leftover VTEP, against the kernel in a throwaway namespace."""
import json
import subprocess
import sys
import textwrap

import pytest

from tests.netns import requires_root, run_in_netns

HEAVY = ("pyroute2", "cryptography")  # loaded only with VXLAN or WireGuard in use


def test_the_daemon_imports_neither_pyroute2_nor_cryptography():
    code = f"import sys, bgpd.agent.daemon; print([m for m in {HEAVY} if m in sys.modules])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.fixture
def host(make_netns):
    ns = make_netns("upl")
    for cmd in (["link", "add", "v0", "mtu", "1400", "type", "veth", "peer", "name", "v1", "mtu", "9000"],
                ["addr", "add", "10.9.0.1/24", "dev", "v0"], ["addr", "add", "10.9.1.1/32", "dev", "v1"],
                ["addr", "add", "fd00:9::1/64", "dev", "v1", "nodad"],
                ["link", "add", "tortie.vxlan", "type", "vxlan", "id", "4096", "dstport", "4789", "local", "10.9.0.1",
                 "nolearning"]):
        subprocess.run(["ip", "-n", ns, *cmd], check=True)
    return ns


@pytest.mark.netns
@requires_root
@pytest.mark.timeout(60)
def test_uplink_lookups_and_a_leftover_vtep_without_pyroute2(host):
    r = run_in_netns(host, textwrap.dedent(f"""
        import errno, json, sys
        from ipaddress import IPv4Address as A, IPv6Address as A6
        from bgpd.dataplane.overlay import OverlayDataplane
        from bgpd.dataplane.uplink import has_address, uplink_mtu
        from config.node import NodeConfig
        out = [has_address(A("10.9.0.1")), has_address(A("10.9.1.1")), has_address(A("10.9.0.2")),
               has_address(A6("fd00:9::1")), has_address(A6("fd00:9::2")),
               uplink_mtu(A("10.9.0.1"), "vxlan.mtu"), uplink_mtu(A("10.9.1.1"), "vxlan.mtu"),
               uplink_mtu(A6("fd00:9::1"), "vxlan.mtu")]
        try:
            uplink_mtu(A("10.9.0.2"), "vxlan.mtu")
        except OSError as e:
            out.append(str(e))
        node = NodeConfig.model_validate({{"name": "n1", "router_id": "10.9.0.1", "asn": 64512,
                                           "listen_address": "10.9.0.1", "pools": [{{"cidr": "10.244.0.0/16"}}]}})
        overlay = OverlayDataplane(node)
        overlay.step(node)  # no pool uses VXLAN: the device left by an earlier configuration goes
        out.append([m for m in {HEAVY} if m in sys.modules])
        from bgpd.dataplane.vxlan import _iproute
        try:
            with _iproute() as ipr:  # pyroute2's errors leave as OSError with their errno
                ipr.link("del", ifname="tortie.vxlan")
        except OSError as e:
            out.append(e.errno == errno.ENODEV)
        print(json.dumps(out))
    """))
    assert r.returncode == 0, r.stderr
    *found, missing, loaded, enodev = json.loads(r.stdout)
    assert found == [True, True, False, True, False, 1400, 9000, 9000]
    assert "10.9.0.2" in missing and missing.endswith("cannot tell the underlay MTU (set vxlan.mtu)")
    assert loaded == [] and enodev
    links = subprocess.run(["ip", "-n", host, "-o", "link", "show"], capture_output=True, text=True).stdout
    assert "tortie.vxlan" not in links
