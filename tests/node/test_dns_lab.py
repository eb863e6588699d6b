"""The mesh3-dns lab: pods on three hosts find each other by name through their own host's DNS server."""
import json
import subprocess
import time

import pytest

from tests.netns import requires_root, running_lab, wait_for
from tests.node.test_cluster_lab import NODES, full_mesh
from tests.node.test_mqtt_lab import publish

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(300)]
SERVICE = {"tortie.io/service": "web"}
NO_EGRESS = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "no-egress", "namespace": "shop"},
             "spec": {"podSelector": {"matchLabels": {"app": "quiet"}}, "policyTypes": ["Egress"], "egress": []}}


@pytest.fixture(scope="module")
def lab():
    yield from running_lab("mesh3-dns.clab.yml", "d")


def cni_add(lab, node, pod, labels):
    """A runtime's ADD (namespace shop): the whole CNI result."""
    lab.exec(node, "ip", "netns", "add", pod)
    netconf = {"cniVersion": "1.1.0", "name": "tortie", "type": "tortie-cni", "tortieConfig": "/etc/tortie/tortie.yaml",
               "args": {"cni": {"labels": [{"key": k, "value": v} for k, v in labels.items()]}}}
    out = lab.exec(node, "tortie-cni", input=json.dumps(netconf), env={
        "CNI_COMMAND": "ADD", "CNI_CONTAINERID": pod, "CNI_NETNS": f"/run/netns/{pod}", "CNI_IFNAME": "eth0",
        "CNI_ARGS": f"K8S_POD_NAMESPACE=shop;K8S_POD_NAME={pod}", "CNI_PATH": "/"}).stdout
    return json.loads(out)


def dig(lab, node, pod, *args, server="@169.254.1.1"):
    """dig +short from a pod: the answer's lines, or None when no answer came (1 s, one try)."""
    r = lab.exec(node, "ip", "netns", "exec", pod, "dig", *([server] if server else []), "+short", "+time=1",
                 "+tries=1", *args, check=False)
    return r.stdout.split() if r.returncode == 0 else None


@pytest.fixture(scope="module")
def pods(lab):
    wait_for(lambda: full_mesh(lab), 60, what="the automatic full mesh")
    results = {"web1": cni_add(lab, "node1", "web1", SERVICE), "web2": cni_add(lab, "node2", "web2", SERVICE),
               "web3": cni_add(lab, "node3", "web3", SERVICE), "client": cni_add(lab, "node2", "client", {})}
    lab.results = results
    return {pod: r["ips"][0]["address"].split("/")[0] for pod, r in results.items()}


def test_a_pod_resolves_a_pod_on_another_node(lab, pods):
    assert lab.results["client"]["dns"] == {"nameservers": ["169.254.1.1"],
                                            "search": ["shop.svc.tortie.local", "svc.tortie.local"]}
    wait_for(lambda: dig(lab, "node2", "client", "web1.shop.pod.tortie.local") == [pods["web1"]], 20,
             what="web1's name at node2")
    assert dig(lab, "node2", "client", "nope.shop.pod.tortie.local") == []  # NXDOMAIN: nothing printed


def test_a_service_over_three_nodes_returns_all_and_rotates(lab, pods):
    every = sorted(pods[p] for p in ("web1", "web2", "web3"))
    wait_for(lambda: sorted(dig(lab, "node2", "client", "web.shop.svc.tortie.local") or []) == every, 20,
             what="the service's three pods at node2")
    answers = [dig(lab, "node2", "client", "web.shop.svc.tortie.local") for _ in range(3)]
    assert all(sorted(a) == every for a in answers)
    assert answers[1] == answers[0][1:] + answers[0][:1] and answers[2] == answers[1][1:] + answers[1][:1], answers


def test_reverse_lookup(lab, pods):
    assert dig(lab, "node2", "client", "-x", pods["web3"]) == ["web3.shop.pod.tortie.local."]


def test_other_names_through_the_upstream(lab, pods):
    assert dig(lab, "node2", "client", "www.example.test") == ["192.0.2.10"]


def test_pod_add_writes_resolv_conf_search_domains_work_and_del_removes_the_name(lab, pods):
    ip = lab.exec("node3", "tortie", "pod", "add", "shop/tp").stdout.strip()
    wait_for(lambda: dig(lab, "node2", "client", "tp.shop.pod.tortie.local") == [ip], 20, what="tp's name at node2")
    conf = lab.exec("node3", "ip", "netns", "exec", "pod-shop-tp", "cat", "/etc/resolv.conf").stdout
    assert conf == "nameserver 169.254.1.1\nsearch shop.svc.tortie.local svc.tortie.local\n"
    # through resolv.conf alone (no @server): the short name is the namespace's service
    every = sorted(pods[p] for p in ("web1", "web2", "web3"))
    assert sorted(dig(lab, "node3", "pod-shop-tp", "+search", "web", server=None)) == every
    lab.exec("node3", "tortie", "pod", "del", "shop/tp")
    assert lab.exec("node3", "ls", "/etc/netns").stdout.split() == []
    start = time.monotonic()  # a deleted pod's name goes at once
    wait_for(lambda: dig(lab, "node2", "client", "tp.shop.pod.tortie.local") == [], 5, what="tp's name gone")
    print(f"pod deleted on node3 to its name gone at node2: {time.monotonic() - start:.2f} s (polled by dig)")


def test_metrics(lab, pods):
    text = lab.exec("node2", "python3", "-c", "import urllib.request; print(urllib.request.urlopen("
                    "'http://127.0.0.1:9473/metrics').read().decode())").stdout
    assert 'tortie_dns_queries_total{qtype="A",result="noerror"}' in text
    assert 'tortie_dns_queries_total{qtype="A",result="forwarded"} 1.0' in text
    assert 'tortie_dns_queries_total{qtype="PTR",result="noerror"} 1.0' in text
    assert 'tortie_dns_query_duration_seconds_count{by="upstream"} 1.0' in text
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def test_the_node_answers_pods_only(lab, pods):
    """From the underlay (node1's rack address to node2's) nothing is answered: no open resolver."""
    (lo,) = lab.json("node2", "ip", "-j", "addr", "show", "lo")
    assert {"local": "169.254.1.1", "label": "lo:tortie-dns"}.items() <= next(
        a for a in lo["addr_info"] if a["local"] == "169.254.1.1").items()
    r = lab.exec("node1", "dig", "@10.91.0.2", "+short", "+time=1", "+tries=1", "web1.shop.pod.tortie.local",
                 check=False)
    assert r.returncode == 9  # no reply
    r = lab.exec("node1", "dig", "@169.254.1.1", "+short", "+time=1", "+tries=1", "-b", "10.91.0.1",
                 "web1.shop.pod.tortie.local", check=False)
    assert r.returncode == 9  # node1's own server, but from an underlay source


def test_a_policy_that_denies_dns_is_honoured(lab, pods):
    cni_add(lab, "node2", "quiet", {"app": "quiet"})
    assert dig(lab, "node2", "quiet", "web1.shop.pod.tortie.local") == [pods["web1"]]
    publish(lab, "policies/shop/no-egress", NO_EGRESS)
    wait_for(lambda: dig(lab, "node2", "quiet", "web1.shop.pod.tortie.local") is None, 20,
             what="the quiet pod's DNS denied")
    assert dig(lab, "node2", "client", "web1.shop.pod.tortie.local") == [pods["web1"]]


def test_a_stopped_nodes_pods_drop_out(lab, pods):
    every = sorted(pods[p] for p in ("web1", "web2", "web3"))
    assert sorted(dig(lab, "node1", "web1", "web.shop.svc.tortie.local")) == every
    lab.exec("node3", "kill", "-KILL", lab.exec("node3", "cat", "/run/tortie/tortie.pid").stdout.strip())
    start = time.monotonic()
    left = sorted(pods[p] for p in ("web1", "web2"))
    wait_for(lambda: sorted(dig(lab, "node1", "web1", "web.shop.svc.tortie.local") or []) == left, 30,
             what="node3's pod out of the service")
    print(f"node3 killed to its pod out of answers: {time.monotonic() - start:.2f} s (polled by dig)")
    assert dig(lab, "node1", "web1", "web3.shop.pod.tortie.local") == []
