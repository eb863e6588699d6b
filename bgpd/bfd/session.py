"""One BFD session in asynchronous mode (RFC 5880 section 6.8) as pure code.

Time is an input (seconds, any monotonic clock) and randomness (the TX jitter) comes from the caller's
`random.Random`, so a session is deterministic under test. Each call returns an `Output`: packets to send now, a
state change, and the two instants the caller must wake the session at (`next_tx`, `detect_at`) by calling
`expire(now)`. Demand mode, echo and authentication are not implemented: a packet with the A bit is discarded
(6.8.6, "bfd.AuthType is zero"), and we never set D.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from bgpd.bfd.packet import ControlPacket, Diag, State

SLOW_TX = 1_000_000  # microseconds: the least desired TX while the session is not Up (6.8.3)


@dataclass(frozen=True, slots=True)
class Timers:
    """What we ask of the session, in microseconds."""

    desired_min_tx: int = 300_000
    required_min_rx: int = 300_000
    detect_mult: int = 3

    def __post_init__(self) -> None:
        if not (0 < self.desired_min_tx <= 0xFFFFFFFF and 0 <= self.required_min_rx <= 0xFFFFFFFF
                and 0 < self.detect_mult <= 255):
            raise ValueError(f"BFD timers out of range: {self}")


@dataclass(frozen=True, slots=True)
class Transition:
    old: State
    new: State
    diag: Diag
    remote_state: State  # ADMIN_DOWN here means the peer shut the session down on purpose (RFC 5882 3.2)


@dataclass(slots=True)
class Output:
    send: list[ControlPacket] = field(default_factory=list)
    transition: Transition | None = None
    next_tx: float | None = None
    detect_at: float | None = None


class Session:
    def __init__(self, local_discr: int, timers: Timers, now: float, rng: random.Random):
        if not 0 < local_discr <= 0xFFFFFFFF:
            raise ValueError(f"local discriminator {local_discr} out of range")
        self.local_discr = local_discr
        self.timers = timers
        self.rng = rng
        self.state = State.DOWN
        self.diag = Diag.NONE
        self.remote_state = State.DOWN
        self.remote_discr = 0
        self.remote_min_rx = 1  # 6.8.1: until the peer tells us
        self.remote_desired_min_tx = 0
        self.remote_detect_mult = 0
        # What we advertise, and what is in force: they differ during a poll sequence (6.8.3).
        self.adv_tx = self.eff_tx = max(timers.desired_min_tx, SLOW_TX)
        self.adv_rx = self.eff_rx = timers.required_min_rx
        self.polling = False
        self.next_tx: float | None = now  # the first packet goes out at once
        self.last_tx: float | None = None
        self.detect_at: float | None = None

    # --- what the caller derives from the session

    @property
    def tx_interval(self) -> int:
        """6.8.7: the larger of our desired TX (the smaller of advertised and in force) and the peer's min RX."""
        return max(min(self.adv_tx, self.eff_tx), self.remote_min_rx)

    @property
    def detection_time(self) -> int:
        """6.8.4, asynchronous mode: the peer's multiplier times the slower of its TX and our RX."""
        return self.remote_detect_mult * max(max(self.adv_rx, self.eff_rx), self.remote_desired_min_tx)

    @property
    def wakeup(self) -> float | None:
        times = [t for t in (self.next_tx, self.detect_at) if t is not None]
        return min(times) if times else None

    # --- inputs

    def receive(self, packet: ControlPacket, now: float) -> Output:
        """A decoded packet from this session's peer (the transport matched address and discriminator)."""
        out = Output()
        if packet.auth is not None or (packet.your_discr and packet.your_discr != self.local_discr):
            return self._timers(out)
        interval = self.tx_interval
        self.remote_discr = packet.my_discr
        self.remote_state = packet.state
        self.remote_min_rx = packet.required_min_rx
        self.remote_desired_min_tx = packet.desired_min_tx
        self.remote_detect_mult = packet.detect_mult
        if packet.final and self.polling:
            self.polling = False
            self.eff_tx, self.eff_rx = self.adv_tx, self.adv_rx
        self._follow_rate(interval)
        if self.state == State.ADMIN_DOWN:
            return self._timers(out)
        old = self.state
        if packet.state == State.ADMIN_DOWN:
            if self.state != State.DOWN:
                self._set_state(State.DOWN, Diag.NEIGHBOR_DOWN)
        elif self.state == State.DOWN:
            if packet.state == State.DOWN:
                self._set_state(State.INIT, Diag.NONE)
            elif packet.state == State.INIT:
                self._set_state(State.UP, Diag.NONE)
        elif self.state == State.INIT:
            if packet.state in (State.INIT, State.UP):
                self._set_state(State.UP, Diag.NONE)
        elif packet.state == State.DOWN:  # we are Up
            self._set_state(State.DOWN, Diag.NEIGHBOR_DOWN)
        self.detect_at = now + self.detection_time / 1e6  # with the timers of the state we are now in
        if packet.poll:
            out.send.append(self._packet(final=True))
        if self.state != old:
            out.transition = Transition(old, self.state, Diag(self.diag), self.remote_state)
            self._transmit(out, now)
        return self._timers(out)

    def expire(self, now: float) -> Output:
        """Timers due at `now`: detection time first, then the periodic packet."""
        out = Output()
        if self.detect_at is not None and now >= self.detect_at:
            self.detect_at = None
            self.remote_discr = 0
            if self.state in (State.INIT, State.UP):
                old = self.state
                self.remote_state = State.DOWN
                self._set_state(State.DOWN, Diag.DETECTION_TIME_EXPIRED)
                out.transition = Transition(old, State.DOWN, Diag.DETECTION_TIME_EXPIRED, self.remote_state)
                self._transmit(out, now)
        if self.next_tx is not None and now >= self.next_tx:
            if self.remote_min_rx:
                self._transmit(out, now)
            else:  # 6.8.7: the peer asks for no periodic packets
                self.next_tx = None
        return self._timers(out)

    def set_timers(self, timers: Timers, now: float) -> Output:
        """New configured timers: applied at once unless Up, where a poll sequence carries them."""
        self.timers = timers
        out = Output()
        interval = self.tx_interval
        self._advertise(timers.desired_min_tx, timers.required_min_rx)
        self._follow_rate(interval)
        if self.polling:
            self._transmit(out, now)
        return self._timers(out)

    def admin_down(self, now: float) -> Output:
        """Stop the session on purpose: the peer goes Down without treating it as a path failure."""
        out = Output()
        if self.state != State.ADMIN_DOWN:
            old = self.state
            self._set_state(State.ADMIN_DOWN, Diag.ADMIN_DOWN)
            self.detect_at = None
            out.transition = Transition(old, State.ADMIN_DOWN, Diag.ADMIN_DOWN, self.remote_state)
            self._transmit(out, now)
        return self._timers(out)

    def admin_up(self, now: float) -> Output:
        out = Output()
        if self.state == State.ADMIN_DOWN:
            self._set_state(State.DOWN, Diag.NONE)
            out.transition = Transition(State.ADMIN_DOWN, State.DOWN, Diag.NONE, self.remote_state)
            self._transmit(out, now)
        return self._timers(out)

    # --- internals

    def _set_state(self, state: State, diag: Diag) -> None:
        self.state = state
        if diag != Diag.NONE or state == State.UP:
            self.diag = diag
        self.polling = False
        if state == State.UP:
            self._advertise(self.timers.desired_min_tx, self.timers.required_min_rx)
        else:  # not Up: at least 1 s, in force at once (the peer is not relying on our rate any more)
            self.adv_tx = self.eff_tx = max(self.timers.desired_min_tx, SLOW_TX)
            self.adv_rx = self.eff_rx = self.timers.required_min_rx

    def _advertise(self, desired_tx: int, required_rx: int) -> None:
        if self.state != State.UP:
            self.adv_tx = self.eff_tx = max(desired_tx, SLOW_TX)
            self.adv_rx = self.eff_rx = required_rx
            return
        self.adv_tx, self.adv_rx = desired_tx, required_rx
        self.polling = (self.adv_tx, self.adv_rx) != (self.eff_tx, self.eff_rx)

    def _packet(self, final: bool = False) -> ControlPacket:
        return ControlPacket(state=self.state, diag=self.diag, detect_mult=self.timers.detect_mult,
                             my_discr=self.local_discr, your_discr=self.remote_discr, desired_min_tx=self.adv_tx,
                             required_min_rx=self.adv_rx, poll=self.polling and not final, final=final)

    def _transmit(self, out: Output, now: float) -> None:
        out.send.append(self._packet())
        self._schedule_tx(now)

    def _schedule_tx(self, now: float) -> None:
        """6.8.7: the interval less 0-25 % jitter (10-25 % with a multiplier of 1); none if the peer asks for 0."""
        if not self.remote_min_rx:
            self.next_tx = None
            return
        self.last_tx = now
        self.next_tx = now + self.tx_interval / 1e6 * self.rng.uniform(0.75, 1.0 if self.timers.detect_mult > 1 else 0.9)

    def _follow_rate(self, interval_before: int) -> None:
        """The TX interval changed (or periodic packets resume): count the new one from the last packet sent."""
        if not self.remote_min_rx:  # 6.8.7: the peer wants no periodic packets
            self.next_tx = None
        elif self.last_tx is not None and (self.next_tx is None or self.tx_interval != interval_before):
            self._schedule_tx(self.last_tx)

    def _timers(self, out: Output) -> Output:
        out.next_tx, out.detect_at = self.next_tx, self.detect_at
        return out
