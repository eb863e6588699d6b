#!/usr/bin/env python3
"""DNS benchmark: queries per second and latency from a pod, Tortie's server against dnsmasq, same run.

Two network namespaces wired as Tortie wires a pod (the pod's /32, its gateway 169.254.1.1 behind a permanent
neighbour entry, the host side of the veth): the host namespace holds 169.254.1.1 on lo, Tortie's DNS server
(bgpd.dns: the same resolver, zone and sockets as the daemon) on port 53 and dnsmasq on port 5353, both
answering the same 1,000 pod names (`p<i>.bench.pod.tortie.local`; dnsmasq from a hosts file). dnsperf runs
in the pod namespace: flat out (100 queries outstanding) and at a fixed rate, each against both servers; p99
comes from dnsperf's per-query latencies. The per-source rate limit is lifted for the run (one pod would
otherwise be held to its bucket, which is the point of it).

Prints a table and writes JSON to bench/results/dns_bench.json. Needs root, dnsperf and dnsmasq
(scripts/setup.sh). Namespaces tdb<random>-{host,pod} are removed at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

POD_IP, GATEWAY, NAMESPACE, DOMAIN = "10.246.0.2", "169.254.1.1", "bench", "tortie.local"


def endpoint_ip(i: int) -> str:
    return f"10.240.{i // 250}.{i % 250 + 1}"


def names(n: int) -> list[tuple[str, str]]:
    return [(f"p{i}.{NAMESPACE}.pod.{DOMAIN}", endpoint_ip(i)) for i in range(n)]


# --- the server, run inside the host namespace ------------------------------------------------------------
def server(n: int):
    from ipaddress import IPv4Network

    from bgpd.dns.metrics import DnsMetrics
    from bgpd.dns.ratelimit import RateLimiter
    from bgpd.dns.resolver import Resolver
    from bgpd.dns.server import DnsServer
    from bgpd.dns.zone import build

    pools = (IPv4Network("10.240.0.0/16"), IPv4Network("10.246.0.0/24"))
    endpoints = {f"endpoints/bench/{NAMESPACE}/p{i}": {"ips": [endpoint_ip(i)], "labels": {}} for i in range(n)}
    resolver = Resolver(DOMAIN, 5, pools, forwarding=False)
    resolver.set_zone(build(endpoints, {}, "bench", lambda node: True))
    return DnsServer(resolver, [], lambda a: True, RateLimiter(1e9, 1e9), DnsMetrics(None))


async def serve(n: int, port: int) -> None:
    await server(n).start([GATEWAY], port)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the bench closes stdin


# --- the bench ---------------------------------------------------------------------------------------------
def sh(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)


def wire(prefix: str) -> tuple[str, str]:
    from pyroute2 import IPRoute, NetNS, netns

    host, pod = f"{prefix}-host", f"{prefix}-pod"
    netns.create(host)
    netns.create(pod)
    with NetNS(host) as h:
        h.link("add", ifname="hv", kind="veth", peer={"ifname": "pv", "net_ns_fd": pod})
        (lo,) = h.link_lookup(ifname="lo")
        h.link("set", index=lo, state="up")
        h.addr("add", index=lo, address=GATEWAY, prefixlen=32)
        (hv,) = h.link_lookup(ifname="hv")
        h.link("set", index=hv, state="up")
        mac = h.get_links(hv)[0].get("address")
        h.route("add", dst=f"{POD_IP}/32", oif=hv, scope="link")
    with NetNS(pod) as p:
        (lo,) = p.link_lookup(ifname="lo")
        p.link("set", index=lo, state="up")
        (pv,) = p.link_lookup(ifname="pv")
        p.link("set", index=pv, state="up")
        p.addr("add", index=pv, address=POD_IP, prefixlen=32)
        p.neigh("add", dst=GATEWAY, lladdr=mac, ifindex=pv, state="permanent")
        p.route("add", dst=f"{GATEWAY}/32", oif=pv, scope="link")
        p.route("add", dst="0.0.0.0/0", gateway=GATEWAY, oif=pv)
    return host, pod


def wait_answering(pod: str, port: int, name: str) -> None:
    for _ in range(100):
        r = subprocess.run(["ip", "netns", "exec", pod, "dig", "@" + GATEWAY, "-p", str(port), "+short", "+time=1",
                            "+tries=1", name], capture_output=True, text=True, timeout=10)
        if r.returncode == 0 and r.stdout.strip():
            return
    raise RuntimeError(f"nothing answers on port {port}")


def dnsperf(pod: str, port: int, queries: Path, seconds: float, rate: int | None) -> dict:
    cmd = ["ip", "netns", "exec", pod, "dnsperf", "-s", GATEWAY, "-p", str(port), "-d", str(queries), "-l",
           str(seconds), "-q", "100", "-v"] + (["-Q", str(rate)] if rate else [])
    out = sh(*cmd, timeout=seconds + 60).stdout
    latencies = sorted(float(line.split()[-1]) for line in out.splitlines()
                       if line.startswith("> ") and line.split()[1] == "NOERROR")
    summary = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}
    qps = float(summary["Queries per second"])
    lost = summary["Queries lost"].split()[0]
    return {"qps": round(qps), "answered": len(latencies), "lost": int(lost),
            "avg_ms": round(1000 * sum(latencies) / len(latencies), 3),
            "p50_ms": round(1000 * latencies[len(latencies) // 2], 3),
            "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 3)}


def per_query(n: int) -> dict:
    """In-process cost of an answer, no sockets: the first time a question is asked (parse, answer, encode)
    and again (the encoded answer reused)."""
    import time

    import dns.message

    srv = server(n)
    queries = [dns.message.make_query(name, "A").to_wire() for name, _ in names(n)]
    out = {}
    for what in ("first_us", "again_us"):
        start = time.perf_counter()
        for q in queries:
            srv.respond(q, True)
        out[what] = round((time.perf_counter() - start) / n * 1e6, 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoints", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=5.0, help="per dnsperf run")
    ap.add_argument("--rate", type=int, default=2000, help="queries per second of the fixed-rate runs")
    ap.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve is not None:
        asyncio.run(serve(args.endpoints, args.serve))
        return 0
    prefix = "tdb" + secrets.token_hex(3)
    procs: list[subprocess.Popen] = []
    results: dict = {"endpoints": args.endpoints, "seconds": args.seconds, "fixed_rate": args.rate,
                     "load_average": os.getloadavg()[0], "per_query": per_query(args.endpoints), "runs": []}
    with tempfile.TemporaryDirectory(prefix="dns-bench-") as tmp:
        hosts, queries = Path(tmp) / "hosts", Path(tmp) / "queries"
        entries = names(args.endpoints)
        hosts.write_text("".join(f"{ip} {name}\n" for name, ip in entries))
        order = [entries[(i * 7919) % len(entries)][0] for i in range(len(entries))]  # spread, every name once
        queries.write_text("".join(f"{name} A\n" for name in order))
        try:
            host, pod = wire(prefix)
            tortie = subprocess.Popen(["ip", "netns", "exec", host, sys.executable, __file__, "--serve", "53",
                                       "--endpoints", str(args.endpoints)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
            procs.append(tortie)
            assert tortie.stdout.readline().strip() == "ready"
            procs.append(subprocess.Popen(["ip", "netns", "exec", host, "dnsmasq", "--keep-in-foreground",
                                           "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}", "--port=5353",
                                           "--bind-interfaces", f"--listen-address={GATEWAY}", "--local-ttl=5",
                                           "--user=root", f"--pid-file={tmp}/dnsmasq.pid", "--log-facility=-"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            for port in (53, 5353):
                wait_answering(pod, port, entries[0][0])
            for mode, rate in (("max", None), ("fixed", args.rate)):
                for server, port in (("tortie", 53), ("dnsmasq", 5353)):
                    run = {"server": server, "mode": mode if rate is None else f"{rate}/s"}
                    run.update(dnsperf(pod, port, queries, args.seconds, rate))
                    results["runs"].append(run)
        finally:
            for p in procs:
                if p.stdin:
                    p.stdin.close()
                p.terminate()
                p.wait(timeout=10)
            for ns in (f"{prefix}-host", f"{prefix}-pod"):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    print(f"DNS from a pod, {args.endpoints} pod names, {args.seconds:g} s per run (dnsperf, 100 outstanding), "
          f"load average {results['load_average']:.1f}")
    print(f"{'server':<8} {'load':<8} {'qps':>8} {'lost':>6} {'avg ms':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for r in results["runs"]:
        print(f"{r['server']:<8} {r['mode']:<8} {r['qps']:>8} {r['lost']:>6} {r['avg_ms']:>8} {r['p50_ms']:>8} "
              f"{r['p99_ms']:>8}")
    pq = results["per_query"]
    print(f"Tortie in-process per query: {pq['first_us']} µs asked first, {pq['again_us']} µs asked again")
    out = ROOT / "bench" / "results" / "dns_bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    if os.geteuid() != 0 and "--serve" not in sys.argv:
        sys.exit("dns_bench: needs root (network namespaces)")
    sys.exit(main())
