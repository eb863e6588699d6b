"""Tortie's BFD against FRR's bfdd and BIRD's protocol bfd, each in its own namespace across a veth pair:
sessions come up, and a silent failure on either side (nft drops the BFD packets, the link stays up) is detected by
the other within the detection time (100 ms x 3 here)."""
import pytest

from tests.netns import requires_root, wait_for
from tests.node.bfd_pair import (DETECT, FAST, LEFT, RIGHT, SLACK, Bird, Frr, cut_bfd, detect_silence, frr_peer,
                                 heal_bfd, start_runner, state_is, stop_runner, up_again, veth_pair)

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(120)]

BIRD_CONF = f"""
router id {RIGHT};
protocol device {{}}
protocol bfd {{
  interface "eth0" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }};
}}
protocol static {{
  ipv4;
  route 10.99.99.0/24 via {LEFT} bfd;
}}
"""


@pytest.fixture(params=["frr", "bird"])
def peer(request, make_netns):
    """(our namespace, the peer's namespace, a function returning the peer's view of the session state)."""
    a, b = veth_pair(make_netns)
    if request.param == "frr":
        daemon = Frr(b, frr_peer(LEFT, RIGHT))
        state = lambda: daemon.peers().get(LEFT, {}).get("status")  # noqa: E731
    else:
        daemon = Bird(b, BIRD_CONF)
        state = lambda: daemon.sessions().get(LEFT, "").lower()  # noqa: E731
    try:
        yield a, b, state
    finally:
        daemon.stop()


def test_session_up_and_failures_detected_both_ways(peer):
    ours, theirs, their_state = peer
    runner = start_runner(ours, LEFT, RIGHT, *FAST)
    try:
        runner.wait(state_is(RIGHT, "UP"), 15, "our session up")
        wait_for(lambda: their_state() == "up", 10, what="the peer's session up")

        # We fall silent: the peer must declare us down in time; it then sends Down, which we still hear.
        cut = cut_bfd(ours)
        told = runner.wait(state_is(RIGHT, "DOWN"), 5, "the peer's Down")
        assert told["diag"] == "NEIGHBOR_DOWN" and told["remote"] == "DOWN"
        assert told["time"] - cut < DETECT + SLACK, told["time"] - cut
        assert their_state() in ("down", "init")
        heal_bfd(ours)
        up = up_again(runner, told)
        wait_for(lambda: their_state() == "up", 10, what="the peer up again")

        # The peer falls silent: we declare it down in time.
        down = detect_silence(runner, theirs, after=up["time"])
        heal_bfd(theirs)
        up_again(runner, down)
        wait_for(lambda: their_state() == "up", 10, what="the peer up again")
    finally:
        stats = stop_runner(runner)
    assert not stats.get("rx_discarded_invalid") and not stats.get("rx_discarded_ttl")
    # poll sequences both ways (each end polls when it goes Up and speeds up from 1 s): the peer answered ours
    # with F, and polled us
    assert stats["rx_final"] >= 1 and stats["rx_poll"] >= 1, stats
