"""The overlay lab (containers/labs/overlay.clab.yml), real packets: two underlay subnets joined by a router
that knows no pod address; pool 10.247.0.0/24 `vxlan: always` (pods default/a), 10.248.0.0/24
`vxlan: cross-subnet` (pods default/c); NAT outgoing to the internet host; MTU; forged VXLAN refused."""
from __future__ import annotations

import json
import time

import pytest

from tests.netns import requires_root, running_lab, wait_for
from tests.node.vxlan_lab import SEND_UDP, UDP_SINK, capture, in_pod, routed, routes, tcp, vxlan_frame

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(300)]

NODES = {"node1": "10.93.1.1", "node2": "10.93.1.2", "node3": "10.93.2.3"}
POD = {"a": {"node1": "10.247.0.1", "node2": "10.247.0.65", "node3": "10.247.0.129"},
       "c": {"node1": "10.248.0.1", "node2": "10.248.0.65", "node3": "10.248.0.129"}}
INTERNET = "203.0.113.1"


BLOCKS = {"node1": ("10.247.0.0/26", "10.248.0.0/26"), "node2": ("10.247.0.64/26", "10.248.0.64/26"),
          "node3": ("10.247.0.128/26", "10.248.0.128/26")}


@pytest.fixture(scope="module")
def lab():
    for lab in running_lab("overlay.clab.yml", "vx"):
        wait_for(lambda: all(routed(lab, BLOCKS, n) for n in NODES), 60,
                 what="every node's routes to the others' blocks")
        yield lab


def test_routes_vteps_and_mtu_per_mode(lab):
    r1 = routes(lab, "node1")
    # always: both other nodes through the VTEP; cross-subnet: node2 (same subnet) direct, node3 encapsulated
    assert r1["10.247.0.64/26"]["dev"] == "tortie.vxlan" and "onlink" in r1["10.247.0.64/26"]["flags"]
    assert r1["10.247.0.128/26"]["dev"] == "tortie.vxlan" and r1["10.247.0.128/26"]["gateway"] == NODES["node3"]
    assert r1["10.248.0.64/26"]["dev"] == "eth1" and r1["10.248.0.64/26"]["gateway"] == NODES["node2"]
    assert r1["10.248.0.128/26"]["dev"] == "tortie.vxlan"
    neigh = {n["dst"]: n["lladdr"] for n in lab.json("node1", "ip", "-j", "neigh", "show", "dev", "tortie.vxlan")}
    assert neigh == {"10.93.1.2": "0e:74:0a:5d:01:02", "10.93.2.3": "0e:74:0a:5d:02:03"}
    fdb = {(f["mac"], f["dst"]) for f in lab.json("node1", "bridge", "-j", "fdb", "show", "dev", "tortie.vxlan")}
    assert fdb == {("0e:74:0a:5d:01:02", "10.93.1.2"), ("0e:74:0a:5d:02:03", "10.93.2.3")}
    (link,) = lab.json("node1", "ip", "-j", "-d", "link", "show", "tortie.vxlan")
    assert link["mtu"] == 1450 and link["linkinfo"]["info_data"]["id"] == 4096
    (pod,) = lab.json("node1", "ip", "-n", "pod-default-a", "-j", "link", "show", "eth0")
    assert pod["mtu"] == 1450
    s = lab.json("node1", "tortie", "status", "--json")
    assert [(p["cidr"], p["vxlan"]) for p in s["pools"]] == [("10.247.0.0/24", "always"),
                                                            ("10.248.0.0/24", "cross-subnet")]
    assert s["overlay"]["remote_vteps"] == 2 and s["overlay"]["encapsulated_routes"] == 3
    assert s["overlay"]["offloads"]["tx-checksum-ip-generic"] and s["overlay"]["offloads"]["tx-generic-segmentation"]
    metrics = lab.exec("node1", "python3", "-c", "import urllib.request; print(urllib.request.urlopen("
                       "'http://127.0.0.1:9473/metrics', timeout=5).read().decode())").stdout
    assert "tortie_vxlan_remote_vteps 2.0" in metrics and "tortie_vxlan_encapsulated_routes 3.0" in metrics
    # the router in between never learnt a pod address
    assert not [r for r in lab.json("router", "ip", "-j", "route") if r["dst"].startswith("10.24")]


@pytest.mark.parametrize("pool", ["a", "c"])
def test_every_pod_reaches_every_pod_icmp_and_tcp(lab, pool):
    for src in NODES:
        for dst in NODES:
            if src == dst:
                continue
            in_pod(lab, src, pool, "ping", "-c", "1", "-W", "3", POD[pool][dst])
            peer, n = tcp(lab, src, pool, dst, POD[pool][dst], size=1000)
            assert (peer, n) == (POD[pool][src], 1000)  # pod to pod: never NATed


def test_cross_subnet_capture_on_the_underlay(lab):
    # same subnet: the pods' own packets on the wire, no VXLAN
    same = capture(lab, "node1", "icmp or udp port 4789", 4,
                   f"ip netns exec pod-default-c ping -c 2 -i 0.2 -W 3 {POD['c']['node2']}")
    assert len(same) == 4 and all("ICMP" in p and POD["c"]["node2"] in p for p in same), same
    # across the router: only UDP to the VXLAN port between the nodes, never a pod address in the clear
    other = capture(lab, "node1", "icmp or udp port 4789", 4,
                    f"ip netns exec pod-default-c ping -c 2 -i 0.2 -W 3 {POD['c']['node3']}")
    assert len(other) == 4 and all(".4789: VXLAN" in p and "ICMP" not in p for p in other), other
    assert all(NODES["node1"] in p and NODES["node3"] in p for p in other), other


def test_pod_reaches_the_internet_through_nat_outgoing(lab):
    in_pod(lab, "node3", "a", "ping", "-c", "1", "-W", "3", INTERNET)
    peer, n = tcp(lab, "node3", "a", "internet", INTERNET, size=100_000, pod_side=False)
    assert (peer, n) == (NODES["node3"], 100_000)  # the internet host sees the node, and replied


def test_mtu_largest_df_ping_passes_and_larger_is_refused_and_megabytes_flow(lab):
    for pool in POD:
        in_pod(lab, "node1", pool, "ping", "-M", "do", "-s", str(1450 - 28), "-c", "1", "-W", "3", POD[pool]["node3"])
        r = in_pod(lab, "node1", pool, "ping", "-M", "do", "-s", str(1450 - 27), "-c", "1", "-W", "3",
                   POD[pool]["node3"], check=False)
        assert r.returncode != 0 and "message too long" in (r.stdout + r.stderr).lower(), r
    start = time.monotonic()
    peer, n = tcp(lab, "node1", "a", "node3", POD["a"]["node3"], size=8 << 20, port=8081)
    assert (peer, n) == (POD["a"]["node1"], 8 << 20)
    print(f"8 MiB over VXLAN across the router: {time.monotonic() - start:.2f} s")


def test_vxlan_from_an_unknown_underlay_address_does_not_reach_a_pod(lab):
    sink = lab.popen("node1", "ip", "netns", "exec", "pod-default-a", "python3", "-c", UDP_SINK, "9999")
    try:
        assert sink.stdout.readline().strip() == "ready"

        def frame(payload):
            return vxlan_frame(4096, NODES["node1"], POD["a"]["node2"], POD["a"]["node1"], 9999, payload).hex()
        drops = lambda: lab.exec("node1", "nft", "-j", "list", "chain", "ip", "tortie-overlay", "vxlan-in").stdout
        lab.exec("router", "python3", "-c", SEND_UDP, NODES["node1"], "4789", frame(b"forged"))  # not a node
        lab.exec("node2", "python3", "-c", SEND_UDP, NODES["node1"], "4789", frame(b"last"))  # a node: accepted
        out, _ = sink.communicate(timeout=30)
        assert out.split() == ["last"]
        assert '"packets": 1' in drops()
    finally:
        sink.kill()


def test_deleted_routes_neighbours_fdb_entries_and_firewall_rules_come_back(lab):
    before = lab.json("node1", "tortie", "status", "--json")
    lab.exec("node1", "ip", "route", "del", BLOCKS["node3"][0])
    lab.exec("node1", "ip", "neigh", "del", NODES["node3"], "dev", "tortie.vxlan")
    lab.exec("node1", "bridge", "fdb", "del", "0e:74:0a:5d:02:03", "dev", "tortie.vxlan", "dst", NODES["node3"])
    lab.exec("node1", "nft", "delete", "table", "ip", "tortie-overlay")

    def repaired():
        r = routes(lab, "node1").get(BLOCKS["node3"][0], {})
        neigh = {n["dst"] for n in lab.json("node1", "ip", "-j", "neigh", "show", "dev", "tortie.vxlan")}
        fdb = {f.get("dst") for f in lab.json("node1", "bridge", "-j", "fdb", "show", "dev", "tortie.vxlan")}
        guard = lab.exec("node1", "nft", "list", "tables").stdout
        return (r.get("dev") == "tortie.vxlan" and NODES["node3"] in neigh and NODES["node3"] in fdb
                and "tortie-overlay" in guard)
    wait_for(repaired, 30, what="the route, neighbour, FDB entry and firewall rules set again")
    after = lab.json("node1", "tortie", "status", "--json")
    assert after["kernel_repairs"] > before["kernel_repairs"]
    assert after["overlay"]["repairs"] >= before["overlay"]["repairs"] + 3
    in_pod(lab, "node1", "a", "ping", "-c", "1", "-W", "3", POD["a"]["node3"])


def test_cni_result_carries_the_overlay_mtu_and_the_pod_reaches_across(lab):
    lab.exec("node3", "ip", "netns", "add", "cnivx")
    netconf = {"cniVersion": "1.1.0", "name": "tortie", "type": "tortie-cni", "tortieConfig": "/etc/tortie/tortie.yaml"}
    out = json.loads(lab.exec("node3", "tortie-cni", input=json.dumps(netconf), env={
        "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "cnivx", "CNI_NETNS": "/run/netns/cnivx", "CNI_IFNAME": "eth0",
        "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=cnivx", "CNI_PATH": "/"}).stdout)
    assert out["interfaces"][1]["mtu"] == 1450
    (link,) = lab.json("node3", "ip", "-n", "cnivx", "-j", "link", "show", "eth0")
    assert link["mtu"] == 1450
    lab.exec("node3", "ip", "netns", "exec", "cnivx", "ping", "-M", "do", "-s", "1422", "-c", "1", "-W", "3",
             POD["a"]["node1"])
