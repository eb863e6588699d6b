"""Three nodes that know nothing of each other but a shared datastore: they claim blocks, mesh, route pods."""
import ipaddress
import json
import time

import pytest

from tests.netns import requires_root, running_lab, wait_for

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(240)]
NODES = ("node1", "node2", "node3")

NODE_CONFIG = """\
name: {name}
router_id: 10.93.0.{i}
asn: 64512
listen_address: 10.93.0.{i}
pools: [{{cidr: 10.245.0.0/26, block_size: 28}}]   # four blocks
blocks: []
mesh: {{enabled: true, hold_time: 9}}
datastore: {{type: files, path: /srv/tortie-cluster, lease_ttl: 3}}
node_grace: 6
claim_settle: 1.0
initial_sync_timeout: 5
metrics: {{port: 0}}
pod_netns_prefix: pod-
"""


def topology(tmp_path) -> str:
    nodes = {"sw": {"kind": "linux", "cmd": "sleep infinity",
                    "exec": ["ip link add br0 type bridge"] + [f"ip link set eth{i} master br0" for i in (1, 2, 3)]
                    + ["ip link set br0 up"]}}
    for i, name in enumerate(NODES, 1):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tortie.yaml").write_text(NODE_CONFIG.format(name=name, i=i))
        nodes[name] = {"kind": "linux", "cmd": "tortie run --config /etc/tortie/tortie.yaml",
                       "binds": [f"{name}:/etc/tortie", "cluster:/srv/tortie-cluster"],
                       "exec": [f"ip addr add 10.93.0.{i}/24 dev eth1"]}
    (tmp_path / "cluster").mkdir()
    links = [{"endpoints": [f"{n}:eth1", f"sw:eth{i}"]} for i, n in enumerate(NODES, 1)]
    path = tmp_path / "cluster.clab.yml"
    path.write_text(json.dumps({"name": "cluster", "topology": {"nodes": nodes, "links": links}}))
    return str(path)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    for lab in running_lab(topology(tmp), "c"):
        lab.datastore = tmp / "cluster"
        yield lab


def status(lab, node):
    return lab.json(node, "tortie", "status", "--json")


def full_mesh(lab):
    return all(len(s["peers"]) == 2 and all(p["state"] == "up" for p in s["peers"])
               for s in (status(lab, n) for n in NODES))


def test_blocks_claimed_once_each_and_full_mesh(lab):
    wait_for(lambda: full_mesh(lab), 60, what="the automatic full mesh")
    blocks = {n: status(lab, n)["blocks"] for n in NODES}
    flat = [b for bs in blocks.values() for b in bs]
    assert all(len(bs) == 1 for bs in blocks.values()) and len(set(flat)) == 3, blocks
    claims = sorted(p.name for p in (lab.datastore / "claims").rglob("*.json"))
    assert len(claims) == 3  # the losers of a race removed their claims
    for n in NODES:
        routes = {r["dst"] for r in lab.json(n, "ip", "-j", "route", "show", "proto", "201")}
        assert routes == set(flat)


def test_pods_get_addresses_from_their_nodes_block_and_reach_each_other(lab):
    wait_for(lambda: full_mesh(lab), 60, what="the automatic full mesh")
    ips = {}
    for n in NODES:
        # a pod's namespace/name is unique in the cluster: the datastore keeps one endpoint per name
        ips[n] = lab.exec(n, "tortie", "pod", "add", "default/p-" + n).stdout.strip()
        block = ipaddress.ip_network(status(lab, n)["blocks"][0])
        assert ipaddress.ip_address(ips[n]) in block
    lab.exec("node1", "tortie", "pod", "exec", "default/p-node1", "--", "ping", "-c", "2", "-W", "2", ips["node3"])
    lab.exec("node2", "tortie", "pod", "exec", "default/p-node2", "--", "ping", "-c", "2", "-W", "2", ips["node1"])


def test_a_full_block_brings_another(lab):
    """/28 blocks hold 14 pods: the 15th pod on node2 makes it claim a second block, announced at once."""
    wait_for(lambda: full_mesh(lab), 60, what="the automatic full mesh")
    for i in range(14):
        lab.exec("node2", "tortie", "pod", "add", f"fill/p{i}")
    blocks = status(lab, "node2")["blocks"]
    assert len(blocks) == 2
    wait_for(lambda: set(blocks) <= {r["dst"] for r in lab.json("node1", "ip", "-j", "route", "show", "proto", "201")},
             10, what="node2's new block at node1")


SERVER = """
import socket
s = socket.create_server(("0.0.0.0", 8080))
s.settimeout(60)
while True:
    c, _ = s.accept(); c.sendall(b"ok"); c.close()
"""
PROBE = """
import socket, sys
try:
    print(socket.create_connection((sys.argv[1], 8080), timeout=0.5).recv(10).decode())
except OSError:
    print("blocked")
"""
POLICY = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
          "metadata": {"name": "web", "namespace": "shop"},
          "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                                "ports": [{"protocol": "TCP", "port": 8080}]}]}}


def cni_add(lab, node, pod, labels):
    """What a runtime does: a netns, then tortie-cni ADD with the pod's labels (CNI conventions)."""
    lab.exec(node, "ip", "netns", "add", pod)
    netconf = {"cniVersion": "1.1.0", "name": "tortie", "type": "tortie-cni",
               "tortieConfig": "/etc/tortie/tortie.yaml",
               "args": {"cni": {"labels": [{"key": k, "value": v} for k, v in labels.items()]}}}
    out = lab.exec(node, "tortie-cni", input=json.dumps(netconf), env={
        "CNI_COMMAND": "ADD", "CNI_CONTAINERID": pod, "CNI_NETNS": f"/run/netns/{pod}", "CNI_IFNAME": "eth0",
        "CNI_ARGS": f"K8S_POD_NAMESPACE=shop;K8S_POD_NAME={pod}", "CNI_PATH": "/"}).stdout
    return json.loads(out)["ips"][0]["address"].split("/")[0]


def probe(lab, node, pod, ip):
    return lab.exec(node, "ip", "netns", "exec", pod, "python3", "-c", PROBE, ip).stdout.strip()


def test_policy_published_to_the_datastore_is_enforced_on_every_node(lab):
    wait_for(lambda: full_mesh(lab), 60, what="the automatic full mesh")
    web = cni_add(lab, "node1", "web", {"app": "web"})
    cni_add(lab, "node2", "client", {"app": "client"})
    cni_add(lab, "node3", "other", {"app": "other"})
    server = lab.popen("node1", "ip", "netns", "exec", "web", "python3", "-c", SERVER)
    try:
        wait_for(lambda: probe(lab, "node3", "other", web) == "ok", 20, what="web reachable before any policy")
        assert probe(lab, "node2", "client", web) == "ok"
        (lab.datastore / "policies" / "shop").mkdir(parents=True)
        tmp = lab.datastore / "policies" / "shop" / ".web.json.tmp"
        tmp.write_text(json.dumps(POLICY))
        start = time.monotonic()
        tmp.rename(lab.datastore / "policies" / "shop" / "web.json")
        wait_for(lambda: probe(lab, "node3", "other", web) == "blocked", 20, what="the policy enforced")
        print(f"publish to enforcement: {time.monotonic() - start:.2f} s (including one probe)")
        assert probe(lab, "node2", "client", web) == "ok"
        for node in NODES:  # every node compiled it (each enforces it for its own pods)
            assert lab.json(node, "tortie", "status", "--json") and "policy applied" in lab.log(node)
        # a broken policy changes nothing: the good one stays in force
        (lab.datastore / "policies" / "shop" / "bad.json").write_text(json.dumps({"apiVersion": "nope"}))
        wait_for(lambda: "invalid entries left as they were" in lab.log("node1"), 10, what="the bad policy refused")
        assert probe(lab, "node3", "other", web) == "blocked" and probe(lab, "node2", "client", web) == "ok"
    finally:
        server.kill()


def test_no_free_block_left_borrows_an_address_announced_as_32(lab):
    """All four blocks are taken: node2's 29th pod gets an address of another node's block, as a /32."""
    wait_for(lambda: full_mesh(lab), 60, what="the automatic full mesh")
    for i in range(14, 60):  # until the pools are out of blocks
        ip = lab.exec("node2", "tortie", "pod", "add", f"fill/p{i}").stdout.strip()
        if status(lab, "node2")["borrowed"]:
            break
    s2 = status(lab, "node2")
    assert s2["borrowed"] == [ip] and not any(ipaddress.ip_address(ip) in ipaddress.ip_network(b) for b in s2["blocks"])
    used = {p["ip"] for n in ("node1", "node3") for p in json.loads(lab.exec(n, "tortie", "pod", "list", "--json").stdout)}
    assert ip not in used  # every pod is published, so a borrower never takes an address in use
    owner = next(n for n in ("node1", "node3") if any(ipaddress.ip_address(ip) in ipaddress.ip_network(b)
                                                       for b in status(lab, n)["blocks"]))
    # the block's owner routes that one address to node2, past its own blackhole for the block
    wait_for(lambda: any(r["dst"] == ip and r.get("gateway") == "10.93.0.2"
                         for r in lab.json(owner, "ip", "-j", "route", "show", "proto", "201")), 10,
             what=f"{owner} to route the borrowed {ip}")
    for node in ("node1", "node3"):
        lab.exec(node, "tortie", "pod", "exec", "default/p-" + node, "--", "ping", "-c", "1", "-W", "2", ip)
    # and the owner never hands that address out itself
    assert ip in json.loads(lab.exec(owner, "cat", "/var/lib/tortie/lent.json").stdout)["addresses"]


def test_a_node_that_goes_away_leaves_the_mesh_after_its_grace(lab):
    wait_for(lambda: full_mesh(lab), 60, what="the automatic full mesh")
    block3 = status(lab, "node3")["blocks"][0]
    lab.exec("node3", "ip", "link", "set", "eth1", "down")
    lab.exec("node3", "kill", "-KILL", lab.exec("node3", "cat", "/run/tortie/tortie.pid").stdout.strip())
    # BGP takes its routes away within the hold time; the datastore lease (3 s) + grace (6 s) its mesh place
    wait_for(lambda: block3 not in {r["dst"] for r in lab.json("node1", "ip", "-j", "route", "show", "proto", "201")},
             15, what="node3's block withdrawn")
    wait_for(lambda: {p["name"] for p in status(lab, "node1")["peers"]} == {"node2"}, 20, what="node3 out of the mesh")
