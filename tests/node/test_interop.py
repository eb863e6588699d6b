"""Interop with real route reflectors: BIRD 2 (tor-bird lab) and GoBGP (tor-gobgp lab)."""
import json

import pytest

from tests.netns import requires_root, running_lab, wait_for

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(240)]


def kernel(lab, node):
    return {r["dst"]: r for r in lab.json(node, "ip", "-j", "route", "show", "proto", "201")}


def metrics(lab, node):
    return lab.exec(node, "python3", "-c", "import urllib.request; print(urllib.request.urlopen("
                    "'http://127.0.0.1:9473/metrics').read().decode())").stdout


@pytest.fixture(scope="module")
def bird_lab():
    yield from running_lab("tor-bird.clab.yml", "b")


@pytest.fixture(scope="module")
def gobgp_lab():
    yield from running_lab("tor-gobgp.clab.yml", "g")


BIRD_HOSTS = {"node1": ("10.98.0.1", "10.244.1.0/26"), "node2": ("10.98.0.2", "10.244.2.0/26"),
              "node3": ("10.98.0.3", "10.244.3.0/26")}


def test_bird_receives_our_blocks(bird_lab):
    for node, (addr, block) in BIRD_HOSTS.items():
        out = bird_lab.exec("tor", "birdc", "-s", "/run/bird/bird.ctl", "show", "route", "for", block, "all").stdout
        assert block in out and f"via {addr}" in out and f"[{node} " in out, out


def test_bird_routes_in_pool_land_in_our_kernel_others_do_not(bird_lab):
    for node, (addr, block) in BIRD_HOSTS.items():
        routes = wait_for(lambda: k if len(k := kernel(bird_lab, node)) == 3 else None, 20,
                          what=f"{node}'s kernel routes")
        assert routes[block]["type"] == "blackhole"
        for other, (oaddr, oblock) in BIRD_HOSTS.items():
            if other != node:
                assert routes[oblock]["gateway"] == oaddr  # reflected with the originating host as next hop
        everything = {r["dst"] for r in bird_lab.json(node, "ip", "-j", "route", "show")}
        assert "default" not in everything and "192.0.2.0/24" not in everything
        peer = bird_lab.json(node, "tortie", "status", "--json")["peers"][0]
        assert peer["state"] == "up" and peer["accepted"] == 2 and peer["rejected"] == 2
        text = metrics(bird_lab, node)
        assert 'tortie_bgp_prefixes_rejected_total{peer="10.98.0.254",reason="default_route"} 1.0' in text
        assert 'tortie_bgp_prefixes_rejected_total{peer="10.98.0.254",reason="not_in_pool"} 1.0' in text


def test_bird_pods_reach_each_other(bird_lab):
    bird_lab.exec("node1", "tortie", "pod", "exec", "default/pod1", "--", "ping", "-c", "2", "-W", "2", "10.244.3.1")
    bird_lab.exec("node2", "tortie", "pod", "exec", "default/pod1", "--", "ping", "-c", "2", "-W", "2", "10.244.1.1")


def test_rejections_logged_once_per_peer(bird_lab):
    log = bird_lab.log("node1")
    assert log.count("rejecting routes peer=10.98.0.254 reason=default_route") == 1


def test_bird_keeps_our_routes_while_we_restart(bird_lab):
    """BIRD is a graceful-restart helper: node1's daemon restarts and no packet to its pods is lost."""
    probe = bird_lab.popen("node2", "tortie", "pod", "exec", "default/pod1", "--", "ping", "-q", "-i", "0.01",
                           "-c", "1000", "-W", "1", "10.244.1.1")
    pid = bird_lab.exec("node1", "cat", "/run/tortie/tortie.pid").stdout.strip()
    bird_lab.exec("node1", "kill", "-TERM", pid)
    wait_for(lambda: bird_lab.exec("node1", "test", "-e", f"/proc/{pid}", check=False).returncode != 0, 15,
             what="node1's daemon to stop")
    out = bird_lab.exec("tor", "birdc", "-s", "/run/bird/bird.ctl", "show", "route", "for", "10.244.1.0/26").stdout
    assert "10.244.1.0/26" in out  # kept (as stale) by BIRD
    bird_lab.exec("node1", "sh", "-c", "tortie run --config /etc/tortie/tortie.yaml >>/tmp/tortie.log 2>&1 &")

    def session_up() -> bool:  # until the new daemon listens, status exits 3 ("not running"): not up yet
        r = bird_lab.exec("node1", "tortie", "status", "--json", check=False)
        return r.returncode == 0 and json.loads(r.stdout)["peers"][0]["state"] == "up"

    wait_for(session_up, 30, what="node1 back")
    out, err = probe.communicate(timeout=60)
    assert " 0% packet loss" in out, out + err


def gobgp_rib(lab):
    return json.loads(lab.exec("tor", "gobgp", "global", "rib", "-j").stdout)


def test_gobgp_receives_our_blocks(gobgp_lab):
    rib = gobgp_rib(gobgp_lab)
    for addr, block in (("10.96.0.1", "10.244.1.0/26"), ("10.96.0.2", "10.244.2.0/26")):
        paths = rib[block]
        hops = {a.get("nexthop") for p in paths for a in p["attrs"] if "nexthop" in a}
        assert hops == {addr}, paths


def test_gobgp_routes_filtered(gobgp_lab):
    routes = wait_for(lambda: k if len(k := kernel(gobgp_lab, "node1")) == 3 else None, 20, what="routes")
    assert routes["10.244.200.0/24"]["gateway"] == "10.96.0.254"
    assert routes["10.244.2.0/26"]["gateway"] == "10.96.0.2"
    everything = {r["dst"] for r in gobgp_lab.json("node1", "ip", "-j", "route", "show")}
    assert "default" not in everything and "198.51.100.0/24" not in everything
    gobgp_lab.exec("node1", "tortie", "pod", "exec", "default/pod1", "--", "ping", "-c", "2", "-W", "2", "10.244.2.1")


def test_gobgp_md5_session(gobgp_lab):
    """node2's session carries TCP MD5 signatures: GoBGP, configured with the password, established it."""
    neighbors = json.loads(gobgp_lab.exec("tor", "gobgp", "neighbor", "-j").stdout)
    by_addr = {n["state"]["neighbor_address"]: n for n in neighbors}
    assert by_addr["10.96.0.2"]["state"]["session_state"] == 6  # established
    assert by_addr["10.96.0.2"]["conf"]["auth_password"] == "rack-secret"


def test_gobgp_withdraw_and_max_prefixes(gobgp_lab):
    """node2 takes at most 2 prefixes from the tor: a third one in the pool is refused and counted."""
    gobgp_lab.exec("tor", "gobgp", "global", "rib", "add", "10.244.201.0/24", "nexthop", "10.96.0.254")
    wait_for(lambda: "10.244.201.0/24" in kernel(gobgp_lab, "node1"), 10, what="new route on node1")
    peer = gobgp_lab.json("node2", "tortie", "status", "--json")["peers"][0]
    assert peer["accepted"] == 2 and "10.244.201.0/24" not in kernel(gobgp_lab, "node2")
    assert 'reason="max_prefixes"} 1.0' in metrics(gobgp_lab, "node2")
    gobgp_lab.exec("tor", "gobgp", "global", "rib", "del", "10.244.201.0/24")
    wait_for(lambda: "10.244.201.0/24" not in kernel(gobgp_lab, "node1"), 10, what="withdrawn route gone")
    assert "10.244.200.0/24" in kernel(gobgp_lab, "node1")
