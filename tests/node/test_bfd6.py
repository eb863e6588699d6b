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
from tests.node.bfd_pair import (FAST, LEFT, LEFT6, RIGHT, RIGHT6, SEND, Frr, detect_silence, frr_peer, heal_bfd,
                                 start_runner, state_is, stop_runner, two_runners, up_again, veth_pair)

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(120)]



@pytest.fixture
def pair(make_netns) -> tuple[str, str]:
    """The BFD veth pair, with IPv6 addresses too."""
    return veth_pair(make_netns, ipv6=True)


def test_two_runners_over_ipv6_come_up_detect_a_silent_peer_and_recover(pair):
    a, b = pair
    with two_runners(a, b, LEFT6, RIGHT6) as (left, _, stats):
        down = detect_silence(left, b, what="left detects the silence")  # table inet: IPv6 BFD is dropped too
        heal_bfd(b)
        up_again(left, down, "left up again")
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
            assert run_in_netns(b, SEND.format(hops=hops, src=RIGHT6, dst=LEFT6, data=forged)).returncode == 0
        left.wait(state_is(RIGHT6, "INIT"), 5, "the hop limit 255 packet taken (Down -> Init)")
    finally:
        stats = stop_runner(left)
    assert stats["rx_discarded_ttl"] == 1 and stats["rx_packets"] == 1


SERVICE = """
import asyncio, json
from ipaddress import ip_address
from bgpd.bfd.service import BfdService
from config.node import Peer
from tests.node.bfd_pair import remove_and_close, second_service
from tests.waiting import eventually

async def main():
    svc = BfdService([ip_address("{left}"), ip_address("{left6}")], lambda peer, reason: None)
    fast = {{"enabled": True, "min_rx": 100, "min_tx": 100}}
    svc.configure([Peer(address="{right}", asn=1, bfd=fast), Peer(address="{right6}", asn=1, bfd=fast)])
    await svc.start()
    await eventually(lambda: svc.status("{right}").state == "up" and svc.status("{right6}").state == "up", 10)
    out = {{"sessions": {{v: sorted(map(str, e.sessions)) for v, e in svc.endpoints.items()}},
           "up": [svc.status(p).state for p in ("{right}", "{right6}")]}}
    out["second"] = (await second_service("{left6}", "{right6}", fast)).error  # [fd77::1]:3784 taken
    out["after_removal"] = await remove_and_close(svc, [Peer(address="{right}", asn=1, bfd=fast)], "{right6}")
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


def test_frr_bfdd_over_ipv6(pair):
    ours, theirs = pair
    frr = Frr(theirs, frr_peer(LEFT6, RIGHT6))
    runner = start_runner(ours, LEFT6, RIGHT6, *FAST)
    try:
        runner.wait(state_is(RIGHT6, "UP"), 15, "our session up")
        wait_for(lambda: frr.peers().get(LEFT6, {}).get("status") == "up", 10, what="bfdd's session up")
        down = detect_silence(runner, theirs)  # bfdd falls silent: we declare it down in time
        heal_bfd(theirs)
        up_again(runner, down)
        wait_for(lambda: frr.peers().get(LEFT6, {}).get("status") == "up", 10, what="bfdd up again")
    finally:
        stop_runner(runner)
        frr.stop()
