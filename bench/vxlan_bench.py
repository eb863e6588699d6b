#!/usr/bin/env python3
"""VXLAN overlay benchmark (docs/overlay.md), two parts, each side by side with its alternative in the same run.

1. Throughput on the overlay lab (containers/labs/overlay.clab.yml): iperf3 TCP from node1's pod to node2's
   pod, over VXLAN (pool 10.247.0.0/24, `always`) and routed directly (pool 10.248.0.0/24, `cross-subnet`,
   node2 on node1's subnet): same hosts, same underlay, alternated --repeat times.
2. Programming 1,000 remote blocks, one per remote node (a route `via <node> dev tortie.vxlan onlink`, a
   permanent neighbour and an FDB entry each) in a fresh network namespace: Tortie's writers (the
   hand-packed batched route writer, VtepDevice.sync for neighbours and FDB) against `ip -batch` plus
   `bridge -batch` doing the same.

Run as root from the repository: /opt/tortie-venv/bin/python bench/vxlan_bench.py [--repeat 3] [--seconds 5]
Prints a table and writes bench/results/vxlan_bench.json. A benchmark, not a test: it asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import RESULTS, row, write  # noqa: E402  (the benchmarks' table rows and results file)
from tests.netns import Lab, wait_for  # noqa: E402  (the lab helper the tests use)

PROGRAM = """
import json, sys, time
from ipaddress import IPv4Address, IPv4Network
from pyroute2 import IPRoute
from bgpd.dataplane.netlink_routes import DeviceHop, RouteOp, RouteWriter
from bgpd.prefixes import key
from bgpd.dataplane.vxlan import VtepDevice
from bgpd.overlay.vxlan import vteps
from config.node import Vxlan
n = int(sys.argv[1])
nodes = [IPv4Address("10.100.0.0") + i + 1 for i in range(n)]
blocks = [IPv4Network((int(IPv4Address("10.200.0.0")) + 64 * i, 26)) for i in range(n)]
dev = VtepDevice(Vxlan(), IPv4Address("192.0.2.1"))
index = dev.ensure(1450).index
start = time.perf_counter()
dev.sync(vteps(nodes))
entries = time.perf_counter() - start
writer = RouteWriter(201)
start = time.perf_counter()
failed = writer.apply([RouteOp(key(b), frozenset((DeviceHop(a, index),))) for a, b in zip(nodes, blocks)])
routes = time.perf_counter() - start
assert not failed, failed
print(json.dumps({"entries": entries, "routes": routes}))
"""


def sh(*cmd: str, input: str | None = None) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, input=input, timeout=120).stdout


def underlay(ns: str) -> None:
    """A namespace with an uplink and a default route: an on-link gateway must be reachable as unicast."""
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    sh("ip", "-n", ns, "addr", "add", "192.0.2.1/24", "dev", "eth0")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    sh("ip", "-n", ns, "link", "set", "eth1", "up")
    sh("ip", "-n", ns, "route", "add", "default", "via", "192.0.2.254")


def programming(n: int) -> dict[str, float]:
    """Seconds to program n remote blocks with Tortie and with ip/bridge -batch, each in a fresh namespace."""
    out = {}
    ns = f"tvxb-{uuid.uuid4().hex[:6]}"
    underlay(ns)
    try:
        got = json.loads(sh("ip", "netns", "exec", ns, sys.executable, "-c", PROGRAM, str(n)))
        out["tortie_entries_s"], out["tortie_routes_s"] = got["entries"], got["routes"]
        out["tortie_total_s"] = got["entries"] + got["routes"]
    finally:
        sh("ip", "netns", "del", ns)
    ns = f"tvxb-{uuid.uuid4().hex[:6]}"
    underlay(ns)
    try:
        sh("ip", "-n", ns, "link", "add", "tortie.vxlan", "type", "vxlan", "id", "4096", "dstport", "4789",
           "local", "192.0.2.1", "nolearning")
        sh("ip", "-n", ns, "link", "set", "tortie.vxlan", "up")
        from ipaddress import IPv4Address, IPv4Network
        from bgpd.overlay.vxlan import vtep_mac
        nodes = [IPv4Address("10.100.0.0") + i + 1 for i in range(n)]
        blocks = [IPv4Network((int(IPv4Address("10.200.0.0")) + 64 * i, 26)) for i in range(n)]
        ip_batch = "".join(f"neigh replace {a} lladdr {vtep_mac(a)} dev tortie.vxlan nud permanent\n"
                           f"route add {b} via {a} dev tortie.vxlan onlink proto 201\n" for a, b in zip(nodes, blocks))
        fdb_batch = "".join(f"fdb append {vtep_mac(a)} dev tortie.vxlan dst {a}\n" for a in nodes)
        start = time.perf_counter()
        sh("ip", "-n", ns, "-batch", "-", input=ip_batch)
        sh("ip", "netns", "exec", ns, "bridge", "-batch", "-", input=fdb_batch)
        out["ip_batch_total_s"] = time.perf_counter() - start
    finally:
        sh("ip", "netns", "del", ns)
    return out


def iperf(lab: Lab, pool: str, dst: str, seconds: int) -> float:
    """Gbit/s of one iperf3 TCP run from node1's pod to node2's pod of `pool`."""
    pod = f"pod-default-{pool}"
    server = lab.popen("node2", "ip", "netns", "exec", pod, "iperf3", "-s", "-1")
    try:
        wait_for(lambda: ":5201 " in lab.exec("node2", "ip", "netns", "exec", pod, "ss", "-ltn").stdout, 20,
                 what="iperf3 listening")
        r = lab.exec("node1", "ip", "netns", "exec", pod, "iperf3", "-c", dst, "-t", str(seconds), "-J",
                     timeout=seconds + 30)
        return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        server.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--blocks", type=int, default=1000)
    args = ap.parse_args()
    results: dict = {"programming": [programming(args.blocks) for _ in range(args.repeat)]}
    lab = Lab("overlay.clab.yml", f"vxb{uuid.uuid4().hex[:4]}")
    lab.up()
    try:
        wait_for(lambda: "10.247.0.64/26" in lab.exec("node1", "ip", "route").stdout
                 and "10.248.0.64/26" in lab.exec("node1", "ip", "route").stdout, 60, what="routes")
        offloads = lab.json("node1", "tortie", "status", "--json")["overlay"]["offloads"]
        runs = []
        for _ in range(args.repeat):
            runs.append({"vxlan_gbps": iperf(lab, "a", "10.247.0.65", args.seconds),
                         "direct_gbps": iperf(lab, "c", "10.248.0.65", args.seconds)})
        results.update(throughput=runs, offloads=offloads)
    finally:
        lab.down()
    prog, runs = results["programming"], results["throughput"]
    med = lambda rows, k: statistics.median(r[k] for r in rows)
    summary = {
        "vxlan_gbps": med(runs, "vxlan_gbps"), "direct_gbps": med(runs, "direct_gbps"),
        "throughput_ratio": statistics.median(r["vxlan_gbps"] / r["direct_gbps"] for r in runs),
        "tortie_s": med(prog, "tortie_total_s"), "tortie_routes_s": med(prog, "tortie_routes_s"),
        "tortie_entries_s": med(prog, "tortie_entries_s"), "ip_batch_s": med(prog, "ip_batch_total_s")}
    results["summary"] = summary
    print(row("measure", "median"))
    print(row("iperf3 pod->pod over VXLAN (Gbit/s)", summary["vxlan_gbps"]))
    print(row("iperf3 pod->pod direct (Gbit/s)", summary["direct_gbps"]))
    print(row("VXLAN / direct (per run)", summary["throughput_ratio"]))
    print(row(f"{args.blocks} blocks: Tortie routes+neigh+FDB (s)", summary["tortie_s"], digits=3))
    print(row("  of which routes, hand-packed writer (s)", summary["tortie_routes_s"], digits=3))
    print(row("  of which neighbours+FDB, read + one batch (s)", summary["tortie_entries_s"], digits=3))
    print(row(f"{args.blocks} blocks: ip -batch + bridge -batch (s)", summary["ip_batch_s"], digits=3))
    print(f"offloads of the VTEP: {offloads}")
    write(RESULTS / "vxlan_bench.json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
