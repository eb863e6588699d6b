#!/usr/bin/env python3
"""BFD benchmark: Tortie's BFD beside FRR's bfdd, one session between them across a veth pair (300 ms x 3).

1. TX intervals: every BFD packet on the wire is timestamped by the kernel (AF_PACKET, SO_TIMESTAMPNS) in
   Tortie's namespace; the gaps between one sender's packets, as a fraction of the negotiated 300 ms interval
   (RFC 5880 6.8.7 wants 0.75-1.0), with 0, 1 and 2 cores kept busy by spinning processes.
2. Detection: a sender falls silent (nft drops its BFD packets; the link stays up); the time from the cut to the
   other side's Down, for Tortie detecting FRR and FRR detecting Tortie (seen when its Down packet reaches us).
3. Failover (--failover N, the bfd lab): h1 cut off silently while `fast` (BFD) and `slow` (hold time 9 s) probe
   the anycast service every 10 ms; the outage of a flow through h1 on each (tests/node/test_bfd_lab.py).

Run as root from the repository: /opt/tortie-venv/bin/python bench/bfd_bench.py [--seconds 20] [--cuts 10]
[--failover 5]
Prints tables and writes bench/results/bfd_bench.json. A benchmark, not a test: it asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.netns import RUN_PREFIX, Lab, run_in_netns  # noqa: E402  (the helpers the tests use)
from tests.node.bfd_pair import (LEFT, RIGHT, Frr, cut_bfd, heal_bfd, start_runner, state_is,  # noqa: E402
                                 stop_runner, veth_pair)
from tests.node.test_bfd_lab import failover  # noqa: E402

FRR_CONF = f"bfd\n peer {LEFT} local-address {RIGHT}\n  receive-interval 300\n  transmit-interval 300\n !\n!\n"
INTERVAL = 0.3
SNIFF = """
import json, socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(3))  # ETH_P_ALL: outgoing too
s.bind(("eth0", 0))
s.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS
s.settimeout(0.5)
end = time.time() + float(sys.argv[1])
seen = []
while time.time() < end:
    try:
        data, anc, _, addr = s.recvmsg(256, 64)
    except socket.timeout:
        continue
    if addr[1] != 0x0800 or data[9] != 17:
        continue
    ihl = (data[0] & 15) * 4
    if struct.unpack_from("!H", data, ihl + 2)[0] != 3784:
        continue
    sec, nsec = struct.unpack("qq", anc[0][2][:16])
    seen.append((sec + nsec / 1e9, socket.inet_ntoa(data[12:16])))
print(json.dumps(seen))
"""


def namespaces():
    made = []

    def make(suffix):
        name = f"{RUN_PREFIX}-b{len(made)}-{suffix}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name
    return make, made


def spread(values):
    values = sorted(values)
    q = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return {"n": len(values), "min": values[0], "p1": q[0], "p50": q[49], "p99": q[98], "max": values[-1]}


def intervals(ns, seconds):
    out = run_in_netns(ns, SNIFF.replace("sys.argv[1]", str(seconds)), timeout=seconds + 30).stdout
    packets = json.loads(out)
    result = {}
    for who, addr in (("tortie", LEFT), ("frr", RIGHT)):
        times = [t for t, src in packets if src == addr]
        gaps = [(b - a) / INTERVAL for a, b in zip(times, times[1:])]
        result[who] = {**spread(gaps), "outside": sum(1 for g in gaps if not 0.75 - 0.002 <= g <= 1.0 + 0.002)} if gaps else {}
    return result


def busy(cores):
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20, help="per load level")
    ap.add_argument("--cuts", type=int, default=10, help="silent failures each way")
    ap.add_argument("--failover", type=int, default=0, help="failover runs on the bfd lab")
    ap.add_argument("--output", default=str(Path(__file__).parent / "results" / "bfd_bench.json"))
    args = ap.parse_args()
    make, made = namespaces()
    frr = runner = None
    report = {"interval_ms": 300, "multiplier": 3, "tx_intervals": {}, "detection": {"tortie": [], "frr": []},
              "failover": []}
    try:
        a, b = veth_pair(make)
        frr = Frr(b, FRR_CONF)
        runner = start_runner(a, LEFT, RIGHT)
        last = runner.wait(state_is(RIGHT, "UP"), 20, "session up")
        time.sleep(2)  # the poll sequence to 300 ms is over
        for cores in (0, 1, 2):
            spinners = busy(cores)
            try:
                report["tx_intervals"][f"{cores} busy"] = intervals(a, args.seconds)
            finally:
                for p in spinners:
                    p.kill()
                    p.wait()
        for _ in range(args.cuts):
            for who, ns in (("tortie", b), ("frr", a)):  # who detects; ns is the side falling silent
                cut = cut_bfd(ns)
                down = runner.wait(lambda d, t=last["time"]: d.get("new") == "DOWN" and d["time"] > t, 10, "down")
                report["detection"][who].append(down["time"] - cut)
                heal_bfd(ns)
                last = runner.wait(lambda d, t=down["time"]: d.get("new") == "UP" and d["time"] > t, 15, "up")
                time.sleep(1.5)  # back at 300 ms
    finally:
        if runner:
            stop_runner(runner)
        if frr:
            frr.stop()
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    if args.failover:
        lab = Lab("bfd.clab.yml", "bench")
        try:
            lab.up()
            report["failover"] = [failover(lab) for _ in range(args.failover)]
        finally:
            lab.down()
    print("TX interval / 300 ms (RFC: 0.75-1.0), kernel timestamps on the wire; outside: by more than 0.6 ms")
    print(f"{'load':8} {'sender':7} {'n':>4} {'min':>6} {'p1':>6} {'p50':>6} {'p99':>6} {'max':>6} {'outside':>7}")
    for load, senders in report["tx_intervals"].items():
        for who, s in senders.items():
            if s:
                print(f"{load:8} {who:7} {s['n']:4} {s['min']:6.3f} {s['p1']:6.3f} {s['p50']:6.3f} {s['p99']:6.3f}"
                      f" {s['max']:6.3f} {s['outside']:7}")
    print("\nDetection of a silent peer, cut -> Down (s); detection time 0.9 s")
    for who, values in report["detection"].items():
        if values:
            s = spread(values)
            print(f"{who:7} detects: n={s['n']} min {s['min']:.3f} p50 {s['p50']:.3f} max {s['max']:.3f}")
    if report["failover"]:
        print("\nFailover: outage of a flow through the host cut off (s); BFD 300 ms x 3 against hold time 9 s")
        for node in ("fast", "slow"):
            s = spread([r[node]["outage"] for r in report["failover"]])
            print(f"{node:5} n={s['n']} min {s['min']:.3f} p50 {s['p50']:.3f} max {s['max']:.3f}")
    Path(args.output).parent.mkdir(exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
