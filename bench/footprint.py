#!/usr/bin/env python3
"""A node's memory: RSS and PSS of the daemon, ExaBGP and the relay, at idle and with N routes learned.

Same testbed as bench/bgp_bench.py (two fresh namespaces, a BIRD sender with N static /26s): the receiver
(tortie, or BIRD for comparison) is measured once its session is up with no routes ("idle", the sender's
routes filtered out), then after the sender sends all N and they are in the kernel. PSS splits the pages the
three Python processes share (the interpreter, libraries) between them: it is what a node adds to a machine.

Run as root: /opt/tortie-venv/bin/python bench/footprint.py [--routes 10000] [--repeat 1] [--before REV]
With --before, tortie at git revision REV (exported, run with PYTHONPATH=<export>: the editable install's
finder comes after it) is measured too, alternating with this tree. Prints a table and writes
bench/results/footprint.json. A benchmark, not a test: it asserts nothing.
"""
from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bgp_bench as bb  # noqa: E402  (the route benchmark's testbed)
from cli_start_bench import export  # noqa: E402  (a git revision's tree)

RESULTS = bb.ROOT / "bench" / "results" / "footprint.json"
SETTLE = 2.0  # seconds after the session is up (or all routes are in) before reading memory


def memory_kib(pid: int) -> dict[str, int]:
    """RSS and PSS of one process, from smaps_rollup."""
    out = {}
    for line in bb._proc(pid, "smaps_rollup").splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            out[key.lower()] = int(rest.split()[0])
    return out


def _up(rcv: bb.Receiver) -> bool:
    return rcv.log.exists() and bool(bb.re.search(rcv.up_line, rcv.log.read_text(errors="replace")))


def start(method: str, bed: bb.Testbed, trees: dict[str, Path]) -> bb.Receiver:
    if method == "bird":
        return bb.start_bird(bed)
    if method in trees:
        bed.env = {**bed.env, "PYTHONPATH": str(trees[method])}
    return bb.start_tortie(bed)


def measure(method: str, n: int, prefix: str, index: int, scratch: Path, trees: dict[str, Path]) -> dict:
    with bb.Testbed(prefix, index, scratch) as bed:
        routes = bb.route_prefixes(n)
        ctl, _ = bb.start_sender(bed, routes)
        rcv = start(method, bed, trees)
        listener = bb.RouteListener(bed.rcv, rcv.protocol, routes)
        bb._birdc(ctl, "enable", "recv")
        first, last = listener.wait(bb._deadline(n))
        time.sleep(SETTLE)
        loaded = {name: memory_kib(pid) for name, pid in rcv.pids.items()}
        cpu = {name: round(bb._cpu_seconds(pid), 3) for name, pid in rcv.pids.items()}
    with bb.Testbed(prefix, index + 1, scratch) as bed:
        ctl, _ = bb.start_sender(bed, [])
        rcv = start(method, bed, trees)
        bb._birdc(ctl, "enable", "recv")
        deadline = time.monotonic() + bb.SETUP_TIMEOUT
        while not _up(rcv):
            if time.monotonic() > deadline:
                raise bb.BenchError(f"{method}: no session up within {bb.SETUP_TIMEOUT:.0f} s")
            time.sleep(0.05)
        time.sleep(SETTLE)
        idle = {name: memory_kib(pid) for name, pid in rcv.pids.items()}
    return {"method": method, "n": n, "idle": idle, "loaded": loaded, "cpu_total_seconds": cpu,
            "seconds_to_all_routes": round(last, 3)}


def _mib(kib: float) -> float:
    return round(kib / 1024, 1)


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for method in dict.fromkeys(r["method"] for r in runs):  # in the order first measured
        rs = [r for r in runs if r["method"] == method]
        for state in ("idle", "loaded"):
            procs = list(rs[0][state])
            row = {"method": method, "state": state, "n": rs[0]["n"] if state == "loaded" else 0}
            for key in ("rss", "pss"):
                row[key] = {p: _mib(statistics.median(r[state][p][key] for r in rs)) for p in procs}
                row[f"{key}_total"] = _mib(statistics.median(sum(r[state][p][key] for p in procs) for r in rs))
            rows.append(row)
    return rows


def render(rows: list[dict]) -> str:
    lines = ["Node memory (MiB, medians): idle = session up, no routes; loaded = N routes in the kernel",
             f"{'receiver':<16} {'state':<7} {'N':>6} {'RSS total':>10} {'PSS total':>10}  per process RSS / PSS"]
    for r in rows:
        per = ", ".join(f"{p} {r['rss'][p]:.1f}/{r['pss'][p]:.1f}" for p in r["rss"])
        lines.append(f"{r['method']:<16} {r['state']:<7} {r['n']:>6} {r['rss_total']:>10.1f} {r['pss_total']:>10.1f}"
                     f"  {per}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--routes", type=bb._positive, default=10000, help="routes for the loaded state (default 10000)")
    p.add_argument("--repeat", type=bb._positive, default=1, help="runs per receiver (default 1)")
    p.add_argument("--before", metavar="REV", help="also measure tortie at this git revision, alternating")
    p.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = p.parse_args(argv)
    prefix = "fp" + secrets.token_hex(2)

    def runs(scratch: Path) -> list[dict]:
        trees = {f"tortie@{args.before}": export(args.before, scratch / "before")} if args.before else {}
        done: list[dict] = []
        for _ in range(args.repeat):
            for method in ("bird", *trees, "tortie"):
                done.append(measure(method, args.routes, prefix, 2 * len(done), scratch, trees))
        return done

    try:
        measured = bb.in_scratch("footprint", runs)
    except subprocess.CalledProcessError as e:
        print(f"footprint: git archive {args.before}: {e.stderr.decode(errors='replace').strip()}", file=sys.stderr)
        return 2
    rows = summarize(measured)
    print(render(rows))
    bb.write_results(args.output, __doc__, summary=rows, runs=measured)
    return 0


if __name__ == "__main__":
    sys.exit(main())
