"""BFD session state machine (RFC 5880 6.8): transitions, timers, poll sequence, jitter; two sessions back to back."""
import heapq
import random

import pytest
from hypothesis import given, settings, strategies as st

from bgpd.bfd.packet import ControlPacket, Diag, State, decode
from bgpd.bfd.session import SLOW_TX, Session, Timers

FAST = Timers(300_000, 300_000, 3)
ALLOWED = {(State.DOWN, State.INIT), (State.DOWN, State.UP), (State.INIT, State.UP), (State.INIT, State.DOWN),
           (State.UP, State.DOWN), (State.ADMIN_DOWN, State.DOWN)} | {(s, State.ADMIN_DOWN) for s in State}


def check(session, out, now):
    """Invariants after every input."""
    for p in out.send:
        assert decode(p.encode()) == p  # everything we send passes the peer's reception checks
        assert not (p.poll and p.final)
        assert p.my_discr == session.local_discr and p.required_min_echo_rx == 0 and not p.demand
        if p.state != State.UP:
            assert p.desired_min_tx >= SLOW_TX
    if out.transition:
        assert (out.transition.old, out.transition.new) in ALLOWED
        assert out.transition.new == session.state
    if session.state in (State.INIT, State.UP):
        assert session.detect_at is not None and session.remote_discr != 0
    if session.state != State.UP:
        assert not session.polling
    if session.next_tx is not None and session.remote_min_rx and session.last_tx is not None:
        assert session.next_tx >= session.last_tx + 0.75 * session.tx_interval / 1e6 - 1e-9
        assert session.next_tx <= session.last_tx + session.tx_interval / 1e6 + 1e-9
    assert (out.next_tx, out.detect_at) == (session.next_tx, session.detect_at)


def packet(state, my=7, your=1, **kw):
    return ControlPacket(state=state, detect_mult=3, my_discr=my, your_discr=your, **kw)


def test_three_way_handshake_and_diag():
    s = Session(1, FAST, 0.0, random.Random(1))
    out = s.expire(0.0)
    assert [p.state for p in out.send] == [State.DOWN] and out.send[0].your_discr == 0
    out = s.receive(packet(State.DOWN, your=0), 0.1)
    assert out.transition.new == State.INIT and out.send[0].your_discr == 7
    out = s.receive(packet(State.UP), 0.2)
    assert out.transition.new == State.UP
    assert out.send[-1].poll and out.send[-1].desired_min_tx == 300_000  # poll to the fast rate
    assert s.detection_time == 3 * 1_000_000  # the peer still sends slowly: 3 x its 1 s default
    out = s.receive(packet(State.UP, final=True, desired_min_tx=300_000, required_min_rx=300_000), 0.3)
    assert not s.polling and s.tx_interval == 300_000 and s.detection_time == 900_000
    assert out.detect_at == pytest.approx(1.2)
    out = s.expire(1.2)
    assert out.transition.new == State.DOWN and out.transition.diag == Diag.DETECTION_TIME_EXPIRED
    assert out.send[0].diag == Diag.DETECTION_TIME_EXPIRED and out.send[0].your_discr == 0
    assert out.send[0].desired_min_tx == SLOW_TX


def test_answers_poll_with_final_at_once():
    s = Session(1, FAST, 0.0, random.Random(1))
    out = s.receive(packet(State.DOWN, your=0, poll=True), 0.0)
    finals = [p for p in out.send if p.final]
    assert len(finals) == 1 and not finals[0].poll


def test_neighbor_down_and_admin_down():
    s = Session(1, FAST, 0.0, random.Random(1))
    s.receive(packet(State.INIT, your=1), 0.0)
    assert s.state == State.UP
    out = s.receive(packet(State.ADMIN_DOWN, your=1), 0.1)
    assert out.transition.new == State.DOWN and out.transition.diag == Diag.NEIGHBOR_DOWN
    assert out.transition.remote_state == State.ADMIN_DOWN
    s.receive(packet(State.INIT, your=1), 0.2)
    out = s.admin_down(0.3)
    assert out.send[0].state == State.ADMIN_DOWN and out.send[0].diag == Diag.ADMIN_DOWN
    assert s.receive(packet(State.UP), 0.4).transition is None and s.state == State.ADMIN_DOWN
    assert s.admin_up(0.5).transition.new == State.DOWN


def test_discards_wrong_discriminator_and_auth():
    s = Session(1, FAST, 0.0, random.Random(1))
    assert s.receive(packet(State.INIT, your=2), 0.0).transition is None
    assert s.receive(packet(State.INIT, your=1, auth=b"\x01\x03x"), 0.0).transition is None
    assert s.remote_discr == 0 and s.detect_at is None


def test_no_periodic_packets_when_peer_asks_for_zero_rx():
    s = Session(1, FAST, 0.0, random.Random(1))
    s.receive(packet(State.DOWN, your=0, required_min_rx=0), 0.0)
    out = s.expire(5.0)
    assert all(p.state != State.UP for p in out.send) and s.next_tx is None


def test_raising_our_rx_while_up_waits_for_final_before_detection_shrinks():
    s = Session(1, FAST, 0.0, random.Random(1))
    s.receive(packet(State.INIT, desired_min_tx=300_000), 0.0)
    s.receive(packet(State.UP, final=True, desired_min_tx=50_000), 0.1)
    assert s.detection_time == 900_000
    out = s.set_timers(Timers(300_000, 100_000, 3), 0.2)
    assert out.send[0].poll and out.send[0].required_min_rx == 100_000
    assert s.detection_time == 900_000  # old (larger) value until the peer confirms
    s.receive(packet(State.UP, final=True, desired_min_tx=50_000), 0.3)
    assert s.detection_time == 300_000


@pytest.mark.parametrize("mult, low, high", [(3, 0.75, 1.0), (1, 0.75, 0.9)])
def test_jitter_range(mult, low, high):
    s = Session(1, Timers(100_000, 100_000, mult), 0.0, random.Random(3))
    s.receive(packet(State.INIT, required_min_rx=1), 0.0)
    s.receive(packet(State.UP, final=True, required_min_rx=1), 0.0)
    gaps = []
    now = 0.0
    for _ in range(2000):
        now = s.next_tx
        s.receive(packet(State.UP, required_min_rx=1), now)  # keeps it Up
        s.expire(now)
        gaps.append(s.next_tx - now)
    assert low * 0.1 <= min(gaps) < low * 0.1 + 0.002 and high * 0.1 - 0.002 < max(gaps) <= high * 0.1


inputs = st.lists(st.tuples(
    st.floats(0, 2.0),
    st.one_of(
        st.tuples(st.just("rx"), st.sampled_from(State), st.sampled_from([0, 1, 99]), st.booleans(), st.booleans(),
                  st.sampled_from([0, 1, 50_000, 300_000, 2_000_000]), st.sampled_from([1, 300_000, 1_000_000]),
                  st.integers(1, 5)),
        st.tuples(st.just("expire")),
        st.tuples(st.just("timers"), st.sampled_from([50_000, 300_000, 2_000_000]),
                  st.sampled_from([0, 50_000, 300_000]), st.integers(1, 5)),
        st.tuples(st.just("admin"), st.booleans()))), max_size=60)


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(inputs, st.integers(0, 2**32))
def test_random_inputs_keep_invariants(steps, seed):
    s = Session(1, FAST, 0.0, random.Random(seed))
    now = 0.0
    for gap, event in steps:
        now += gap
        if event[0] == "rx":
            _, state, your, poll, final, rx, tx, mult = event
            if your == 0 and state in (State.INIT, State.UP):
                your = 1
            out = s.receive(ControlPacket(state=state, detect_mult=mult, my_discr=7, your_discr=your, poll=poll,
                                          final=final and not poll, required_min_rx=rx, desired_min_tx=tx), now)
        elif event[0] == "expire":
            if s.wakeup is not None:
                now = max(now, s.wakeup)
            out = s.expire(now)
        elif event[0] == "timers":
            out = s.set_timers(Timers(*event[1:]), now)
        else:
            out = s.admin_down(now) if event[1] else s.admin_up(now)
        check(s, out, now)
        if event[0] == "rx" and event[2] != 99 and s.state != State.ADMIN_DOWN:
            assert s.detect_at == now + s.detection_time / 1e6  # every valid packet restarts detection


class Wire:
    """Two sessions back to back over a simulated link with a fixed delay and a cut switch per direction."""

    def __init__(self, seed, delay=0.001, a=FAST, b=FAST):
        rng = random.Random(seed)
        self.sessions = {"a": Session(0x1111, a, 0.0, rng), "b": Session(0x2222, b, 0.0, rng)}
        self.delay = delay
        self.cut = {"a": False, "b": False}  # True: packets *from* that side are dropped
        self.queue = []  # (arrival, seq, to, packet)
        self.seq = 0
        self.now = 0.0
        self.log = []  # (time, side, transition)
        self.last_rx = {"a": None, "b": None}
        self.stalled = {"a": 0.0, "b": 0.0}  # a side does nothing before this time (a CPU-starved process)

    def handle(self, side, out):
        check(self.sessions[side], out, self.now)
        if out.transition:
            self.log.append((self.now, side, out.transition))
        other = "b" if side == "a" else "a"
        for p in out.send:
            if not self.cut[side]:
                self.seq += 1
                heapq.heappush(self.queue, (self.now + self.delay, self.seq, other, decode(p.encode())))

    def run_until(self, t):
        while True:
            wakeups = [(max(s.wakeup, self.stalled[side]), side) for side, s in self.sessions.items()
                       if s.wakeup is not None]
            nxt = min(wakeups) if wakeups else (float("inf"), None)
            if self.queue and self.queue[0][0] <= nxt[0]:
                if self.queue[0][0] > t:
                    break
                arrival, seq, to, p = heapq.heappop(self.queue)
                if arrival < self.stalled[to]:  # read when the process runs again
                    heapq.heappush(self.queue, (self.stalled[to], seq, to, p))
                    continue
                self.now = arrival
                self.last_rx[to] = self.now
                self.handle(to, self.sessions[to].receive(p, self.now))
            else:
                if nxt[0] > t:
                    break
                self.now = nxt[0]
                self.handle(nxt[1], self.sessions[nxt[1]].expire(self.now))
        self.now = t

    def states(self):
        return self.sessions["a"].state, self.sessions["b"].state


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(0, 2**32), st.sampled_from(["a", "b"]), st.floats(0.0005, 0.02))
def test_back_to_back_up_down_recover(seed, silent, delay):
    w = Wire(seed, delay)
    w.run_until(4.0)
    assert w.states() == (State.UP, State.UP)
    assert not w.sessions["a"].polling and w.sessions["a"].tx_interval == 300_000
    assert w.sessions["a"].detection_time == 900_000
    w.run_until(10.0)  # stays up: no flaps
    assert all(t >= 4.0 or tr.new != State.DOWN for t, _, tr in w.log) and w.states() == (State.UP, State.UP)
    w.cut[silent] = True
    cut_at = w.now
    w.run_until(12.0)
    listener = "b" if silent == "a" else "a"
    downs = [(t, tr) for t, side, tr in w.log if side == listener and tr.new == State.DOWN]
    assert downs, w.log
    t, tr = downs[0]
    assert tr.diag == Diag.DETECTION_TIME_EXPIRED
    assert t - w.last_rx[listener] == pytest.approx(0.9)  # exactly the detection time after the last packet
    assert t - cut_at <= 0.9 + delay
    w.run_until(14.0)
    assert w.sessions[silent].state == State.INIT  # told Down by the listener, it still hears it
    w.cut[silent] = False
    w.run_until(20.0)
    assert w.states() == (State.UP, State.UP)


def test_slow_peer_sets_the_pace():
    w = Wire(1, a=Timers(50_000, 50_000, 3), b=Timers(500_000, 500_000, 3))
    w.run_until(5.0)
    a, b = w.sessions["a"], w.sessions["b"]
    assert w.states() == (State.UP, State.UP)
    assert a.tx_interval == 500_000 and b.tx_interval == 500_000
    assert a.detection_time == 1_500_000 and b.detection_time == 1_500_000


@pytest.mark.parametrize("starved", ["a", "b"])
def test_a_host_starved_for_200ms_stays_up_with_the_defaults(starved):
    w = Wire(5)
    w.run_until(5.0)
    for start in (5.0, 6.0, 7.3):
        w.stalled[starved] = start + 0.2
        w.run_until(start + 1.0)
    assert w.states() == (State.UP, State.UP)
    assert all(tr.new == State.INIT or tr.new == State.UP for _, _, tr in w.log)
