"""Which BFD state changes act on BGP: failures after the hold-down, not AdminDown, dampening of flaps."""
from hypothesis import given, strategies as st

from bgpd.bfd.guard import HALF_LIFE, HOLD_DOWN, SUPPRESS, PeerGuard
from bgpd.bfd.packet import Diag, State
from bgpd.bfd.session import Transition

UP = Transition(State.INIT, State.UP, Diag.NONE, State.UP)
EXPIRED = Transition(State.UP, State.DOWN, Diag.DETECTION_TIME_EXPIRED, State.DOWN)
TOLD = Transition(State.UP, State.DOWN, Diag.NEIGHBOR_DOWN, State.DOWN)
ADMIN = Transition(State.UP, State.DOWN, Diag.NEIGHBOR_DOWN, State.ADMIN_DOWN)
NEVER_UP = Transition(State.INIT, State.DOWN, Diag.DETECTION_TIME_EXPIRED, State.DOWN)
LOCAL_ADMIN = Transition(State.UP, State.ADMIN_DOWN, Diag.ADMIN_DOWN, State.UP)


def test_failure_after_the_hold_down_acts():
    g = PeerGuard()
    assert not g.failed(UP, 0)
    assert not g.armed(HOLD_DOWN - 0.1) and g.armed(HOLD_DOWN)
    assert g.failed(EXPIRED, 10) and g.failures == 1
    g.failed(UP, 11)
    assert g.failed(TOLD, 11 + HOLD_DOWN)  # the peer saying Down is a failure too


def test_failure_within_the_hold_down_is_ignored():
    g = PeerGuard()
    g.failed(UP, 0)
    assert not g.failed(EXPIRED, HOLD_DOWN - 0.5) and g.ignored == 1


def test_admin_down_and_never_up_do_not_act():
    g = PeerGuard()
    assert not g.failed(NEVER_UP, 0)
    g.failed(UP, 1)
    assert not g.failed(ADMIN, 10)
    g.failed(UP, 11)
    assert not g.failed(LOCAL_ADMIN, 20)
    assert g.failures == 0 and g.penalty == 0


def test_flapping_bfd_is_dampened_then_trusted_again():
    g, now, acted = PeerGuard(), 0.0, []
    for _ in range(6):  # Up for 5 s, then a failure, again and again
        g.failed(UP, now)
        acted.append(g.failed(EXPIRED, now + 5))
        now += 6
    assert acted == [True, True, True, False, False, False]
    assert g.dampened(now) and g.penalty_now(now) > SUPPRESS
    now += 3 * HALF_LIFE  # calm: the penalty decays below REUSE
    g.failed(UP, now)
    assert g.failed(EXPIRED, now + HOLD_DOWN) and not g.suppressed


transitions = st.sampled_from([UP, EXPIRED, TOLD, ADMIN, NEVER_UP, LOCAL_ADMIN])


@given(st.lists(st.tuples(st.floats(0, 100), transitions), max_size=80))
def test_acts_only_on_armed_undampened_failures(steps):
    g, now, bfd_up = PeerGuard(), 0.0, False
    for gap, t in steps:
        now += gap
        if (t.old == State.UP) != bfd_up:
            continue  # a session reports consistent transitions
        armed, before = g.armed(now), g.failures + g.ignored
        acted = g.failed(t, now)
        bfd_up = t.new == State.UP
        if acted:
            assert armed and t.new == State.DOWN and t.remote_state != State.ADMIN_DOWN and not g.suppressed
        if not (t.old == State.UP and t.new == State.DOWN and t.remote_state != State.ADMIN_DOWN):
            assert g.failures + g.ignored == before
