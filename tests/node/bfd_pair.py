"""Test helpers for BFD: two namespaces joined by a veth pair (IPv4, or both families), runners that report state
changes, nft cuts, FRR and BIRD peers; for scripts running the daemon's BfdService, a second service and removal."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from ipaddress import ip_address
from pathlib import Path

from bgpd.bfd.service import BfdService
from config.node import Peer

LEFT, RIGHT = "10.77.0.1", "10.77.0.2"
LEFT6, RIGHT6 = "fd77::1", "fd77::2"
FAST = ("--min-rx", "100", "--min-tx", "100", "--multiplier", "3")  # runner options: detection time 300 ms
DETECT, SLACK = 0.3, 0.2  # FAST's detection time; slack: scheduling on a shared two-core machine
# `nft -f -` input that drops the BFD packets a namespace sends (heal_bfd removes it)
BFD_CUT = "table inet bfdcut {\n chain out {\n type filter hook output priority 0;\n udp dport 3784 drop\n }\n}\n"
# `nft -f -` input that cuts a namespace off silently: everything in and out dropped, the link stays up
SILENCE = ("table inet cut {\n chain in {\n type filter hook input priority -300;\n drop\n }\n"
           " chain out {\n type filter hook output priority -300;\n drop\n }\n}\n")


def veth_pair(make_netns, ipv6: bool = False) -> tuple[str, str]:
    """Two fresh namespaces, LEFT and RIGHT on either end of one veth pair (created inside the namespaces); with
    ipv6, LEFT6 and RIGHT6 too (no duplicate address detection: usable at once)."""
    a, b = make_netns("bfda"), make_netns("bfdb")
    subprocess.run(["ip", "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b],
                   check=True)
    for ns, addr in ((a, LEFT), (b, RIGHT)):
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)
    if ipv6:
        for ns, addr in ((a, LEFT6), (b, RIGHT6)):
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{addr}/64", "dev", "eth0", "nodad"], check=True,
                           timeout=10)
    return a, b


class Lines:
    """Reads a process's JSON lines on a thread so a test can wait for one with a timeout."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.q: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.q.put(json.loads(line))

    def wait(self, predicate, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        for item in self.seen:
            if predicate(item):
                return item
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; saw {self.seen}")
            try:
                item = self.q.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(item)
            if predicate(item):
                return item


def start_runner(ns: str, listen: str, peer: str, *extra: str) -> Lines:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "bgpd.bfd.runner", "--listen", listen,
                             "--peer", peer, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    lines = Lines(proc)
    lines.wait(lambda d: "listening" in d, 20, f"the runner in {ns} to listen")
    return lines


def stop_runner(lines: Lines) -> dict:
    """SIGTERM (sessions end with AdminDown), then the runner's last line: its counters."""
    if lines.proc.returncode is not None:
        return {}
    if lines.proc.poll() is None:
        lines.proc.terminate()
    try:
        lines.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        lines.proc.kill()
        lines.proc.wait()
    return lines.wait(lambda d: "stats" in d, 5, "runner stats")["stats"]


def state_is(peer: str, state: str):
    return lambda d: d.get("peer") == peer and d.get("new") == state


def cut_bfd(ns: str) -> float:
    """Drops every BFD packet leaving `ns` (a silent failure: the link stays up); returns when it took effect."""
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], text=True, check=True, capture_output=True,
                   timeout=10, input=BFD_CUT)
    return time.time()


def heal_bfd(ns: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "bfdcut"], check=True,
                   capture_output=True, timeout=10)


@contextlib.contextmanager
def two_runners(a: str, b: str, left_addr: str, right_addr: str):
    """Runners at FAST timers in a (on left_addr) and b, each the other's peer, once both are up; both stopped
    afterwards. Yields (left, right, stats): stats is filled in with left's counters when it has stopped."""
    left, right = start_runner(a, left_addr, right_addr, *FAST), start_runner(b, right_addr, left_addr, *FAST)
    stats: dict = {}
    try:
        left.wait(state_is(right_addr, "UP"), 10, "left up")
        right.wait(state_is(left_addr, "UP"), 10, "right up")
        yield left, right, stats
    finally:
        stats.update(stop_runner(left))
        stop_runner(right)


def detect_silence(runner: Lines, theirs: str, after: float = 0.0, what: str = "our detection") -> dict:
    """Cuts the BFD packets `theirs` sends: the runner's next Down (after `after`) must come within the detection
    time, for its expiry. Returns that Down."""
    cut = cut_bfd(theirs)
    down = runner.wait(lambda d: d.get("new") == "DOWN" and d["time"] > after, 5, what)
    assert down["diag"] == "DETECTION_TIME_EXPIRED"
    assert down["time"] - cut < DETECT + SLACK, down["time"] - cut
    return down


def up_again(runner: Lines, down: dict, what: str = "up again") -> dict:
    return runner.wait(lambda d: d.get("new") == "UP" and d["time"] > down["time"], 10, what)


# a BFD packet (hex) sent from src port 49999 with that TTL or hop limit, as a forger would
SEND = """
import socket
v6 = ":" in "{src}"
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(*((socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS) if v6 else (socket.IPPROTO_IP, socket.IP_TTL)), {hops})
s.bind(("{src}", 49999))
s.sendto(bytes.fromhex("{data}"), ("{dst}", 3784))
"""


def frr_peer(peer: str, local: str) -> str:
    """bfdd's configuration: one peer at FAST's timers."""
    return (f"bfd\n peer {peer} local-address {local}\n  receive-interval 100\n  transmit-interval 100\n"
            "  detect-multiplier 3\n !\n!\n")


async def second_service(listen: str, peer: str, bfd: dict):
    """The status of `peer` in a second BfdService on `listen`, whose port another service holds; it is closed."""
    second = BfdService([ip_address(listen)], lambda peer, reason: None)
    second.configure([Peer(address=peer, asn=1, bfd=bfd)])
    await second.start()
    status = second.status(peer)
    second.close()
    return status


async def remove_and_close(svc, keep: list, gone: str):
    """Configures `svc` with only `keep`; returns the status of `gone` after that and closes `svc` once its
    AdminDown had time to leave."""
    svc.configure(keep)
    status = svc.status(gone)
    await asyncio.sleep(0.3)
    svc.close()
    return status


class Frr:
    """FRR's zebra and bfdd in a namespace, sockets and pid files in a private directory (owned by user frr)."""

    def __init__(self, ns: str, config: str):
        self.ns = ns
        self.dir = tempfile.mkdtemp(prefix="bfd-frr-")
        shutil.chown(self.dir, "frr", "frr")
        Path(self.dir, "zebra.conf").write_text("")
        Path(self.dir, "bfdd.conf").write_text(config)
        common = ["-z", f"{self.dir}/zserv.api", "--vty_socket", self.dir, "-P", "0", "-d"]
        for daemon, extra in (("zebra", []), ("bfdd", ["--bfdctl", f"{self.dir}/bfdd.sock"])):
            subprocess.run(["ip", "netns", "exec", ns, f"/usr/lib/frr/{daemon}", "-f", f"{self.dir}/{daemon}.conf",
                            "-i", f"{self.dir}/{daemon}.pid", "--log", f"file:{self.dir}/{daemon}.log", *common,
                            *extra], check=True, timeout=30, capture_output=True)

    def peers(self) -> dict[str, dict]:
        out = subprocess.run(["vtysh", "--vty_socket", self.dir, "-c", "show bfd peers json"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
        return {p["peer"]: p for p in json.loads(out)}

    def stop(self) -> None:
        for daemon in ("bfdd", "zebra"):
            pidfile = Path(self.dir, f"{daemon}.pid")
            if pidfile.exists():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pidfile.read_text()), signal.SIGTERM)
        shutil.rmtree(self.dir, ignore_errors=True)


class Bird:
    """BIRD 2 in a namespace with its control socket in a private directory."""

    def __init__(self, ns: str, config: str):
        self.ns = ns
        self.dir = tempfile.mkdtemp(prefix="bfd-bird-")
        Path(self.dir, "bird.conf").write_text(config)
        subprocess.run(["ip", "netns", "exec", ns, "bird", "-c", f"{self.dir}/bird.conf", "-s", self.ctl,
                        "-P", f"{self.dir}/bird.pid"], check=True, timeout=30, capture_output=True)

    @property
    def ctl(self) -> str:
        return f"{self.dir}/bird.ctl"

    def sessions(self) -> dict[str, str]:
        """Peer address -> BFD state, from `show bfd sessions`."""
        out = subprocess.run(["birdc", "-s", self.ctl, "show", "bfd", "sessions"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
        return {f[0]: f[2] for line in out.splitlines() if len(f := line.split()) >= 3 and f[0][0].isdigit()}

    def stop(self) -> None:
        pidfile = Path(self.dir, "bird.pid")
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGTERM)
        shutil.rmtree(self.dir, ignore_errors=True)
