#!/usr/bin/env python3
"""etcd against MQTT as Tortie's datastore, side by side in one run.

1. `tortie apply -f` -> enforced on all three nodes: the mesh3-mqtt and mesh3-etcd labs, a web pod on every node
   probed by a client on another node (TCP connect every 10 ms, 40 ms timeout); node1 runs `tortie apply` with
   a policy admitting only app=client-ok (CLI start, connect, write); per node, the time until its probe is
   refused. `tortie delete` opens it again between rounds.
2. N simultaneous block claims (default 100) on loopback: N datastore clients, each claiming a block of one pool
   at once. etcd: compare-and-swap (put_if_unchanged); MQTT (mosquitto, shipped ACL): the claim rule with a
   settle time (--settle, default 1 s: NodeConfig's claim_settle). Time until every claimer has its block; duplicates counted.
3. Watch resume: a client behind a TCP proxy is cut off for --outage seconds (default 30) while another writes
   1,000 changes; time from the proxy healing until the client has every change, and whether it read the whole
   state again (MQTT resyncs; etcd resumes its watch at the last revision).

Run as root from the repository: /opt/tortie-venv/bin/python bench/etcd_bench.py [--repeat 3] [--skip-labs]
Prints a table and writes bench/results/etcd_bench.json. A benchmark, not a test: it asserts nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Network
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bgpd.ipam.claiming import BlockClaims  # noqa: E402
from cluster_bench import NODES, WATCH, other, policy, web_pods  # noqa: E402  (the cluster benchmark's probes)
from config.datastore import Datastore, EtcdDatastore, MqttDatastore  # noqa: E402
from config.node import NodeConfig  # noqa: E402
from tests.datastore.broker import SHIPPED, Broker  # noqa: E402
from tests.datastore.conftest import settings as mqtt_settings  # noqa: E402
from tests.datastore.etcd_server import EtcdCluster, etcd_settings  # noqa: E402
from tests.datastore.proxy import Proxy  # noqa: E402
from tests.netns import Lab, wait_for  # noqa: E402

LABS = {"mqtt": ("mesh3-mqtt.clab.yml", ["--user", "admin", "--password-file", "/tmp/admin.pw"]),
        "etcd": ("mesh3-etcd.clab.yml", ["--user", "admin", "--password-file", "/tmp/admin.pw"])}
ADMIN_PASSWORD = {"mqtt": "admin-secret", "etcd": "admin-secret"}
APPLY = """
import subprocess, sys, time
t0 = time.time()
subprocess.run(["tortie", *sys.argv[1:]], check=True, capture_output=True)
print(t0)
"""


# 1. tortie apply -> enforced, on both labs

def apply_round(lab: Lab, n: int, webs: dict[str, str], creds: list[str]) -> dict[str, float]:
    watchers = {node: lab.popen(other(node), "ip", "netns", "exec", f"client-{other(node)}", "python3", "-c",
                                WATCH, ip) for node, ip in webs.items()}
    time.sleep(0.5)
    lab.exec("node1", "sh", "-c", f"cat > /tmp/p{n}.yaml", input=yaml.safe_dump(policy(n)))
    t0 = float(lab.exec("node1", "python3", "-c", APPLY, "apply", "-f", f"/tmp/p{n}.yaml", *creds).stdout)
    out = {node: float(w.communicate(timeout=90)[0].strip() or "nan") - t0 for node, w in watchers.items()}
    lab.exec("node1", "tortie", "delete", "-f", f"/tmp/p{n}.yaml", *creds)
    for node, ip in webs.items():  # open again before the next round
        wait_for(lambda ip=ip, node=node: lab.exec(other(node), "ip", "netns", "exec", f"client-{other(node)}",
                 "python3", "-c", "import socket,sys; socket.create_connection((sys.argv[1], 8080), 1)",
                 ip, check=False).returncode == 0, 30, what="the policy removed")
    return out


def lab_rounds(backend: str, repeat: int) -> list[dict[str, float]]:
    topology, creds = LABS[backend]
    lab = Lab(topology, f"b{backend[0]}")
    servers = []
    try:
        lab.up()
        wait_for(lambda: all(len(lab.json(n, "tortie", "status", "--json")["peers"]) == 2 for n in NODES), 90,
                 what="the mesh")
        lab.exec("node1", "sh", "-c", f"echo {ADMIN_PASSWORD[backend]} > /tmp/admin.pw")
        webs = web_pods(lab, servers)
        return [apply_round(lab, n, webs, creds) for n in range(repeat)]
    finally:
        for s in servers:
            s.kill()
        lab.down()


# 2. simultaneous block claims

def node_config(tmp: Path, name: str, settle: float) -> NodeConfig:
    return NodeConfig.model_validate({
        "name": name, "router_id": "10.0.0.1", "asn": 64512, "listen_address": "10.0.0.1", "claim_settle": settle,
        "state_dir": str(tmp / name), "pools": [{"cidr": "10.244.0.0/16", "block_size": 26}]})


async def claim_all(stores: list[Datastore], tmp: Path, settle: float) -> dict:
    await asyncio.gather(*(ds.start() for ds in stores))
    try:
        claims = [BlockClaims(ds, lambda _: True) for ds in stores]
        t0 = time.monotonic()
        got = await asyncio.gather(*(c.claim_block(node_config(tmp, ds.node, settle), 4)
                                     for c, ds in zip(claims, stores)))
        elapsed = time.monotonic() - t0
        won = sum(1 for b in got if b is not None)
        deadline = time.monotonic() + 60  # then count owned claims per block once the first client has them all
        while sum(c.owned for cs in claims[0].by_block().values() for c in cs.values()) < won:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        owned: dict[IPv4Network, int] = {}
        for block, by_node in claims[0].by_block().items():
            owned[block] = sum(1 for c in by_node.values() if c.owned)
    finally:
        await asyncio.gather(*(ds.stop() for ds in stores))
    won = [b for b in got if b is not None]
    return {"seconds": elapsed, "claimers": len(stores), "with_block": len(won), "distinct": len(set(won)),
            "blocks_owned_twice": sum(1 for n in owned.values() if n > 1)}


def claims_etcd(tmp: Path, n: int) -> dict:
    cluster = EtcdCluster(tmp / "etcd-claims").start()
    try:
        stores = [EtcdDatastore(etcd_settings(cluster, lease_ttl=60, start_timeout=60, sync_timeout=20), f"n{i:03}")
                  for i in range(n)]
        return asyncio.run(claim_all(stores, tmp, 30.0))
    finally:
        cluster.stop()


def claims_mqtt(tmp: Path, n: int, settle: float) -> dict:
    names = [f"n{i:03}" for i in range(n)]
    broker = Broker(tmp / "broker-claims")
    (broker.dir).mkdir(parents=True)
    subprocess.run([SHIPPED / "make-passwords.sh", broker.dir / "passwd", *(f"{u}:pw" for u in names)],
                   check=True, capture_output=True, timeout=60)
    broker.start()
    try:
        stores = [MqttDatastore(mqtt_settings(broker, u, password="pw", start_timeout=60, sync_timeout=20), u)
                  for u in names]
        return asyncio.run(claim_all(stores, tmp, settle))
    finally:
        broker.stop()


# 3. watch resume after an outage

async def resume(reader: Datastore, writer: Datastore, proxy: Proxy, outage: float, changes: int) -> dict:
    await writer.start()
    await reader.start()
    try:
        await proxy.cut()
        t_cut = time.monotonic()
        for i in range(changes):
            await writer.put(f"namespaces/bench-{i}", {"labels": {"i": str(i)}})
        await writer.flush(60)
        await asyncio.sleep(max(0.0, outage - (time.monotonic() - t_cut)))
        resyncs = reader.resyncs
        await proxy.heal()
        t0 = time.monotonic()
        while len(reader.items("namespaces")) < changes:
            if time.monotonic() - t0 > 120:
                break
            await asyncio.sleep(0.005)
        caught_up = time.monotonic() - t0
        return {"seconds": caught_up, "changes": changes, "applied": len(reader.items("namespaces")),
                "full_reads": reader.resyncs - resyncs, "outage_s": outage}
    finally:
        await reader.stop()
        await writer.stop()


def resume_etcd(tmp: Path, outage: float, changes: int) -> dict:
    cluster = EtcdCluster(tmp / "etcd-resume").start()
    try:
        async def run() -> dict:
            proxy = Proxy(cluster.members[0].client_port)
            await proxy.heal()
            reader = EtcdDatastore(etcd_settings(cluster, endpoints=[f"127.0.0.1:{proxy.port}"], lease_ttl=10,
                                                 backoff_min=0.1, backoff_max=0.2), "reader")
            writer = EtcdDatastore(etcd_settings(cluster), "writer", observer=True)
            return await resume(reader, writer, proxy, outage, changes)
        return asyncio.run(run())
    finally:
        cluster.stop()


def resume_mqtt(tmp: Path, outage: float, changes: int) -> dict:
    broker = Broker(tmp / "broker-resume").start()
    try:
        async def run() -> dict:
            proxy = Proxy(broker.port)
            await proxy.heal()
            reader = MqttDatastore(mqtt_settings(proxy, "node1", backoff_min=0.1, backoff_max=0.2), "node1")
            writer = MqttDatastore(mqtt_settings(broker, "admin"), "admin", observer=True)
            return await resume(reader, writer, proxy, outage, changes)
        return asyncio.run(run())
    finally:
        broker.stop()


def table(name: str, values: list[float]) -> str:
    return f"  {name:<34} {statistics.median(values):8.3f} {min(values):8.3f} {max(values):8.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="tortie apply rounds per lab")
    ap.add_argument("--claimers", type=int, default=100)
    ap.add_argument("--settle", type=float, default=1.0, help="MQTT claim settle time, seconds (the default claim_settle)")
    ap.add_argument("--outage", type=float, default=30.0)
    ap.add_argument("--changes", type=int, default=1000)
    ap.add_argument("--skip-labs", action="store_true", help="only the loopback parts (2 and 3)")
    ap.add_argument("--skip-loopback", action="store_true", help="only the labs (part 1)")
    ap.add_argument("--output", default=str(Path(__file__).parent / "results" / "etcd_bench.json"))
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # the outages are on purpose: their reconnect warnings are expected
    results: dict = {"args": vars(args)}
    if not args.skip_labs:
        results["apply"] = {b: lab_rounds(b, args.repeat) for b in ("mqtt", "etcd")}
    if not args.skip_loopback:
        with tempfile.TemporaryDirectory(prefix="etcd-bench-") as d:
            tmp = Path(d)
            results["claims"] = {"etcd": claims_etcd(tmp, args.claimers),
                                 "mqtt": claims_mqtt(tmp, args.claimers, args.settle)}
            results["resume"] = {"etcd": resume_etcd(tmp, args.outage, args.changes),
                                 "mqtt": resume_mqtt(tmp, args.outage, args.changes)}
    print("etcd vs MQTT datastore (2 vCPU, shared machine)")
    if "apply" in results:
        print(f"1. tortie apply -> enforced (seconds: median, min, max of {args.repeat})")
        for b, rounds in results["apply"].items():
            print(table(f"{b}: all 3 nodes", [max(r.values()) for r in rounds]))
            print(table(f"{b}: first node", [min(r.values()) for r in rounds]))
    if "claims" not in results:
        return write(results, args.output)
    print(f"2. {args.claimers} simultaneous block claims")
    print(f"  {'backend':<10} {'seconds':>8} {'with block':>11} {'distinct':>9} {'owned twice':>12}")
    for b, r in results["claims"].items():
        rule = "CAS" if b == "etcd" else f"rule, settle {args.settle:g} s"
        print(f"  {b:<10} {r['seconds']:8.2f} {r['with_block']:>11} {r['distinct']:>9} {r['blocks_owned_twice']:>12}"
              f"   ({rule})")
    print(f"3. watch resume: {args.outage:g} s outage, {args.changes} changes meanwhile")
    print(f"  {'backend':<10} {'catch-up s':>10} {'applied':>8} {'full reads':>11}")
    for b, r in results["resume"].items():
        print(f"  {b:<10} {r['seconds']:10.3f} {r['applied']:>8} {r['full_reads']:>11}")
    return write(results, args.output)


def write(results: dict, output: str) -> int:
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
