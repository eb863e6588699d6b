#!/usr/bin/env python3
"""tortie-cni start-up and ADD latency, next to the interpreter's own start-up (the floor for a Python plugin).

Each run spawns the plugin as a container runtime does (environment + configuration on stdin) inside a
fresh host namespace; ADD runs without a datastore (no wait for policy), each into a new pod namespace,
followed by DEL (not timed), for an IPv4-only node and a dual-stack one in turn (an IPv4 and an IPv6
address per pod). Run as root from the repository:

    /opt/tortie-venv/bin/python bench/cni_bench.py [--runs 20]

Prints wall time (median, min, max) and the plugin's CPU time (user + system: less sensitive to a busy
machine) and writes bench/results/cni_bench.json. A benchmark, not a test: it asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.cni_driver import write_node_config  # noqa: E402  (the node configuration the CNI tests use)
from tests.netns import RUN_PREFIX  # noqa: E402  (the per-run namespace prefix the tests use)

CNI = str(Path(sys.executable).with_name("tortie-cni"))

def timed(argv: list[str], env: dict[str, str], stdin: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child: user + system, which depends less on the machine's load)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    r = subprocess.run(argv, input=stdin, env=env, capture_output=True, text=True, timeout=30)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {r.stdout} {r.stderr}")
    return elapsed, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def inner(runs: int, workdir: Path, cni: str) -> dict[str, list[tuple[float, float]]]:
    """Runs inside the host namespace: times each command `runs` times."""
    netconfs = {}
    for name, ipv6 in (("ADD", False), ("ADD dual-stack", True)):
        (workdir / name).mkdir()
        netconfs[name] = json.dumps({"cniVersion": "1.1.0", "name": "tortie", "type": "tortie-cni",
                                     "tortieConfig": str(write_node_config(workdir / name, ipv6))})
    base = {**os.environ, "CNI_PATH": str(Path(cni).parent), "CNI_IFNAME": "eth0"}
    out: dict[str, list[tuple[float, float]]] = {"python -c pass": [], "VERSION": [], **{n: [] for n in netconfs}}
    for i in range(runs):
        out["python -c pass"].append(timed([sys.executable, "-c", "pass"], base, ""))
        out["VERSION"].append(timed([cni], {**base, "CNI_COMMAND": "VERSION"}, ""))
        for name, netconf in netconfs.items():
            pod = f"{RUN_PREFIX}-pod{i}"
            subprocess.run(["ip", "netns", "add", pod], check=True)
            try:
                env = {**base, "CNI_CONTAINERID": f"c{i}", "CNI_NETNS": f"/run/netns/{pod}",
                       "CNI_ARGS": f"K8S_POD_NAMESPACE=bench;K8S_POD_NAME=p{i}"}
                out[name].append(timed([cni], {**env, "CNI_COMMAND": "ADD"}, netconf))
                timed([cni], {**env, "CNI_COMMAND": "DEL"}, netconf)
            finally:
                subprocess.run(["ip", "netns", "del", pod], check=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--cni", default=CNI, help="the plugin executable (default: this venv's tortie-cni)")
    ap.add_argument("--inner", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        print(json.dumps(inner(args.runs, Path(args.inner), args.cni)))
        return
    host = f"{RUN_PREFIX}-cnibench"
    subprocess.run(["ip", "netns", "add", host], check=True)
    try:
        subprocess.run(["ip", "-n", host, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", host, "addr", "add", "10.95.1.1/32", "dev", "lo"], check=True)
        with tempfile.TemporaryDirectory(prefix="cnibench") as d:
            r = subprocess.run(["ip", "netns", "exec", host, sys.executable, __file__, "--runs", str(args.runs),
                                "--cni", args.cni, "--inner", d], capture_output=True, text=True, timeout=600)
    finally:
        subprocess.run(["ip", "netns", "del", host], check=True)
    if r.returncode != 0:
        raise SystemExit(r.stderr + r.stdout)
    times: dict[str, list[list[float]]] = json.loads(r.stdout)
    rows = {}
    for name, runs in times.items():
        wall, cpu = [w * 1000 for w, _ in runs], [c * 1000 for _, c in runs]
        rows[name] = {"median_ms": statistics.median(wall), "min_ms": min(wall), "max_ms": max(wall),
                      "cpu_median_ms": statistics.median(cpu), "runs": len(runs)}
    print(f"{'command':<16}{'median ms':>10}{'min ms':>9}{'max ms':>9}{'CPU median ms':>15}")
    for name, row in rows.items():
        print(f"{name:<16}{row['median_ms']:>10.1f}{row['min_ms']:>9.1f}{row['max_ms']:>9.1f}"
              f"{row['cpu_median_ms']:>15.1f}")
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "cni_bench.json").write_text(json.dumps({"loadavg": os.getloadavg(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
