#!/usr/bin/env python3
"""Cluster benchmark on the mesh3-mqtt lab (mosquitto in its own namespace, three Tortie hosts).

0. With --policies N (default 10,000): N policies (bench/policy_bench.py's, selecting none of the lab's pods)
   are published to the broker first, and each node's daemon has them in force before anything is measured;
   afterwards each daemon's RSS is read.
1. Policy publish -> enforcement on all three nodes: a web pod on every node, a client on another node
   probing it (TCP connect every 10 ms, 40 ms timeout); a policy admitting only app=client-ok is
   published with mosquitto_pub on the broker; per node, the time until its probe is refused.
2. CNI ADD -> pod reachable from another node: tortie-cni ADD on node2 (policy apply included), then
   node1 pings the new address every 5 ms; the time from the start of ADD to the first reply.

Run as root from the repository: /opt/tortie-venv/bin/python bench/cluster_bench.py [--repeat 5]
Prints a table and writes bench/results/cluster_bench.json. A benchmark, not a test: it asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.netns import Lab, wait_for  # noqa: E402  (the lab helper the tests use)
from tests.node.test_cluster_lab import SERVER, cni_add  # noqa: E402

NODES = ("node1", "node2", "node3")
# probes the web pod until a connection fails, prints the wall time of the first failure
WATCH = """
import socket, sys, time
deadline = time.time() + 60
while time.time() < deadline:
    try:
        socket.create_connection((sys.argv[1], 8080), timeout=0.04).close()
    except OSError:
        print(time.time()); break
    time.sleep(0.01)
"""
PUBLISH = """
import subprocess, sys, time
t0 = time.time()
subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-u", "admin", "-P", "admin-secret", "-r", "-q", "1",
                "-t", sys.argv[1], "-m", sys.argv[2]], check=True)
print(t0)
"""
LOAD = """
import asyncio, json, sys
import aiomqtt
sys.path.insert(0, sys.argv[2])
from policy_sync_bench import policy_doc, policy_key

async def main(n):
    async with aiomqtt.Client("127.0.0.1", 1883, username="admin", password="admin-secret") as c:
        for i in range(n):
            await c.publish(f"tortie/v1/{policy_key(i, 1000)}", json.dumps(policy_doc(i, 1000), sort_keys=True,
                            separators=(",", ":")), qos=1, retain=True)

asyncio.run(main(int(sys.argv[1])))
"""
PING = """
import subprocess, sys, time
t0 = float(sys.argv[2])
while time.time() < t0 + 30:
    if subprocess.run(["ping", "-c", "1", "-W", "0.05", sys.argv[1]], capture_output=True).returncode == 0:
        print(time.time()); break
    time.sleep(0.005)
"""


def other(node: str) -> str:
    """The node whose client probes `node`'s web pod."""
    return NODES[(NODES.index(node) + 1) % len(NODES)]


def policy(n: int) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"web-{n}", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": f"client-ok-{n}"}}}]}]}}


def policy_round(lab: Lab, n: int, webs: dict[str, str]) -> dict[str, float]:
    watchers = {node: lab.popen(other(node), "ip", "netns", "exec", f"client-{other(node)}", "python3", "-c",
                                WATCH, ip) for node, ip in webs.items()}
    time.sleep(0.5)
    t0 = float(lab.exec("broker", "python3", "-c", PUBLISH, f"tortie/v1/policies/shop/web-{n}",
                        json.dumps(policy(n))).stdout)
    out = {node: float(w.communicate(timeout=90)[0].strip() or "nan") - t0 for node, w in watchers.items()}
    lab.exec("broker", "mosquitto_pub", "-h", "127.0.0.1", "-u", "admin", "-P", "admin-secret", "-r", "-n",
             "-t", f"tortie/v1/policies/shop/web-{n}")
    for node, ip in webs.items():  # open again before the next round
        wait_for(lambda ip=ip, node=node: lab.exec(other(node), "ip", "netns", "exec", f"client-{other(node)}",
                 "python3", "-c", "import socket,sys; socket.create_connection((sys.argv[1], 8080), 1)",
                 ip, check=False).returncode == 0, 30, what="the policy removed")
    return out


def cni_round(lab: Lab, n: int) -> dict[str, float]:
    t0 = time.time()
    ip = cni_add(lab, "node2", f"new{n}", {"app": "new"})
    added = time.time() - t0
    reached = float(lab.exec("node1", "python3", "-c", PING, ip, str(t0)).stdout.strip() or "nan") - t0
    return {"cni_add": added, "reachable": reached}


def load_policies(lab: Lab, n: int) -> float:
    """Publishes n policies; returns the seconds until every node has them all in force."""
    t0 = time.time()
    lab.exec("broker", sys.executable, "-c", LOAD, str(n), str(Path(__file__).parent), timeout=600)
    wait_for(lambda: all(f"policies={n} " in lab.log(node) for node in NODES), 900, interval=1,
             what=f"{n} policies in force on every node")
    return time.time() - t0


def rss_mib(lab: Lab, node: str) -> float:
    pid = lab.exec(node, "cat", "/run/tortie/tortie.pid").stdout.strip()
    status = lab.exec(node, "cat", f"/proc/{pid}/status").stdout
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


def web_pods(lab: Lab, servers: list) -> dict[str, str]:
    """A web pod serving on 8080 and a client pod on every node: the web pods' addresses by node. The servers
    are appended to `servers` (the caller kills them)."""
    webs = {}
    for node in NODES:
        webs[node] = cni_add(lab, node, f"web-{node}", {"app": "web"})
        cni_add(lab, node, f"client-{node}", {"app": "client"})
        servers.append(lab.popen(node, "ip", "netns", "exec", f"web-{node}", "python3", "-c", SERVER))
    time.sleep(1)
    return webs


def table(name: str, values: list[float]) -> str:
    return f"  {name:<28} {statistics.median(values):8.3f} {min(values):8.3f} {max(values):8.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--policies", type=int, default=10000, help="policies in the datastore beforehand")
    ap.add_argument("--output", default=str(Path(__file__).parent / "results" / "cluster_bench.json"))
    args = ap.parse_args()
    lab = Lab("mesh3-mqtt.clab.yml", "bench")
    servers = []
    try:
        lab.up()
        wait_for(lambda: all(len(lab.json(n, "tortie", "status", "--json")["peers"]) == 2 for n in NODES), 60,
                 what="the mesh")
        loaded = load_policies(lab, args.policies) if args.policies else 0.0
        webs = web_pods(lab, servers)
        rounds = [policy_round(lab, n, webs) for n in range(args.repeat)]
        cni = [cni_round(lab, n) for n in range(args.repeat)]
        rss = {node: rss_mib(lab, node) for node in NODES}
    finally:
        for s in servers:
            s.kill()
        lab.down()
    print(f"Cluster on MQTT (mesh3-mqtt lab, 2 vCPU), {args.policies} policies in the datastore, {args.repeat} runs: "
          f"seconds (median, min, max)")
    if args.policies:
        print(f"  {args.policies} policies published -> in force on all 3 nodes: {loaded:.1f} s")
    for node in NODES:
        print(table(f"publish -> enforced, {node}", [r[node] for r in rounds]))
    print(table("publish -> enforced, all 3", [max(r.values()) for r in rounds]))
    print(table("CNI ADD (policy in force)", [c["cni_add"] for c in cni]))
    print(table("CNI ADD start -> reachable", [c["reachable"] for c in cni]))
    print("  daemon RSS (MiB): " + ", ".join(f"{node} {v:.0f}" for node, v in rss.items()))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"policies": args.policies, "load_s": loaded, "policy_rounds": rounds,
                                             "cni_rounds": cni, "rss_mib": rss}, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
