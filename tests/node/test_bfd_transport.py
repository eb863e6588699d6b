"""BFD over real sockets in network namespaces (RFC 5881): TTL 255 both ways, source ports, detection, recovery."""
import pytest

from bgpd.bfd.packet import ControlPacket, State, decode
from tests.netns import requires_root, run_in_netns
from tests.node.bfd_pair import (LEFT, RIGHT, SEND, detect_silence, heal_bfd, start_runner, state_is, stop_runner,
                                 two_runners, up_again, veth_pair)

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(120)]


def test_two_runners_come_up_detect_a_silent_peer_and_recover(make_netns):
    a, b = veth_pair(make_netns)
    with two_runners(a, b, LEFT, RIGHT) as (left, right, stats):
        down = detect_silence(left, b, what="left detects the silence")  # right goes silent; it still hears left
        right.wait(state_is(LEFT, "DOWN"), 5, "right told down by left")
        heal_bfd(b)
        up = up_again(left, down, "left up again")
        stop_runner(right)  # SIGTERM ends right's session with AdminDown: not a path failure (RFC 5882 3.2)
        admin = left.wait(lambda d: d.get("new") == "DOWN" and d["time"] > up["time"], 5, "left told AdminDown")
        assert admin["diag"] == "NEIGHBOR_DOWN" and admin["remote"] == "ADMIN_DOWN"
    assert stats["rx_packets"] > 0 and not stats.get("rx_discarded_ttl")


SNIFF = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 12, 1)  # IP_RECVTTL
s.bind(("{addr}", 3784))
s.settimeout(10)
data, anc, _, src = s.recvmsg(128, socket.CMSG_SPACE(4))
ttl = int.from_bytes(anc[0][2][:4], sys.byteorder)
print(src[1], ttl, data.hex())
"""


def test_our_packets_leave_with_ttl_255_from_a_high_source_port(make_netns):
    a, b = veth_pair(make_netns)
    left = start_runner(a, LEFT, RIGHT)
    try:
        port, ttl, data = run_in_netns(b, SNIFF.format(addr=RIGHT), timeout=20).stdout.split()
    finally:
        stop_runner(left)
    assert int(ttl) == 255 and 49152 <= int(port) <= 65535
    p = decode(bytes.fromhex(data))
    assert p.state == State.DOWN and p.your_discr == 0 and p.desired_min_tx == 1_000_000


def test_packets_with_ttl_below_255_are_discarded(make_netns):
    """GTSM: a packet that crossed a router (TTL 254) is not from a neighbour and cannot bring a session up."""
    a, b = veth_pair(make_netns)
    left = start_runner(a, LEFT, RIGHT)
    down = ControlPacket(state=State.DOWN, detect_mult=3, my_discr=99).encode().hex()
    try:
        for _ in range(3):
            run_in_netns(b, SEND.format(hops=254, src=RIGHT, dst=LEFT, data=down), timeout=20)
        run_in_netns(b, SEND.format(hops=255, src=RIGHT, dst=LEFT, data=down), timeout=20)
        left.wait(state_is(RIGHT, "INIT"), 5, "the TTL 255 packet accepted")
    finally:
        stats = stop_runner(left)
    assert stats["rx_discarded_ttl"] == 3 and stats["rx_packets"] == 1
