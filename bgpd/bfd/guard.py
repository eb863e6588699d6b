"""Which BFD state changes act on BGP: hold-down and dampening, as pure code (time is an input).

A *failure* is a session that was Up going Down because the peer fell silent (detection time expired) or said
Down. It acts (FAIL: the peer's routes leave the kernel at once, its BGP session is torn down, BGP re-establishes
on its own as soon as the peer answers) only when all of these hold:

* the peer did not stop BFD on purpose: AdminDown from either side is not a path failure (RFC 5882 3.2), and a
  session that never came Up says nothing (the peer may not run BFD);
* hold-down: BFD had been Up for HOLD_DOWN seconds without a break. A session that fails right after coming up
  (a peer still settling, a path that flaps) does not tear down BGP; it only adds to the penalty.
* dampening: every failure adds 1 to a penalty that halves every HALF_LIFE seconds. Above SUPPRESS (a 4th
  failure within about a minute) failures stop acting until the penalty decays below REUSE (about 1.5 min of
  calm): a flapping BFD session (a lossy or starved path) never keeps tearing down a BGP session whose TCP still
  works; BGP's own hold timer is the judge meanwhile.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from bgpd.bfd.packet import State
from bgpd.bfd.session import Transition

HOLD_DOWN = 3.0
HALF_LIFE = 60.0
SUPPRESS = 3.0
REUSE = 1.0


@dataclass
class PeerGuard:
    up_since: float | None = None  # BFD Up without a break since then
    penalty: float = 0.0
    penalty_at: float = 0.0
    suppressed: bool = False
    failures: int = 0  # acted on
    ignored: int = 0  # failures within the hold-down or while dampened

    def armed(self, now: float) -> bool:
        """Up for the hold-down: a failure now would act (unless dampened)."""
        return self.up_since is not None and now - self.up_since >= HOLD_DOWN

    def penalty_now(self, now: float) -> float:
        return self.penalty * math.pow(0.5, max(0.0, now - self.penalty_at) / HALF_LIFE)

    def dampened(self, now: float) -> bool:
        """Suppressed above SUPPRESS until the penalty decays below REUSE (hysteresis). Reads only."""
        p = self.penalty_now(now)
        return p >= REUSE if self.suppressed else p > SUPPRESS

    def failed(self, t: Transition, now: float) -> bool:
        """Feeds one state change; True when it is a failure to act on (take the peer's routes out now)."""
        armed = self.armed(now)
        self.up_since = now if t.new == State.UP else None
        if t.old != State.UP or t.new != State.DOWN or t.remote_state == State.ADMIN_DOWN:
            return False
        self.suppressed = self.dampened(now)  # the calm before this failure may have ended a suppression
        self.penalty, self.penalty_at = self.penalty_now(now) + 1.0, now
        self.suppressed = self.dampened(now)
        if self.suppressed or not armed:
            self.ignored += 1
            return False
        self.failures += 1
        return True
