"""What `tortie apply` writes takes effect in running daemons (files datastore): an IPPool is claimed from and its
pods reach the other node's, a BGPPeer (a BIRD 2 route reflector) brings a session up, a HostEndpoint with a
GlobalNetworkPolicy filters real packets to the host.

Two nodes, no mesh and no peers in their files: every route between them goes through the applied BGPPeer. Their
file pool holds one block, so one node starts without any and must claim from the applied pool."""
import ipaddress
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.netns import requires_root, running_lab, wait_for

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(420)]  # 176 s measured at load 30-45 on 2 cores
NODES = ("node1", "node2")
BIRD_CONF = Path(__file__).resolve().parents[2] / "containers/labs/tor-bird/tor/bird.conf"

NODE_CONFIG = """\
name: {name}
router_id: 10.98.0.{i}
asn: 64512
listen_address: 10.98.0.{i}
pools: [{{cidr: 10.245.0.0/28, block_size: 28}}]   # one block for two nodes
blocks: []
mesh: {{enabled: false}}
datastore: {{type: files, path: /srv/tortie-cluster, lease_ttl: 3}}
claim_settle: 1.0
initial_sync_timeout: 5
metrics: {{port: 0}}
pod_netns_prefix: pod-
"""
POOL = {"apiVersion": "tortie.io/v1", "kind": "IPPool", "metadata": {"name": "extra"},
        "spec": {"cidr": "10.246.0.0/24", "blockSize": 28}}
PEER = {"apiVersion": "tortie.io/v1", "kind": "BGPPeer", "metadata": {"name": "tor"},
        "spec": {"address": "10.98.0.254", "asn": 64512, "hold_time": 9}}
HEP = {"apiVersion": "tortie.io/v1", "kind": "HostEndpoint", "metadata": {"name": "direct", "labels": {"link": "direct"}},
       "spec": {"node": "node2", "interface": "eth2", "ips": ["10.97.0.2"]}}
GNP = {"apiVersion": "tortie.io/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": "direct-8081"},
       "spec": {"selector": "link == 'direct'",
                "ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": [8081]}}]}}
SERVER = """
import socket, threading
def serve(port):
    s = socket.create_server(("10.97.0.2", port))
    s.settimeout(120)
    while True:
        c, _ = s.accept(); c.sendall(b"ok"); c.close()
threading.Thread(target=serve, args=(8081,), daemon=True).start()
serve(8080)
"""
PROBE = """
import socket, sys
try:
    print(socket.create_connection(("10.97.0.2", int(sys.argv[1])), timeout=0.5).recv(10).decode())
except OSError:
    print("blocked")
"""


def topology(tmp_path) -> str:
    (tmp_path / "tor").mkdir()
    shutil.copy(BIRD_CONF, tmp_path / "tor" / "bird.conf")
    nodes = {"tor": {"kind": "linux", "cmd": 'sh -c "mkdir -p /run/bird && exec bird -f -c /etc/bird/bird.conf '
                                              '-s /run/bird/bird.ctl"',
                     "binds": ["tor:/etc/bird"],
                     "exec": ["ip link add br0 type bridge", "ip link set eth1 master br0",
                              "ip link set eth2 master br0", "ip addr add 10.98.0.254/24 dev br0",
                              "ip link set br0 up", "sysctl -qw net.ipv4.ip_forward=1"]}}
    for i, name in enumerate(NODES, 1):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tortie.yaml").write_text(NODE_CONFIG.format(name=name, i=i))
        nodes[name] = {"kind": "linux", "cmd": "tortie run --config /etc/tortie/tortie.yaml",
                       "binds": [f"{name}:/etc/tortie", "cluster:/srv/tortie-cluster"],
                       "exec": [f"ip addr add 10.98.0.{i}/24 dev eth1", f"ip addr add 10.97.0.{i}/24 dev eth2"]}
    (tmp_path / "cluster").mkdir()
    links = [{"endpoints": [f"{n}:eth1", f"tor:eth{i}"]} for i, n in enumerate(NODES, 1)]
    links.append({"endpoints": ["node1:eth2", "node2:eth2"]})
    path = tmp_path / "resources.clab.yml"
    path.write_text(json.dumps({"name": "resources", "topology": {"nodes": nodes, "links": links}}))
    return str(path)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resources")
    for lab in running_lab(topology(tmp), "r"):
        yield lab


def status(lab, node):
    return lab.json(node, "tortie", "status", "--json")


def apply(lab, *docs):
    lab.exec("node1", "sh", "-c", "cat > /tmp/resources.yaml", input=yaml.safe_dump_all(docs))
    return lab.exec("node1", "tortie", "apply", "-f", "/tmp/resources.yaml")


def probe(lab, port: int) -> str:
    return lab.exec("node1", "python3", "-c", PROBE, str(port)).stdout.strip()


def test_applied_pool_and_peer_take_effect(lab):
    wait_for(lambda: any(status(lab, n)["blocks"] for n in NODES), 30, what="one node to claim the file's block")
    assert not any(status(lab, n)["peers"] for n in NODES)
    apply(lab, POOL, PEER)
    wait_for(lambda: all([p["state"] for p in status(lab, n)["peers"]] == ["up"] for n in NODES), 60,
             what="both nodes' sessions with the applied BGPPeer")
    owner, other = sorted(NODES, key=lambda n: not status(lab, n)["blocks"])
    assert status(lab, owner)["blocks"] == ["10.245.0.0/28"] and status(lab, other)["blocks"] == []
    ips = {n: lab.exec(n, "tortie", "pod", "add", "default/p-" + n).stdout.strip() for n in (owner, other)}
    assert ipaddress.ip_address(ips[owner]) in ipaddress.ip_network("10.245.0.0/28")
    assert ipaddress.ip_address(ips[other]) in ipaddress.ip_network("10.246.0.0/24")
    (block,) = status(lab, other)["blocks"]  # where the node's search of the pool starts (claims.start_index())
    assert ipaddress.ip_network(block).subnet_of(ipaddress.ip_network("10.246.0.0/24")) and block.endswith("/28")
    wait_for(lambda: block in {r["dst"] for r in lab.json(owner, "ip", "-j", "route", "show")}, 20,
             what="the applied pool's block reflected to the other node and accepted")
    lab.exec(owner, "tortie", "pod", "exec", "default/p-" + owner, "--", "ping", "-c", "2", "-W", "2", ips[other])
    lab.exec(other, "tortie", "pod", "exec", "default/p-" + other, "--", "ping", "-c", "2", "-W", "2", ips[owner])


def test_applied_host_endpoint_with_a_policy_filters_packets_to_the_host(lab):
    server = lab.popen("node2", "python3", "-c", SERVER)
    try:
        wait_for(lambda: probe(lab, 8080) == "ok", 20, what="node2's server before any policy")
        apply(lab, HEP, GNP)
        wait_for(lambda: probe(lab, 8080) == "blocked", 20, what="the host endpoint's policy enforced")
        assert probe(lab, 8081) == "ok"
    finally:
        server.kill()
