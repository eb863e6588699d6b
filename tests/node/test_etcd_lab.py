"""The mesh3-etcd lab: three hosts on a three-member etcd cluster, each member in its own namespace."""
import json
import time

import pytest
import yaml

from tests.netns import requires_root, running_lab, wait_for
from tests.node.test_cluster_lab import NODES, POLICY, SERVER, cni_add, full_mesh, probe, status

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(300)]
MEMBERS = ("etcd1", "etcd2", "etcd3")
ENDPOINTS = "http://10.93.0.251:2379,http://10.93.0.252:2379,http://10.93.0.253:2379"
ADMIN = ("--user", "admin", "--password-file", "/tmp/admin.pw")


@pytest.fixture(scope="module")
def lab():
    yield from running_lab("mesh3-etcd.clab.yml", "e")


def etcdctl(lab, *args, user="root:root-secret", node="node1", check=True):
    return lab.exec(node, "etcdctl", "--endpoints", ENDPOINTS, "--user", user, "--dial-timeout", "2s",
                    "--command-timeout", "5s", *args, env={"ETCDCTL_API": "3"}, check=check)


def stored(lab, key):
    out = etcdctl(lab, "get", f"tortie/v1/{key}", "--print-value-only").stdout.strip()
    return json.loads(out) if out else None


def apply(lab, *docs):
    """`tortie apply -f` on node1 with the admin's credentials."""
    lab.exec("node1", "sh", "-c", "echo admin-secret > /tmp/admin.pw && cat > /tmp/resources.yaml",
             input=yaml.safe_dump_all(docs))
    return lab.exec("node1", "tortie", "apply", "-f", "/tmp/resources.yaml", *ADMIN)


def kill_member(lab, member):
    lab.exec(member, "sh", "-c", "kill -KILL $(cat /run/etcd.pid)")


def start_member(lab, member):
    lab.exec(member, "sh", "-c", f"setsid /etc/tortie-lab/etcd.sh {member[-1]} >/tmp/etcd.log 2>&1 < /dev/null &")


def datastore(lab, node):
    return status(lab, node)["datastore"]


def test_claims_by_compare_and_swap_and_a_full_mesh(lab):
    wait_for(lambda: full_mesh(lab), 90, what="the automatic full mesh")
    blocks = [b for n in NODES for b in status(lab, n)["blocks"]]
    assert len(blocks) == 3 and len(set(blocks)) == 3
    for n in NODES:
        assert {r["dst"] for r in lab.json(n, "ip", "-j", "route", "show", "proto", "201")} == set(blocks)
        assert datastore(lab, n)["connected"]
    rows = {r["name"]: r for r in lab.json("node1", "tortie", "node", "list", "--json")}
    assert set(rows) == set(NODES) and all(r["alive"] for r in rows.values())


def test_pods_reach_each_other_and_policy_applied_with_the_cli_is_enforced(lab):
    wait_for(lambda: full_mesh(lab), 90, what="the automatic full mesh")
    web = cni_add(lab, "node1", "web", {"app": "web"})
    cni_add(lab, "node2", "client", {"app": "client"})
    cni_add(lab, "node3", "other", {"app": "other"})
    lab.server = lab.popen("node1", "ip", "netns", "exec", "web", "python3", "-c", SERVER)
    wait_for(lambda: probe(lab, "node3", "other", web) == "ok", 20, what="web reachable across nodes")
    assert probe(lab, "node2", "client", web) == "ok"
    start = time.monotonic()
    out = apply(lab, {"apiVersion": "tortie.io/v1", "kind": "Namespace", "metadata": {"name": "shop"}}, POLICY)
    assert "policies/shop/web: configured" in out.stdout
    wait_for(lambda: probe(lab, "node3", "other", web) == "blocked", 20, what="the policy enforced")
    print(f"tortie apply to enforcement: {time.monotonic() - start:.2f} s")
    assert probe(lab, "node2", "client", web) == "ok"
    assert "unchanged" in apply(lab, {"apiVersion": "tortie.io/v1", "kind": "Namespace", "metadata": {"name": "shop"}},
                                POLICY).stdout
    lab.pods = {"web": web}


def test_one_member_killed_changes_nothing(lab):
    web = lab.pods["web"]
    kill_member(lab, "etcd1")
    try:
        # every node stays (or comes back at once) on the two members left: the lease holds, no resync
        cni_add(lab, "node2", "late", {"app": "late"})
        wait_for(lambda: all(datastore(lab, n)["connected"] for n in NODES), 30, what="connected to a live member")
        assert all(datastore(lab, n)["resyncs"] == 0 for n in NODES)
        assert probe(lab, "node3", "other", web) == "blocked" and probe(lab, "node2", "client", web) == "ok"
        wait_for(lambda: stored(lab, "endpoints/node2/shop/late") is not None, 20, what="the new pod published")
        assert all(r["alive"] for r in lab.json("node1", "tortie", "node", "list", "--json"))
    finally:
        start_member(lab, "etcd1")
    wait_for(lambda: etcdctl(lab, "endpoint", "health", check=False).returncode == 0, 60, what="all members healthy")


def test_whole_cluster_down_keeps_enforcing_and_resumes_without_loss(lab):
    web = lab.pods["web"]
    for m in MEMBERS:
        kill_member(lab, m)
    wait_for(lambda: not any(datastore(lab, n)["connected"] for n in NODES), 30, what="every node to notice")
    assert probe(lab, "node3", "other", web) == "blocked" and probe(lab, "node2", "client", web) == "ok"
    client2 = cni_add(lab, "node2", "client2", {"app": "client"})  # published once etcd is back
    assert probe(lab, "node2", "client2", web) == "blocked"  # node1 cannot know it yet
    for m in MEMBERS:
        start_member(lab, m)
    wait_for(lambda: all(datastore(lab, n)["connected"] for n in NODES), 90, what="reconnects")
    assert all(datastore(lab, n)["resyncs"] == 0 for n in NODES)  # the watch resumed: no full read
    wait_for(lambda: probe(lab, "node2", "client2", web) == "ok", 30, what="client2 allowed after the outage")
    assert probe(lab, "node3", "other", web) == "blocked"
    assert stored(lab, "endpoints/node2/shop/client2")["ips"] == [client2]


def test_node_credentials_write_only_own_keys(lab):
    before = stored(lab, "nodes/node2")
    for args in (["put", "tortie/v1/nodes/node2", '{"address": "10.93.0.99"}'],
                 ["put", "tortie/v1/policies/shop/evil", "{}"], ["del", "tortie/v1/status/node2"],
                 ["put", "tortie/v1/claims/node2/10.249.0.0-28", "{}"]):
        r = etcdctl(lab, *args, user="node1:node1-secret", check=False)
        assert r.returncode != 0 and "permission denied" in r.stderr, args
    assert stored(lab, "nodes/node2") == before and stored(lab, "policies/shop/evil") is None
    denied = lab.exec("node1", "tortie", "apply", "-f", "/tmp/resources.yaml", check=False)  # node1's own credentials
    assert denied.returncode in (0, 1)  # unchanged resources need no write; a change is refused:
    lab.exec("node1", "sh", "-c", "sed -i 's/port: 8080/port: 8081/' /tmp/resources.yaml")
    denied = lab.exec("node1", "tortie", "apply", "-f", "/tmp/resources.yaml", check=False)
    assert denied.returncode == 1 and "did not take" in denied.stderr
    lab.server.kill()
