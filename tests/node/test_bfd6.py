"""BFD over IPv6 (RFC 5881 over IPv6: hop limit 255 both ways), in namespaces across a veth pair that carries
both families: our runners come up, detect a silent peer and recover; our packets leave with hop limit 255
from a high source port and a packet with a lower hop limit is discarded; the daemon's service runs one
endpoint per family at once, each peer on its family's; and FRR's bfdd peers with us over IPv6."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bgpd.bfd.packet import ControlPacket, State, decode
from tests.netns import requires_root, run_in_netns, wait_for
from tests.node.bfd_pair import (LEFT, RIGHT, Frr, cut_bfd, heal_bfd, start_runner, state_is, stop_runner,
                                 veth_pair)

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(120)]

LEFT6, RIGHT6 = "fd77::1", "fd77::2"
FAST = ("--min-rx", "100", "--min-tx", "100", "--multiplier", "3")  # detection time 300 ms
DETECT, SLACK = 0.3, 0.2  # slack: scheduling on a shared two-core machine


@pytest.fixture
def pair(make_netns) -> tuple[str, str]:
    """The BFD veth pair (LEFT, RIGHT), with LEFT6 and RIGHT6 too (no duplicate address detection: usable now)."""
    a, b = veth_pair(make_netns)
    for ns, addr in ((a, LEFT6), (b, RIGHT6)):
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{addr}/64", "dev", "eth0", "nodad"], check=True, timeout=10)
    return a, b


def test_two_runners_over_ipv6_come_up_detect_a_silent_peer_and_recover(pair):
    a, b = pair
    left, right = start_runner(a, LEFT6, RIGHT6, *FAST), start_runner(b, RIGHT6, LEFT6, *FAST)
    try:
        left.wait(state_is(RIGHT6, "UP"), 10, "left up")
        right.wait(state_is(LEFT6, "UP"), 10, "right up")
        cut_at = cut_bfd(b)  # table inet: right's IPv6 BFD packets are dropped too
        down = left.wait(state_is(RIGHT6, "DOWN"), 5, "left detects the silence")
        assert down["diag"] == "DETECTION_TIME_EXPIRED" and down["time"] - cut_at < DETECT + SLACK
        heal_bfd(b)
        left.wait(lambda d: d.get("new") == "UP" and d["time"] > down["time"], 10, "left up again")
    finally:
        stats = stop_runner(left)
        stop_runner(right)
    assert stats["rx_packets"] > 0 and not stats.get("rx_discarded_ttl")


SNIFF6 = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS, 1)
s.bind(("{addr}", 3784))
s.settimeout(10)
data, anc, _, src = s.recvmsg(128, socket.CMSG_SPACE(4) * 2)
got = {{kind: int.from_bytes(d[:4], sys.byteorder) for level, kind, d in anc}}
print(src[1], got[socket.IPV6_HOPLIMIT], got[socket.IPV6_TCLASS], data.hex())
"""
SEND6 = """
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, {hops})
s.bind(("{src}", 49999))
s.sendto(bytes.fromhex("{data}"), ("{dst}", 3784))
"""


def test_our_ipv6_packets_have_hop_limit_255_and_a_lower_one_is_discarded(pair):
    a, b = pair
    left = start_runner(a, LEFT6, RIGHT6)
    try:
        port, hops, tclass, data = run_in_netns(b, SNIFF6.format(addr=RIGHT6), timeout=20).stdout.split()
        assert int(hops) == 255 and int(tclass) == 0xC0 and 49152 <= int(port) <= 65535
        p = decode(bytes.fromhex(data))
        assert p.state == State.DOWN and p.your_discr == 0
        # a packet from the right address that crossed a router (hop limit 254) is not a neighbour's
        forged = ControlPacket(state=State.DOWN, detect_mult=3, my_discr=7).encode().hex()
        for hops in (254, 255):
            assert run_in_netns(b, SEND6.format(hops=hops, src=RIGHT6, dst=LEFT6, data=forged)).returncode == 0
        left.wait(state_is(RIGHT6, "INIT"), 5, "the hop limit 255 packet taken (Down -> Init)")
    finally:
        stats = stop_runner(left)
    assert stats["rx_discarded_ttl"] == 1 and stats["rx_packets"] == 1


SERVICE = """
import asyncio, json, time
from ipaddress import ip_address
from bgpd.bfd.service import BfdService
from config.node import Peer

async def until(pred, timeout):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.01)

async def main():
    svc = BfdService([ip_address("{left}"), ip_address("{left6}")], lambda peer, reason: None)
    fast = {{"enabled": True, "min_rx": 100, "min_tx": 100}}
    svc.configure([Peer(address="{right}", asn=1, bfd=fast), Peer(address="{right6}", asn=1, bfd=fast)])
    await svc.start()
    await until(lambda: svc.status("{right}").state == "up" and svc.status("{right6}").state == "up", 10)
    out = {{"sessions": {{v: sorted(map(str, e.sessions)) for v, e in svc.endpoints.items()}},
           "up": [svc.status(p).state for p in ("{right}", "{right6}")]}}
    second = BfdService([ip_address("{left6}")], lambda peer, reason: None)  # [fd77::1]:3784 taken
    second.configure([Peer(address="{right6}", asn=1, bfd=fast)])
    await second.start()
    out["second"] = second.status("{right6}").error
    second.close()
    svc.configure([Peer(address="{right}", asn=1, bfd=fast)])
    out["after_removal"] = svc.status("{right6}")
    await asyncio.sleep(0.3)
    svc.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def test_the_service_runs_one_endpoint_per_family(pair):
    a, b = pair
    right, right6 = start_runner(b, RIGHT, LEFT, *FAST), start_runner(b, RIGHT6, LEFT6, *FAST)
    try:
        r = run_in_netns(a, SERVICE.format(left=LEFT, left6=LEFT6, right=RIGHT, right6=RIGHT6), timeout=60)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        removed = right6.wait(lambda d: d.get("remote") == "ADMIN_DOWN", 5, "AdminDown to the removed IPv6 peer")
    finally:
        stop_runner(right)
        stop_runner(right6)
    assert out["sessions"] == {"4": [RIGHT], "6": [RIGHT6]} and out["up"] == ["up", "up"]
    assert out["second"] == f"cannot listen on [{LEFT6}]:3784: Address already in use"
    assert out["after_removal"] is None and removed["new"] == "DOWN"


def test_the_runner_refuses_peers_of_the_other_family():
    r = subprocess.run([sys.executable, "-m", "bgpd.bfd.runner", "--listen", LEFT6, "--peer", RIGHT],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and f"peers {RIGHT} are not of the family of --listen {LEFT6}" in r.stderr


FRR6 = f"""
bfd
 peer {LEFT6} local-address {RIGHT6}
  receive-interval 100
  transmit-interval 100
  detect-multiplier 3
 !
!
"""


def test_frr_bfdd_over_ipv6(pair):
    ours, theirs = pair
    frr = Frr(theirs, FRR6)
    runner = start_runner(ours, LEFT6, RIGHT6, *FAST)
    try:
        runner.wait(state_is(RIGHT6, "UP"), 15, "our session up")
        wait_for(lambda: frr.peers().get(LEFT6, {}).get("status") == "up", 10, what="bfdd's session up")
        cut = cut_bfd(theirs)  # bfdd falls silent: we declare it down in time
        down = runner.wait(state_is(RIGHT6, "DOWN"), 5, "our detection")
        assert down["diag"] == "DETECTION_TIME_EXPIRED" and down["time"] - cut < DETECT + SLACK
        heal_bfd(theirs)
        runner.wait(lambda d: d.get("new") == "UP" and d["time"] > down["time"], 10, "up again")
        wait_for(lambda: frr.peers().get(LEFT6, {}).get("status") == "up", 10, what="bfdd up again")
    finally:
        stop_runner(runner)
        frr.stop()
