"""Helpers of the WireGuard lab tests (containers/labs/mesh3-wireguard.clab.yml and its mixed variant):
pods, transfers carrying a marker, and a capture on the underlay switch read back as IPv4 packets."""
from __future__ import annotations

import base64
import json
import struct
import time
from dataclasses import dataclass
from ipaddress import IPv4Address

from tests.netns import wait_for

MARKER = b"TORTIE-SECRET-MARKER-7c1f"
NODES = ("node1", "node2", "node3")
NODE_CONFIG = """\
name: {name}
router_id: 10.90.0.{i}
asn: 64512
listen_address: 10.90.0.{i}
pools: [{{cidr: 10.248.0.0/24, block_size: 28, vxlan: {vxlan}}}]
blocks: [10.248.0.{block}/28]
mesh: {{enabled: true, hold_time: 9}}
datastore: {{type: files, path: /srv/tortie-cluster, lease_ttl: 3}}
wireguard: {wireguard}
node_grace: 6
initial_sync_timeout: 5
metrics: {{port: 0}}
pod_netns_prefix: pod-
"""
MARKED_SINK = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5001)); s.listen(); s.settimeout(30)
c, _ = s.accept(); c.settimeout(30); n = 0
while (d := c.recv(65536)):
    n += len(d)
c.sendall(str(n).encode()); c.close()
"""
MARKED_SEND = """
import socket, sys, time
for _ in range(100):
    try:
        c = socket.create_connection((sys.argv[1], 5001), timeout=5); break
    except OSError:
        time.sleep(0.1)
c.settimeout(30); c.sendall(sys.argv[2].encode() * int(sys.argv[3])); c.shutdown(socket.SHUT_WR)
print(c.recv(100).decode())
"""


def mixed_topology(tmp_path, wireguard: dict[str, str], vxlan: str) -> str:
    """Three hosts on one switch sharing a files datastore, each with its own `wireguard` settings (YAML flow
    text by node); node<i> has block 10.248.0.<16 i>/28 of a pool with the given `vxlan` mode."""
    nodes = {"sw": {"kind": "linux", "cmd": "sleep infinity",
                    "exec": ["ip link add br0 type bridge"] + [f"ip link set eth{i} master br0" for i in (1, 2, 3)]
                    + ["ip link set br0 up"]}}
    for i, name in enumerate(NODES, 1):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tortie.yaml").write_text(NODE_CONFIG.format(name=name, i=i, block=16 * i, vxlan=vxlan,
                                                                        wireguard=wireguard[name]))
        nodes[name] = {"kind": "linux", "cmd": "tortie run --config /etc/tortie/tortie.yaml",
                       "binds": [f"{name}:/etc/tortie", "cluster:/srv/tortie-cluster"],
                       "exec": [f"ip addr add 10.90.0.{i}/24 dev eth1"]}
    (tmp_path / "cluster").mkdir()
    links = [{"endpoints": [f"{n}:eth1", f"sw:eth{i}"]} for i, n in enumerate(NODES, 1)]
    path = tmp_path / "mixed.clab.yml"
    path.write_text(json.dumps({"name": "mixed", "topology": {"nodes": nodes, "links": links}}))
    return str(path)


def status(lab, node: str) -> dict:
    return lab.json(node, "tortie", "status", "--json")


def pod_ip(lab, node: str, pod: str) -> str:
    """The pod's address, adding the pod if it is not there yet."""
    for p in lab.json(node, "tortie", "pod", "list", "--json"):
        if f"{p['namespace']}/{p['name']}" == pod:
            return p["ip"]
    return lab.exec(node, "tortie", "pod", "add", pod).stdout.strip()


def transfer(lab, src: str, src_pod: str, dst: str, dst_pod: str, dst_ip: str, repeat: int) -> int:
    """TCP from src's pod to dst's pod carrying MARKER `repeat` times; the bytes the receiver counted."""
    sink = lab.popen(dst, "tortie", "pod", "exec", dst_pod, "--", "python3", "-c", MARKED_SINK)
    try:
        out = lab.exec(src, "tortie", "pod", "exec", src_pod, "--", "python3", "-c", MARKED_SEND, dst_ip,
                       MARKER.decode(), str(repeat)).stdout
    finally:
        sink.communicate(timeout=40)
    return int(out.strip())


@dataclass(frozen=True)
class Packet:
    src: IPv4Address
    dst: IPv4Address
    proto: int
    sport: int
    dport: int
    raw: bytes  # the whole frame


FENCE = "746f727469652d66656e6365"  # "tortie-fence": the payload of the ICMPv6 echo that closes a capture


def capture(lab, switch: str, action) -> tuple[list[Packet], bytes]:
    """Everything crossing the switch's bridge while `action()` runs: (IPv4 packets, the whole capture).

    tcpdump hands packets over in blocks (up to a second late unless --immediate-mode) and drops what it has not
    written when stopped, so a capture is closed by a fence: an ICMPv6 echo (which `parse_pcap` skips) sent from
    the switch after `action()`; once the fence is in the file, so is every frame that crossed before it."""
    # a 64 MiB ring: wireguard-go sends in bursts, and with the default 2 MiB tcpdump lost a fifth of them
    lab.exec(switch, "sh", "-c", "rm -f /tmp/wg.pcap; tcpdump --immediate-mode -B 65536 -U -n -s 0 -i br0 "
                                 "-w /tmp/wg.pcap >/dev/null 2>/tmp/wg.err & echo $! > /tmp/wg.pid")
    wait_for(lambda: lab.exec(switch, "test", "-s", "/tmp/wg.pcap", check=False).returncode == 0, 10,
             what="tcpdump to listen")
    try:
        action()

        def fenced() -> bool:
            lab.exec(switch, "ping", "-6", "-n", "-c", "1", "-W", "1", "-p", FENCE, "-I", "br0", "ff02::1",
                     check=False)
            return lab.exec(switch, "python3", "-c", "import sys; sys.exit(bytes.fromhex(sys.argv[1]) not in "
                            "open('/tmp/wg.pcap', 'rb').read())", FENCE, check=False).returncode == 0
        wait_for(fenced, 20, what="the capture's fence in the file")
    finally:
        lab.exec(switch, "timeout", "10", "sh", "-c", "p=$(cat /tmp/wg.pid); kill -INT $p; "
                                                     "while kill -0 $p 2>/dev/null; do sleep 0.05; done")
    report = lab.exec(switch, "cat", "/tmp/wg.err").stdout
    assert "\n0 packets dropped by kernel" in report, report
    data = base64.b64decode(lab.exec(switch, "base64", "-w0", "/tmp/wg.pcap").stdout)
    return parse_pcap(data), data


def parse_pcap(data: bytes) -> list[Packet]:
    """IPv4 packets of an Ethernet pcap (tcpdump -w); other frames (ARP, IPv6) are skipped."""
    out, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack_from("<I", data, off + 8)[0]
        frame = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl, proto = (ip[0] & 0xF) * 4, ip[9]
        sport, dport = struct.unpack_from("!HH", ip, ihl) if proto in (6, 17) and len(ip) >= ihl + 4 else (0, 0)
        out.append(Packet(IPv4Address(ip[12:16]), IPv4Address(ip[16:20]), proto, sport, dport, frame))
    return out


def ping_gaps(lab, node: str, pod: str, dst: str, seconds: float, interval: float = 0.05):
    """Starts pinging `dst` from the pod for `seconds`; returns a function that waits and gives
    (sent, received, the longest run of lost replies in seconds)."""
    count = int(seconds / interval)
    proc = lab.popen(node, "tortie", "pod", "exec", pod, "--", "ping", "-n", "-i", str(interval), "-c", str(count),
                     "-W", "1", dst)
    started = time.monotonic()

    def result():
        out, err = proc.communicate(timeout=seconds + 30)
        seqs = sorted(int(line.split("icmp_seq=")[1].split()[0]) for line in out.splitlines() if "icmp_seq=" in line)
        gaps = [b - a - 1 for a, b in zip([0] + seqs, seqs + [count + 1])]
        assert seqs, out + err + f" (after {time.monotonic() - started:.1f} s)"
        return count, len(seqs), max(gaps) * interval
    return result
