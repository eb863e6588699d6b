"""The WireGuard lab (containers/labs/mesh3-wireguard.clab.yml) on real packets: pods reach each other across
hosts through WireGuard, the underlay switch sees only WireGuard's UDP (never the payload, never a pod
address), keys survive restarts, rotation costs at most one handshake, forged packets never reach a pod."""
import base64
import ipaddress
import secrets

import pytest

from tests.netns import requires_root, running_lab, wait_for
from tests.node.vxlan_lab import UDP_SINK
from tests.node.wireguard_lab import MARKER, capture, ping_gaps, pod_ip, status, transfer

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(300)]

NODES = {"node1": "10.91.0.1", "node2": "10.91.0.2", "node3": "10.91.0.3"}
POOL = ipaddress.ip_network("10.247.0.0/24")
PORT = 51820
HANDSHAKE = 5.0  # seconds: WireGuard's REKEY_TIMEOUT, the wait before a handshake is tried again


@pytest.fixture(scope="module")
def lab():
    for lab in running_lab("mesh3-wireguard.clab.yml", "w"):
        wait_for(lambda: all(len(status(lab, n)["wireguard"]["peers"]) == 2
                             and status(lab, n)["wireguard"]["encrypted_routes"] == 2 for n in NODES), 60,
                 what="every node with two WireGuard peers and their blocks routed through the device")
        lab.pods = {n: pod_ip(lab, n, "default/p") for n in NODES}
        yield lab


def test_status_shows_wireguard_go_and_every_remote_block_goes_through_the_device(lab):
    for n in NODES:
        w = status(lab, n)["wireguard"]
        assert w["implementation"] == "wireguard-go" and w["mtu"] == 1440 and not w["error"]
        assert w["nodes_without_key"] == [] and w["required"] is False
        routes = lab.json(n, "ip", "-j", "route", "show", "proto", "201")
        remote = [r for r in routes if r.get("type") != "blackhole"]
        assert len(remote) == 2 and all(r["dev"] == "tortie.wg" for r in remote), routes
        # the pods' interfaces leave room for WireGuard's 60 bytes
        assert "mtu 1440" in lab.exec(n, "tortie", "pod", "exec", "default/p", "--", "ip", "link", "show",
                                      "eth0").stdout


def test_pod_to_pod_icmp_and_tcp_across_hosts(lab):
    for src, dst in (("node1", "node2"), ("node2", "node3"), ("node3", "node1")):
        lab.exec(src, "tortie", "pod", "exec", "default/p", "--", "ping", "-c", "2", "-W", "2", lab.pods[dst])
        assert transfer(lab, src, "default/p", dst, "default/p", lab.pods[dst], 1000) == 1000 * len(MARKER)


def test_the_underlay_sees_only_wireguard_udp_between_hosts(lab):
    repeat = 40000  # about 1 MB
    got = []
    packets, raw = capture(lab, "sw", lambda: got.append(
        transfer(lab, "node1", "default/p", "node2", "default/p", lab.pods["node2"], repeat)))
    assert got == [repeat * len(MARKER)]
    assert MARKER not in raw
    hosts = {ipaddress.ip_address(a) for a in NODES.values()}
    for p in packets:
        assert p.src not in POOL and p.dst not in POOL, p
        # BGP between the hosts, MQTT to the broker, and WireGuard: nothing else crosses the switch
        assert (p.proto, min(p.sport, p.dport)) in {(6, 179), (6, 1883)} or (
            p.proto == 17 and p.sport == p.dport == PORT and {p.src, p.dst} <= hosts), p
    wireguard = sum(len(p.raw) for p in packets if p.proto == 17 and {p.src, p.dst} == set(map(
        ipaddress.ip_address, (NODES["node1"], NODES["node2"]))))
    assert wireguard > repeat * len(MARKER)  # the transfer crossed, as WireGuard's UDP


def test_metrics_give_handshake_age_and_bytes_per_peer(lab):
    lab.exec("node1", "tortie", "pod", "exec", "default/p", "--", "ping", "-c", "1", "-W", "2", lab.pods["node3"])
    text = lab.exec("node1", "python3", "-c", "import urllib.request; print(urllib.request.urlopen("
                    "'http://127.0.0.1:9473/metrics').read().decode())").stdout
    assert 'tortie_wireguard_handshake_age_seconds{peer="node3"}' in text
    assert 'tortie_wireguard_sent_bytes_total{peer="node3"}' in text
    assert "tortie_wireguard_peers_without_key 0.0" in text
    assert 'tortie_wireguard_device_up{implementation="wireguard-go"} 1.0' in text


def test_a_restart_keeps_the_key(lab):
    before = status(lab, "node2")["wireguard"]["public_key"]
    pid = int(lab.exec("node2", "cat", "/run/tortie/tortie.pid").stdout)
    lab.exec("node2", "kill", "-TERM", str(pid))
    wait_for(lambda: lab.exec("node2", "test", "-e", f"/proc/{pid}", check=False).returncode != 0, 15,
             what="the daemon to stop")
    lab.exec("node2", "sh", "-c", "tortie run --config /etc/tortie/tortie.yaml >>/tmp/tortie.log 2>&1 &")
    wait_for(lambda: lab.exec("node2", "test", "-S", "/run/tortie/tortie.sock", check=False).returncode == 0
             and status(lab, "node2")["wireguard"]["encrypted_routes"] == 2, 30, what="node2 back")
    assert status(lab, "node2")["wireguard"]["public_key"] == before
    assert lab.exec("node2", "stat", "-c", "%a", "/var/lib/tortie/wireguard.key").stdout.strip() == "600"
    lab.exec("node1", "tortie", "pod", "exec", "default/p", "--", "ping", "-c", "2", "-W", "2", lab.pods["node2"])


def test_rotation_loses_at_most_one_handshake(lab):
    before = status(lab, "node2")["wireguard"]["public_key"]
    result = ping_gaps(lab, "node1", "default/p", lab.pods["node2"], seconds=12)
    wait_for(lambda: status(lab, "node1")["wireguard"]["peers"][0]["handshake_age"] is not None, 10,
             what="a handshake before the rotation")
    out = lab.exec("node2", "tortie", "wireguard", "rotate").stdout
    new = out.split()[-1]
    assert new != before and status(lab, "node2")["wireguard"]["public_key"] == new
    wait_for(lambda: any(p["node"] == "node2" for p in status(lab, "node1")["wireguard"]["peers"]), 10,
             what="node1 to learn node2's new key")
    sent, received, gap = result()
    assert gap <= HANDSHAKE, (sent, received, gap)
    assert received >= sent - HANDSHAKE / 0.05


def test_a_forged_packet_from_a_host_without_the_right_key_never_reaches_a_pod(lab):
    """sw plays a host on the underlay with its own WireGuard key, set up to reach node2's pod: node2 does not
    know that key, so nothing it sends gets through; a made-up transport packet does no better."""
    target, node2_key = lab.pods["node2"], status(lab, "node2")["wireguard"]["public_key"]
    sink = lab.popen("node2", "tortie", "pod", "exec", "default/p", "--", "python3", "-c", UDP_SINK, "7007")
    assert sink.stdout.readline().strip() == "ready"
    evil = secrets.token_bytes(32)
    forge = f"""
set -e
ip addr add 10.91.0.99/24 dev br0 2>/dev/null || true
WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 wireguard-go tortie.evil
echo {base64.b64encode(evil).decode()} > /tmp/evil.key
wg set tortie.evil private-key /tmp/evil.key listen-port {PORT} \
    peer {node2_key} endpoint {NODES['node2']}:{PORT} allowed-ips {target}/32
ip link set tortie.evil up
ip route replace {target}/32 dev tortie.evil
for i in 1 2 3 4 5; do python3 -c 'import socket; socket.socket(2, 2).sendto(b"forged", ("{target}", 7007))'; done
python3 -c 'import os, socket
socket.socket(2, 2).sendto(bytes([4, 0, 0, 0]) + os.urandom(60), ("{NODES["node2"]}", {PORT}))'
"""
    lab.exec("sw", "sh", "-c", forge)
    def transfer_counts():  # (received, sent) bytes of the forged tunnel
        return tuple(map(int, lab.exec("sw", "wg", "show", "tortie.evil", "transfer").stdout.split()[1:3]))
    wait_for(lambda: transfer_counts()[1] > 0, 10, what="the forged handshake to be sent")
    # a legitimate datagram, through node1's tunnel, ends the sink
    lab.exec("node1", "tortie", "pod", "exec", "default/p", "--", "python3", "-c",
             f"import socket; socket.socket(2, 2).sendto(b'last', ('{target}', 7007))")
    out, _ = sink.communicate(timeout=30)
    assert out.split() == ["last"]
    assert transfer_counts()[0] == 0  # node2 never answered the forged key
    peers = {p["node"] for p in status(lab, "node2")["wireguard"]["peers"]}
    assert peers == {"node1", "node3"}
    lab.exec("sw", "sh", "-c", "ip link del tortie.evil; ip addr del 10.91.0.99/24 dev br0", check=False)
