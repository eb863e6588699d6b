"""Helpers of the overlay lab tests (containers/labs/overlay*.clab.yml): packets sent, captured and forged
inside the lab's nodes."""
from __future__ import annotations

import re
import struct

from bgpd.overlay.vxlan import vtep_mac

TCP_SINK = """
import socket, sys
address = sys.argv[2] if len(sys.argv) > 2 else "0.0.0.0"  # "::" for IPv6
s = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((address, int(sys.argv[1]))); s.listen(); s.settimeout(30)
c, peer = s.accept(); c.settimeout(30); n = 0
while (d := c.recv(65536)):
    n += len(d)
c.sendall(f"{peer[0]} {n}".encode()); c.close()
"""
TCP_SEND = """
import socket, sys, time
for _ in range(100):
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5); break
    except OSError:
        time.sleep(0.1)
c.settimeout(30); c.sendall(b"x" * int(sys.argv[3])); c.shutdown(socket.SHUT_WR)
print(c.recv(100).decode())
"""
UDP_SINK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1]))); s.settimeout(20)
print("ready", flush=True)
while True:
    d = s.recv(100).decode(); print(d, flush=True)
    if d == "last":
        break
"""
SEND_UDP = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(bytes.fromhex(sys.argv[3]), (sys.argv[1], int(sys.argv[2])))
"""


def routes(lab, node: str, version: int = 4) -> dict[str, dict]:
    """`node`'s kernel routes of our protocol (201) of one IP version, by destination."""
    return {r["dst"]: r for r in lab.json(node, "ip", f"-{version}", "-j", "route", "show", "proto", "201")}


def routed(lab, blocks: dict[str, tuple[str, ...]], node: str, version: int = 4) -> bool:
    """Whether `node` has a route to every block of the other nodes (`blocks`: node -> its blocks)."""
    have = routes(lab, node, version)
    return all(b in have for other in blocks if other != node for b in blocks[other])


def in_pod(lab, node: str, pod: str, *cmd: str, **kw):
    return lab.exec(node, "ip", "netns", "exec", f"pod-default-{pod}", *cmd, **kw)


def tcp(lab, src: str, pod: str, dst_node: str, dst: str, size: int, port: int = 8080,
        pod_side: bool = True) -> tuple[str, int]:
    """A TCP transfer of `size` bytes from pod default/`pod` on `src` to `dst`, served on `dst_node` (in its pod
    default/`pod` when `pod_side`, else on the node itself): (the peer the server saw, the bytes it got)."""
    where = ("ip", "netns", "exec", f"pod-default-{pod}") if pod_side else ()
    server = lab.popen(dst_node, *where, "python3", "-c", TCP_SINK, str(port), "::" if ":" in dst else "0.0.0.0")
    try:
        out = in_pod(lab, src, pod, "python3", "-c", TCP_SEND, dst, str(port), str(size)).stdout.split()
        server.wait(timeout=30)
        return out[0], int(out[1])
    finally:
        server.kill()


def checksum(header: bytes) -> int:
    total = sum(struct.unpack("!10H", header))
    total = (total & 0xFFFF) + (total >> 16)
    return ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF


def vxlan_frame(vni: int, node_address: str, src: str, dst: str, port: int, payload: bytes) -> bytes:
    """A VXLAN payload carrying UDP `src` -> `dst`:`port` to the VTEP of the node at `node_address`."""
    from ipaddress import IPv4Address
    udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, IPv4Address(src).packed,
                     IPv4Address(dst).packed)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    mac = bytes.fromhex(vtep_mac(IPv4Address(node_address)).replace(":", ""))
    ether = mac + bytes.fromhex("0e7400000001") + b"\x08\x00"
    return struct.pack("!II", 0x08000000, vni << 8) + ether + ip + udp


def capture(lab, node: str, bpf: str, count: int, action: str, timeout: float = 20) -> list[str]:
    """tcpdump on `node`'s eth1: starts, runs `action` (a shell command) once it listens, returns the first
    `count` packets matching `bpf` as tcpdump prints them, one line each, without the decoded inner packet
    of VXLAN (fewer if `timeout` passes first)."""
    ticks = int(timeout / 0.05)
    script = f"""
f=$(mktemp -u /tmp/tortie-cap.XXXXXX); tcpdump -U -n -i eth1 -c {count} -w $f '{bpf}' 2>/dev/null & p=$!
i=0; while [ ! -s $f ] && [ $i -lt {ticks} ]; do sleep 0.05; i=$((i+1)); done
{action} >/dev/null 2>&1
i=0; while kill -0 $p 2>/dev/null && [ $i -lt {ticks} ]; do sleep 0.05; i=$((i+1)); done
kill $p 2>/dev/null; wait $p 2>/dev/null; tcpdump -n -r $f 2>/dev/null; rm -f $f
"""
    out = lab.exec(node, "sh", "-c", script, timeout=3 * timeout).stdout.splitlines()
    return [line for line in out if re.match(r"\d\d:\d\d:\d\d", line)]
