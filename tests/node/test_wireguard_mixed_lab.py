"""A mixed cluster on real packets: node3 runs without WireGuard, node2 reaches it unencrypted (through the
VXLAN overlay: encryption replaces encapsulation only where the peer has a key), node1 has
wireguard.required and refuses to reach it at all; node1 and node2 talk through WireGuard."""
import pytest

from tests.netns import requires_root, running_lab, wait_for
from tests.node.vxlan_lab import UDP_SINK
from tests.node.wireguard_lab import NODES, mixed_topology, pod_ip, status

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(240)]

WIREGUARD = {"node1": "{enabled: true, required: true}", "node2": "{enabled: true}", "node3": "{enabled: false}"}


def routes(lab, node):
    return {r["dst"]: r for r in lab.json(node, "ip", "-j", "route", "show", "proto", "201")}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    for lab in running_lab(mixed_topology(tmp_path_factory.mktemp("mixed"), WIREGUARD, "always"), "x"):
        wait_for(lambda: status(lab, "node1")["wireguard"]["encrypted_routes"] == 1
                 and status(lab, "node2")["wireguard"]["encrypted_routes"] == 1
                 and len(routes(lab, "node3")) == 3, 60, what="the mixed cluster's routes")
        lab.pods = {n: pod_ip(lab, n, "default/p") for n in NODES}
        yield lab


def ping(lab, src, dst, check=True):
    return lab.exec(src, "tortie", "pod", "exec", "default/p", "--", "ping", "-c", "2", "-W", "2", lab.pods[dst],
                    check=check)


def test_status_names_the_node_without_a_key(lab):
    for n in ("node1", "node2"):
        w = status(lab, n)["wireguard"]
        assert w["nodes_without_key"] == ["node3"] and [p["node"] for p in w["peers"]] == [
            {"node1": "node2", "node2": "node1"}[n]]
    assert status(lab, "node3")["wireguard"] is None


def test_a_node_without_a_key_is_reached_unencrypted_both_ways(lab):
    r = routes(lab, "node2")
    assert r["10.248.0.48/28"]["dev"] == "tortie.vxlan"  # node3: VXLAN, in the clear
    assert r["10.248.0.16/28"]["dev"] == "tortie.wg"  # node1: WireGuard instead of VXLAN
    ping(lab, "node2", "node3")
    ping(lab, "node3", "node2")


def test_required_refuses_the_node_without_a_key(lab):
    r = routes(lab, "node1")
    assert r["10.248.0.48/28"]["type"] == "blackhole"  # node3 is never reached in the clear
    assert r["10.248.0.32/28"]["dev"] == "tortie.wg"
    assert ping(lab, "node1", "node3", check=False).returncode != 0
    ping(lab, "node1", "node2")


def test_required_drops_unencrypted_pod_traffic_from_the_node_without_a_key(lab):
    """node3's pod sends to node1's pod in the clear (VXLAN): node1's guard drops it before routing; node2's
    datagram, through WireGuard, arrives and ends the sink."""
    sink = lab.popen("node1", "tortie", "pod", "exec", "default/p", "--", "python3", "-c", UDP_SINK, "7008")
    assert sink.stdout.readline().strip() == "ready"
    send = "import socket, sys; socket.socket(2, 2).sendto(sys.argv[1].encode(), (sys.argv[2], 7008))"
    for _ in range(3):
        lab.exec("node3", "tortie", "pod", "exec", "default/p", "--", "python3", "-c", send, "clear",
                 lab.pods["node1"])
    lab.exec("node2", "tortie", "pod", "exec", "default/p", "--", "python3", "-c", send, "last", lab.pods["node1"])
    out, _ = sink.communicate(timeout=30)
    assert out.split() == ["last"]
    counters = lab.exec("node1", "nft", "list", "table", "ip", "tortie-wireguard").stdout
    assert "counter packets 0 " not in counters  # the three datagrams were counted as dropped
