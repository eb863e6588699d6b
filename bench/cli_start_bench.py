#!/usr/bin/env python3
"""How long a `tortie` call takes to start, on this tree and on an older revision, side by side.

    sudo /opt/tortie-venv/bin/python bench/cli_start_bench.py --before 5d85e9c [--runs 20] [--json out.json]

Each tree runs as `python -S` with PYTHONPATH=<tree>:<site-packages> (the editable install's finder
would otherwise always load the working tree), so both pay the same interpreter start. Measured:
`tortie --version`, `tortie config check FILE`, and `tortie pod add` without a datastore (so without the
wait for the daemon) inside a scratch network namespace, each pod removed again untimed. Prints the
median and fastest wall time and the median CPU time (user + system) per command; writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = """name: bench
router_id: 10.99.0.1
asn: 64512
listen_address: 10.99.0.1
pools: [{{cidr: 10.244.0.0/16, block_size: 26}}]
blocks: [10.244.1.0/26]
state_dir: {state}
run_dir: {run}
pod_netns_prefix: {prefix}
"""


def export(rev: str, into: Path) -> Path:
    into.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def timed(argv: list[str], env: dict, runs: int, after=None) -> dict:
    """Wall and CPU time of `runs` runs of argv (after each, `after()` runs untimed), after one untimed run
    that compiles the tree's bytecode."""
    first = subprocess.run(argv, env=env, capture_output=True, timeout=60, text=True)
    if first.returncode != 0:
        raise SystemExit(f"cli_start_bench: {' '.join(argv[3:])} failed on this revision: "
                         f"{(first.stderr.strip().splitlines() or ['(no output)'])[-1]}")
    if after:
        after()
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True, timeout=60)
        walls.append(time.perf_counter() - t0)
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(used.ru_utime - before.ru_utime + used.ru_stime - before.ru_stime)
        if after:
            after()
    return {"median_ms": statistics.median(walls) * 1000, "min_ms": min(walls) * 1000,
            "cpu_median_ms": statistics.median(cpus) * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision to compare with (one with the bgpd/cli "
                                                        "package: fe8aa2a or later)")
    parser.add_argument("--after", default="HEAD", help="git revision measured as 'after' (default HEAD)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", default="cli_start_bench.json")
    args = parser.parse_args()
    site = sysconfig.get_paths()["purelib"]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="tortie-clibench-") as tmp:
        tmp = Path(tmp)
        netns = f"tcb{os.getpid()}"
        subprocess.run(["ip", "netns", "add", netns], check=True)
        try:
            subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
            results["python -S -c pass"] = {"interpreter": timed([sys.executable, "-S", "-c", "pass"], {}, args.runs)}
            for label, rev in (("before", args.before), ("after", args.after)):
                tree = export(rev, tmp / label)
                config = tmp / f"{label}.yaml"
                config.write_text(CONFIG.format(state=tmp / f"{label}-state", run=tmp / f"{label}-run",
                                                prefix=f"{netns}-{label[0]}-"))
                env = {"PYTHONPATH": f"{tree}:{site}", "PATH": os.environ.get("PATH", "")}
                tortie = [sys.executable, "-S", "-c", "import sys; from bgpd.cli.main import main; sys.exit(main())"]
                in_ns = ["ip", "netns", "exec", netns]
                remove = lambda: subprocess.run(in_ns + tortie + ["pod", "del", "bench/p", "-c", str(config)],  # noqa: E731
                                                env=env, check=True, capture_output=True)
                for name, argv, after in (
                        ("tortie --version", tortie + ["--version"], None),
                        ("tortie config check FILE", tortie + ["config", "check", str(config)], None),
                        ("tortie pod add (no datastore)", in_ns + tortie + ["pod", "add", "bench/p", "-c", str(config)],
                         remove)):
                    results.setdefault(name, {})[label] = timed(argv, env, args.runs, after)
        finally:  # the scratch namespace and any pod namespace a failed run left behind
            for ns in os.listdir("/run/netns"):
                if ns == netns or ns.startswith(f"{netns}-"):
                    subprocess.run(["ip", "netns", "del", ns], check=False)
    print(f"{'command':<32} {'tree':<12} {'median ms':>10} {'min ms':>8} {'CPU ms':>8}")
    for name, by_tree in results.items():
        for label, r in by_tree.items():
            print(f"{name:<32} {label:<12} {r['median_ms']:>10.1f} {r['min_ms']:>8.1f} {r['cpu_median_ms']:>8.1f}")
    Path(args.json).write_text(json.dumps({"before": args.before, "after": args.after, "runs": args.runs,
                                           "load_average": os.getloadavg(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
