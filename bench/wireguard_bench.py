#!/usr/bin/env python3
"""WireGuard benchmark (docs/wireguard.md): iperf3 TCP pod-to-pod throughput and CPU through WireGuard
against plain routing, side by side in the same run.

One lab of three hosts on one switch (tests/node/wireguard_lab.py: mixed_topology): node1 and node2 run
WireGuard, node3 does not, so node1's pod reaches node2's pod through WireGuard and node3's pod routed in
the clear: same hosts, same underlay, alternated --repeat times. CPU: iperf3's own figures for sender and
receiver, and the CPU seconds wireguard-go used on both hosts per GB carried (user space over TUN here: the
kernel has no WireGuard module).

Run as root from the repository: /opt/tortie-venv/bin/python bench/wireguard_bench.py [--repeat 3] [--seconds 5]
Prints a table and writes bench/results/wireguard_bench.json. A benchmark, not a test: it asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import RESULTS, row, write  # noqa: E402  (the benchmarks' table rows and results file)
from tests.netns import Lab, wait_for  # noqa: E402  (the lab helpers the tests use)
from tests.node.wireguard_lab import mixed_topology, pod_ip, status  # noqa: E402

WIREGUARD = {"node1": "{enabled: true}", "node2": "{enabled: true}", "node3": "{enabled: false}"}
TICK = os.sysconf("SC_CLK_TCK")


def wireguard_go_cpu(lab: Lab, node: str) -> float:
    """CPU seconds (user + system) wireguard-go has used on `node` so far: the daemon's child."""
    daemon = lab.exec(node, "cat", "/run/tortie/tortie.pid").stdout.strip()
    for pid in lab.exec(node, "sh", "-c", f"cat /proc/{daemon}/task/*/children").stdout.split():
        if "wireguard-go" in lab.exec(node, "cat", f"/proc/{pid}/cmdline", check=False).stdout:
            fields = lab.exec(node, "cat", f"/proc/{pid}/stat").stdout.rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / TICK
    raise RuntimeError(f"{node}: no wireguard-go child of the daemon")


def iperf(lab: Lab, dst: str, seconds: int) -> dict:
    """One iperf3 TCP run from node1's pod to `dst` (a pod running an iperf3 server): Gbit/s and iperf3's CPU
    percentages."""
    for _ in range(100):  # the server listens within a moment; the client retries until it does
        r = lab.exec("node1", "tortie", "pod", "exec", "default/p", "--", "iperf3", "-c", dst, "-t", str(seconds),
                     "-J", check=False, timeout=seconds + 30)
        if r.returncode == 0:
            end = json.loads(r.stdout)["end"]
            return {"gbps": end["sum_received"]["bits_per_second"] / 1e9, "bytes": end["sum_received"]["bytes"],
                    "sender_cpu_pct": end["cpu_utilization_percent"]["host_total"],
                    "receiver_cpu_pct": end["cpu_utilization_percent"]["remote_total"]}
        time.sleep(0.1)
    raise RuntimeError(f"iperf3 to {dst} failed: {r.stdout[-500:]} {r.stderr[-500:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tortie-wgb-") as tmp:
        lab = Lab(mixed_topology(Path(tmp), WIREGUARD, "never"), f"wgb{uuid.uuid4().hex[:4]}")
        lab.up()
        try:
            wait_for(lambda: all(status(lab, n)["wireguard"]["encrypted_routes"] == 1 for n in ("node1", "node2"))
                     and len(lab.json("node1", "ip", "-j", "route", "show", "proto", "201")) == 3, 60,
                     what="routes through WireGuard and in the clear")
            pods = {n: pod_ip(lab, n, "default/p") for n in ("node1", "node2", "node3")}
            for n in ("node2", "node3"):  # servers for the whole run, gone with the lab
                lab.exec(n, "tortie", "pod", "exec", "default/p", "--", "iperf3", "-s", "-D")
            implementation = status(lab, "node1")["wireguard"]["implementation"]
            runs = []
            for _ in range(args.repeat):
                before = {n: wireguard_go_cpu(lab, n) for n in ("node1", "node2")}
                wg = iperf(lab, pods["node2"], args.seconds)
                wg["wireguard_go_cpu_s"] = sum(wireguard_go_cpu(lab, n) - before[n] for n in before)
                plain = iperf(lab, pods["node3"], args.seconds)
                runs.append({"wireguard": wg, "plain": plain})
        finally:
            lab.down()
    med = lambda path: statistics.median(r[path[0]][path[1]] for r in runs)
    summary = {"wireguard_gbps": med(("wireguard", "gbps")), "plain_gbps": med(("plain", "gbps")),
               "throughput_ratio": statistics.median(r["wireguard"]["gbps"] / r["plain"]["gbps"] for r in runs),
               "wireguard_sender_cpu_pct": med(("wireguard", "sender_cpu_pct")),
               "plain_sender_cpu_pct": med(("plain", "sender_cpu_pct")),
               "wireguard_receiver_cpu_pct": med(("wireguard", "receiver_cpu_pct")),
               "plain_receiver_cpu_pct": med(("plain", "receiver_cpu_pct")),
               "wireguard_go_cpu_s_per_gb": statistics.median(
                   r["wireguard"]["wireguard_go_cpu_s"] / (r["wireguard"]["bytes"] / 1e9) for r in runs)}
    results = {"implementation": implementation, "seconds": args.seconds, "runs": runs, "summary": summary,
               "load_average": os.getloadavg()}
    print(f"WireGuard implementation: {implementation}; {args.repeat} runs of {args.seconds} s, medians")
    print(row("measure", "WireGuard", "plain"))
    print(row("iperf3 pod->pod (Gbit/s)", summary["wireguard_gbps"], summary["plain_gbps"]))
    print(row("sender CPU, iperf3 (% of one host)", summary["wireguard_sender_cpu_pct"],
              summary["plain_sender_cpu_pct"], digits=1))
    print(row("receiver CPU, iperf3 (% of one host)", summary["wireguard_receiver_cpu_pct"],
              summary["plain_receiver_cpu_pct"], digits=1))
    print(row("wireguard-go CPU, both hosts (s per GB)", summary["wireguard_go_cpu_s_per_gb"], "-"))
    print(row("WireGuard / plain throughput (per run)", summary["throughput_ratio"]))
    print(f"load average {results['load_average'][0]:.2f} (a shared machine: compare the columns, not runs)")
    write(RESULTS / "wireguard_bench.json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
