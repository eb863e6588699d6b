"""The three-node iBGP mesh lab (containers/labs/mesh3.clab.yml): routes, packets, restarts, failures."""
import re
import time

import pytest

from tests.netns import requires_root, running_lab, wait_for

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(240)]

NODES = {"node1": ("10.99.0.1", "10.244.1.0/26"), "node2": ("10.99.0.2", "10.244.2.0/26"),
         "node3": ("10.99.0.3", "10.244.3.0/26")}
POD1 = {"node1": "10.244.1.1", "node2": "10.244.2.1", "node3": "10.244.3.1"}

ECHO_SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(); s.settimeout(30)
c, _ = s.accept(); c.sendall(c.recv(100).upper()); c.close()
"""
ECHO_CLIENT = """
import socket, sys, time
for _ in range(50):
    try:
        c = socket.create_connection((sys.argv[1], 8080), timeout=2); break
    except OSError:
        time.sleep(0.1)
c.sendall(b"hello"); print(c.recv(100).decode())
"""


@pytest.fixture(scope="module")
def lab():
    yield from running_lab("mesh3.clab.yml", "m")


def kernel_routes(lab, node):
    return {r["dst"]: r for r in lab.json(node, "ip", "-j", "route", "show", "proto", "201")}


def remote_blocks_ok(lab, node, missing=()):
    routes = kernel_routes(lab, node)
    addr, block = NODES[node]
    if routes.get(block, {}).get("type") != "blackhole":
        return False
    for other, (oaddr, oblock) in NODES.items():
        if other == node:
            continue
        if other in missing:
            if oblock in routes:
                return False
        elif routes.get(oblock, {}).get("gateway") != oaddr:
            return False
    return True


def ping_loss(lab, src_node, dst_ip, count, interval="0.01"):
    """Starts a continuous ping from src_node's pod1; returns a function that waits and gives (sent, received)."""
    proc = lab.popen(src_node, "tortie", "pod", "exec", "default/pod1", "--", "ping", "-q", "-i", interval,
                     "-c", str(count), "-W", "1", dst_ip)

    def result():
        out, err = proc.communicate(timeout=count * float(interval) + 30)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert m, out + err
        return int(m.group(1)), int(m.group(2))
    return result


def daemon_pid(lab, node):
    return int(lab.exec(node, "cat", "/run/tortie/tortie.pid").stdout)


def status(lab, node):
    return lab.json(node, "tortie", "status", "--json")


def test_every_remote_block_is_routed(lab):
    for node in NODES:
        assert remote_blocks_ok(lab, node), kernel_routes(lab, node)
        s = status(lab, node)
        assert s["initial_sync_done"] and all(p["state"] == "up" for p in s["peers"])
        assert {p["accepted"] for p in s["peers"]} == {1} and {p["advertised"] for p in s["peers"]} == {1}


def test_pod_to_pod_icmp_and_tcp_across_hosts(lab):
    for src, dst in (("node1", "node3"), ("node3", "node2"), ("node2", "node1")):
        lab.exec(src, "tortie", "pod", "exec", "default/pod1", "--", "ping", "-c", "2", "-W", "2", POD1[dst])
        server = lab.popen(dst, "tortie", "pod", "exec", "default/pod1", "--", "python3", "-c", ECHO_SERVER)
        try:
            out = lab.exec(src, "tortie", "pod", "exec", "default/pod1", "--", "python3", "-c", ECHO_CLIENT,
                           POD1[dst]).stdout
            assert out.strip() == "HELLO"
        finally:
            server.wait(timeout=30)
    # two pods on one host reach each other too
    lab.exec("node1", "tortie", "pod", "exec", "default/pod1", "--", "ping", "-c", "1", "-W", "2", "10.244.1.2")


def test_routes_views_and_metrics(lab):
    routes = lab.json("node1", "tortie", "routes", "--json")
    by_prefix = {r["prefix"]: r for r in routes}
    assert by_prefix["10.244.3.0/26"] == {"prefix": "10.244.3.0/26", "next_hops": ["10.99.0.3"],
                                          "peers": ["10.99.0.3"], "in_kernel": True}
    assert by_prefix["10.244.1.0/26"]["next_hops"] == ["blackhole"]
    text = lab.exec("node1", "python3", "-c",
                    "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9473/metrics').read().decode())"
                    ).stdout
    assert 'tortie_bgp_session_up{peer="10.99.0.2"} 1.0' in text
    assert 'tortie_bgp_prefixes_received_total{peer="10.99.0.3"}' in text
    assert 'tortie_kernel_routes{family="ipv4"} 3.0' in text and 'tortie_kernel_routes{family="ipv6"} 0.0' in text
    assert "tortie_route_programming_latency_seconds_bucket" in text
    assert "tortie_build_info{" in text


def test_daemon_restart_keeps_routes_and_loses_no_packet(lab):
    wait_ping = ping_loss(lab, "node3", POD1["node1"], count=1500)
    time.sleep(1)
    pid = daemon_pid(lab, "node1")
    lab.exec("node1", "kill", "-TERM", str(pid))
    wait_for(lambda: lab.exec("node1", "test", "-e", f"/proc/{pid}", check=False).returncode != 0, 15,
             what="the daemon to stop")
    assert remote_blocks_ok(lab, "node1")  # SIGTERM leaves our routes in the kernel
    # the others keep node1's block while it restarts (graceful restart)
    s3 = {p["name"]: p for p in status(lab, "node3")["peers"]}
    assert s3["node1"]["state"] == "down" and s3["node1"]["stale"] == 1
    assert remote_blocks_ok(lab, "node3")
    lab.exec("node1", "sh", "-c", "tortie run --config /etc/tortie/tortie.yaml >>/tmp/tortie.log 2>&1 &")
    wait_for(lambda: all(p["state"] == "up" for p in status(lab, "node3")["peers"]), 30, what="node1 back")
    sent, received = wait_ping()
    assert sent == 1500 and received == sent
    log = lab.exec("node1", "cat", "/tmp/tortie.log").stdout
    assert "adopted kernel routes=3" in log
    for node in NODES:
        assert remote_blocks_ok(lab, node)


def test_exabgp_killed_is_restarted_and_state_recovered(lab):
    wait_ping = ping_loss(lab, "node1", POD1["node2"], count=800)
    pid = daemon_pid(lab, "node2")
    restarts = status(lab, "node2")["exabgp_restarts"]  # the first start may have raced the address set-up
    children = lab.exec("node2", "sh", "-c", f"cat /proc/{pid}/task/*/children").stdout.split()
    exabgp = [c for c in children if "exabgp" in lab.exec("node2", "cat", f"/proc/{c}/cmdline").stdout]
    assert len(exabgp) == 1
    lab.exec("node2", "kill", "-KILL", exabgp[0])
    wait_for(lambda: (s := status(lab, "node2"))["exabgp_restarts"] == restarts + 1
             and all(p["state"] == "up" and p["stale"] == 0 for p in s["peers"]), 30, what="ExaBGP restarted")
    sent, received = wait_ping()
    assert received == sent
    for node in NODES:
        assert remote_blocks_ok(lab, node)


def test_invalid_config_is_refused_and_changes_nothing(lab):
    before = kernel_routes(lab, "node1")
    r = lab.exec("node1", "sh", "-c", "sed 's/asn: 64512/asn: -5/' /etc/tortie/tortie.yaml > /tmp/bad.yaml && "
                 "tortie run --config /tmp/bad.yaml", check=False)
    assert r.returncode == 2 and "/tmp/bad.yaml: asn:" in r.stderr
    r = lab.exec("node1", "tortie", "run", "--config", "/etc/tortie/tortie.yaml", check=False)
    assert r.returncode == 1 and "another tortie daemon is running" in r.stderr
    assert kernel_routes(lab, "node1") == before


def peers(lab, node):
    return {p["name"]: p for p in status(lab, node)["peers"]}


def test_reload_changes_peers_and_blocks_without_disturbing_others(lab):
    """SIGHUP with node3 gone from node1's mesh and a second block: only what changed moves."""
    lab.exec("node1", "cp", "/etc/tortie/tortie.yaml", "/tmp/reload.yaml")
    pid = daemon_pid(lab, "node1")
    lab.exec("node1", "kill", "-TERM", str(pid))
    wait_for(lambda: lab.exec("node1", "test", "-e", f"/proc/{pid}", check=False).returncode != 0, 15,
             what="the daemon to stop")
    lab.exec("node1", "sh", "-c", "tortie run --config /tmp/reload.yaml >>/tmp/tortie.log 2>&1 &")
    wait_for(lambda: all(p["state"] == "up" for p in peers(lab, "node2").values()), 30, what="node1 back")
    wait_for(lambda: all(p["state"] == "up" for p in peers(lab, "node1").values()), 30, what="node1's peers")
    time.sleep(2)
    node2_uptime = peers(lab, "node1")["node2"]["uptime"]
    lab.exec("node1", "sed", "-i", "s/, {name: node3, address: 10.99.0.3}//; "
             "s|blocks: \\[10.244.1.0/26\\]|blocks: [10.244.1.0/26, 10.244.1.64/26]|", "/tmp/reload.yaml")
    lab.exec("node1", "tortie", "config", "check", "/tmp/reload.yaml")
    lab.exec("node1", "kill", "-HUP", str(daemon_pid(lab, "node1")))
    wait_for(lambda: set(peers(lab, "node1")) == {"node2"}, 10, what="node3 removed from node1")
    wait_for(lambda: "10.244.1.64/26" in kernel_routes(lab, "node2"), 10, what="the new block at node2")
    wait_for(lambda: "10.244.3.0/26" not in kernel_routes(lab, "node1"), 10, what="node3's block gone from node1")
    assert kernel_routes(lab, "node1")["10.244.1.64/26"]["type"] == "blackhole"
    assert kernel_routes(lab, "node2")["10.244.1.0/26"]["gateway"] == "10.99.0.1"  # the old block stays
    p2 = peers(lab, "node1")["node2"]
    assert p2["state"] == "up" and p2["uptime"] > node2_uptime  # the untouched session never dropped
    wait_for(lambda: peers(lab, "node3")["node1"]["state"] != "up", 10, what="node3 to see node1 go")
    # and back: node3 returns, the second block goes away
    lab.exec("node1", "cp", "/etc/tortie/tortie.yaml", "/tmp/reload.yaml")
    lab.exec("node1", "kill", "-HUP", str(daemon_pid(lab, "node1")))
    wait_for(lambda: peers(lab, "node1").get("node3", {}).get("state") == "up", 30, what="node3 back")
    wait_for(lambda: remote_blocks_ok(lab, "node1") and "10.244.1.64/26" not in kernel_routes(lab, "node2"), 20,
             what="routes after the second reload")
    assert "10.244.1.64/26" not in kernel_routes(lab, "node1")
    for node in NODES:
        wait_for(lambda: remote_blocks_ok(lab, node), 20, what=f"{node}'s routes")


def test_host_stopped_routes_disappear_within_hold_time(lab):
    """Power-off: node3's link goes dark, then its processes die; peers notice by hold timer (9 s)."""
    lab.exec("node3", "ip", "link", "set", "eth1", "down")
    lab.exec("node3", "kill", "-KILL", str(daemon_pid(lab, "node3")))
    start = time.monotonic()
    wait_for(lambda: remote_blocks_ok(lab, "node1", missing=("node3",))
             and remote_blocks_ok(lab, "node2", missing=("node3",)), 9 + 5, what="node3's block withdrawn")
    elapsed = time.monotonic() - start
    s1 = {p["name"]: p for p in status(lab, "node1")["peers"]}
    assert s1["node3"]["state"] == "down" and s1["node3"]["stale"] == 0
    print(f"node3's routes gone from node1 and node2 after {elapsed:.1f} s (hold time 9 s)")
