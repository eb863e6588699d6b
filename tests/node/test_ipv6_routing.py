"""IPv6 routes end to end without pods (containers/labs/route6.clab.yml): two dual-stack daemons exchange their
IPv6 blocks over an IPv6 session and install them via each other's IPv6 underlay address (IPv4 beside them);
a BIRD 2 peer over IPv6 gets node1's IPv6 block only, and of what it sends, the in-pool block is installed while
::/0 and the out-of-pool prefix are refused. Real packets cross the routes; status, routes and metrics show
both families; ExaBGP logs no command sent to a session of the other family."""
import json

import pytest

from tests.netns import requires_root, running_lab, wait_for

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(240)]

TOR = "fd98::fe"
ADDRESS = {"node1": {4: "10.98.0.1", 6: "fd98::1"}, "node2": {4: "10.98.0.2", 6: "fd98::2"}}
BLOCK = {"node1": {4: "10.244.1.0/26", 6: "fd00:244:0:1::/122"}, "node2": {4: "10.244.2.0/26", 6: "fd00:244:0:2::/122"}}
FROM_TOR = "fd00:244:0:99::/122"


@pytest.fixture(scope="module")
def lab():
    yield from running_lab("route6.clab.yml", "6")


def kernel(lab, node, family):
    return {r["dst"]: r for r in lab.json(node, "ip", "-j", f"-{family}", "route", "show", "proto", "201")}


def expected(node):
    """dst -> gateway (None: a blackhole) of the routes of ours `node` should hold, per family."""
    other = "node2" if node == "node1" else "node1"
    want = {v: {BLOCK[node][v]: None, BLOCK[other][v]: ADDRESS[other][v]} for v in (4, 6)}
    if node == "node1":
        want[6][FROM_TOR] = TOR
    return want


def installed(lab, node):
    got = {v: {dst: r.get("gateway") for dst, r in kernel(lab, node, v).items()} for v in (4, 6)}
    return got == expected(node)


def test_blocks_of_both_families_in_the_kernel(lab):
    for node in ADDRESS:
        wait_for(lambda: installed(lab, node), 30, what=f"{node}'s kernel routes")
        routes = kernel(lab, node, 6)
        assert routes[BLOCK[node][6]]["type"] == "blackhole"
        everything = {r["dst"] for r in lab.json(node, "ip", "-j", "-6", "route", "show")}
        assert "default" not in everything and "2001:db8:ff::/48" not in everything, everything


def test_packets_follow_the_ipv6_routes(lab):
    """An address of node1's IPv6 block on its loopback answers node2 (and BIRD) across the learned routes."""
    lab.exec("node1", "ip", "-6", "addr", "add", "fd00:244:0:1::1/128", "dev", "lo")
    wait_for(lambda: lab.json("tor", "ip", "-j", "-6", "route", "show", BLOCK["node1"][6]), 20,
             what="BIRD's kernel route to node1's block")
    for node in ("node2", "tor"):
        lab.exec(node, "ping", "-6", "-c", "1", "-W", "2", "fd00:244:0:1::1")
    route = lab.json("node2", "ip", "-j", "-6", "route", "get", "fd00:244:0:1::1")[0]
    assert route["gateway"] == "fd98::1"


def test_bird_gets_the_ipv6_block_and_its_refused_routes_are_counted(lab):
    out = lab.exec("tor", "birdc", "-s", "/run/bird/bird.ctl", "show", "route", "protocol", "node1").stdout
    assert BLOCK["node1"][6] in out and "fd98::1" in out and BLOCK["node1"][4] not in out, out
    assert BLOCK["node2"][6] not in out  # ExaBGP announces only our own blocks
    peers = {p["address"]: p for p in lab.json("node1", "tortie", "status", "--json")["peers"]}
    assert set(peers) == {TOR, "fd98::2", "10.98.0.2"} and {p["state"] for p in peers.values()} == {"up"}
    assert peers[TOR]["accepted"] == 1 and peers[TOR]["rejected"] == 2


def test_status_routes_and_metrics_show_both_families(lab):
    routes = {r["prefix"]: r for r in lab.json("node1", "tortie", "routes", "--json")}
    assert routes[BLOCK["node2"][6]]["next_hops"] == ["fd98::2"] and routes[BLOCK["node2"][6]]["in_kernel"]
    assert routes[FROM_TOR]["peers"] == [TOR] and routes[BLOCK["node1"][6]]["next_hops"] == ["blackhole"]
    assert routes[BLOCK["node2"][4]]["next_hops"] == ["10.98.0.2"]
    status = lab.json("node1", "tortie", "status", "--json")
    assert status["kernel_routes"] == 5
    text = lab.exec("node1", "python3", "-c", "import urllib.request; print(urllib.request.urlopen("
                    "'http://[::1]:9473/metrics').read().decode())").stdout
    assert 'tortie_kernel_routes{family="ipv4"} 2.0' in text and 'tortie_kernel_routes{family="ipv6"} 3.0' in text


def test_exabgp_gets_no_command_for_the_other_family(lab):
    for node in ADDRESS:
        log = lab.log(node)
        assert "session up peer=fd98::" in log
        assert "is not configured on neighbor" not in log and "no neighbor matching" not in log, log[-3000:]


RELAY_PID = """
import os
def children(pid):
    return [int(k) for k in open(f"/proc/{pid}/task/{pid}/children").read().split()]
def named(pids, word):
    return [p for p in pids if word in open(f"/proc/{p}/cmdline").read()]
(daemon,) = [int(open("/run/tortie/tortie.pid").read())]
(exabgp,) = named(children(daemon), "exabgp")
(relay,) = named(children(exabgp), "nc.openbsd")
print(relay)
"""


def export_updates(lab):
    """BIRD's count of updates it exported to node1 (a route refresh from node1 makes it send its routes again)."""
    out = lab.exec("tor", "birdc", "-s", "/run/bird/bird.ctl", "show", "protocols", "all", "node1").stdout
    (line,) = [line for line in out.splitlines() if line.strip().startswith("Export updates:")]
    return int(line.split()[2])


def test_a_respawned_relay_refreshes_each_family_over_its_own_sessions(lab):
    """ExaBGP respawns a dead relay; the daemon then announces again and asks every session for a route refresh,
    naming the sessions of each family (ExaBGP logs an error per session of the other family otherwise)."""
    before = export_updates(lab)
    relay = lab.exec("node1", "python3", "-c", RELAY_PID).stdout.strip()
    lab.exec("node1", "kill", relay)
    wait_for(lambda: export_updates(lab) > before, 30, what="BIRD answering node1's IPv6 route refresh")
    log = lab.log("node1")
    assert "exabgp relay connected new_process=False" in log
    assert "is not configured on neighbor" not in log and "no neighbor matching" not in log, log[-3000:]
