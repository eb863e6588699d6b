"""Dual-stack end to end (containers/labs/mesh3-dualstack.clab.yml): three hosts meshed over IPv4 and IPv6
sessions, every pod with an address of each family; real packets over both, a restart under a continuous
IPv6 probe, and Kubernetes NetworkPolicy (an IPv6 ipBlock, pod selectors) on IPv6 traffic across hosts."""
import ipaddress
import json
import select
import time

import pytest

from tests.netns import requires_root, running_lab, wait_for
from tests.node.test_dns_lab import cni_add as dns_lab_cni_add

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(300)]

HOSTS = {"node1": 1, "node2": 2, "node3": 3}
ADDRESS = {4: "10.88.0.{}", 6: "fd88::{}"}
PODS = [("node1", "default/a1"), ("node1", "default/b1"), ("node2", "default/a2"), ("node3", "default/a3")]
TOPIC = "tortie/v1/"

# Every pod runs one of these for the whole module: TCP on [::]:8080 for both families, "ok" per connection.
SERVER = """
import socket
s = socket.create_server(("::", 8080), family=socket.AF_INET6, dualstack_ipv6=True)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"ok"); c.close()
"""
# From a pod: every target address (argv) at once, by ping and by a TCP connection to port 8080 (0.5 s to
# connect: a policy that drops is a timeout; then the server's answer may take its time on a loaded host);
# prints {address: [ping answered, tcp answered]}.
PROBE = """
import json, socket, subprocess, sys, threading
out = {}
def one(ip):
    ping = subprocess.run(["ping", "-c1", "-W2", ip], capture_output=True).returncode == 0
    try:
        with socket.create_connection((ip, 8080), timeout=0.5) as c:
            c.settimeout(10)
            tcp = c.recv(2) == b"ok"
    except OSError:
        tcp = False
    out[ip] = [ping, tcp]
threads = [threading.Thread(target=one, args=(ip,)) for ip in sys.argv[1:]]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
"""
# From a pod: an ICMPv6 echo request to argv[1] every 10 ms until the file argv[2] exists, then 1 s for the last
# answers; prints "sent answered". (iputils ping stopped by a signal counts an echo still in flight as lost.)
PINGER = """
import os, socket, struct, sys, time
dst, stop = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)  # the kernel fills in the checksum
ident, sent, answered = os.getpid() & 0xffff, 0, set()
def receive(until):
    while (left := until - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            kind, _, _, echo_id, seq = struct.unpack("!BBHHH", s.recv(1500)[:8])
        except TimeoutError:
            return
        if kind == 129 and echo_id == ident:
            answered.add(seq)
print("ready", flush=True)
while not os.path.exists(stop):
    s.sendto(struct.pack("!BBHHH", 128, 0, 0, ident, sent & 0xffff), (dst, 0))
    sent += 1
    receive(time.monotonic() + 0.01)
receive(time.monotonic() + 1)
print(sent, len(answered))
"""
TCP_PROBE = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], 8080), timeout=0.5) as c:
        c.settimeout(10)
        print(c.recv(2).decode())
except OSError:
    print("blocked")
"""


def serving_lab(topology, suffix):
    """running_lab, and the servers `serve` started stopped before the lab goes down."""
    for lab in running_lab(topology, suffix):
        lab.servers = []
        yield lab
        for server in lab.servers:
            server.kill()


@pytest.fixture(scope="module")
def lab():
    yield from serving_lab("mesh3-dualstack.clab.yml", "6")


def serve(lab, node, *command):
    """Starts SERVER with `command` (a way into a pod) in the node; returns once it listens."""
    server = lab.popen(node, *command, "python3", "-c", SERVER)
    lab.servers.append(server)
    ready, _, _ = select.select([server.stdout], [], [], 30)
    assert ready and server.stdout.readline().strip() == "ready", f"no server in {command} on {node}"


def by_family(ips):
    return {ipaddress.ip_address(ip.split("/")[0]).version: ip.split("/")[0] for ip in ips}


@pytest.fixture(scope="module")
def lab_pods(lab):
    """(node, pod, {4: .., 6: ..}) of PODS (names unique in the cluster: endpoints are keyed by name), each made
    once the lab is up (its blocks claimed) and serving TCP 8080 in both families."""
    every = []
    for node, key in PODS:
        every.append((node, key, by_family(lab.exec(node, "tortie", "pod", "add", key).stdout.split())))
        serve(lab, node, "tortie", "pod", "exec", key, "--")
    assert all(set(ips) == {4, 6} for _, _, ips in every), every
    return every


def kernel(lab, node, family):
    return {r["dst"]: r for r in lab.json(node, "ip", "-j", f"-{family}", "route", "show", "proto", "201")}


def blocks(lab):
    """{node: {family: its one block of that family}}, as each node's status says, once every node has claimed
    them (`lab up` waits for the sessions; each claim takes the claim settle time after that)."""
    out = {}

    def claimed() -> bool:
        for node in HOSTS:
            mine = [ipaddress.ip_network(b) for b in status(lab, node)["blocks"]]
            if sorted(b.version for b in mine) != [4, 6]:
                return False
            out[node] = {b.version: str(b) for b in mine}
        return True
    wait_for(claimed, 30, what="a block of each family claimed by every node")
    return out


def routed(lab, node, claimed):
    """Our block of each family a blackhole, every other host's block via that host's address of the family."""
    for family in (4, 6):
        routes = kernel(lab, node, family)
        expected = {claimed[n][family]: ADDRESS[family].format(i) for n, i in HOSTS.items() if n != node}
        if routes.get(claimed[node][family], {}).get("type") != "blackhole":
            return False
        if {b: routes.get(b, {}).get("gateway") for b in expected} != expected:
            return False
    return True


def status(lab, node):
    return lab.json(node, "tortie", "status", "--json")


def metrics(lab, node):
    return lab.exec(node, "python3", "-c", "import urllib.request; print(urllib.request.urlopen("
                    "'http://127.0.0.1:9473/metrics').read().decode())").stdout


def test_one_session_per_family_and_both_families_routed(lab):
    claimed = blocks(lab)
    for node in HOSTS:
        wait_for(lambda: routed(lab, node, claimed), 20, what=f"{node}'s routes of both families")
        s = status(lab, node)
        assert s["initial_sync_done"]
        sessions = {p["address"]: p for p in s["peers"]}
        others = [i for n, i in HOSTS.items() if n != node]
        assert set(sessions) == {ADDRESS[f].format(i) for f in (4, 6) for i in others}
        # each session carries the block of its own family only
        assert all(p["state"] == "up" and p["accepted"] == 1 for p in sessions.values()), sessions
    text = metrics(lab, "node1")
    assert 'tortie_bgp_session_up{peer="fd88::2"} 1.0' in text
    assert 'tortie_bgp_session_up{peer="10.88.0.2"} 1.0' in text


def test_every_pod_reaches_every_pod_over_both_families(lab, lab_pods):
    """ICMP and ICMPv6 echo, TCP over IPv4 and IPv6, from each pod to each other pod (one host or another)."""
    claimed = blocks(lab)
    for node in HOSTS:
        wait_for(lambda: routed(lab, node, claimed), 20, what=f"{node}'s routes")
    failures = []
    for node, key, mine in lab_pods:
        targets = [ip for _, _, ips in lab_pods if ips is not mine for ip in ips.values()]
        answers = json.loads(lab.exec(node, "tortie", "pod", "exec", key, "--", "python3", "-c", PROBE,
                                      *targets).stdout)
        assert len(answers) == 6
        failures += [(node, key, ip, ok) for ip, ok in answers.items() if not all(ok)]
    assert not failures, failures


def test_daemon_restart_loses_no_ipv6_packet(lab, lab_pods):
    """node1's daemon stops (its routes stay in the kernel, its peers keep its blocks: graceful restart) and
    starts again (adopting its routes) while a pod on node3 sends an ICMPv6 echo to one on node1 every 10 ms,
    from before the stop until the restarted daemon's sessions are up."""
    claimed = blocks(lab)
    (dst,) = [ips[6] for node, key, ips in lab_pods if key == "default/a1"]
    probe = lab.popen("node3", "tortie", "pod", "exec", "default/a3", "--", "python3", "-c", PINGER, dst,
                      "/tmp/stop-pinger")
    ready, _, _ = select.select([probe.stdout], [], [], 30)
    assert ready and probe.stdout.readline().strip() == "ready"
    time.sleep(0.5)  # echoes answered before the stop, for the record
    pid = int(lab.exec("node1", "cat", "/run/tortie/tortie.pid").stdout)
    lab.exec("node1", "kill", "-TERM", str(pid))
    wait_for(lambda: lab.exec("node1", "test", "-e", f"/proc/{pid}", check=False).returncode != 0, 15,
             what="the daemon to stop")
    assert routed(lab, "node1", claimed)  # SIGTERM leaves our routes of both families in the kernel
    wait_for(lambda: {(p["address"], p["state"], p["stale"]) for p in status(lab, "node3")["peers"]}
             >= {("fd88::1", "down", 1), ("10.88.0.1", "down", 1)}, 15, what="node3 to keep node1's blocks as stale")
    assert routed(lab, "node3", claimed)
    lab.exec("node1", "sh", "-c", "tortie run --config /etc/tortie/tortie.yaml >>/tmp/tortie.log 2>&1 &")
    wait_for(lambda: all(p["state"] == "up" for p in status(lab, "node3")["peers"]), 60, what="node1 back")
    for node in HOSTS:
        wait_for(lambda: routed(lab, node, claimed), 20, what=f"{node}'s routes after the restart")
    lab.exec("node3", "touch", "/tmp/stop-pinger")
    sent, answered = map(int, probe.communicate(timeout=30)[0].split())
    print(f"ICMPv6 echo every 10 ms through node1's restart: {sent} sent, {sent - answered} lost")
    assert sent > 100 and answered == sent
    assert blocks(lab) == claimed  # the restarted node kept its claims


def publish(lab, key, value):
    lab.exec("broker", "mosquitto_pub", "-h", "127.0.0.1", "-u", "admin", "-P", "admin-secret", "-r", "-q", "1",
             "-t", TOPIC + key, "-m", json.dumps(value))


def cni_add(lab, node, pod, labels):
    """A runtime's ADD in namespace shop: the pod's addresses by family, from the CNI result."""
    return by_family(ip["address"] for ip in dns_lab_cni_add(lab, node, pod, labels)["ips"])


def tcp(lab, node, pod, ip):
    return lab.exec(node, "ip", "netns", "exec", pod, "python3", "-c", TCP_PROBE, ip).stdout.strip()


def policy(ingress_from):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                     "ingress": [{"from": ingress_from, "ports": [{"protocol": "TCP", "port": 8080}]}]}}


def test_network_policy_on_ipv6_pod_traffic_across_hosts(lab):
    """web on node1; client on node2, other on node3. An IPv6 ipBlock (node2's IPv6 block) lets client in over
    IPv6 only; a pod selector (app=client) lets client in over both families; other times out throughout."""
    web = cni_add(lab, "node1", "web", {"app": "web"})
    client = cni_add(lab, "node2", "client", {"app": "client"})
    other = cni_add(lab, "node3", "other", {"app": "other"})
    assert set(web) == set(client) == set(other) == {4, 6}
    serve(lab, "node1", "ip", "netns", "exec", "web")

    def seen():
        return {(src, f): tcp(lab, node, src, web[f])
                for node, src in (("node2", "client"), ("node3", "other")) for f in (4, 6)}

    everyone = {(src, f): "ok" for src in ("client", "other") for f in (4, 6)}
    assert seen() == everyone  # before any policy

    publish(lab, "policies/shop/web", policy([{"ipBlock": {"cidr": blocks(lab)["node2"][6]}}]))
    only_client6 = {**{k: "blocked" for k in everyone}, ("client", 6): "ok"}
    start = time.monotonic()
    wait_for(lambda: seen() == only_client6, 30, what="the IPv6 ipBlock policy enforced")
    print(f"IPv6 ipBlock policy enforced on every host after {time.monotonic() - start:.2f} s")

    publish(lab, "policies/shop/web", policy([{"podSelector": {"matchLabels": {"app": "client"}}}]))
    client_both = {**{k: "blocked" for k in everyone}, ("client", 4): "ok", ("client", 6): "ok"}
    wait_for(lambda: seen() == client_both, 30, what="the pod selector policy enforced")
    assert all(tcp(lab, "node3", "other", web[f]) == "blocked" for f in (4, 6))
