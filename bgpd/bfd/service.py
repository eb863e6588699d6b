"""The node's BFD: one endpoint per underlay address (listen_address, listen_address6), a session and a guard
per peer with `bfd.enabled`, on the endpoint of the peer's family (IPv6 peers are separate sessions,
docs/ipv6.md).

The daemon hands it the BGP peers (`configure`, also on reload) and hears `on_failure(peer, reason)` for the
failures its guard says to act on; `status(peer)` is the peer's part of `tortie status` and of the metrics.
"""
from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterable
from ipaddress import ip_address

from bgpd.agent.views import BfdStatus
from bgpd.bfd.guard import PeerGuard
from bgpd.bfd.packet import Diag, State
from bgpd.bfd.session import Timers, Transition
from bgpd.bfd.transport import Address, Endpoint, where
from config.node import Bfd, Peer

log = logging.getLogger("tortie.bfd")


def timers(bfd: Bfd) -> Timers:
    return Timers(desired_min_tx=bfd.min_tx * 1000, required_min_rx=bfd.min_rx * 1000, detect_mult=bfd.multiplier)


class BfdService:
    def __init__(self, listen: Iterable[Address], on_failure: Callable[[str, str], None]):
        self.endpoints = {a.version: Endpoint(a, self._changed) for a in listen}  # per family
        self.on_failure = on_failure
        self.wanted: dict[Address, Timers] = {}
        self.guards: dict[Address, PeerGuard] = {}
        self.changes: collections.Counter[tuple[str, str]] = collections.Counter()  # (peer, new state)
        self.detections: collections.Counter[str] = collections.Counter()  # by us: detection time expired
        self.since: dict[Address, float] = {}
        self.started: set[int] = set()  # the families whose endpoint listens
        # per family, why its endpoint could not start: BFD is then off for its peers, BGP's hold timers decide
        self.errors: dict[int, str] = {}

    async def start(self) -> None:
        """Binds UDP 3784 on each listen address (which must exist) and starts the configured sessions.

        A port taken by another BFD daemon on the host is logged and shown in the status of the family's
        peers, not fatal: BGP works without BFD, only slower to notice a dead peer."""
        for version, endpoint in self.endpoints.items():
            try:
                await endpoint.start()
            except OSError as e:
                self.errors[version] = f"cannot listen on {where(endpoint.listen, endpoint.port)}: {e.strerror}"
                log.error("bfd off for IPv%d peers: %s", version, self.errors[version])
                continue
            self.started.add(version)
        self._sync()

    def configure(self, peers: Iterable[Peer]) -> None:
        self.wanted = {p.address: timers(p.bfd) for p in peers if p.bfd.enabled}
        if self.started:
            self._sync()

    def _sync(self) -> None:
        for version in self.started:
            endpoint = self.endpoints[version]
            for peer in [p for p in endpoint.sessions if p not in self.wanted]:
                endpoint.remove(peer)
                self.guards.pop(peer, None)
                self.since.pop(peer, None)
                log.info("bfd session removed peer=%s", peer)
        for peer, t in self.wanted.items():
            if peer.version not in self.started:
                continue
            endpoint = self.endpoints[peer.version]
            if peer not in endpoint.sessions:
                log.info("bfd session added peer=%s min_rx=%dms min_tx=%dms multiplier=%d", peer,
                         t.required_min_rx // 1000, t.desired_min_tx // 1000, t.detect_mult)
                self.guards[peer] = PeerGuard()
                self.since[peer] = time.time()
            endpoint.add(peer, t)

    def close(self) -> None:
        """AdminDown to every peer (a deliberate stop: not a failure for them), then the sockets close."""
        for version in self.started:
            self.endpoints[version].close()
        self.started = set()

    def _changed(self, peer: Address, t: Transition) -> None:
        self.changes[(str(peer), t.new.name.lower())] += 1
        self.since[peer] = time.time()
        if t.diag == Diag.DETECTION_TIME_EXPIRED and t.new == State.DOWN:
            self.detections[str(peer)] += 1
        guard = self.guards[peer]
        now = self.endpoints[peer.version].now()
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
        addr = ip_address(peer)
        endpoint, error = self.endpoints.get(addr.version), self.errors.get(addr.version, "")
        session = endpoint.sessions.get(addr) if endpoint is not None else None
        guard, since = self.guards.get(addr), self.since.get(addr)
        if session is None or guard is None or since is None:
            return BfdStatus(state="off", error=error) if error and addr in self.wanted else None
        now, up = endpoint.now(), session.state == State.UP
        return BfdStatus(
            state=session.state.name.lower(), diag=Diag(session.diag).name.lower(),
            remote_state=session.remote_state.name.lower(), since=round(time.time() - since, 1),
            tx_interval_ms=session.tx_interval / 1000 if up else None,
            detection_time_ms=session.detection_time / 1000 if up else None,
            armed=guard.armed(now), dampened=guard.dampened(now), failures=guard.failures,
            ignored_failures=guard.ignored, detections=self.detections[peer],
            changes={state.name.lower(): self.changes[(peer, state.name.lower())] for state in State})
