#!/usr/bin/env python3
"""Policy benchmark: compile and apply time, incremental update latency, packet path cost; nft against iptables.

Prints a table and writes JSON to bench/results/policy-<time>.json. Everything runs inside network namespaces
named tp<random>-..., removed at the end. `--quick` runs a smaller version (for a smoke test).

Workload: 1,000 endpoints in 10 namespaces; endpoint j has labels app=app<j>, role=r<j % 50>, tier=t<j % 5>.
Policy i (a third each: Tortie NetworkPolicy, Kubernetes NetworkPolicy, Tortie GlobalNetworkPolicy) selects one
endpoint (app=app<i % 1000>) and has 3-4 rules: Allow TCP from a role (50 distinct selectors per namespace),
Deny UDP from a /24, Allow to a named port, Log ICMP; so at 10,000 policies each endpoint has 10 policies.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from policy.model import Endpoints  # noqa: E402
from policy.load import KINDS  # noqa: E402

NAMESPACES = 10


def endpoints_doc(n: int, real: dict[int, tuple[str, str]] | None = None) -> dict:
    """n endpoints; `real` maps endpoint index -> (ip, interface) of lab pods that carry real traffic."""
    real = real or {}
    eps = []
    for j in range(n):
        ip, iface = real.get(j, (f"10.{100 + j // 62500}.{j // 250 % 250}.{j % 250 + 1}", f"bv{j}"))
        eps.append({"namespace": f"ns{j % NAMESPACES}", "name": f"ep{j}", "interface": iface, "ips": [ip],
                    "labels": {"app": f"app{j}", "role": f"r{j % 50}", "tier": f"t{j % 5}"},
                    "ports": [{"name": "http", "port": 8080 + j % 3}]})
    return {"namespaces": [{"name": f"ns{k}", "labels": {"team": f"team{k % 3}"}} for k in range(NAMESPACES)],
            "endpoints": eps}


def policy_doc(i: int, n_endpoints: int, version: int = 0) -> dict:
    target = i % n_endpoints
    ns = f"ns{target % NAMESPACES}"
    kind = i % 3
    if kind == 1:
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": f"k{i}", "namespace": ns},
                "spec": {"podSelector": {"matchLabels": {"app": f"app{target}"}},
                         "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": f"r{i % 50}"}}},
                                               {"ipBlock": {"cidr": f"172.{16 + i % 16}.{i % 250}.0/24"}}],
                                      "ports": [{"port": 80 + version}, {"port": "http"}]}],
                         "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": f"team{i % 3}"}}}]}]}}
    spec = {"order": 100 + i % 500, "selector": f"app == 'app{target}'",
            "ingress": [{"action": "Allow", "protocol": "TCP", "source": {"selector": f"role == 'r{i % 50}'"},
                         "destination": {"ports": [8000 + i % 100 + version]}},
                        {"action": "Deny", "protocol": "UDP", "source": {"nets": [f"10.{200 + i % 50}.{i % 250}.0/24"]}},
                        {"action": "Allow", "protocol": "TCP", "destination": {"ports": ["http"]}},
                        {"action": "Log", "protocol": "ICMP"}]}
    if kind == 0:
        return {"apiVersion": "tortie.io/v1", "kind": "NetworkPolicy", "metadata": {"name": f"t{i}", "namespace": ns},
                "spec": spec}
    return {"apiVersion": "tortie.io/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": f"g{i}"}, "spec": spec}


BENCH_PORT, SINK_PORT = 5001, 5003


def bench_allow() -> dict:
    """Lets the client pod (endpoint 0) reach the server pod (endpoint 1) after all their other policies."""
    return {"apiVersion": "tortie.io/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": "bench-allow"},
            "spec": {"order": 1e9, "selector": "app in {'app0', 'app1'}", "types": ["Ingress", "Egress"],
                     "ingress": [{"action": "Allow", "protocol": "TCP", "source": {"selector": "app == 'app0'"},
                                  "destination": {"ports": [BENCH_PORT, SINK_PORT]}}],
                     "egress": [{"action": "Allow", "protocol": "TCP", "destination": {"selector": "app == 'app1'"}}]}}


# --- the worker: runs inside the lab's host namespace, applies and times ---------------------------------------


def _policies(n: int, n_eps: int, version: int = 0) -> list:
    docs = [policy_doc(i, n_eps, version) for i in range(n)] + ([bench_allow()] if n else [])
    return [KINDS[d["apiVersion"], d["kind"]].model_validate(d) for d in docs]


def worker(spec: dict) -> dict:
    from policy.applier import PolicyApplier
    from policy.binding import Binding, bind_endpoints
    from policy.compiler import compile_policies, gc_paused

    n, n_eps = spec["policies"], spec["endpoints"]
    eps_doc = endpoints_doc(n_eps, {int(k): tuple(v) for k, v in spec["real"].items()})
    t0 = time.perf_counter()
    eps = Endpoints.model_validate(eps_doc)
    policies = _policies(n, n_eps)
    t1 = time.perf_counter()
    with gc_paused():
        binding = Binding(compile_policies(policies, False), eps)
    rs = binding.ruleset
    t2 = time.perf_counter()
    out: dict = {"validate_s": t1 - t0, "compile_s": t2 - t1, "sets": len(rs.sets),
                 "policy_rules": sum(len(c.rules) for c in rs.policy_chains.values())}
    applier = PolicyApplier(spec["backend"], Path(spec["state_dir"]), persist=False)
    times = []
    for _ in range(spec.get("samples", 1)):
        applier.flush()
        t = time.perf_counter()
        applier.apply(rs, full=True)
        times.append(time.perf_counter() - t)
    out["apply_s"] = statistics.median(times)
    if spec.get("replace"):  # a full replace of the loaded ruleset by one where every policy changed a port
        with gc_paused():
            rs2 = bind_endpoints(compile_policies(_policies(n, n_eps, version=1), False), eps)
        times = []
        for target in (rs2, rs, rs2):
            t = time.perf_counter()
            applier.apply(target, full=True)
            times.append(time.perf_counter() - t)
        out["replace_s"] = statistics.median(times)
        applier.apply(rs, full=True)
    if spec.get("incremental"):
        out.update(_incremental(applier, binding, policies, spec["repeats"]))
    applier.save()
    return out


def _timed_update(applier, make) -> tuple[float, float]:
    """(seconds to compute the new ruleset, seconds until the kernel enforces it)."""
    t0 = time.perf_counter()
    rs = make()
    t1 = time.perf_counter()
    mode = applier.apply(rs)
    t2 = time.perf_counter()
    assert mode == "incremental", mode
    return t1 - t0, t2 - t0


def _incremental(applier, binding, policies: list, repeats: int) -> dict:
    from policy.binding import Binding
    from policy.compiler import compile_policies, gc_paused

    ep5 = binding.endpoints.endpoints[5]

    def relabel(join: bool):
        """Endpoint 5 gets (join) or loses (leave) its role label: it joins or leaves that role's selector,
        reported as one endpoint update (as a datastore watch would)."""
        labels = dict(ep5.labels) if join else {k: v for k, v in ep5.labels.items() if k != "role"}
        new_ep = ep5.model_copy(update={"labels": labels})
        return lambda: binding.change([new_ep])

    programs = [binding.program]

    def change(k: int):
        """Policy 0 changes a port: the unchanged policy objects are reused (as a datastore watch would)."""
        doc = policy_doc(0, len(binding.endpoints.endpoints), version=k + 1)
        changed = [KINDS[doc["apiVersion"], doc["kind"]].model_validate(doc), *policies[1:]]

        def make():
            with gc_paused():
                programs.append(compile_policies(changed, False, previous=programs[-1]))
                return Binding(programs[-1], binding.endpoints).ruleset
        return make

    runs: dict[str, list] = {"join": [], "leave": [], "policy_change": []}
    for _ in range(repeats):
        runs["leave"].append(_timed_update(applier, relabel(False)))
        runs["join"].append(_timed_update(applier, relabel(True)))
    for k in range(repeats):  # last: the binding above keeps the original policies
        runs["policy_change"].append(_timed_update(applier, change(k)))
    out: dict = {}
    for name, timings in runs.items():
        out[f"{name}_compute_ms"] = statistics.median(r[0] for r in timings) * 1000
        out[f"{name}_enforced_ms"] = statistics.median(r[1] for r in timings) * 1000
        out[f"{name}_apply_ms"] = statistics.median(r[1] - r[0] for r in timings) * 1000
    return out


# --- the driver: builds the lab, runs workers, measures the packet path ----------------------------------------


def _run_worker(lab, spec: dict) -> dict:
    p = subprocess.run(["ip", "netns", "exec", lab.host, sys.executable, str(Path(__file__).resolve()),
                        "--worker", json.dumps(spec)], capture_output=True, text=True, timeout=1800,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    if p.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _packet_path(lab, client, server, seconds: float) -> dict:
    lab.run(lab.host, "conntrack", "-F", check=False)
    tput = lab.measure(client.ns, "stream", server.ip, SINK_PORT, seconds)
    conns = lab.measure(client.ns, "connect", server.ip, BENCH_PORT, seconds)
    return {"throughput_gbit_s": tput * 8 / 1e9, "connections_per_s": conns}


def _bench_lab(labs: list):
    """A host namespace with a client and a server pod (endpoints 0 and 1 of the workload)."""
    from tests.policy.lab import Lab

    lab = Lab().start()
    labs.append(lab)
    client, server = lab.add_pod("client", 1), lab.add_pod("server", 2)
    for pod in (client, server):
        lab.run(pod.ns, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1")
    lab.serve(server.ns, [BENCH_PORT], [], sink=[SINK_PORT])
    return lab, client, server


def _base(lab, client, server, n_eps: int) -> dict:
    return {"endpoints": n_eps, "state_dir": f"/tmp/{lab.prefix}-state",
            "real": {0: [client.ip, client.interface], 1: [server.ip, server.interface]}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, short runs (a smoke test)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    sizes = [100, 1000] if args.quick else [100, 1000, 10000]
    n_eps = 200 if args.quick else 1000
    path_sizes = [0, 100, 1000] if args.quick else [0, 1000, 10000]
    seconds, repeats, rounds = (1.0, 3, 1) if args.quick else (2.0, 7, 7)
    backends = ["nft", "iptables"]
    results: dict = {"endpoints": n_eps, "apply": {}, "packet_path": {}}
    labs: list = []
    try:
        # compile, apply and incremental updates: one lab
        lab, client, server = _bench_lab(labs)
        base = _base(lab, client, server, n_eps)
        for n in sizes:
            for backend in backends:
                r = _run_worker(lab, {**base, "backend": backend, "policies": n, "replace": True, "samples": 3,
                                      "incremental": n == sizes[-1], "repeats": repeats})
                results["apply"][f"{backend}/{n}"] = r
                print(f"{backend:8} {n:6} policies: {json.dumps(r)}", file=sys.stderr)
        # packet path: one lab per configuration, each loaded once, measured in turn round after round, so that
        # the machine's changing load hits every configuration alike
        # "none": nothing loaded, so the host namespace does not even track connections; 0: Tortie's table with
        # no policy (connection tracking on, as on any node with a stateful firewall or kube-proxy)
        configs = {}
        for n in ["none", *path_sizes]:
            for backend in backends:
                lab, client, server = _bench_lab(labs)
                if n != "none":
                    _run_worker(lab, {**_base(lab, client, server, n_eps), "backend": backend, "policies": n})
                configs[f"{backend}/{n}"] = (lab, client, server)
        samples: dict[str, list[dict]] = {k: [] for k in configs}
        for _ in range(rounds):
            for key, (lab, client, server) in configs.items():
                samples[key].append(_packet_path(lab, client, server, seconds))
                print(f"{key:16} {samples[key][-1]}", file=sys.stderr)
        results["packet_path"] = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} | {"samples": v}
                                  for k, v in samples.items()}
    finally:
        for lab in labs:
            lab.close()
            subprocess.run(["rm", "-rf", f"/tmp/{lab.prefix}-state"])
    _report(results, sizes, path_sizes, backends)
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"policy-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwritten: {out}")
    return 0


def _report(results: dict, sizes: list[int], path_sizes: list[int], backends: list[str]) -> None:
    print(f"\nFull apply ({results['endpoints']} endpoints; seconds; median of 3 for replace)")
    print("| backend | policies | kernel rules | validate | compile | apply (empty) | replace (all changed) |")
    print("|---|---|---|---|---|---|---|")
    for n in sizes:
        for b in backends:
            r = results["apply"][f"{b}/{n}"]
            print(f"| {b} | {n:,} | {r['policy_rules']:,} | {r['validate_s']:.2f} | {r['compile_s']:.2f} | "
                  f"{r['apply_s']:.2f} | {r['replace_s']:.2f} |")
    print(f"\nIncremental update with {sizes[-1]:,} policies loaded (ms, median)")
    print("| backend | change | compute new ruleset | diff + kernel | total until enforced |")
    print("|---|---|---|---|---|")
    for b in backends:
        r = results["apply"][f"{b}/{sizes[-1]}"]
        for change, label in (("join", "endpoint joins a selector"), ("leave", "endpoint leaves a selector"),
                              ("policy_change", "one policy changes")):
            print(f"| {b} | {label} | {r[f'{change}_compute_ms']:.1f} | {r[f'{change}_apply_ms']:.1f} | "
                  f"{r[f'{change}_enforced_ms']:.1f} |")
    print("\nPacket path, client pod -> server pod through the host (median of the rounds; ratio to the same backend "
          "with 0 policies, same run; 'none': no ruleset loaded, no connection tracking)")
    print("| backend | policies | TCP Gbit/s | ratio | connections/s | ratio |")
    print("|---|---|---|---|---|---|")
    for b in backends:
        zero = results["packet_path"][f"{b}/0"]
        for n in ["none", *path_sizes]:
            r = results["packet_path"][f"{b}/{n}"]
            label = n if n == "none" else f"{n:,}"
            print(f"| {b} | {label} | {r['throughput_gbit_s']:.2f} | "
                  f"{r['throughput_gbit_s'] / zero['throughput_gbit_s']:.2f} | {r['connections_per_s']:.0f} | "
                  f"{r['connections_per_s'] / zero['connections_per_s']:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
