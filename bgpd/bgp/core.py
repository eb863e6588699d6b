"""The node's BGP-side state machine, sans-IO: events and results in, commands out.

`NodeCore` owns peer state, graceful-restart stale deadlines, End-of-RIB and the initial sync, routes
adopted from the kernel at start, retries of routes the kernel refused and log-once rejects. It never
reads a clock or touches a socket: every input takes `now` (monotonic seconds) and returns the
commands for the shell (`bgpd.agent.daemon`) to execute, in order.

Kernel work is pulled, not pushed: changed prefixes gather in the plan and `Program` says the plan
became non-empty; the shell takes batches with `plan()` when its writer is free, so each prefix's
desired route is computed at write time and a prefix changed many times in a burst is written once.
Prefixes are integer keys (`bgpd.prefixes`), as in the RIB and the kernel table.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from itertools import islice
from typing import Iterable, Mapping, Union

from bgpd.bgp import messages as msgs
from bgpd.bgp.rib import ImportFilter, KernelRoute, PeerRib, Reject, Rib, Update
from bgpd.prefixes import key, network
from bgpd.overlay.vxlan import Overlay
from bgpd.wireguard.plan import Encryption

RETRY = 5.0  # seconds before a route the kernel refused is tried again
# ExaBGP drops a reload signalled while it still has updates to send (reactor/loop.py: the signal is re-armed
# before the pending adj-rib-out check): after a change of peers we ask it which sessions it runs, this many
# seconds later, and again (doubling, up to CHECK_MAX) until they are the configured ones, reloading it each time
CHECK_AFTER, CHECK_MAX = 1.0, 16.0
DATASTORE = "datastore"  # the RIB's source of the routes the datastore gives when BGP is off


# --- configuration ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PeerSettings:
    name: str
    asn: int
    max_prefixes: int


@dataclass(frozen=True)
class CoreConfig:
    """What the core needs of the node's effective configuration; the shell derives it (see daemon)."""

    peers: Mapping[str, PeerSettings]  # by peer address
    import_filter: ImportFilter  # its own_blocks are our blackholes
    announced: tuple[IPv4Network, ...]  # what we announce to every peer
    graceful_restart: float  # seconds a gracefully restarting peer's routes stay (0: none stay)
    initial_sync_timeout: float  # seconds to wait for every End-of-RIB before giving up on them
    wait_for_datastore: bool  # the peers come from a datastore: no initial sync before it answered
    overlay: Overlay | None = None  # VXLAN: which routes go through the VTEP (None: no pool uses it)
    cluster_routes: tuple[tuple[IPv4Network, IPv4Address], ...] = ()  # BGP off: other nodes' prefixes from
    # the datastore, via their node's address
    encryption: Encryption | None = None  # WireGuard: which routes go through its device (decided before VXLAN)


# --- commands --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Program:
    """The plan became non-empty: take its routes with `NodeCore.plan()` and feed back `kernel_synced`."""


@dataclass(frozen=True)
class Send:
    lines: tuple[str, ...]  # ExaBGP API commands


@dataclass(frozen=True)
class WakeAt:
    """Call `tick` at `when` (or later); a later WakeAt never arrives before an earlier one is due."""

    when: float


@dataclass(frozen=True)
class Ready:
    """The initial sync is done: kernel routes now reflect what the peers announced."""


@dataclass(frozen=True)
class Reload:
    """ExaBGP runs other sessions than its configuration file names: signal it to read the file again."""


@dataclass(frozen=True)
class Log:
    level: int
    message: str  # %-format, as for logging
    args: tuple = ()


Command = Union[Program, Send, WakeAt, Ready, Reload, Log]
PROGRAM = Program()


# --- peers -----------------------------------------------------------------------------------------
@dataclass
class PeerState:
    settings: PeerSettings
    state: str = "idle"  # as ExaBGP reports it: idle, connected, up, down
    since: float | None = None  # when `state` last became up or down
    last_error: str = ""
    updates: int = 0
    advertised: int = 0
    stale_until: float | None = None  # graceful restart: when its stale routes go
    failed: bool = False  # declared dead (BFD): its updates are ignored until the session is up again
    logged_rejects: frozenset[Reject] = frozenset()


class NodeCore:
    def __init__(self, config: CoreConfig):
        self.config = config
        self.peers = {addr: PeerState(s) for addr, s in config.peers.items()}
        self.rib = Rib(config.import_filter, {addr: s.max_prefixes for addr, s in config.peers.items()})
        self.refused: dict[int, str] = {}  # desired routes the kernel refused, with its reason
        self.malformed = 0  # ExaBGP messages that could not be parsed
        self.initial_sync_done = False
        self._adopted: set[int] | None = None  # None: the kernel was not read yet
        self._datastore_ready = not config.wait_for_datastore
        self._exabgp_running = False  # the initial sync's clock starts with ExaBGP, not with us
        self._sync_deadline: float | None = None
        self._retries: deque[tuple[float, frozenset[int]]] = deque()
        self._dirty: set[int] = set()
        self._wake: float | None = None  # the earliest WakeAt handed out and not yet ticked
        self._check_at: float | None = None  # when to ask ExaBGP for its sessions (None: they are the configured)
        self._check_wait = CHECK_AFTER
        self._cluster_routes(config.cluster_routes, [])

    # --- inputs: start and configuration -----------------------------------------------------------
    def adopted(self, prefixes: Iterable[int], now: float) -> list[Command]:
        """The kernel's routes of our protocol at start: kept until the initial sync says who wants them."""
        out: list[Command] = []
        self._adopted = set(prefixes)
        self._mark(self.rib.filter.own_keys, out)  # blackholes for our own blocks, at once
        self._start_sync_deadline(now, out)
        return out

    def datastore_ready(self, now: float) -> list[Command]:
        """The datastore answered: the peers it names are known, the initial sync may end."""
        out: list[Command] = []
        self._datastore_ready = True
        self._start_sync_deadline(now, out)
        return out

    def configure(self, config: CoreConfig, now: float) -> list[Command]:
        """Moves to `config`: peers, blocks, pools, limits. Sessions it does not change stay as they are."""
        if config == self.config:
            return []
        old, self.config = self.config, config
        out: list[Command] = []
        for addr in [a for a in self.peers if a not in config.peers]:
            del self.peers[addr]
            self._apply(addr, None, self.rib.remove_peer(addr), out)
            out.append(Log(logging.INFO, "peer removed peer=%s", (addr,)))
        for addr, settings in config.peers.items():
            if addr in self.peers:
                self.peers[addr].settings = settings
            else:
                self.peers[addr] = PeerState(settings)
                out.append(Log(logging.INFO, "peer added peer=%s", (addr,)))
            self.rib.add_peer(addr, settings.max_prefixes)
        self._apply("", None, self.rib.refilter(config.import_filter), out)
        self._cluster_routes(config.cluster_routes, out)
        self._mark(old.import_filter.own_keys ^ config.import_filter.own_keys, out)
        if old.overlay != config.overlay or old.encryption != config.encryption:
            self._mark(self.rib.all_desired(), out)
        gone = [b for b in old.announced if b not in config.announced]
        for addr, ps in self.peers.items():  # blocks claimed or released while sessions are up
            if ps.state == "up":
                ps.advertised = len(msgs.announce_blocks(config.announced, [addr]))
        out.append(Send(tuple(msgs.withdraw_blocks(gone, config.peers)
                              + msgs.announce_blocks(config.announced, config.peers)
                              + msgs.route_refresh(config.peers))))
        if old.peers != config.peers:  # the shell reloads ExaBGP: check that the reload took
            self._check_at, self._check_wait = now + CHECK_AFTER, CHECK_AFTER
        self._check_initial_sync(out)
        self._schedule(out)
        return out

    # --- inputs: ExaBGP ----------------------------------------------------------------------------
    def relay_connected(self, fresh: bool, now: float) -> list[Command]:
        """A relay (re)connected. Not `fresh`: only the relay was respawned, updates may have been lost."""
        peers = self.config.peers
        lines = msgs.announce_blocks(self.config.announced, peers) + ([] if fresh else msgs.route_refresh(peers))
        out: list[Command] = [Log(logging.INFO, "exabgp relay connected new_process=%s", (fresh,)), Send(tuple(lines))]
        if not self._exabgp_running:
            self._exabgp_running = True
            self._start_sync_deadline(now, out)
        return out

    def relay_disconnected(self, now: float) -> list[Command]:
        return [Log(logging.WARNING, "exabgp relay disconnected")]

    def exabgp_exited(self, now: float) -> list[Command]:
        """We restart, RFC 4724 style: keep what peers gave us as stale until they send it again."""
        out: list[Command] = []
        for addr, ps in self.peers.items():
            if ps.state == "up":
                self._session_down(addr, ps, "exabgp exited", True, now, out)
            ps.state = "idle"
        return out

    def event(self, event: msgs.Event, now: float) -> list[Command]:
        """One parsed ExaBGP event. The hot path: an UPDATE costs O(its prefixes) and at most a Program."""
        out: list[Command] = []
        if isinstance(event, msgs.Malformed):
            self.malformed += 1
            out.append(Log(logging.WARNING, "malformed exabgp message reason=%s", (event.reason,)))
            return out
        if isinstance(event, msgs.Neighbors):
            self._neighbors(event.sessions, now, out)
            return out
        ps = self.peers.get(event.peer)
        if ps is None:
            return out
        if isinstance(event, msgs.Announce):
            if not ps.failed:
                ps.updates += 1
                self._apply(event.peer, ps, self.rib.announce(event.peer, event.prefixes, event.next_hop), out)
        elif isinstance(event, msgs.Withdraw):
            if not ps.failed:
                ps.updates += 1
                self._apply(event.peer, ps, self.rib.withdraw(event.peer, event.prefixes), out)
        elif isinstance(event, msgs.EndOfRib):
            if not ps.failed:
                ps.stale_until = None
                self._apply(event.peer, ps, self.rib.end_of_rib(event.peer), out)
                self._check_initial_sync(out)
        elif event.state == "up":
            ps.state, ps.since, ps.failed, ps.logged_rejects = "up", now, False, frozenset()
            announce = msgs.announce_blocks(self.config.announced, [event.peer])
            ps.advertised = len(announce)  # the blocks of the session's family only
            self.rib.session_up(event.peer)
            out.append(Log(logging.INFO, "session up peer=%s", (event.peer,)))
            # a peer added by a reload did not exist when we announced: announce again, then End-of-RIB
            out.append(Send(tuple(announce + [msgs.end_of_rib(event.peer)])))
        elif event.state == "down":
            self._session_down(event.peer, ps, event.reason,
                               event.graceful and self.config.graceful_restart > 0, now, out)
        else:
            ps.state = event.state
        return out

    def peer_failed(self, peer: str, reason: str, now: float) -> list[Command]:
        """The peer is known dead (e.g. BFD): as a hold-timer expiry, its routes go at once, no stale period.

        Its updates are ignored until its BGP session comes up again.
        """
        ps = self.peers.get(peer)
        if ps is None:
            return []
        out: list[Command] = []
        self._session_down(peer, ps, reason, False, now, out)
        ps.failed = True
        return out

    # --- inputs: kernel and time -------------------------------------------------------------------
    def kernel_synced(self, routes: Mapping[int, KernelRoute | None], errors: Mapping[int, str],
                      now: float) -> list[Command]:
        """The result of programming `routes` (a plan): `errors` are the ones the kernel refused, by reason."""
        if self.refused:
            for prefix in routes:
                self.refused.pop(prefix, None)
        if not errors:
            return []
        out: list[Command] = []
        self.refused.update(errors)
        self._retries.append((now + RETRY, frozenset(errors)))
        self._schedule(out)
        return out

    def drift(self, prefixes: Iterable[int], now: float) -> list[Command]:
        """These prefixes' kernel routes differ from what we installed: plan them again."""
        out: list[Command] = []
        self._mark(prefixes, out)
        return out

    def tick(self, now: float) -> list[Command]:
        """Time passed (a WakeAt came due): stale routes expire, the initial sync times out, retries start."""
        out: list[Command] = []
        self._wake = None
        for addr, ps in self.peers.items():
            if ps.stale_until is not None and ps.stale_until <= now:
                ps.stale_until = None
                out.append(Log(logging.WARNING, "graceful restart time over peer=%s stale_routes=%d",
                               (addr, len(self.rib.peers[addr].stale))))
                self._apply(addr, ps, self.rib.purge_stale(addr), out)
        if not self.initial_sync_done and self._sync_deadline is not None and self._sync_deadline <= now:
            out.append(Log(logging.WARNING, "initial sync timed out waiting_for_eor=%s",
                           (",".join(self.rib.waiting_for_end_of_rib()),)))
            self._finish_initial_sync(out)
        while self._retries and self._retries[0][0] <= now:
            self._mark(self._retries.popleft()[1], out)
        if self._check_at is not None and self._check_at <= now:
            out.append(Send((msgs.SHOW_NEIGHBORS,)))
            self._check_later(now)  # asked again then if no answer comes (no relay, ExaBGP restarting)
        self._schedule(out)
        return out

    # --- output ------------------------------------------------------------------------------------
    def plan(self, limit: int | None = None) -> dict[int, KernelRoute | None]:
        """Takes up to `limit` prefixes out of the plan: their desired kernel route, None for none.

        Adopted routes nobody announced are left alone until the initial sync is done; one we programmed
        since is ours, and goes when it is withdrawn.
        """
        if limit is not None and len(self._dirty) > limit:
            batch = set(islice(self._dirty, limit))
            self._dirty -= batch
        else:
            batch, self._dirty = self._dirty, set()
        plain = self.config.encryption is None and self.config.overlay is None
        desired, adopted = self.rib.desired if plain else self.desired, self._adopted or ()
        out: dict[int, KernelRoute | None] = {}
        for prefix in batch:
            want = desired(prefix)
            if prefix in adopted:
                if want is None:
                    continue
                adopted.discard(prefix)
            out[prefix] = want
        return out

    def desired(self, prefix: int) -> KernelRoute | None:
        """The kernel route `prefix` should have: the RIB's, through the WireGuard device where encryption
        says so, else through the VTEP where the overlay says so (encryption replaces encapsulation)."""
        want = self.rib.desired(prefix)
        encryption, overlay = self.config.encryption, self.config.overlay
        if encryption is None and overlay is None:
            return want
        net = network(prefix)
        if encryption is not None:
            want = encryption.route(net, want)
        return want if overlay is None else overlay.route(net, want)

    def routes(self) -> list[tuple[int, KernelRoute | None, list[str]]]:
        """Every prefix with a desired route, in order: its kernel route and the peers it came from (none:
        one of our blocks). For the views; the kernel's work goes through `plan`."""
        return [(p, self.desired(p), sorted(self.rib.sources(p))) for p in sorted(self.rib.all_desired())]

    def peer_routes(self, peer: str) -> PeerRib:
        """The peer's part of the RIB (counts, stale marks), for the views: read it, never change it."""
        return self.rib.peers[peer]

    @property
    def planned(self) -> int:
        """Prefixes waiting in the plan."""
        return len(self._dirty)

    # --- internals ---------------------------------------------------------------------------------
    def _cluster_routes(self, routes: tuple[tuple[IPv4Network, IPv4Address], ...], out: list[Command]) -> None:
        """The datastore's routes (BGP off) as the RIB's source DATASTORE: no limit, no End-of-RIB to wait for."""
        if not routes and DATASTORE not in self.rib.peers:
            return
        self.rib.add_peer(DATASTORE, 1 << 62)
        self.rib.expect_no_end_of_rib(DATASTORE)
        want = {key(p): hop for p, hop in routes}
        have = self.rib.peers[DATASTORE].routes
        self._apply(DATASTORE, None, self.rib.withdraw(DATASTORE, [p for p, h in have.items() if want.get(p) != h]),
                    out)
        by_hop: dict[IPv4Address, list[int]] = {}
        for prefix, hop in want.items():
            if have.get(prefix) != hop:
                by_hop.setdefault(hop, []).append(prefix)
        for hop, prefixes in by_hop.items():
            self._apply(DATASTORE, None, self.rib.announce(DATASTORE, prefixes, hop), out)

    def _neighbors(self, sessions: frozenset[tuple[str, int]], now: float, out: list[Command]) -> None:
        """ExaBGP's sessions, asked for after a change of peers: the configured ones end the check, others mean
        the reload was lost (or not yet done): reload again and ask again later."""
        if self._check_at is None:
            return
        want = frozenset((addr, s.asn) for addr, s in self.config.peers.items())
        if sessions == want:
            self._check_at = None
            return
        missing, extra = (",".join(sorted(f"{a}/AS{n}" for a, n in x)) for x in (want - sessions, sessions - want))
        out.append(Log(logging.WARNING, "exabgp runs other sessions than configured, reloading it again "
                                        "missing=%s extra=%s", (missing, extra)))
        out.append(Reload())
        self._check_later(now)
        self._schedule(out)

    def _check_later(self, now: float) -> None:
        self._check_at = now + self._check_wait
        self._check_wait = min(self._check_wait * 2, CHECK_MAX)

    def _mark(self, prefixes: Iterable[int], out: list[Command]) -> None:
        was_empty = not self._dirty
        self._dirty.update(prefixes)
        if was_empty and self._dirty:
            out.append(PROGRAM)

    def _apply(self, addr: str, ps: PeerState | None, upd: Update, out: list[Command]) -> None:
        if ps is not None and upd.rejected:
            for reason in upd.rejected - ps.logged_rejects:
                ps.logged_rejects |= {reason}
                out.append(Log(logging.WARNING, "rejecting routes peer=%s reason=%s (logged once per session; see "
                                                "tortie_bgp_prefixes_rejected_total)", (addr, reason.value)))
        if upd.changed:
            self._mark(upd.changed, out)

    def _session_down(self, addr: str, ps: PeerState, reason: str, graceful: bool, now: float,
                      out: list[Command]) -> None:
        if ps.state == "up":
            out.append(Log(logging.WARNING, "session down peer=%s reason=%r keep_stale=%s", (addr, reason, graceful)))
        ps.state, ps.since, ps.last_error, ps.advertised = "down", now, reason, 0
        self._apply(addr, ps, self.rib.session_down(addr, graceful), out)
        ps.stale_until = None
        if graceful and self.rib.peers[addr].stale:
            ps.stale_until = now + self.config.graceful_restart
            self._schedule(out)
        elif not graceful:
            self.rib.expect_no_end_of_rib(addr)  # a peer that is gone: don't hold the initial sync for it
            self._check_initial_sync(out)

    def _start_sync_deadline(self, now: float, out: list[Command]) -> None:
        """Once the kernel is read, the datastore answered and ExaBGP runs: peers have `initial_sync_timeout`
        from then to send End-of-RIB. A start slowed by load (ExaBGP taking seconds to come up) so does not
        remove the kept routes of peers that had no chance to resend them."""
        self._check_initial_sync(out)  # no peer to wait for (BGP off): done without ExaBGP
        if (self.initial_sync_done or self._adopted is None or not self._datastore_ready
                or not self._exabgp_running or self._sync_deadline is not None):
            return
        self._sync_deadline = now + self.config.initial_sync_timeout
        self._schedule(out)

    def _check_initial_sync(self, out: list[Command]) -> None:
        if (not self.initial_sync_done and self._adopted is not None and self._datastore_ready
                and not self.rib.waiting_for_end_of_rib()):
            self._finish_initial_sync(out)

    def _finish_initial_sync(self, out: list[Command]) -> None:
        """Now routes adopted at start that nobody announced again are known to be stale."""
        self.initial_sync_done = True
        self._mark(self._adopted or (), out)
        self._adopted = set()
        out.append(Log(logging.INFO, "initial sync done"))
        out.append(Ready())

    def _schedule(self, out: list[Command]) -> None:
        """A WakeAt for the earliest deadline, unless one at or before it is already pending."""
        due = [ps.stale_until for ps in self.peers.values() if ps.stale_until is not None]
        if not self.initial_sync_done and self._sync_deadline is not None:
            due.append(self._sync_deadline)
        if self._retries:
            due.append(self._retries[0][0])
        if self._check_at is not None:
            due.append(self._check_at)
        if due and (self._wake is None or min(due) < self._wake):
            self._wake = min(due)
            out.append(WakeAt(self._wake))
