#!/usr/bin/env python3
"""BGP route installation benchmark: session up -> N routes from a BIRD peer in the receiver's kernel.

Receivers, each alone in two fresh namespaces per run: tortie (`tortie run`), BIRD 2 (BGP and kernel
protocol), and `ip -batch` adding the same routes (the floor, timed from its start). The sender is
BIRD 2 with N static /26 routes (--family 6: /122 routes over an IPv6 session, `ip -6 -batch`); the clock
starts at its "State changed to up" log line (microsecond timestamps) and stops when an rtnetlink listener
in the receiver's namespace has seen all N routes added.

Run as root: /opt/tortie-venv/bin/python bench/bgp_bench.py [--family 4|6] [--sizes 1000,10000] [--repeat 3]
[--quick]. Prints a table and writes bench/results/bgp_bench.json (--family 6: bgp_bench6.json). A
benchmark, not a test: it asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from importlib.metadata import version
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from string import Template
from typing import Callable, Iterator, TypeVar

import report  # bench/report.py: the results file
from pyroute2.netns import setns

from bgpd.lab import processes
from bgpd.dataplane.netlink_routes import _NLMSGHDR, _RTA, _RTMSG, NETLINK_ROUTE, RT_TABLE_MAIN, RTA_DST, RTM_NEWROUTE
from config.node import NodeConfig

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "bench" / "bgp"
RESULTS = {4: ROOT / "bench" / "results" / "bgp_bench.json", 6: ROOT / "bench" / "results" / "bgp_bench6.json"}
# what the assets (bench/bgp) are filled in with, per address family; router ids stay IPv4 (BGP identifiers)
ADDRS = {4: {"snd_addr": "10.97.0.2", "rcv_addr": "10.97.0.1", "snd_id": "10.97.0.2", "rcv_id": "10.97.0.1",
             "snd_asn": "64513", "rcv_asn": "64512", "channel": "ipv4", "listen": "listen_address",
             "pool": "10.0.0.0/8", "block_size": "26", "own_block": "10.255.255.0/26"},
         6: {"snd_addr": "fd97::2", "rcv_addr": "fd97::1", "snd_id": "10.97.0.2", "rcv_id": "10.97.0.1",
             "snd_asn": "64513", "rcv_asn": "64512", "channel": "ipv6", "listen": "listen_address6",
             "pool": "fd00:100::/56", "block_size": "122", "own_block": "fd00:100:0:ff::/122"}}
# routes are consecutive /26s (IPv6: /122s) from here
FIRST_ROUTE = {4: IPv4Network("10.0.0.0/26"), 6: IPv6Network("fd00:100::/122")}
MAX_ROUTES = 200_000  # stays clear of tortie's own block 10.255.255.0/26 (IPv6: fd00:100:0:ff::/122)
BIRD_PROTOCOL = 12  # "bird" in rt_protos
TORTIE_PROTOCOL: int = NodeConfig.model_fields["route_protocol"].default
METHODS = ("ip -batch", "bird", "tortie")
MARKER = "TORTIE_BGP_BENCH"  # in every child's environment, to find leftovers
BIRD_TIME, PYTHON_LOG_TIME = "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S,%f"
RTMGRP_ROUTE = {4: 0x40, 6: 0x400}  # RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE
SO_RCVBUFFORCE = 33
SETUP_TIMEOUT = 30.0


class BenchError(RuntimeError):
    pass


T = TypeVar("T")


@dataclass
class Trial:
    """One measurement. Times in seconds from session up (ip -batch: from its start)."""

    method: str
    n: int
    seconds: float  # ... until all n routes are in the kernel
    first_route: float  # ... until the first one is
    receiver_up: float | None = None  # ... until the receiver logged the session up
    from_enable: float | None = None  # `birdc enable` until all n routes are in the kernel
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per receiver process, enable -> done
    rss_kib: dict[str, int] = field(default_factory=dict)  # VmRSS per receiver process when done


# --- processes and namespaces ------------------------------------------------------------------------------
def _run(argv: list[str], timeout: float = 10.0) -> str:
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=timeout).stdout
    except subprocess.CalledProcessError as e:
        raise BenchError(f"{' '.join(argv)}: exit {e.returncode}: {e.stderr.strip()}") from None
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(argv)}: still running after {timeout:.0f} s") from None


def _proc(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_text(errors="replace")
    except FileNotFoundError:
        raise BenchError(f"process {pid} is gone") from None


def _rss_kib(pid: int) -> int:
    for line in _proc(pid, "status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def _cpu_seconds(pid: int) -> float:
    fields = _proc(pid, "stat").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _child(pid: int, marker: str) -> int | None:
    """The child of `pid` with `marker` in its command line, if there is one."""
    for kid in _proc(pid, f"task/{pid}/children").split():
        try:
            if marker in _proc(int(kid), "cmdline"):
                return int(kid)
        except BenchError:
            pass
    return None


def _listening_on_bgp(pid: int) -> bool:
    """True once the network namespace of `pid` has a TCP socket (IPv4 or IPv6) listening on port 179."""
    rows = [r.split() for table in ("net/tcp", "net/tcp6") for r in _proc(pid, table).splitlines()[1:]]
    return any(r[1].endswith(":00B3") and r[3] == "0A" for r in rows)


def _log_has(log: Path, text: str) -> bool:
    return log.exists() and text in log.read_text(errors="replace")


def _log_time(log: Path, pattern: str, fmt: str) -> float:
    """Wall-clock time of the first line matching `pattern`; its first two words are the timestamp."""
    for line in log.read_text(errors="replace").splitlines():
        if re.search(pattern, line):
            return datetime.strptime(" ".join(line.split()[:2]), fmt).timestamp()
    raise BenchError(f"no line like {pattern!r} in {log}")


def _wait(ready: Callable[[], bool], what: str, proc: subprocess.Popen, log: Path) -> None:
    """Polls ready() until it holds; fails, with the log's tail, if proc exits or time runs out."""
    deadline = time.monotonic() + SETUP_TIMEOUT
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else ""
            state = f"exited {proc.returncode}" if proc.returncode is not None else f"not within {SETUP_TIMEOUT:.0f} s"
            raise BenchError(f"{what}: {state}\n{tail}")
        time.sleep(0.02)


class Testbed:
    """Two fresh namespaces joined by a veth, a scratch directory, and the processes started in them."""

    def __init__(self, prefix: str, index: int, scratch: Path, family: int = 4):
        self.snd, self.rcv = f"{prefix}-{index}-snd", f"{prefix}-{index}-rcv"
        self.family, self.addrs = family, ADDRS[family]
        self.dir = scratch / str(index)
        self.env = {**os.environ, MARKER: prefix}
        self._link = prefix
        self._procs: list[subprocess.Popen] = []

    def __enter__(self) -> Testbed:
        try:
            self.dir.mkdir(parents=True)
            for ns in (self.snd, self.rcv):
                _run(["ip", "netns", "add", ns])
                _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            snd_if, rcv_if = f"{self._link}-snd", f"{self._link}-rcv"
            _run(["ip", "-n", self.snd, "link", "add", snd_if, "type", "veth", "peer", "name", rcv_if,
                  "netns", self.rcv])
            length, nodad = ("/24", []) if self.family == 4 else ("/64", ["nodad"])  # usable at once
            for ns, ifname, addr in ((self.snd, snd_if, self.addrs["snd_addr"]), (self.rcv, rcv_if,
                                                                                  self.addrs["rcv_addr"])):
                _run(["ip", "-n", ns, "addr", "add", f"{addr}{length}", "dev", ifname, *nodad])
                _run(["ip", "-n", ns, "link", "set", ifname, "up"])
            # each side's address a permanent neighbour of the other: the kernel's neighbour table is shared by
            # every namespace (gc_thresh3, 1024 entries) and other labs may have filled it; permanent entries
            # do not count against it (without them every session here timed out while a 100-host lab ran)
            macs = {ifname: json.loads(_run(["ip", "-n", ns, "-j", "link", "show", "dev", ifname]))[0]["address"]
                    for ns, ifname in ((self.snd, snd_if), (self.rcv, rcv_if))}
            for ns, ifname, peer_if, peer_addr in ((self.snd, snd_if, rcv_if, self.addrs["rcv_addr"]),
                                                   (self.rcv, rcv_if, snd_if, self.addrs["snd_addr"])):
                _run(["ip", "-n", ns, "neigh", "replace", peer_addr, "lladdr", macs[peer_if], "dev", ifname,
                      "nud", "permanent"])
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def spawn(self, ns: str, argv: list[str], log: Path) -> subprocess.Popen:
        """Runs argv in namespace ns (`ip netns exec` execs it: the PID is argv's), output to log."""
        with log.open("ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, env=self.env)
        self._procs.append(proc)
        return proc

    def render(self, template: str, **values: str) -> Path:
        """Fills in an asset of bench/bgp (string.Template) into the scratch directory."""
        path = self.dir / template
        path.write_text(Template((ASSETS / template).read_text()).substitute(self.addrs, **values))
        return path

    def close(self) -> None:
        """Stops what we started (SIGTERM, then SIGKILL) and removes the namespaces, even half made."""
        handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:  # a second Ctrl-C must not leave namespaces behind
            self._stop_and_remove()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def _stop_and_remove(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        nets = {i for ns in (self.snd, self.rcv) if (i := processes.netns_file_id(f"/run/netns/{ns}"))}
        processes.stop(processes.find(set(), nets, f"{MARKER}={self.env[MARKER]}"))
        for ns in (self.snd, self.rcv):
            if os.path.exists(f"/run/netns/{ns}"):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


# --- the clock -----------------------------------------------------------------------------------------------
def _route_events_socket(netns: str, family: int) -> socket.socket:
    """An rtnetlink socket of `netns` subscribed to the route events of one family.

    Made by a short-lived thread that alone enters the namespace (setns changes only the calling
    thread's); the socket stays in the namespace it was made in. No fork: a forked copy of this
    script could run its cleanup code.
    """
    made: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            setns(netns, flags=0, fork=False)
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
            sock.bind((0, RTMGRP_ROUTE[family]))
            sock.settimeout(0.5)
            made.append(sock)
        except BaseException as e:
            made.append(e)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    if isinstance(made[0], BaseException):
        raise BenchError(f"netlink socket in {netns}: {made[0]}")
    return made[0]


class RouteListener:
    """Stamps the first and the last of the expected routes of `protocol` appearing in a namespace's main table.

    Subscribed before the clock starts; reads rtnetlink events in a thread, so no dump (~50 ms at 10k
    routes) stands between the kernel and the stamp.
    """

    def __init__(self, netns: str, protocol: int, routes: list[IPv4Network] | list[IPv6Network]):
        self.protocol = protocol
        self.family = socket.AF_INET if routes[0].version == 4 else socket.AF_INET6
        self.size = len(routes[0].network_address.packed)
        self.expected = {r.network_address.packed + bytes((r.prefixlen,)) for r in routes}
        self.seen = 0
        self._first: float | None = None
        self._last: float | None = None
        self._error: OSError | None = None
        self._sock = _route_events_socket(netns, routes[0].version)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def wait(self, timeout: float) -> tuple[float, float]:
        """(first, last) wall-clock times; raises unless every expected route appeared within `timeout`."""
        self._thread.join(timeout)
        self._stop.set()
        self._thread.join()
        self._sock.close()
        if self._error:  # ENOBUFS: events were lost, the count would be wrong
            raise BenchError(f"netlink listener: {self._error}")
        if self._first is None or self._last is None:
            raise BenchError(f"only {self.seen} of {len(self.expected)} routes within {timeout:.0f} s")
        return self._first, self._last

    def _read(self) -> None:
        seen: set[bytes] = set()
        try:
            while not self._stop.is_set() and len(seen) < len(self.expected):
                try:
                    data = self._sock.recv(1 << 20)
                except TimeoutError:
                    continue
                now = time.time()
                seen.update(k for k in self._added(data) if k in self.expected)
                self.seen = len(seen)
                if seen and self._first is None:
                    self._first = now
            self._last = now if self.seen == len(self.expected) else None
        except OSError as e:
            self._error = e

    def _added(self, data: bytes) -> Iterator[bytes]:
        """Address + prefix length of each route of the family and our protocol added to the main table."""
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, kind = _NLMSGHDR.unpack_from(data, offset)[:2]
            if length < _NLMSGHDR.size:
                break
            body = offset + _NLMSGHDR.size
            if kind == RTM_NEWROUTE:
                family, dst_len, _, _, table, proto = _RTMSG.unpack_from(data, body)[:6]
                if family == self.family and table == RT_TABLE_MAIN and proto == self.protocol:
                    attr, end = body + _RTMSG.size, offset + length
                    while attr + _RTA.size <= end:
                        alen, atype = _RTA.unpack_from(data, attr)
                        if atype == RTA_DST:
                            yield data[attr + 4:attr + 4 + self.size] + bytes((dst_len,))
                            break
                        attr += max((alen + 3) & ~3, _RTA.size)
            offset += (length + 3) & ~3


# --- sender and receivers --------------------------------------------------------------------------------------
@dataclass
class Receiver:
    protocol: int  # of the routes it puts in the kernel
    pids: dict[str, int]
    log: Path
    up_line: str  # regex of its log line for the session coming up
    time_format: str


def route_prefixes(n: int, family: int = 4) -> list[IPv4Network] | list[IPv6Network]:
    first = FIRST_ROUTE[family]
    start, step, network = int(first.network_address), first.num_addresses, type(first)
    return [network((start + step * i, first.prefixlen)) for i in range(n)]


def _birdc(ctl: Path, *command: str) -> str:
    return _run(["birdc", "-s", str(ctl), *command])


def start_sender(bed: Testbed, routes: list[IPv4Network] | list[IPv6Network]) -> tuple[Path, Path]:
    """BIRD with the routes as static ones and its session to the receiver disabled: (control socket, log)."""
    table, log, ctl = bed.dir / "routes.conf", bed.dir / "sender.log", bed.dir / "sender.ctl"
    table.write_text("".join(f"route {r} blackhole;\n" for r in routes))
    conf = bed.render("sender.conf", log=str(log), routes=str(table))
    bird = bed.spawn(bed.snd, ["bird", "-f", "-c", str(conf), "-s", str(ctl)], bed.dir / "sender.out")
    n = len(routes)
    _wait(lambda: _log_has(log, "<INFO> Started") and f"{n} of {n} routes" in _birdc(ctl, "show", "route", "count"),
          "sender BIRD start", bird, bed.dir / "sender.out")
    return ctl, log


def start_tortie(bed: Testbed) -> Receiver:
    log = bed.dir / "tortie.log"
    conf = bed.render("tortie.yaml", dir=str(bed.dir))
    daemon = bed.spawn(bed.rcv, [str(Path(sys.executable).with_name("tortie")), "run", "--config", str(conf)], log)
    _wait(lambda: _log_has(log, "exabgp relay connected") and _listening_on_bgp(daemon.pid), "tortie start",
          daemon, log)
    exabgp = _child(daemon.pid, "exabgp")
    relay = exabgp and _child(exabgp, "")  # ExaBGP's one child, whichever program (--before trees differ)
    if not exabgp or not relay:
        raise BenchError(f"tortie: no ExaBGP with a relay under pid {daemon.pid}")
    pids = {"tortie daemon": daemon.pid, "exabgp": exabgp, "relay": relay}
    return Receiver(TORTIE_PROTOCOL, pids, log, r" INFO tortie\.daemon session up ", PYTHON_LOG_TIME)


def start_bird(bed: Testbed) -> Receiver:
    log = bed.dir / "receiver.log"
    conf = bed.render("receiver.conf", log=str(log))
    bird = bed.spawn(bed.rcv, ["bird", "-f", "-c", str(conf), "-s", str(bed.dir / "receiver.ctl")],
                     bed.dir / "receiver.out")
    _wait(lambda: _log_has(log, "<INFO> Started") and _listening_on_bgp(bird.pid), "receiver BIRD start", bird, log)
    return Receiver(BIRD_PROTOCOL, {"bird": bird.pid}, log, r" sender: State changed to up", BIRD_TIME)


def _deadline(n: int) -> float:
    return 30.0 + n / 100


def bgp_trial(method: str, bed: Testbed, routes: list[IPv4Network] | list[IPv6Network]) -> Trial:
    ctl, sender_log = start_sender(bed, routes)
    rcv = start_tortie(bed) if method == "tortie" else start_bird(bed)
    listener = RouteListener(bed.rcv, rcv.protocol, routes)
    cpu = {name: _cpu_seconds(pid) for name, pid in rcv.pids.items()}
    enabled = time.time()
    _birdc(ctl, "enable", "recv")
    first, last = listener.wait(_deadline(len(routes)))
    cpu = {name: round(_cpu_seconds(pid) - cpu[name], 3) for name, pid in rcv.pids.items()}
    rss = {name: _rss_kib(pid) for name, pid in rcv.pids.items()}
    up = _log_time(sender_log, r" recv: State changed to up", BIRD_TIME)
    receiver_up = _log_time(rcv.log, rcv.up_line, rcv.time_format)
    return Trial(method, len(routes), last - up, first - up, receiver_up - up, last - enabled, cpu, rss)


def ip_batch_trial(bed: Testbed, routes: list[IPv4Network] | list[IPv6Network]) -> Trial:
    batch, via = bed.dir / "routes.batch", bed.addrs["snd_addr"]
    batch.write_text("".join(f"route add {r} via {via} proto {TORTIE_PROTOCOL}\n" for r in routes))
    listener = RouteListener(bed.rcv, TORTIE_PROTOCOL, routes)
    start = time.time()
    _run(["ip", f"-{bed.family}", "-n", bed.rcv, "-batch", str(batch)], timeout=_deadline(len(routes)))
    first, last = listener.wait(_deadline(len(routes)))
    return Trial("ip -batch", len(routes), last - start, first - start)


def run_trial(method: str, n: int, prefix: str, index: int, scratch: Path, family: int = 4) -> Trial:
    with Testbed(prefix, index, scratch, family) as bed:
        routes = route_prefixes(n, family)
        return ip_batch_trial(bed, routes) if method == "ip -batch" else bgp_trial(method, bed, routes)


# --- report ------------------------------------------------------------------------------------------------------
def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 4)


def summarize(trials: list[Trial]) -> list[dict]:
    """One row per (N, method): median, min and max seconds, and the median's ratio to BIRD's."""
    rows = []
    for n in sorted({t.n for t in trials}):
        bird = _median([t.seconds for t in trials if t.n == n and t.method == "bird"])
        for method in METHODS:
            xs = [t.seconds for t in trials if t.n == n and t.method == method]
            rows.append({"n": n, "method": method, "runs": len(xs), "median": _median(xs), "min": round(min(xs), 4),
                         "max": round(max(xs), 4), "ratio_to_bird": round(_median(xs) / bird, 2)})
    return rows


def receivers(trials: list[Trial]) -> list[dict]:
    """Per (N, BGP receiver), medians: receiver sees the session up, first and last route, CPU, RSS."""
    out = []
    for n in sorted({t.n for t in trials}):
        for method in ("bird", "tortie"):
            ts = [t for t in trials if t.n == n and t.method == method]
            out.append({
                "n": n, "method": method,
                "receiver_up": _median([t.receiver_up for t in ts if t.receiver_up is not None]),
                "first_route": _median([t.first_route for t in ts]), "last_route": _median([t.seconds for t in ts]),
                "from_enable": _median([t.from_enable for t in ts if t.from_enable is not None]),
                "cpu_seconds": {p: _median([t.cpu[p] for t in ts]) for p in ts[0].cpu},
                "rss_mib": {p: round(statistics.median(t.rss_kib[p] for t in ts) / 1024, 1) for p in ts[0].rss_kib},
            })
    return out


def render(rows: list[dict], detail: list[dict], family: int = 4) -> str:
    runs = "/".join(str(r) for r in sorted({r["runs"] for r in rows}))
    lines = [f"BGP route installation, IPv{family}: session up -> all N routes in the receiver's kernel "
             f"(seconds, {runs} runs)",
             f"{'N':>7}  {'receiver':<10} {'median':>8} {'min':>8} {'max':>8} {'x BIRD':>7}"]
    lines += [f"{r['n']:>7}  {r['method']:<10} {r['median']:>8.3f} {r['min']:>8.3f} {r['max']:>8.3f} "
              f"{r['ratio_to_bird']:>7.2f}" for r in rows]
    lines += ["", "BGP receivers, medians: s after session up | CPU s, enable to done | RSS MiB when done"]
    for d in detail:
        cpu = ", ".join(f"{p} {s:.2f}" for p, s in d["cpu_seconds"].items())
        rss = ", ".join(f"{p} {m:.1f}" for p, m in d["rss_mib"].items())
        lines.append(f"{d['n']:>7}  {d['method']:<7} sees up {d['receiver_up']:+.3f}, first route "
                     f"{d['first_route']:+.3f}, all {d['last_route']:+.3f} | CPU: {cpu} | RSS: {rss} "
                     f"(total {sum(d['rss_mib'].values()):.1f})")
    return "\n".join(lines)


def machine() -> dict:
    bird = subprocess.run(["bird", "--version"], capture_output=True, text=True, timeout=10)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "")
    return {"cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "python": platform.python_version(),
            "bird": (bird.stdout + bird.stderr).strip(), "exabgp": version("exabgp"),
            "load_average": os.getloadavg()}


# --- main ----------------------------------------------------------------------------------------------------------
def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or not all(1 <= s <= MAX_ROUTES for s in sizes):
        raise argparse.ArgumentTypeError(f"comma-separated route counts from 1 to {MAX_ROUTES}")
    return sizes


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError("a whole number of at least 1")
    return int(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=_sizes, default=[1000, 10000], help="route counts (default 1000,10000)")
    p.add_argument("--repeat", type=_positive, default=3, help="runs of each measurement (default 3)")
    p.add_argument("--quick", action="store_true", help="1000 routes, one run")
    p.add_argument("--family", type=int, choices=(4, 6), default=4,
                   help="IPv4 /26 routes over an IPv4 session (default) or IPv6 /122 routes over an IPv6 one")
    p.add_argument("--output", type=Path, help=f"JSON results (default {RESULTS[4]}, IPv6: {RESULTS[6]})")
    return p.parse_args(argv)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_all(sizes: list[int], repeat: int, scratch: Path, family: int = 4) -> list[Trial]:
    """Every method at every size, `repeat` times, interleaved so that noise spreads over all of them."""
    prefix = "bb" + secrets.token_hex(2)
    trials: list[Trial] = []
    for run in range(1, repeat + 1):
        for n in sizes:
            for method in METHODS:
                trials.append(run_trial(method, n, prefix, len(trials), scratch, family))
                print(f"run {run}/{repeat}  N={n}  {method}: {trials[-1].seconds:.3f} s", file=sys.stderr)
    return trials


def in_scratch(name: str, work: Callable[[Path], T]) -> T:
    """Runs work(scratch) as root, SIGINT and SIGTERM raising KeyboardInterrupt (both clean up; SIGINT may come in
    ignored, as under nohup). The scratch directory is removed afterwards, but kept for its logs after a BenchError.
    Exits 2 without root, 1 after a BenchError, 130 when interrupted."""
    if os.geteuid() != 0:
        print(f"{name}: needs root (network namespaces)", file=sys.stderr)
        raise SystemExit(2)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    scratch = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    try:
        result = work(scratch)
    except BenchError as e:
        print(f"{name}: {e}\nlogs kept in {scratch}", file=sys.stderr)
        raise SystemExit(1) from None
    except BaseException as e:
        shutil.rmtree(scratch, ignore_errors=True)
        if isinstance(e, KeyboardInterrupt):
            raise SystemExit(130) from None
        raise
    shutil.rmtree(scratch, ignore_errors=True)
    return result


def write_results(output: Path, doc: str, **results) -> None:
    """The results as JSON, with when, on which machine and how (the second paragraph of the module's `doc`)."""
    report.write(output, {"generated": datetime.now().isoformat(timespec="seconds"), "machine": machine(),
                          "method": " ".join(doc.split("\n\n")[1].split()), **results})
    print(f"\nwrote {output}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes, repeat = ([1000], 1) if args.quick else (args.sizes, args.repeat)
    trials = in_scratch("bgp_bench", lambda scratch: run_all(sizes, repeat, scratch, args.family))
    rows, detail = summarize(trials), receivers(trials)
    print(render(rows, detail, args.family))
    write_results(args.output or RESULTS[args.family], __doc__, family=args.family, summary=rows, receivers=detail,
                  trials=[asdict(t) for t in trials])
    return 0


if __name__ == "__main__":
    sys.exit(main())
