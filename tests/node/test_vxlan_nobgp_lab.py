"""The overlay-nobgp lab (containers/labs/overlay-nobgp.clab.yml): VXLAN with BGP off. Routes to other
nodes' blocks come from the MQTT datastore alone; a node that goes takes its routes, neighbours and FDB
entries with it everywhere."""
from __future__ import annotations

import json
import os
import signal

import pytest

from tests.netns import requires_root, running_lab, wait_for
from tests.node.vxlan_lab import TCP_SEND, TCP_SINK

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(300)]

NODES = {"node1": "10.93.1.1", "node2": "10.93.1.2", "node3": "10.93.2.3"}


def status(lab, node):
    return lab.json(node, "tortie", "status", "--json")


def routes(lab, node):
    return {r["dst"]: r for r in lab.json(node, "ip", "-j", "route", "show", "proto", "201")}


def vteps(lab, node):
    neigh = {n["dst"] for n in lab.json(node, "ip", "-j", "neigh", "show", "dev", "tortie.vxlan")}
    fdb = {f["dst"] for f in lab.json(node, "bridge", "-j", "fdb", "show", "dev", "tortie.vxlan") if "dst" in f}
    return neigh, fdb


@pytest.fixture(scope="module")
def lab():
    for lab in running_lab("overlay-nobgp.clab.yml", "vn"):
        wait_for(lambda: all(len(status(lab, n)["blocks"]) == 1 for n in NODES), 60, what="a block per node")
        lab.blocks = {n: status(lab, n)["blocks"][0] for n in NODES}
        wait_for(lambda: all(set(routes(lab, n)) == set(lab.blocks.values()) for n in NODES), 60,
                 what="routes to every block from the datastore")
        lab.pods = {}
        for n in NODES:
            lab.exec(n, "tortie", "pod", "add", "--config", "/etc/tortie/tortie.yaml", "default/p")
            (link,) = lab.json(n, "ip", "-n", "pod-default-p", "-j", "-4", "addr", "show", "eth0")
            lab.pods[n] = link["addr_info"][0]["local"]
        yield lab


def test_no_bgp_at_all(lab):
    for n in NODES:
        s = status(lab, n)
        assert not s["bgp_enabled"] and s["peers"] == []
        assert ":179 " not in lab.exec(n, "ss", "-ltn").stdout
    r1 = routes(lab, "node1")
    assert r1[lab.blocks["node2"]]["dev"] == "eth1"  # cross-subnet: same subnet direct
    assert r1[lab.blocks["node3"]]["dev"] == "tortie.vxlan" and r1[lab.blocks["node3"]]["gateway"] == NODES["node3"]


def test_every_pod_reaches_every_pod_icmp_and_tcp(lab):
    for src in NODES:
        for dst in NODES:
            if src == dst:
                continue
            lab.exec(src, "ip", "netns", "exec", "pod-default-p", "ping", "-c", "1", "-W", "3", lab.pods[dst])
            server = lab.popen(dst, "ip", "netns", "exec", "pod-default-p", "python3", "-c", TCP_SINK, "8080")
            try:
                out = lab.exec(src, "ip", "netns", "exec", "pod-default-p", "python3", "-c", TCP_SEND,
                               lab.pods[dst], "8080", "100000").stdout.split()
                server.wait(timeout=30)
            finally:
                server.kill()
            assert out == [lab.pods[src], "100000"]


def test_a_node_that_goes_takes_its_routes_neighbours_and_fdb_entries_everywhere(lab):
    for n in ("node1", "node2"):
        assert NODES["node3"] in vteps(lab, n)[0] and NODES["node3"] in vteps(lab, n)[1]
    shell = json.loads((lab.state_dir / "state.json").read_text())["nodes"]["node3"]["cmd_pid"]
    (daemon,) = lab.exec("node3", "sh", "-c", f"cat /proc/{shell}/task/*/children").stdout.split()
    assert "tortie" in lab.exec("node3", "cat", f"/proc/{daemon}/cmdline").stdout
    os.kill(int(daemon), signal.SIGTERM)  # the lab started it; it leaves the datastore (its status goes)

    def gone(n):
        neigh, fdb = vteps(lab, n)
        return (lab.blocks["node3"] not in routes(lab, n) and NODES["node3"] not in neigh
                and NODES["node3"] not in fdb)
    wait_for(lambda: gone("node1") and gone("node2"), 60, what="node3's routes, neighbours and FDB entries gone")
    for n in ("node1", "node2"):
        assert set(routes(lab, n)) == {lab.blocks["node1"], lab.blocks["node2"]}
        assert vteps(lab, n) == ({NODES[o] for o in ("node1", "node2") if o != n},) * 2
        assert status(lab, n)["overlay"]["remote_vteps"] == 1
