"""The node daemon: ExaBGP events in, RIB in the middle, kernel routes out."""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import time
from dataclasses import dataclass
from ipaddress import IPv4Network

from pathlib import Path

from bgpd.bgp import messages as msgs
from bgpd.agent.cluster import Cluster
from bgpd.agent.control import ControlServer, DaemonRunning
from bgpd.bgp.exabgp_config import exabgp_environment, private_dir, render_config, write_config
from bgpd.bgp.exabgp_process import ExaBGPSupervisor
from bgpd.dataplane.kernel_routes import KernelTable, has_address
from bgpd.agent.metrics import DaemonMetrics
from bgpd.dataplane.pods import PodStore
from bgpd.ipam.state import NodeBlocks, save as save_ipam_state
from policy.datastore_sync import PolicySync
from bgpd.bgp.rib import ImportFilter, Reject, Rib, Update
from bgpd.agent.sdnotify import notify, watchdog_interval
from config.datastore import open_datastore
from config.effective import EffectiveConfig, effective
from config.load import ConfigError, load_model
from config.node import NodeConfig, Peer, restart_changes

log = logging.getLogger("tortie.daemon")


class StartupError(Exception):
    pass


class DaemonFailed(Exception):
    """A task of the daemon died; the daemon stopped (kernel routes left in place) and exits non-zero."""


def import_filter(node: EffectiveConfig) -> ImportFilter:
    return ImportFilter(tuple(p.cidr for p in node.pools), tuple(node.blocks),
                        frozenset((node.listen_address, node.router_id)), tuple(IPv4Network(a) for a in node.borrowed))


@dataclass
class PeerState:
    peer: Peer
    state: str = "idle"
    since: float | None = None
    last_error: str = ""
    updates: int = 0
    advertised: int = 0
    stale_timer: asyncio.TimerHandle | None = None
    logged_rejects: frozenset[Reject] = frozenset()


class Daemon:
    COALESCE = 0.001  # seconds to gather more changes before a kernel write
    FLUSH_AT = 512  # changed prefixes that make the reader give the kernel writer a turn
    MAX_BATCH = 1024  # prefixes per kernel write
    RETRY = 5.0  # seconds before a route the kernel refused is tried again

    def __init__(self, file_config: NodeConfig, config_path: Path | None = None, cleanup_on_exit: bool = False):
        self.node = node = effective(file_config, None)  # with a datastore, the cluster's view follows
        self.config_path = config_path
        self.cleanup_on_exit = cleanup_on_exit
        peers = node.bgp_peers()
        self.peers = {str(p.address): PeerState(p) for p in peers}
        self.rib = Rib(import_filter(node), {str(p.address): node.max_prefixes_for(p) for p in peers})
        self.kernel = KernelTable(node.route_protocol)
        private_dir(node.run_dir)
        node.state_dir.mkdir(parents=True, exist_ok=True)
        self.supervisor = ExaBGPSupervisor(
            node.run_dir / "exabgp.conf", node.run_dir / "exabgp.sock", exabgp_environment(node),
            on_connect=self._relay_session, on_exit=self._exabgp_exited)
        self.metrics = DaemonMetrics(self)
        self.control = ControlServer(node.run_dir / "tortie.sock", {
            "status": self.status, "routes": self.routes, "claim_block": self.claim_block,
            "endpoint_add": self.endpoint_added, "endpoint_del": self.endpoint_removed})
        self.pidfile = node.run_dir / "tortie.pid"
        self.cluster: Cluster | None = None
        self.policy: PolicySync | None = None
        if node.datastore is not None:
            ds = open_datastore(node.datastore, node.name)
            self.cluster = Cluster(ds, file_config, self.reconfigure)
            self.policy = PolicySync(ds, node.name, node.policy_backend, node.run_dir / "policy",
                                     self.metrics.registry)
        self.initial_sync = asyncio.Event()
        self._adopted: set[IPv4Network] = set()
        self.refused: dict[IPv4Network, str] = {}  # desired routes the kernel refused, with its reason
        self._dirty: set[IPv4Network] = set()
        self._dirty_since: float | None = None
        self._wake = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._stop = asyncio.Event()
        self._stopping = False
        self._failure: str | None = None

    # --- lifecycle ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Raises StartupError, having changed nothing, if this daemon cannot run."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        try:
            await self.control.start()
            self.metrics.serve(str(self.node.metrics.address), self.node.metrics.port)
        except DaemonRunning as e:
            raise StartupError(str(e)) from None
        except OSError as e:
            await self.control.stop()
            raise StartupError(f"metrics endpoint {self.node.metrics.address}:{self.node.metrics.port}: "
                               f"{e.strerror}") from None
        self.pidfile.write_text(f"{os.getpid()}\n")
        await self.kernel.adopt()
        self._adopted = set(self.kernel.installed)
        log.info("adopted kernel routes=%d protocol=%d", len(self._adopted), self.node.route_protocol)
        self._mark(self.node.blocks)  # blackholes for our own blocks, at once
        self._save_blocks()
        write_config(self.node.run_dir / "exabgp.conf", render_config(self.node, self.node.run_dir / "exabgp.sock"))
        tasks = [asyncio.create_task(self._program(), name="program"),
                 asyncio.create_task(self._start_bgp(), name="exabgp"),
                 asyncio.create_task(self._initial_sync_deadline(), name="initial-sync"),
                 asyncio.create_task(self._watchdog(), name="watchdog")]
        if self.cluster:
            tasks.append(asyncio.create_task(self.cluster.run(), name="cluster"))
            tasks.append(asyncio.create_task(self._run_policy(), name="policy"))
        tasks.append(asyncio.create_task(self._notify_ready(), name="ready"))
        for t in tasks:
            t.add_done_callback(self._task_done)
        if not self.peers:
            self._check_initial_sync()
        await self._stop.wait()
        log.info("stopping cleanup=%s", self.cleanup_on_exit)
        notify("STOPPING=1")
        self._stopping = True  # sessions now go down because *we* stop: their routes stay
        if self.cleanup_on_exit and self._writer:
            await self._send(msgs.withdraw_blocks(self.node.announced()))
            await asyncio.sleep(0.5)
        await self.supervisor.stop()
        if self.cluster:
            await self.cluster.ds.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.cleanup_on_exit:
            result = await self.kernel.sync({p: None for p in self.kernel.installed})
            log.info("removed kernel routes=%d", result.removed)
        await self.control.stop()
        self.pidfile.unlink(missing_ok=True)
        self.kernel.close()
        if self._failure is not None:
            raise DaemonFailed(self._failure)

    def _task_done(self, task: asyncio.Task) -> None:
        """A part of the daemon that died would leave the rest running blind: stop (routes stay) and exit 1."""
        if task.cancelled() or task.exception() is None:
            return
        self._failure = f"{task.get_name()}: {task.exception()!r}"
        log.critical("internal error, stopping task=%s", task.get_name(), exc_info=task.exception())
        self._stop.set()

    async def _start_bgp(self) -> None:
        """ExaBGP cannot bind before our BGP address exists (a host still coming up): wait for it."""
        if not await has_address(self.node.listen_address):
            log.warning("waiting for listen_address=%s to be configured", self.node.listen_address)
            while not await has_address(self.node.listen_address):
                await asyncio.sleep(0.5)
        await self.supervisor.run()

    async def _initial_sync_deadline(self) -> None:
        if self.cluster:  # the peers come from the datastore: nothing is known before it answered
            await self.cluster.ready.wait()
            self._check_initial_sync()
        await asyncio.sleep(self.node.initial_sync_timeout)
        if not self.initial_sync.is_set():
            waiting = [a for a, ps in self.peers.items() if not self.rib.peers[a].eor]
            log.warning("initial sync timed out waiting_for_eor=%s", ",".join(waiting))
            self._finish_initial_sync()

    def _check_initial_sync(self) -> None:
        if self.cluster and not self.cluster.ready.is_set():
            return
        if not self.initial_sync.is_set() and all(r.eor for r in self.rib.peers.values()):
            self._finish_initial_sync()

    def _finish_initial_sync(self) -> None:
        """Now routes adopted at start that nobody announced again are known to be stale."""
        self.initial_sync.set()
        self._mark(self._adopted)
        self._adopted = set()
        log.info("initial sync done")

    async def _notify_ready(self) -> None:
        """READY=1 once the first BGP sync is over and, with a datastore, the first ruleset is in force."""
        await self.initial_sync.wait()
        if self.policy:
            await self.policy.applied.wait()
        notify("READY=1", f"STATUS=initial BGP sync done, {len(self.peers)} peers")

    async def _run_policy(self) -> None:
        await self.cluster.ready.wait()  # the datastore is loaded
        pods = {(p.namespace, p.name) for p in PodStore(self.node).all()}
        for k in self.cluster.ds.items(f"endpoints/{self.node.name}"):
            if tuple(k.split("/")[2:]) not in pods:  # deleted while the daemon was away
                await self.cluster.ds.delete(k)
        await self.policy.run()

    async def endpoint_added(self, namespace: str, pod: str, endpoint: dict) -> dict:
        """tortie-cni's ADD: publish the pod, answer once its policy is enforced: {"enforced", "reason" why not}."""
        if self.policy is None:
            return {"enforced": True, "reason": ""}
        await self.cluster.ready.wait()
        refused = await self.policy.endpoint_added(namespace, pod, endpoint)
        return {"enforced": refused is None, "reason": refused or ""}

    async def endpoint_removed(self, namespace: str, pod: str) -> bool:
        if self.policy is None:
            return True
        await self.cluster.ready.wait()
        return await self.policy.endpoint_removed(namespace, pod)

    async def _watchdog(self) -> None:
        """Pings systemd from the event loop itself: a loop that stops turning stops the pings."""
        interval = watchdog_interval()
        while interval:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    # --- reload ------------------------------------------------------------------------------------
    async def reload(self) -> bool:
        """SIGHUP: apply a changed configuration file without disturbing sessions it does not change.

        An invalid file, one that changes a restart-only field (config/node.py: RESTART), or one that does not
        fit the cluster's view is refused as a whole.
        """
        notify("RELOADING=1")
        try:
            if self.config_path is None:
                raise ConfigError(["no configuration file to reload"])
            file_config = load_model(self.config_path, NodeConfig)
            fixed = restart_changes(self.node, file_config)
            if fixed:
                raise ConfigError([f"{self.config_path}: {f}: changing it needs a restart" for f in fixed])
            new = effective(file_config, self.cluster.view() if self.cluster else None)
        except ConfigError as e:
            log.error("reload refused, the running configuration stays: %s", "; ".join(e.errors))
            notify("READY=1", "STATUS=reload refused: see the log")
            return False
        if self.cluster:
            self.cluster.base = file_config
        await self.reconfigure(new)
        log.info("reloaded peers=%d blocks=%d", len(self.peers), len(new.blocks))
        notify("READY=1", f"STATUS=reloaded, {len(self.peers)} peers")
        return True

    async def reconfigure(self, new: EffectiveConfig) -> None:
        """Moves to `new` (same restart-only fields): peers, blocks, pools, limits; other sessions stay up."""
        if new == self.node:
            return
        old, self.node = self.node, new
        self._apply_peers(new)
        self._apply("", None, self.rib.refilter(import_filter(new)))
        self._mark(set(old.blocks) ^ set(new.blocks))
        write_config(new.run_dir / "exabgp.conf", render_config(new, new.run_dir / "exabgp.sock"))
        self.supervisor.reload()
        self._save_blocks()
        gone = [b for b in old.announced() if b not in new.announced()]
        await self._send(msgs.withdraw_blocks(gone) + msgs.announce_blocks(new.announced()) + [msgs.route_refresh()])

    def _save_blocks(self) -> None:
        """The blocks in force, for `tortie pod add` and tortie-cni: claimed ones are not in the file."""
        save_ipam_state(self.node.state_dir, NodeBlocks(blocks=self.node.blocks, borrowed=self.node.borrowed))

    async def claim_block(self) -> str | None:
        """Another block for this node's pods (the control socket's `claim_block`); failing that, when the
        pools have no free block, one address borrowed from another node's block."""
        if self.cluster is None:
            return None
        got = await self.cluster.claim_more()
        if got is not None:
            try:
                await self.reconfigure(self.cluster.desired())
            except ConfigError as e:
                log.error("cluster view refused, the running configuration stays: %s", "; ".join(e.errors))
                return None
        return str(got) if got else None

    def _apply_peers(self, node: NodeConfig) -> None:
        wanted = {str(p.address): p for p in node.bgp_peers()}
        for addr in [a for a in self.peers if a not in wanted]:
            ps = self.peers.pop(addr)
            self._cancel_stale_timer(ps)
            self._apply(addr, None, self.rib.remove_peer(addr))
            log.info("peer removed peer=%s", addr)
        for addr, peer in wanted.items():
            if addr in self.peers:
                self.peers[addr].peer = peer
            else:
                self.peers[addr] = PeerState(peer)
                log.info("peer added peer=%s", addr)
            self.rib.add_peer(addr, node.max_prefixes_for(peer))

    # --- ExaBGP ------------------------------------------------------------------------------------
    async def _relay_session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                             fresh: bool) -> None:
        self._writer = writer
        log.info("exabgp relay connected new_process=%s", fresh)
        await self._send(msgs.announce_blocks(self.node.announced()))
        if not fresh:  # only the relay was respawned: sessions are up but updates may have been lost
            await self._send([msgs.route_refresh()])
        try:
            while (line := await reader.readline()) and not self._stopping:
                for event in msgs.parse_line(line.decode(errors="replace")):
                    self._handle(event)
                if len(self._dirty) >= self.FLUSH_AT:
                    await asyncio.sleep(0)  # readline() does not yield while lines are buffered: let the writer run
        finally:
            self._writer = None
            log.warning("exabgp relay disconnected")

    async def _send(self, commands: list[str]) -> None:
        if self._writer is None or not commands:
            return
        self._writer.write("".join(c + "\n" for c in commands).encode())
        await self._writer.drain()

    def _exabgp_exited(self) -> None:
        """We restart, RFC 4724 style: keep what peers gave us as stale until they send it again."""
        if self._stopping:
            return
        for addr, ps in self.peers.items():
            if ps.state == "up":
                self._session_down(addr, ps, "exabgp exited", graceful=True)
            ps.state = "idle"

    def _handle(self, event: msgs.Event) -> None:
        if isinstance(event, msgs.Malformed):
            self.metrics.malformed.inc()
            log.warning("malformed exabgp message reason=%s", event.reason)
            return
        ps = self.peers.get(event.peer)
        if ps is None:
            return
        if isinstance(event, msgs.Announce):
            ps.updates += 1
            self._apply(event.peer, ps, self.rib.announce(event.peer, event.prefixes, event.next_hop))
        elif isinstance(event, msgs.Withdraw):
            ps.updates += 1
            self._apply(event.peer, ps, self.rib.withdraw(event.peer, event.prefixes))
        elif isinstance(event, msgs.EndOfRib):
            self._cancel_stale_timer(ps)
            self._apply(event.peer, ps, self.rib.end_of_rib(event.peer))
            self._check_initial_sync()
        elif event.state == "up":
            ps.state, ps.since, ps.logged_rejects = "up", time.time(), frozenset()
            ps.advertised = len(self.node.announced())
            self.rib.session_up(event.peer)
            log.info("session up peer=%s", event.peer)
            # a peer added by a reload did not exist when we announced: announce again, then End-of-RIB
            asyncio.get_running_loop().create_task(self._send(
                msgs.announce_blocks(self.node.announced(), event.peer) + [msgs.end_of_rib(event.peer)]))
        elif event.state == "down":
            self._session_down(event.peer, ps, event.reason, event.graceful and self.node.graceful_restart > 0)
        else:
            ps.state = event.state

    def _session_down(self, addr: str, ps: PeerState, reason: str, graceful: bool) -> None:
        was_up = ps.state == "up"
        ps.state, ps.since, ps.last_error, ps.advertised = "down", time.time(), reason, 0
        if was_up:
            log.warning("session down peer=%s reason=%r keep_stale=%s", addr, reason, graceful)
        self._apply(addr, ps, self.rib.session_down(addr, graceful))
        self._cancel_stale_timer(ps)
        if graceful and self.rib.peers[addr].stale:
            ps.stale_timer = asyncio.get_running_loop().call_later(
                self.node.graceful_restart, self._stale_expired, addr)
        elif not graceful:
            # a peer that is gone will send no End-of-RIB: don't hold the initial sync for it
            self.rib.peers[addr].eor = True
            self._check_initial_sync()

    def _stale_expired(self, addr: str) -> None:
        ps = self.peers[addr]
        ps.stale_timer = None
        log.warning("graceful restart time over peer=%s stale_routes=%d", addr, len(self.rib.peers[addr].stale))
        self._apply(addr, ps, self.rib.purge_stale(addr))

    @staticmethod
    def _cancel_stale_timer(ps: PeerState) -> None:
        if ps.stale_timer:
            ps.stale_timer.cancel()
            ps.stale_timer = None

    def _apply(self, addr: str, ps: PeerState | None, upd: Update) -> None:
        for reason in upd.rejected - ps.logged_rejects if ps is not None else ():
            ps.logged_rejects |= {reason}
            log.warning("rejecting routes peer=%s reason=%s (logged once per session; see "
                        "tortie_bgp_prefixes_rejected_total)", addr, reason.value)
        if upd.changed:
            self._mark(upd.changed)

    # --- kernel ------------------------------------------------------------------------------------
    def _mark(self, prefixes) -> None:
        self._dirty.update(prefixes)
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()
        self._wake.set()

    async def _program(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.COALESCE)
            self._wake.clear()
            if len(self._dirty) > self.MAX_BATCH:  # small batches: the last one after a burst ends soon
                batch = set(itertools.islice(self._dirty, self.MAX_BATCH))
                self._dirty -= batch
                since = self._dirty_since
                self._wake.set()
            else:
                batch, self._dirty = self._dirty, set()
                since, self._dirty_since = self._dirty_since, None
            desired = {}
            for prefix in batch:
                want = self.rib.desired(prefix)
                if want is None and prefix in self._adopted:
                    continue  # decided once the initial sync is done
                desired[prefix] = want
            result = await self.kernel.sync(desired)
            for prefix in desired:
                self.refused.pop(prefix, None)
            if result.errors:
                self.refused.update(result.errors)
                self.metrics.programming_errors.inc(len(result.errors))
                asyncio.get_running_loop().call_later(self.RETRY, self._mark, set(result.errors))
            if since is not None and (result.added or result.replaced or result.removed):
                self.metrics.programming_latency.observe(time.monotonic() - since)

    # --- views -------------------------------------------------------------------------------------
    def status(self) -> dict:
        now = time.time()
        return {
            "node": self.node.name, "asn": self.node.asn, "router_id": str(self.node.router_id),
            "blocks": [str(b) for b in self.node.blocks],
            "borrowed": [str(a) for a in self.node.borrowed],
            "initial_sync_done": self.initial_sync.is_set(),
            "kernel_routes": len(self.kernel.installed),
            "refused_routes": {str(p): why for p, why in sorted(self.refused.items())[:20]},
            "exabgp_restarts": self.supervisor.restarts,
            "datastore": None if self.cluster is None else {
                "connected": self.cluster.ds.connected, "resyncs": self.cluster.ds.resyncs,
                "ready": self.cluster.ready.is_set()},
            "peers": [{
                "name": ps.peer.name or addr, "address": addr, "asn": ps.peer.asn, "state": ps.state,
                "uptime": round(now - ps.since, 1) if ps.state == "up" and ps.since else 0,
                "received": self.rib.peers[addr].received, "accepted": self.rib.accepted(addr),
                "rejected": sum(self.rib.peers[addr].rejected.values()), "advertised": ps.advertised,
                "stale": len(self.rib.peers[addr].stale), "last_error": ps.last_error,
            } for addr, ps in self.peers.items()],
        }

    def routes(self) -> list[dict]:
        desired = self.rib.all_desired()
        return [{
            "prefix": str(prefix),
            "next_hops": sorted(str(h) for h in hops) or ["blackhole"],
            "peers": sorted(self.rib.sources(prefix)) or ["local"],
            "in_kernel": self.kernel.installed.get(prefix) == hops,
        } for prefix, hops in sorted(desired.items())]
