"""The mesh3-mqtt lab: three hosts, mosquitto in its own namespace, nothing configured but the datastore."""
import ipaddress
import json
import subprocess
import time

import pytest

from tests.netns import requires_root, running_lab, wait_for
from tests.node.test_cluster_lab import NODES, POLICY, SERVER, cni_add, full_mesh, probe, status

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(300)]
TOPIC = "tortie/v1/"


@pytest.fixture(scope="module")
def lab():
    yield from running_lab("mesh3-mqtt.clab.yml", "q")


def publish(lab, key, value, user="admin", password="admin-secret"):
    lab.exec("broker", "mosquitto_pub", "-h", "127.0.0.1", "-u", user, "-P", password, "-r", "-q", "1",
             "-t", TOPIC + key, "-m", json.dumps(value))


def retained(lab, key):
    r = lab.exec("broker", "mosquitto_sub", "-h", "127.0.0.1", "-u", "admin", "-P", "admin-secret", "-C", "1",
                 "-W", "2", "-t", TOPIC + key, check=False)
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else None


def broker_pid(lab):
    """mosquitto: the child of the broker node's cmd shell (which the lab started)."""
    shell = json.loads((lab.state_dir / "state.json").read_text())["nodes"]["broker"]["cmd_pid"]
    (child,) = lab.exec("broker", "sh", "-c", f"cat /proc/{shell}/task/*/children").stdout.split()
    assert "mosquitto" in lab.exec("broker", "cat", f"/proc/{child}/comm").stdout
    return int(child)


def test_simultaneous_claims_give_one_block_each_and_a_full_mesh(lab):
    wait_for(lambda: full_mesh(lab), 60, what="the automatic full mesh")
    blocks = [b for n in NODES for b in status(lab, n)["blocks"]]
    assert len(blocks) == 3 and len(set(blocks)) == 3
    for n in NODES:
        assert {r["dst"] for r in lab.json(n, "ip", "-j", "route", "show", "proto", "201")} == set(blocks)
        assert status(lab, n)["datastore"]["connected"]


def test_cni_pods_and_policy_through_the_broker(lab):
    wait_for(lambda: full_mesh(lab), 60, what="the automatic full mesh")
    start = time.monotonic()
    web = cni_add(lab, "node1", "web", {"app": "web"})
    client = cni_add(lab, "node2", "client", {"app": "client"})
    assert ipaddress.ip_address(web) in ipaddress.ip_network(status(lab, "node1")["blocks"][0])
    other = cni_add(lab, "node3", "other", {"app": "other"})
    server = lab.popen("node1", "ip", "netns", "exec", "web", "python3", "-c", SERVER)
    lab.server = server
    wait_for(lambda: probe(lab, "node3", "other", web) == "ok", 20, what="web reachable")
    print(f"CNI ADD to reachable across nodes: {time.monotonic() - start:.2f} s for three pods")
    start = time.monotonic()
    publish(lab, "policies/shop/web", POLICY)
    wait_for(lambda: probe(lab, "node3", "other", web) == "blocked", 20, what="the policy enforced")
    print(f"publish to enforcement: {time.monotonic() - start:.2f} s")
    assert probe(lab, "node2", "client", web) == "ok"
    lab.pods = {"web": web, "client": client, "other": other}
    text = lab.exec("node1", "python3", "-c", "import urllib.request; print(urllib.request.urlopen("
                    "'http://127.0.0.1:9473/metrics').read().decode())").stdout
    for line in ("tortie_datastore_connected 1.0", "tortie_policy_policies 1.0", "tortie_policy_endpoints 3.0"):
        assert line in text, line
    assert "tortie_policy_apply_duration_seconds_count" in text and 'tortie_policy_rule_packets_total{' in text
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def test_broker_away_policy_stays_and_changes_converge(lab):
    web = lab.pods["web"]
    pid = broker_pid(lab)
    lab.exec("broker", "kill", "-TERM", str(pid))
    wait_for(lambda: not status(lab, "node1")["datastore"]["connected"], 30, what="node1 to notice")
    # enforcement goes on, and a pod added meanwhile (a client) is published once the broker is back
    assert probe(lab, "node3", "other", web) == "blocked" and probe(lab, "node2", "client", web) == "ok"
    client2 = cni_add(lab, "node2", "client2", {"app": "client"})
    assert probe(lab, "node2", "client2", web) == "blocked"  # node1 cannot know it yet
    lab.exec("broker", "sh", "-c", "mosquitto -d -c /etc/mosquitto/lab/mosquitto.conf")
    wait_for(lambda: all(status(lab, n)["datastore"]["connected"] for n in NODES), 60, what="reconnects")
    assert all(status(lab, n)["datastore"]["resyncs"] >= 1 for n in NODES)
    wait_for(lambda: probe(lab, "node2", "client2", web) == "ok", 20, what="client2 allowed after resync")
    assert probe(lab, "node3", "other", web) == "blocked"  # the policy survived the restart (persistence)
    assert retained(lab, "endpoints/node2/shop/client2")["ips"] == [client2]


def test_node_credentials_write_only_own_keys(lab):
    before = retained(lab, "nodes/node2")
    publish(lab, "nodes/node2", {"address": "10.92.0.99"}, user="node1", password="node1-secret")
    publish(lab, "policies/shop/evil", {"x": 1}, user="node1", password="node1-secret")
    time.sleep(1)
    assert retained(lab, "nodes/node2") == before and retained(lab, "policies/shop/evil") is None
    r = lab.exec("broker", "mosquitto_pub", "-h", "127.0.0.1", "-u", "node1", "-P", "wrong", "-t", TOPIC + "x",
                 "-m", "{}", check=False)
    assert r.returncode != 0


def test_killed_node_last_will_and_removal(lab):
    (block3,) = status(lab, "node3")["blocks"]
    lab.exec("node3", "ip", "link", "set", "eth1", "down")
    lab.exec("node3", "kill", "-KILL", lab.exec("node3", "cat", "/run/tortie/tortie.pid").stdout.strip())
    # BGP drops its routes after the hold time (9 s); the broker publishes its Last Will after 1.5
    # keepalives (15 s) and the others take it out of the mesh after its grace (10 s)
    wait_for(lambda: (retained(lab, "status/node3") or {}).get("alive") is False, 30, what="node3's Last Will")
    wait_for(lambda: {p["name"] for p in status(lab, "node1")["peers"]} == {"node2"}, 30,
             what="node3 out of node1's mesh after its grace")
    assert block3 not in {r["dst"] for r in lab.json("node1", "ip", "-j", "route", "show", "proto", "201")}
    lab.server.kill()


def test_ipam_show_and_node_remove(lab):
    rows = lab.json("node1", "tortie", "ipam", "show", "--json")
    owners = {r["owner"] for r in rows}
    assert {"node1", "node2"} <= owners and all(r["size"] == 14 for r in rows)
    assert next(r for r in rows if r["owner"] == "node1")["used"] == 1  # the web pod
    # a node's credentials cannot remove another node; the admin's can
    denied = lab.exec("node1", "tortie", "node", "remove", "node3", check=False)
    assert denied.returncode == 1 and retained(lab, "nodes/node3") is not None
    lab.exec("node1", "sh", "-c", "echo admin-secret > /tmp/admin.pw")
    lab.exec("node1", "tortie", "node", "remove", "node3", "--user", "admin", "--password-file", "/tmp/admin.pw")
    assert retained(lab, "nodes/node3") is None and retained(lab, "status/node3") is None
    assert "node3" not in {r["owner"] for r in lab.json("node1", "tortie", "ipam", "show", "--json")}
    print(lab.exec("node1", "tortie", "ipam", "show").stdout)
