#!/usr/bin/env python3
"""The daemon's policy path: datastore -> enforced ruleset, at 10,000 policies and 1,000 endpoints.

Runs the daemon's own `PolicySync` (files datastore, nft backend, worker thread) in a fresh network namespace and
measures, per run:
- the first apply (every entry parsed, compiled, applied in full) and the process RSS afterwards;
- pod add: `endpoint_added` (the CNI ADD's call: publish, return once enforced), a new pod joining ~10 policies;
- policy change: one policy's port changes, written to the datastore, until the ruleset with it is in force
  (through the datastore's change feed, as an admin's write arrives);
- BGP route programming meanwhile: the daemon's `KernelTable.sync` of 1,000 routes (add, then remove) in the same
  event loop, idle, during the first apply, and during a policy storm (policy changes back to back), with the
  policy work on the worker thread as the daemon does it and, side by side, on the event loop (the alternative);
  and the loop's lag (a 5 ms sleep's lateness);
- the drift check's census after a change (the check itself is one netlink round trip while nothing changed).

Workload: bench/policy_bench.py's (policy i selects endpoint app<i % 1000>, 3-4 rules each; a third each Tortie
NetworkPolicy, Kubernetes NetworkPolicy, GlobalNetworkPolicy); endpoints on 4 nodes (250 on this one), each node
owning the /24 of its endpoints' addresses (the readers' ownership check passes them).

Run as root from the repository: /opt/tortie-venv/bin/python bench/policy_sync_bench.py [--repeat 3] [--quick]
(on a shared machine, `nice -n -10` keeps other jobs from dominating the figures).
Prints a table and writes bench/results/policy_sync_bench.json. A benchmark, not a test: it asserts nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Executor, Future
from ipaddress import IPv4Network
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from policy_bench import NAMESPACES, endpoints_doc, policy_doc  # noqa: E402
from bgpd.prefixes import key  # noqa: E402

NODE = "node1"
ROUTE_PROTOCOL = 201
ROUTES = [key(IPv4Network(f"10.{200 + i // 65536}.{i // 256 % 256}.{i % 256}/32")) for i in range(1000)]


def policy_key(i: int, n_endpoints: int) -> str:
    doc = policy_doc(i, n_endpoints)
    ns = doc["metadata"].get("namespace")
    return f"policies/{ns}/{doc['metadata']['name']}" if ns else f"globalpolicies/{doc['metadata']['name']}"


def write_datastore(path: Path, n_policies: int, n_endpoints: int) -> None:
    """The cluster state as the files backend stores it: one JSON file per key."""
    def put(key: str, value: dict) -> None:
        f = path / f"{key}.json"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(value))

    eps = endpoints_doc(n_endpoints)
    for ns in eps["namespaces"]:
        put(f"namespaces/{ns['name']}", {"labels": ns["labels"]})
    for j, ep in enumerate(eps["endpoints"]):  # endpoint j's address is in 10.100.<j // 250>.0/24: node<j // 250 + 1>'s
        put(f"endpoints/node{j // 250 + 1}/{ep['namespace']}/{ep['name']}",
            {k: ep[k] for k in ("labels", "ips", "interface", "ports")})
    for b in range((n_endpoints + 249) // 250):
        put(f"claims/10.100.{b}.0-24/node{b + 1}", {"owned": True, "at": 1.0})
        put(f"status/node{b + 1}", {"alive": True, "expires": time.time() + 3600})
    for i in range(n_policies):
        put(policy_key(i, n_endpoints), policy_doc(i, n_endpoints))


# --- the worker: runs inside the bench's network namespace ---------------------------------------------------


async def storm(sync, ds, n_policies: int, n_endpoints: int, stop: asyncio.Event, version: list[int]) -> int:
    """Policy changes back to back until `stop`: each waits for the previous one to be in force."""
    done = 0
    while not stop.is_set():
        version[0] += 1
        i = version[0] * 7919 % n_policies
        await ds.put(policy_key(i, n_endpoints), policy_doc(i, n_endpoints, version[0]))
        await applied(sync, policy_key(i, n_endpoints))
        done += 1
    return done


async def applied(sync, key: str) -> None:
    """Until the ruleset with the datastore's current value of `key` is in force."""
    while not sync.settled(key):
        await asyncio.sleep(0.0005)


def census(applier) -> None:
    """One drift check that takes a census of our objects in the kernel (as after any change)."""
    applier._verified = None
    assert not applier.check()


class Inline(Executor):
    """Runs what is submitted at once, on the caller's thread (here: the event loop)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        f: Future = Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001
            f.set_exception(e)
        return f


async def route_rounds(kernel, rounds: int) -> list[float]:
    """Seconds per KernelTable.sync of 1,000 routes: added, then removed."""
    out = []
    for _ in range(rounds):
        for want in (frozenset(), None):
            t = time.perf_counter()
            await kernel.sync({p: want for p in ROUTES})
            out.append(time.perf_counter() - t)
    return out


async def loop_lag(stop: asyncio.Event, lags: list[float]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.005)
        lags.append(time.perf_counter() - t - 0.005)


async def worker(spec: dict) -> dict:
    from prometheus_client import CollectorRegistry

    from bgpd.dataplane.kernel_routes import KernelTable
    from config.datastore import FilesDatastore
    from policy.datastore_sync import PolicySync

    n_pol, n_eps = spec["policies"], spec["endpoints"]
    ds = FilesDatastore(Path(spec["datastore"]), NODE)
    await ds.start()
    sync = PolicySync(ds, NODE, "nft", Path(spec["state"]), CollectorRegistry())
    out: dict = {}
    kernel = KernelTable(ROUTE_PROTOCOL)
    t = time.perf_counter()
    task = asyncio.create_task(sync.run())
    routes, lags, stop = [], [], asyncio.Event()
    lagger = asyncio.create_task(loop_lag(stop, lags))
    while not sync.applied.is_set():  # BGP route programming while the first ruleset compiles from scratch
        routes += await route_rounds(kernel, 1)
    out["first_apply_s"] = time.perf_counter() - t
    stop.set()
    await lagger
    out["routes_first_apply_s"], out["lag_first_apply_s"] = routes, lags
    out["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    await asyncio.sleep(0.2)

    adds, splits = [], []
    for n in range(spec["samples"]):
        ep = {"labels": {"app": f"app{n * 37 % n_eps}", "role": f"r{n % 50}", "tier": f"t{n % 5}"},
              "ips": [f"10.250.{n // 250}.{n % 250 + 1}"], "interface": f"ttb{n:011x}",
              "ports": [{"name": "http", "port": 8080}]}
        t = time.perf_counter()
        refused = await sync.endpoint_added(f"ns{n % NAMESPACES}", f"newpod{n}", ep)
        adds.append(time.perf_counter() - t)
        splits.append(sync.timing)
        assert refused is None, refused
    out["pod_add_s"] = adds
    out["pod_add_split"] = splits

    changes, splits, version = [], [], [0]
    for _ in range(spec["samples"]):
        version[0] += 1
        i = version[0] * 7919 % n_pol
        t = time.perf_counter()
        await ds.put(policy_key(i, n_eps), policy_doc(i, n_eps, version[0]))
        await applied(sync, policy_key(i, n_eps))
        changes.append(time.perf_counter() - t)
        splits.append(sync.timing)
    out["policy_change_s"] = changes
    out["policy_change_split"] = splits

    await asyncio.sleep(3)  # the drift check's census after the last change (measured apart: "census" below)
    t, c = time.perf_counter(), time.process_time()
    await asyncio.get_running_loop().run_in_executor(None, census, sync.applier)
    out["census_s"], out["census_cpu_s"] = time.perf_counter() - t, time.process_time() - c
    for mode in ("idle", "storm_on_worker", "storm_on_loop"):
        if mode == "storm_on_loop":  # the alternative: the same work, on the event loop
            sync._worker = Inline()
        stop, lags = asyncio.Event(), []
        lagger = asyncio.create_task(loop_lag(stop, lags))
        stormer = asyncio.create_task(storm(sync, ds, n_pol, n_eps, stop, version)) if mode != "idle" else None
        await asyncio.sleep(0.05)
        routes = await route_rounds(kernel, spec["route_rounds"])
        stop.set()
        out[f"routes_{mode}_s"] = routes
        out[f"lag_{mode}_s"] = lags
        out[f"storm_{mode}_changes"] = await stormer if stormer else 0
        await lagger
    kernel.close()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await ds.stop()
    return out


# --- the driver --------------------------------------------------------------------------------------------------


def run_once(args: argparse.Namespace, scratch: Path) -> dict:
    ns = f"tpsb{secrets.token_hex(3)}"
    data = scratch / "ds"
    write_datastore(data, args.policies, args.endpoints)
    spec = {"policies": args.policies, "endpoints": args.endpoints, "datastore": str(data),
            "state": str(scratch / "state"), "samples": args.samples, "route_rounds": args.route_rounds}
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--worker", json.dumps(spec)],
                              capture_output=True, text=True, timeout=900)
        if proc.returncode:
            raise SystemExit(f"worker failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--policies", type=int, default=10000)
    ap.add_argument("--endpoints", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--route-rounds", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="1,000 policies, 100 endpoints, fewer samples")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--output", default=str(ROOT / "bench" / "results" / "policy_sync_bench.json"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(asyncio.run(worker(json.loads(args.worker)))))
        return 0
    if args.quick:
        args.policies, args.endpoints, args.samples, args.route_rounds, args.repeat = 1000, 100, 5, 3, 1
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="tortie-psb-") as scratch:
            runs.append(run_once(args, Path(scratch)))
    ms = lambda values: f"{statistics.median(values) * 1e3:9.1f} {min(values) * 1e3:9.1f} {max(values) * 1e3:9.1f}"  # noqa: E731
    pooled = lambda name: [v for r in runs for v in r[name]]  # noqa: E731
    print(f"Daemon policy path (PolicySync, files datastore, nft), {args.policies} policies, {args.endpoints} "
          f"endpoints, {args.repeat} runs x {args.samples} samples, {os.cpu_count()} vCPU: ms (median, min, max)")
    print(f"  {'first apply (everything)':<44} {ms([r['first_apply_s'] for r in runs])}")
    print(f"  {'pod add: published -> enforced':<44} {ms(pooled('pod_add_s'))}")
    print(f"  {'policy change: written -> enforced':<44} {ms(pooled('policy_change_s'))}")
    for what in ("pod_add", "policy_change"):
        for part, name in (("compile_s", "compiling (worker thread)"), ("compile_cpu_s", "  its CPU"),
                           ("apply_s", "applying (nft, kernel)"), ("apply_cpu_s", "  worker's CPU (not nft's)")):
            values = [t[part] for r in runs for t in r[f"{what}_split"]]
            print(f"  {'  ' + what.replace('_', ' ') + ': ' + name:<44} {ms(values)}")
    for mode, what in (("idle", "idle"), ("first_apply", "first apply (worker thread)"),
                       ("storm_on_worker", "policy storm, worker thread"),
                       ("storm_on_loop", "policy storm, on the loop")):
        print(f"  {'1,000 routes, ' + what:<44} {ms(pooled(f'routes_{mode}_s'))}")
        print(f"  {'  event loop lag, ' + what:<44} {ms(pooled(f'lag_{mode}_s'))}"
              f"   p99 {statistics.quantiles(pooled(f'lag_{mode}_s'), n=100)[98] * 1e3:.1f}"
              + (f"   changes {sum(r[f'storm_{mode}_changes'] for r in runs)}" if mode.startswith("storm") else ""))
    print(f"  {'drift check after a change (census), wall':<44} {ms([r['census_s'] for r in runs])}")
    print(f"  {'  CPU':<44} {ms([r['census_cpu_s'] for r in runs])}")
    print(f"  {'RSS after first apply (MiB)':<44} {statistics.median(r['rss_mib'] for r in runs):9.0f}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
