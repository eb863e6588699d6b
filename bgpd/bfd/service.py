"""The node's BFD: one endpoint on the listen address, a session and a guard per peer with `bfd.enabled`.

The daemon hands it the BGP peers (`configure`, also on reload) and hears `on_failure(peer, reason)` for the
failures its guard says to act on; `status(peer)` is the peer's part of `tortie status` and of the metrics.
"""
from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address

from bgpd.agent.views import BfdStatus
from bgpd.bfd.guard import PeerGuard
from bgpd.bfd.packet import Diag, State
from bgpd.bfd.session import Timers, Transition
from bgpd.bfd.transport import Endpoint
from config.node import Bfd, Peer

log = logging.getLogger("tortie.bfd")


def timers(bfd: Bfd) -> Timers:
    return Timers(desired_min_tx=bfd.min_tx * 1000, required_min_rx=bfd.min_rx * 1000, detect_mult=bfd.multiplier)


class BfdService:
    def __init__(self, listen: IPv4Address, on_failure: Callable[[str, str], None]):
        self.endpoint = Endpoint(listen, self._changed)
        self.on_failure = on_failure
        self.wanted: dict[IPv4Address, Timers] = {}
        self.guards: dict[IPv4Address, PeerGuard] = {}
        self.changes: collections.Counter[tuple[str, str]] = collections.Counter()  # (peer, new state)
        self.detections: collections.Counter[str] = collections.Counter()  # by us: detection time expired
        self.since: dict[IPv4Address, float] = {}
        self.started = False
        self.error = ""  # why the endpoint could not start: BFD is then off, BGP's hold timers decide

    async def start(self) -> None:
        """Binds UDP 3784 on the listen address (which must exist) and starts the configured sessions.

        A port taken by another BFD daemon on the host is logged and shown in the status, not fatal: BGP
        works without BFD, only slower to notice a dead peer."""
        try:
            await self.endpoint.start()
        except OSError as e:
            self.error = f"cannot listen on {self.endpoint.listen}:{self.endpoint.port}: {e.strerror}"
            log.error("bfd off: %s", self.error)
            return
        self.started = True
        self._sync()

    def configure(self, peers: Iterable[Peer]) -> None:
        self.wanted = {p.address: timers(p.bfd) for p in peers if p.bfd.enabled}
        if self.started:
            self._sync()

    def _sync(self) -> None:
        for peer in [p for p in self.endpoint.sessions if p not in self.wanted]:
            self.endpoint.remove(peer)
            self.guards.pop(peer, None)
            self.since.pop(peer, None)
            log.info("bfd session removed peer=%s", peer)
        for peer, t in self.wanted.items():
            if peer not in self.endpoint.sessions:
                log.info("bfd session added peer=%s min_rx=%dms min_tx=%dms multiplier=%d", peer,
                         t.required_min_rx // 1000, t.desired_min_tx // 1000, t.detect_mult)
                self.guards[peer] = PeerGuard()
                self.since[peer] = time.time()
            self.endpoint.add(peer, t)

    def close(self) -> None:
        """AdminDown to every peer (a deliberate stop: not a failure for them), then the sockets close."""
        self.endpoint.close()
        self.started = False

    def _changed(self, peer: IPv4Address, t: Transition) -> None:
        self.changes[(str(peer), t.new.name.lower())] += 1
        self.since[peer] = time.time()
        if t.diag == Diag.DETECTION_TIME_EXPIRED and t.new == State.DOWN:
            self.detections[str(peer)] += 1
        guard = self.guards[peer]
        now = self.endpoint.now()
        act = guard.failed(t, now)
        if t.old == State.UP and t.new == State.DOWN:
            action = ("routes out" if act else "none, dampened" if guard.suppressed
                      else "none, the peer stopped BFD" if t.remote_state == State.ADMIN_DOWN
                      else "none, within the hold-down")
            log.warning("bfd down peer=%s diag=%s action=%s", peer, t.diag.name.lower(), action)
        else:
            log.info("bfd %s peer=%s diag=%s remote=%s", t.new.name.lower(), peer, t.diag.name.lower(),
                     t.remote_state.name.lower())
        if act:
            self.on_failure(str(peer), f"bfd down ({t.diag.name.lower().replace('_', ' ')})")

    # --- views

    def status(self, peer: str) -> BfdStatus | None:
        """Also read by the metrics endpoint's thread: reads, never changes."""
        addr = IPv4Address(peer)
        session, guard, since = self.endpoint.sessions.get(addr), self.guards.get(addr), self.since.get(addr)
        if session is None or guard is None or since is None:
            return BfdStatus(state="off", error=self.error) if self.error and addr in self.wanted else None
        now, up = self.endpoint.now(), session.state == State.UP
        return BfdStatus(
            state=session.state.name.lower(), diag=Diag(session.diag).name.lower(),
            remote_state=session.remote_state.name.lower(), since=round(time.time() - since, 1),
            tx_interval_ms=session.tx_interval / 1000 if up else None,
            detection_time_ms=session.detection_time / 1000 if up else None,
            armed=guard.armed(now), dampened=guard.dampened(now), failures=guard.failures,
            ignored_failures=guard.ignored, detections=self.detections[peer],
            changes={state.name.lower(): self.changes[(peer, state.name.lower())] for state in State})
