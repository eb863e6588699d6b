"""A throwaway pod network for tests and the benchmark: pods are network namespaces behind one host namespace.

Every namespace is named `<prefix>-...` with a random per-run prefix, everything is created inside those
namespaces (never in the caller's), and `close()` removes them all. Each pod runs a small echo server on its TCP
and UDP ports; `probe()` tries many (source pod, destination, protocol, port) at once and reports which answered.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # `-m tests.policy.lab` runs from the checkout

POD_NET = "10.99"
HOST_GW = "10.99.255.1"  # the host side of every pod's veth
POD_NET6, HOST_GW6 = "fd99::", "fd99::ffff"
LINK_NET = "10.98"  # host endpoints: host <-> external peers


def _sh(*args: str, ns: str | None = None, check: bool = True, stdin: str | None = None) -> str:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    p = subprocess.run(cmd, capture_output=True, text=True, input=stdin, timeout=120, cwd=ROOT)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip()}")
    return p.stdout


@dataclass
class Pod:
    name: str
    ns: str
    ip: str
    interface: str  # host-side veth
    ip6: str = ""


@dataclass
class Lab:
    prefix: str = field(default_factory=lambda: f"tp{secrets.token_hex(2)}")
    pods: dict[str, Pod] = field(default_factory=dict)
    peers: dict[str, Pod] = field(default_factory=dict)  # external hosts behind a host endpoint interface
    _procs: list[subprocess.Popen] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"{self.prefix}-host"

    def _netns(self, name: str) -> str:
        ns = f"{self.prefix}-{name}"
        _sh("ip", "netns", "add", ns)
        self._namespaces.append(ns)
        _sh("ip", "link", "set", "lo", "up", ns=ns)
        # no duplicate address detection: link-local addresses usable at once, so IPv6 neighbours resolve at once
        _sh("sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0", ns=ns)
        return ns

    def start(self) -> Lab:
        self._netns("host")
        _sh("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", ns=self.host)
        return self

    def plan_pod(self, name: str, index: int) -> Pod:
        """What add_pod creates, without creating it: addresses 10.99.<index/250>.<index%250+1> and
        fd99::<index+1 in hex>, host interface tv<index>."""
        return Pod(name, f"{self.prefix}-{name}", f"{POD_NET}.{index // 250}.{index % 250 + 1}", f"tv{index}",
                   f"{POD_NET6}{index + 1:x}")

    def plan_peer(self, name: str, index: int) -> Pod:
        """What add_peer creates: the peer is 10.98.<index>.2 behind host interface te<index> (10.98.<index>.1)."""
        return Pod(name, f"{self.prefix}-{name}", f"{LINK_NET}.{index}.2", f"te{index}")

    def add_pod(self, name: str, index: int) -> Pod:
        pod = self.plan_pod(name, index)
        ns, ip, iface = self._netns(name), pod.ip, pod.interface
        _sh("ip", "link", "add", iface, "type", "veth", "peer", "name", "eth0", "netns", ns, ns=self.host)
        _sh("ip", "addr", "add", f"{HOST_GW}/32", "dev", iface, ns=self.host)
        _sh("ip", "link", "set", iface, "up", ns=self.host)
        _sh("ip", "route", "add", f"{ip}/32", "dev", iface, ns=self.host)
        _sh("ip", "addr", "add", f"{ip}/32", "dev", "eth0", ns=ns)
        _sh("ip", "link", "set", "eth0", "up", ns=ns)
        _sh("ip", "route", "add", "default", "via", HOST_GW, "dev", "eth0", "onlink", ns=ns)
        _sh("ip", "-6", "addr", "add", f"{HOST_GW6}/128", "dev", iface, "nodad", ns=self.host)
        _sh("ip", "-6", "route", "add", f"{pod.ip6}/128", "dev", iface, ns=self.host)
        _sh("ip", "-6", "addr", "add", f"{pod.ip6}/128", "dev", "eth0", "nodad", ns=ns)
        _sh("ip", "-6", "route", "add", f"{HOST_GW6}/128", "dev", "eth0", ns=ns)
        _sh("ip", "-6", "route", "add", "default", "via", HOST_GW6, "dev", "eth0", ns=ns)
        self.pods[name] = pod
        return pod

    def add_peer(self, name: str, index: int) -> Pod:
        """An external host on its own link to the host namespace."""
        pod = self.plan_peer(name, index)
        ns, ip, iface = self._netns(name), pod.ip, pod.interface
        host_ip = f"{LINK_NET}.{index}.1"
        _sh("ip", "link", "add", iface, "type", "veth", "peer", "name", "eth0", "netns", ns, ns=self.host)
        _sh("ip", "addr", "add", f"{host_ip}/24", "dev", iface, ns=self.host)
        _sh("ip", "link", "set", iface, "up", ns=self.host)
        _sh("ip", "addr", "add", f"{ip}/24", "dev", "eth0", ns=ns)
        _sh("ip", "link", "set", "eth0", "up", ns=ns)
        _sh("ip", "route", "add", "default", "via", host_ip, ns=ns)
        self.peers[name] = pod
        return pod

    def serve(self, ns: str, tcp: list[int], udp: list[int], sink: list[int] = ()) -> None:
        """Starts an echo server in `ns` (and TCP sinks that discard what they read); returns once it listens."""
        p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "tests.policy.lab", "serve",
                              json.dumps({"tcp": tcp, "udp": udp, "sink": list(sink)})], stdout=subprocess.PIPE,
                             text=True, cwd=ROOT)
        self._procs.append(p)
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"echo server in {ns} did not start")

    def probe(self, ns: str, targets: list[tuple], timeout: float = 0.6) -> dict[tuple, bool]:
        """From namespace `ns`, tries every (address, "tcp"|"udp"|"icmp", port[, source port]) in parallel:
        True if it answered. For "icmp" an echo request is sent (the port is ignored)."""
        out = _sh(sys.executable, "-m", "tests.policy.lab", "probe", json.dumps({"targets": targets, "timeout": timeout}),
                  ns=ns)
        return {tuple(t): ok for t, ok in json.loads(out)}

    def measure(self, ns: str, mode: str, addr: str, port: int, seconds: float) -> float:
        """From `ns`: "stream" -> TCP bytes per second sent to a sink; "connect" -> connections per second."""
        spec = json.dumps({"addr": addr, "port": port, "seconds": seconds})
        return float(_sh(sys.executable, "-m", "tests.policy.lab", mode, spec, ns=ns))

    def run(self, ns: str, *args: str, check: bool = True, stdin: str | None = None) -> str:
        return _sh(*args, ns=ns, check=check, stdin=stdin)

    def close(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self._procs.clear()
        for ns in reversed(self._namespaces):
            _sh("ip", "netns", "del", ns, check=False)
        self._namespaces.clear()


def _serve(spec: dict) -> None:
    socks = []
    def dual_stack(kind: int, port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET6, kind)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", port))
        return s

    for port in spec["tcp"]:
        s = dual_stack(socket.SOCK_STREAM, port)
        s.listen(128)
        socks.append(s)
    for port in spec["udp"]:
        socks.append(dual_stack(socket.SOCK_DGRAM, port))

    def tcp_loop(s: socket.socket) -> None:
        while True:
            c, _ = s.accept()
            try:
                c.sendall(b"ok")
            except OSError:
                pass
            c.close()

    def udp_loop(s: socket.socket) -> None:
        while True:
            data, addr = s.recvfrom(2048)
            s.sendto(b"ok", addr)

    def drain(c: socket.socket) -> None:
        buf = bytearray(1 << 20)
        with c:
            while c.recv_into(buf):
                pass

    def sink_loop(s: socket.socket) -> None:
        while True:
            c, _ = s.accept()
            threading.Thread(target=drain, args=(c,), daemon=True).start()

    for port in spec.get("sink", []):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(16)
        threading.Thread(target=sink_loop, args=(s,), daemon=True).start()
    for s in socks:
        loop = tcp_loop if s.type == socket.SOCK_STREAM else udp_loop
        threading.Thread(target=loop, args=(s,), daemon=True).start()
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


def _probe_one(addr: str, proto: str, port: int, timeout: float, src_port: int = 0) -> bool:
    if proto == "icmp":  # port is the ICMP type to send: only echo requests (8) get an answer to check
        return subprocess.run(["ping", "-c1", "-n", "-q", f"-W{max(1, round(timeout))}", addr],
                              capture_output=True).returncode == 0
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    v6 = ":" in addr
    with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, kind) as s:
        s.settimeout(timeout)
        try:
            if src_port:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("::" if v6 else "0.0.0.0", src_port))
            if proto == "tcp":
                s.connect((addr, port))
            else:
                s.sendto(b"hi", (addr, port))
            return s.recv(16) == b"ok"
        except OSError:
            return False


def _probe(spec: dict) -> None:
    targets = [tuple(t) for t in spec["targets"]]
    results: list[bool] = [False] * len(targets)

    def work(i: int) -> None:
        addr, proto, port, *src_port = targets[i]
        results[i] = _probe_one(addr, proto, port, spec["timeout"], *src_port)  # type: ignore[arg-type]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(targets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(list(zip(targets, results))))


def _stream(spec: dict) -> None:
    buf = b"\0" * (1 << 20)
    sent = 0
    with socket.create_connection((spec["addr"], spec["port"]), timeout=10) as s:
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < spec["seconds"]:
            s.sendall(buf)
            sent += len(buf)
    print(sent / elapsed)


def _connect(spec: dict) -> None:
    count = 0
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < spec["seconds"]:
        with socket.create_connection((spec["addr"], spec["port"]), timeout=5) as s:
            s.recv(16)
        count += 1
    print(count / elapsed)


if __name__ == "__main__":
    {"serve": _serve, "probe": _probe, "stream": _stream, "connect": _connect}[sys.argv[1]](json.loads(sys.argv[2]))
    os._exit(0)
