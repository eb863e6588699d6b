#!/usr/bin/env python3
"""CPU of WireGuard's route input after a burst of route changes, in process, side by side: the incremental
AllowedIPs (bgpd/wireguard/plan.AllowedIps fed the core's plan batches, then the peers) against the full
recomputation the daemon did before (every desired route through `NodeCore.desired`, then the peers from
all of them: tests/node/test_wireguard_plan.full). Both give the same peers (checked). The plan's drain and
`wg syncconf` cost the same either way and are left out.

A core with --routes /30 routes from three BGP peers (two with a WireGuard key), then bursts of K prefixes
moved between the keyed peers. Best of --repeat bursts per K (process time), milliseconds.

Run from the repository: /opt/tortie-venv/bin/python bench/wireguard_allowed_bench.py [--routes 10000] [--repeat 5]
Prints a table and writes bench/results/wireguard_allowed.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from ipaddress import IPv4Network as N
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' helpers

from bgpd.bgp import messages as msgs  # noqa: E402
from bgpd.bgp.core import NodeCore  # noqa: E402
from bgpd.prefixes import key  # noqa: E402
from bgpd.wireguard.plan import AllowedIps  # noqa: E402
from tests.node.test_wireguard_allowed import N2, N3, N4, config, members  # noqa: E402
from tests.node.test_wireguard_plan import full  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "wireguard_allowed.json"
OIF, KEYED = 9, frozenset({N2, N4})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--routes", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    core = NodeCore(config(KEYED, OIF, False, max_prefixes=args.routes))
    core.adopted({}, 0.0)
    for peer in (N2, N3, N4):
        core.event(msgs.SessionState(str(peer), "up"), 0.0)
    prefixes = [key(N(f"10.244.{2 + i // 64}.{i % 64 * 4}/30")) for i in range(args.routes)]  # not our block
    owner = {p: (N2, N3, N4)[i % 3] for i, p in enumerate(prefixes)}
    for peer in (N2, N3, N4):
        mine = [p for p in prefixes if owner[p] == peer]
        for i in range(0, len(mine), 256):
            core.event(msgs.Announce(str(peer), peer, tuple(mine[i:i + 256])), 0.0)
    allowed, who = AllowedIps(), members(KEYED)
    while core.planned:
        allowed.update(core.plan(1024), OIF)
    rows, moved, keyed = [], 0, [p for p in prefixes if owner[p] != N3]
    for k in (1, 100, 1000, args.routes // 2):
        best_inc = best_full = float("inf")
        for _ in range(args.repeat):
            burst = [keyed[(moved + i) % len(keyed)] for i in range(k)]
            moved += k
            for p in burst:  # from one keyed peer to the other
                old, new = owner[p], (N4 if owner[p] == N2 else N2)
                core.event(msgs.Withdraw(str(old), (p,)), 1.0)
                core.event(msgs.Announce(str(new), new, (p,)), 1.0)
                owner[p] = new
            inc = 0.0
            while core.planned:
                batch = core.plan(1024)
                t = time.process_time()
                allowed.update(batch, OIF)
                inc += time.process_time() - t
            t = time.process_time()
            got = allowed.peers(who, "n1")
            inc += time.process_time() - t
            t = time.process_time()
            want = full(who, {p: core.desired(p) for p in core.rib.all_desired()}, OIF, "n1")
            best_full = min(best_full, time.process_time() - t)
            best_inc = min(best_inc, inc)
            assert got == want and sum(len(p.allowed_ips) for p in got) == len(keyed)
        rows.append({"burst": k, "incremental_ms": round(best_inc * 1000, 3), "full_ms": round(best_full * 1000, 3)})
    print(f"{args.routes} routes, best of {args.repeat} bursts (process time)")
    print(f"{'burst':>7} {'incremental ms':>15} {'full ms':>9}")
    for r in rows:
        print(f"{r['burst']:>7} {r['incremental_ms']:>15.3f} {r['full_ms']:>9.3f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"routes": args.routes, "repeat": args.repeat, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
