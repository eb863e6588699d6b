#!/usr/bin/env python3
"""Policy drift check: what `PolicyApplier.check()` costs against listing the whole ruleset, nft and iptables.

Workload: bench/policy_bench.py's (1,000 endpoints; N policies, 3-4 rules each), applied in a scratch network
namespace (named tp<random>-host, removed at the end). Measured per backend (medians): the generation read
alone; `check()` while nothing changed (the fast path every second costs); `check()` after a change (a census of
our chains and sets); the real alternative, a full listing (`nft list table`, or `iptables-save` for both
families plus `ipset list`); and `repair()` after `nft flush ruleset` / `iptables -F` (a full re-apply).
Prints a table and writes JSON to bench/results/policy-drift-<time>.json. `--quick`: 1,000 policies.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _median(f, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def worker(spec: dict) -> dict:
    import tempfile

    from bench.policy_bench import _policies, endpoints_doc
    from policy.applier import PolicyApplier
    from policy.binding import compile_ruleset
    from policy.model import Endpoints

    backend, n = spec["backend"], spec["policies"]
    rs = compile_ruleset(_policies(n, 1000), Endpoints.model_validate(endpoints_doc(1000)))
    applier = PolicyApplier(backend, Path(tempfile.mkdtemp(prefix="tortie-drift-")))
    applier.apply(rs)
    kernel = applier._kernel(backend, applier.current()[1])  # type: ignore[index]
    out = {"backend": backend, "policies": n}
    applier.check()
    out["generation_ms"] = _median(kernel.generation, 20)
    out["check_unchanged_ms"] = _median(applier.check, 20)

    def after_change() -> None:
        applier._verified = None  # as after a change of anyone else (or any change of ours with iptables)
        assert applier.check() == []
    out["check_after_change_ms"] = _median(after_change, 5)
    listing = [["nft", "list", "table", "inet", "tortie"]] if backend == "nft" else \
        [["iptables-legacy-save", "-t", "filter"], ["ip6tables-legacy-save", "-t", "filter"], ["ipset", "list"]]
    out["full_listing_ms"] = _median(lambda: [subprocess.run(c, capture_output=True, check=True) for c in listing], 3)
    drift = ["nft", "flush", "ruleset"] if backend == "nft" else ["iptables-legacy", "-F", "TT-FORWARD"]

    def repair() -> None:
        subprocess.run(drift, check=True)
        assert applier.repair()
    out["repair_ms"] = _median(repair, 3)
    out["repairs"] = applier.repairs
    applier.flush()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    from tests.policy.lab import Lab

    sizes = [1000] if args.quick else [1000, 10000]
    rows = []
    lab = Lab().start()
    try:
        for n in sizes:
            for backend in ("nft", "iptables"):
                p = subprocess.run(["ip", "netns", "exec", lab.host, sys.executable, __file__, "--worker",
                                    json.dumps({"backend": backend, "policies": n})],
                                   capture_output=True, text=True, cwd=ROOT, timeout=1800)
                if p.returncode != 0:
                    raise SystemExit(p.stderr)
                rows.append(json.loads(p.stdout.splitlines()[-1]))
    finally:
        lab.close()
    cols = ["generation_ms", "check_unchanged_ms", "check_after_change_ms", "full_listing_ms", "repair_ms"]
    print("| backend | policies | " + " | ".join(c.replace("_ms", " (ms)").replace("_", " ") for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for r in rows:
        print(f"| {r['backend']} | {r['policies']:,} | " + " | ".join(f"{r[c]:.2f}" for c in cols) + " |")
    out = ROOT / "bench" / "results" / f"policy-drift-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
    else:
        main()
