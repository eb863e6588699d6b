#!/usr/bin/env python3
"""Many hosts on one machine: generated labs (`tortie lab gen`) of N Tortie hosts, full mesh or route reflectors.

Per case (N hosts; `mesh` = static iBGP full mesh, `rrK` / `frrK` = clients of K BIRD / FRR route reflectors;
`+mqtt`: an MQTT broker as the datastore, blocks claimed there), one pod per host:
- start: `tortie lab up` begins -> every host's block in every other host's kernel (read with `ip -n NS route`)
- new block (without +mqtt): a block added to h1's configuration and reloaded (SIGHUP) -> in every other kernel
- policy (+mqtt only): a NetworkPolicy selecting every pod published on the broker (mosquitto_pub, retained) ->
  in force on every host (each daemon's `policy applied ... policies=1` log line, its own timestamp)
- idle: per host, CPU (percent of one core over IDLE seconds) and RSS of every process in its namespaces
- restart: every host's daemon stopped (SIGTERM) and started again at once, as after an upgrade, while h1's pod
  pings the last host's pod every 10 ms: packets lost, and the time until every host has every session up
  again and its initial sync done (the probe runs from 3 s before the restart until PROBE_AFTER s after that);
  a daemon still running STOP_WAIT s after its SIGTERM is killed and listed as stuck.
Run as root: /opt/tortie-venv/bin/python bench/scale_bench.py [--cases 20:mesh,20:rr2,50:rr2+mqtt,100:frr2]
Prints a table and writes bench/results/scale_bench.json. A benchmark, not a test: it asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from ipaddress import ip_network
from pathlib import Path
from typing import Callable

from bgpd.lab import generate as g
from bgpd.lab import processes
from bgpd.lab.state import LabState

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "scale_bench.json"
PARALLEL = 8
IDLE = 10.0  # seconds of idle CPU measured
PROBE_AFTER = 10  # seconds the ping between two pods goes on once the restart converged
NEW_BLOCK = "10.244.255.192/26"  # outside every generated host's block
TORTIE = [sys.executable, "-m", "bgpd.cli.main"]
RESTART_LOG = "/tmp/tortie-restarted.log"  # in each node's private /tmp
POD_ROUTE_PROTOCOL = "202"  # a host's routes to its own pods (NodeConfig.pod_route_protocol's default)
POLICY = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
          "metadata": {"name": "scale-bench", "namespace": "default"},
          "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": str(g.POOL)}}]}]}}


class BenchError(RuntimeError):
    pass


def _tortie(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*TORTIE, *args], capture_output=True, text=True, timeout=timeout)


@dataclass(frozen=True)
class Case:
    n: int
    reflectors: int = 0
    impl: str = "bird"
    broker: bool = False

    @property
    def topology(self) -> str:
        return ((f"{'rr' if self.impl == 'bird' else self.impl}{self.reflectors}" if self.reflectors else "mesh")
                + ("+mqtt" if self.broker else ""))


class Lab:
    def __init__(self, case: Case, scratch: Path):
        self.n, self.reflectors, self.broker = case.n, case.reflectors, case.broker
        self.name = "sb" + secrets.token_hex(2)
        self.dir = scratch / self.name
        self.file = g.write(g.Spec(case.n, reflectors=case.reflectors, broker=case.broker, pods=1, name=self.name,
                                   reflector_impl=case.impl), self.dir)
        self.hosts = [g.host_name(i) for i in range(1, case.n + 1)]

    def netns(self, host: str) -> str:
        return f"clab-{self.name}-{host}"

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return _tortie("lab", args[0], str(self.file), "--name", self.name, *args[1:], timeout=timeout)

    def exec(self, host: str, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.run("exec", host, "--", *command, timeout=timeout)

    def blocks_in(self, host: str, protocol: str = "tortie") -> set[str]:
        r = subprocess.run(["ip", "-n", self.netns(host), "-j", "route", "show", "proto", protocol],
                           capture_output=True, text=True, timeout=20)
        return {x["dst"] for x in json.loads(r.stdout or "[]")} if r.returncode == 0 else set()

    def wait_routes(self, want: dict[str, Callable[[set[str]], bool]], deadline: float,
                    failed: Callable[[], bool] = lambda: False) -> float:
        """Polls until every host's kernel routes satisfy its check, or the deadline, or `failed()`; returns when
        (monotonic) that was seen."""
        missing = dict(want)
        with ThreadPoolExecutor(PARALLEL) as pool:
            while missing:
                if time.monotonic() > deadline or failed():
                    raise BenchError(f"lab {self.name}: routes missing on {len(missing)} host(s), e.g. "
                                     f"{next(iter(missing))}")
                have = dict(zip(missing, pool.map(self.blocks_in, missing)))
                missing = {h: ok for h, ok in missing.items() if not ok(have[h])}
                if missing:
                    time.sleep(0.2)
        return time.monotonic()

    def policy_enforced(self, deadline: float) -> list[float]:
        """Publishes POLICY on the broker; per host, seconds from the publication to its daemon's log line saying
        the ruleset with it is in force (the daemon's own timestamp; the lab runs on this machine's clock)."""
        r = self.exec("broker", "sh", "-c", 'date +%s.%N && exec mosquitto_pub -h 127.0.0.1 -u admin -P '
                      'admin-secret -r -q 1 -t "$0" -m "$1"', "tortie/v1/policies/default/scale-bench",
                      json.dumps(POLICY))
        if r.returncode != 0:
            raise BenchError(f"publish the policy: {r.stdout}{r.stderr}")
        t0 = float(r.stdout.split()[0])
        state, seen = LabState.load(self.name), {}
        while len(seen) < len(self.hosts):
            if time.monotonic() > deadline:
                raise BenchError(f"policy not in force on {len(self.hosts) - len(seen)} host(s)")
            for h in set(self.hosts) - set(seen):
                m = re.search(r"^(\S+ \S+) INFO \S+ policy applied .* policies=1 ",
                              state.log_path(h).read_text(errors="replace"), re.M)
                if m:
                    seen[h] = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() - t0
            time.sleep(0.5)
        return [round(seen[h], 3) for h in self.hosts]

    def converged(self) -> bool:
        """Every restarted daemon logged its initial sync done and every one of its sessions up (read from the
        log in the node's private /tmp: no process started per host and poll)."""
        state = LabState.load(self.name)
        peers = self.reflectors or self.n - 1
        for h in self.hosts:
            try:
                text = Path(f"/proc/{state.nodes[h].keeper_pid}/root{RESTART_LOG}").read_text(errors="replace")
            except OSError:
                return False
            if "initial sync done" not in text or len(set(re.findall(r"session up peer=(\S+)", text))) < peers:
                return False
        return True

    def host_usage(self, seconds: float) -> tuple[list[float], list[float]]:
        """Per host: CPU percent of one core over `seconds`, and RSS MiB, of every process in its namespace."""
        ids = {processes.netns_file_id(f"/run/netns/{self.netns(h)}"): h for h in self.hosts}

        def sample() -> dict[str, tuple[float, int]]:
            out = {h: (0.0, 0) for h in self.hosts}
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                host = ids.get(processes.ns_id(int(entry), "net"))
                if host is None:
                    continue
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                    rss = int(stat[21]) * os.sysconf("SC_PAGE_SIZE")
                except (OSError, IndexError):
                    continue
                cpu, mem = out[host]
                out[host] = (cpu + (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK"), mem + rss)
            return out

        before = sample()
        time.sleep(seconds)
        after = sample()
        return ([round(100 * (after[h][0] - before[h][0]) / seconds, 2) for h in self.hosts],
                [round(after[h][1] / 2 ** 20, 1) for h in self.hosts])


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else 0.0


STOP_WAIT = 120  # seconds a daemon gets to stop before the restart records it as stuck and kills it


def _restart(lab: Lab, host: str) -> subprocess.CompletedProcess:
    """Stops the host's daemon (routes stay in its kernel; peers keep its routes as stale) and starts a new one.

    A daemon still running STOP_WAIT s after SIGTERM is recorded as stuck (its threads' kernel wait channels
    printed) and killed. The wait is `tail --pid`, not a loop of `sleep`: 100 such loops forked 2,000 times a second."""
    script = ("pid=$(cat /run/tortie/tortie.pid); kill -TERM $pid; "
              f"if ! timeout {STOP_WAIT} tail -s 0.1 --pid=$pid -f /dev/null; then "
              "echo \"stuck: $(for t in /proc/$pid/task/*; do cat $t/comm $t/wchan; echo; done | tr '\\n' ' ')\"; "
              "kill -KILL $pid; fi; "
              f"setsid tortie run --config /etc/tortie/tortie.yaml >{RESTART_LOG} 2>&1 </dev/null &")
    return lab.exec(host, "sh", "-c", script, timeout=STOP_WAIT + 180)


def _pool_blocks(prefixes: set[str]) -> int:
    return sum(1 for p in prefixes if (net := ip_network(p)).prefixlen == g.BLOCK and net.subnet_of(g.POOL))


def run_case(spec: Case, scratch: Path, timeout: float) -> dict:
    if problem := g.neighbour_problem(g.Spec(spec.n, spec.reflectors, spec.broker, pods=1)):
        return {"n": spec.n, "topology": spec.topology, "error": problem}
    lab, n = Lab(spec, scratch), spec.n
    load = {"start": os.getloadavg()[0]}  # the 1-minute load average as each phase ends: the machine is shared
    case = {"n": n, "topology": spec.topology, "lab": lab.name, "load_average": load}
    blocks = {h: str(g.host_block(i)) for i, h in enumerate(lab.hosts, 1)}
    probe: subprocess.Popen | None = None
    try:
        start = time.monotonic()
        up = subprocess.Popen([*TORTIE, "lab", "up", str(lab.file), "--name", lab.name, "--timeout", str(timeout)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if spec.broker:  # claimed blocks: each host holds N, its own as a blackhole
            want = {h: lambda have: _pool_blocks(have) >= n for h in lab.hosts}
        else:
            want = {h: (lambda have, w=set(blocks.values()) - {blocks[h]}: w <= have) for h in lab.hosts}
        try:
            case["all_blocks_everywhere_s"] = round(
                lab.wait_routes(want, start + timeout + 120, lambda: up.poll() not in (None, 0)) - start, 2)
        finally:
            _, err = up.communicate(timeout=timeout + 300)
        if up.returncode != 0:
            raise BenchError(f"lab up: {err.strip()[-2000:]}")
        case["lab_up_s"] = round(time.monotonic() - start, 2)
        load["up"] = os.getloadavg()[0]

        if spec.broker:
            enforced = lab.policy_enforced(time.monotonic() + 300)
            case["policy_enforced_s"] = {"median": _median(enforced), "max": max(enforced)}
        else:
            conf = lab.dir / "h1" / "tortie.yaml"
            conf.write_text(conf.read_text().replace(f"blocks:\n- {blocks['h1']}",
                                                     f"blocks:\n- {blocks['h1']}\n- {NEW_BLOCK}"))
            t = time.monotonic()
            r = lab.exec("h1", "sh", "-c", "kill -HUP $(cat /run/tortie/tortie.pid)")
            if r.returncode != 0:
                raise BenchError(f"reload h1: {r.stderr}")
            case["new_block_everywhere_s"] = round(
                lab.wait_routes({h: lambda have: NEW_BLOCK in have for h in lab.hosts[1:]}, t + 120) - t, 2)

        time.sleep(5)
        cpu, rss = lab.host_usage(IDLE)
        case["idle_cpu_percent_per_host"] = {"median": _median(cpu), "max": max(cpu), "total": round(sum(cpu), 1)}
        case["rss_mib_per_host"] = {"median": _median(rss), "max": max(rss)}
        load["idle"] = os.getloadavg()[0]

        pods = lab.blocks_in(lab.hosts[-1], POD_ROUTE_PROTOCOL)
        if not pods:
            raise BenchError(f"no pod route on {lab.hosts[-1]}")
        target = min(pods).split("/")[0]  # the last host's pod
        probe = subprocess.Popen([*TORTIE, "lab", "exec", str(lab.file), "h1", "--name", lab.name, "--",
                                  "tortie", "pod", "exec", g.pod_name(1, 1), "--", "ping", "-n", "-q", "-i", "0.01",
                                  "-W", "1", "-w", str(int(timeout) + 60), target],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True)  # its group gets the SIGINT that ends it
        time.sleep(3)
        t = time.monotonic()
        with ThreadPoolExecutor(len(lab.hosts)) as pool:
            done = dict(zip(lab.hosts, pool.map(lambda h: _restart(lab, h), lab.hosts)))
        failed = [h for h, r in done.items() if r.returncode]
        case["restart_stuck"] = {h: r.stdout.strip() for h, r in done.items() if "stuck:" in r.stdout}
        if failed:
            raise BenchError(f"restart failed on {failed}")
        while not lab.converged():
            if time.monotonic() - t > timeout:
                raise BenchError(f"not converged {timeout:.0f} s after the restart")
            time.sleep(0.5)
        case["restart_converged_s"] = round(time.monotonic() - t, 2)
        load["restart"] = os.getloadavg()[0]
        time.sleep(PROBE_AFTER)
        os.killpg(probe.pid, signal.SIGINT)  # ping prints its count and exits; the lab exec around it ends too
        out, _ = probe.communicate(timeout=60)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        case["restart_probe"] = ({"sent": int(m[1]), "lost": int(m[1]) - int(m[2])} if m
                                 else {"error": out.strip()[-300:]})
    except (BenchError, subprocess.TimeoutExpired) as e:
        case["error"] = str(e)  # the phases measured so far stay in the results
        logs = Path(tempfile.gettempdir()) / f"scale_bench-logs-{lab.name}"
        shutil.copytree(LabState.dir(lab.name), logs, ignore=shutil.ignore_patterns("*.json"), dirs_exist_ok=True)
        case["logs"] = str(logs)  # the nodes' logs outlive `lab down`, for the diagnosis
    finally:
        if probe is not None and probe.poll() is None:  # a phase failed while it ran
            os.killpg(probe.pid, signal.SIGKILL)
            probe.wait()
        r = lab.run("down", timeout=300)
        if r.returncode != 0:
            print(f"scale_bench: lab down {lab.name}: {r.stderr}", file=sys.stderr)
    return case


def render(cases: list[dict]) -> str:
    lines = ["Generated labs, one machine: seconds; idle CPU % of one core per host (median/max); RSS MiB per host; "
             "policy: publish -> in force, the last host; load: 1-minute load average at the start and at the end",
             f"{'N':>4} {'topology':<10} {'blocks':>7} {'lab up':>7} {'new blk':>8} {'policy':>7} {'cpu med':>8} "
             f"{'cpu max':>8} {'RSS med':>8} {'restart':>8} {'lost':>9}  load"]
    def num(c: dict, key: str, sub: str | None = None, width: int = 8, digits: int = 1) -> str:
        v = c.get(key)
        v = v.get(sub) if isinstance(v, dict) and sub else v
        return f"{v:>{width}.{digits}f}" if isinstance(v, (int, float)) else f"{'-':>{width}}"

    for c in cases:
        probe = c.get("restart_probe", {})
        lost = f"{probe['lost']}/{probe['sent']}" if "lost" in probe else "-"
        load = list(c.get("load_average", {}).values())
        lines.append(f"{c['n']:>4} {c['topology']:<10} {num(c, 'all_blocks_everywhere_s', width=7)} "
                     f"{num(c, 'lab_up_s', width=7)} {num(c, 'new_block_everywhere_s', digits=2)} "
                     f"{num(c, 'policy_enforced_s', 'max', width=7, digits=2)} "
                     f"{num(c, 'idle_cpu_percent_per_host', 'median', digits=2)} "
                     f"{num(c, 'idle_cpu_percent_per_host', 'max', digits=2)} {num(c, 'rss_mib_per_host', 'median')} "
                     f"{num(c, 'restart_converged_s')} {lost:>9}  "
                     + (f"{load[0]:.0f}-{load[-1]:.0f}" if load else "-"))
        if stuck := c.get("restart_stuck"):
            lines.append(f"     did not stop within {STOP_WAIT} s of SIGTERM (killed): {', '.join(stuck)}")
        if "error" in c:
            lines.append(f"     error: {c['error'][:200]}")
    return "\n".join(lines)


def _cases(text: str) -> list[Case]:
    out = []
    for item in text.split(","):
        n, _, topo = item.partition(":")
        m = re.fullmatch(r"(?:mesh|(rr|frr)([1-8]))(\+mqtt)?", topo)
        if not n.isdigit() or not 2 <= int(n) <= g.MAX_HOSTS or not m:
            raise argparse.ArgumentTypeError(f"{item!r}: N:mesh, N:rrK or N:frrK, each optionally +mqtt "
                                             f"(N from 2 to {g.MAX_HOSTS}, K from 1 to 8)")
        out.append(Case(int(n), int(m[2] or 0), "frr" if m[1] == "frr" else "bird", bool(m[3])))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=_cases, default=_cases("20:mesh,20:rr2,50:mesh,50:rr2"),
                   help="comma-separated N:mesh, N:rrK (BIRD reflectors) or N:frrK (FRR), each optionally +mqtt "
                        "(a broker as the datastore, and the policy phase) (default 20:mesh,20:rr2,50:mesh,50:rr2)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds for each phase of a case (default 600)")
    p.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("scale_bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="scale_bench-"))
    cases = []
    try:
        for case in args.cases:
            print(f"case N={case.n} {case.topology} ...", file=sys.stderr, flush=True)
            cases.append(run_case(case, scratch, args.timeout))
            print(json.dumps(cases[-1]), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(render(cases))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "generated": datetime.now().isoformat(timespec="seconds"), "cpus": os.cpu_count(),
        "load_average": os.getloadavg(), "method": " ".join(__doc__.split("\n\n")[1].split()),
        "cases": cases}, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
