"""The node daemon: the asyncio shell around the BGP core (bgpd/bgp/core.py).

It feeds the core ExaBGP's events, the kernel's results, the time and the configuration, and executes
the commands it returns: kernel writes, lines to ExaBGP, timers, logs, readiness.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING
from ipaddress import ip_address, ip_network

from pathlib import Path

from bgpd.bgp import messages as msgs
from bgpd.agent.control import ControlServer, DaemonRunning
from bgpd.bgp.exabgp_config import exabgp_environment, private_dir, render_config, write_config
from bgpd.bgp.exabgp_process import ExaBGPSupervisor, relay_program
from bgpd.dataplane.kernel_routes import KernelTable
from bgpd.dataplane.uplink import has_address
from bgpd.wireguard.plan import Encryption
from bgpd.agent.metrics import DaemonMetrics
from bgpd.dataplane.pods import PodStore
from bgpd.ipam.claims import by_version
from bgpd.ipam.state import NodeBlocks, save as save_ipam_state
from bgpd.agent.views import DatastoreStatus, PeerStatus, PoolStatus, RouteStatus, Status
from bgpd.bfd.service import BfdService
from bgpd.bgp.core import Command, CoreConfig, Log, NodeCore, PeerSettings, Program, Ready, Reload, Send, WakeAt
from bgpd.bgp.rib import ImportFilter
from bgpd.agent.sdnotify import notify, watchdog_interval
from bgpd.overlay.service import OverlayService
from bgpd.overlay.vxlan import Overlay
from bgpd.prefixes import text, version as prefix_version
from config.effective import EffectiveConfig, effective
from config.load import ConfigError, load_model
from config.node import NodeConfig, restart_changes

if TYPE_CHECKING:  # imported when a datastore is configured: a node without one saves ~13 MiB
    from bgpd.agent.cluster import Cluster
    from bgpd.wireguard.service import WireguardService  # and these with WireGuard (pyroute2, cryptography)
    from bgpd.dns.service import DnsService
    from policy.datastore_sync import PolicySync

log = logging.getLogger("tortie.daemon")


class StartupError(Exception):
    pass




class DaemonFailed(Exception):
    """A task of the daemon died; the daemon stopped (kernel routes left in place) and exits non-zero."""


def core_config(node: EffectiveConfig, overlay: Overlay | None = None,
                encrypt: Encryption | None = None) -> CoreConfig:
    """What the BGP core needs of the configuration in force (and of the VTEP and WireGuard devices)."""
    return CoreConfig(
        peers={str(p.address): PeerSettings(p.name or str(p.address), p.asn, node.max_prefixes_for(p))
               for p in node.bgp_peers()},
        import_filter=ImportFilter(tuple(p.cidr for p in node.pools), tuple(node.blocks),
                                   frozenset(a for a in (node.listen_address, node.listen_address6, node.router_id)
                                             if a is not None),
                                   tuple(ip_network(a) for a in node.borrowed)),
        announced=tuple(node.announced()), graceful_restart=node.graceful_restart,
        initial_sync_timeout=node.initial_sync_timeout, wait_for_datastore=node.datastore is not None,
        overlay=overlay, cluster_routes=tuple(sorted(node.cluster_routes.items(), key=lambda r: by_version(r[0]))),
        encryption=encrypt)


class Daemon:
    COALESCE = 0.001  # seconds to gather more changes before a kernel write
    FLUSH_AT = 512  # changed prefixes that make the reader give the kernel writer a turn
    MAX_BATCH = 1024  # prefixes per kernel write

    def __init__(self, file_config: NodeConfig, config_path: Path | None = None, cleanup_on_exit: bool = False):
        self.node = node = effective(file_config, None)  # with a datastore, the cluster's view follows
        self.config_path = config_path
        self.cleanup_on_exit = cleanup_on_exit
        self.core = NodeCore(core_config(node))
        self.kernel = KernelTable(node.route_protocol)
        self.initial_sync = asyncio.Event()
        self.overlay = OverlayService(node, self._devices_changed)
        private_dir(node.run_dir)
        node.state_dir.mkdir(parents=True, exist_ok=True)
        self.wireguard: WireguardService | None = None
        if node.wireguard.enabled:
            from bgpd.wireguard.service import WireguardService
            try:
                self.wireguard = WireguardService(node, self._devices_changed, self.initial_sync)
            except (ValueError, OSError) as e:
                raise StartupError(f"wireguard key: {e}") from None
        try:
            self.relay = relay_program()
        except FileNotFoundError as e:
            raise StartupError(str(e)) from None
        self.supervisor = ExaBGPSupervisor(
            node.run_dir / "exabgp.conf", node.run_dir / "exabgp.sock", exabgp_environment(node),
            on_connect=self._relay_session, on_exit=self._exabgp_exited)
        self.metrics = DaemonMetrics(self)
        self.control = ControlServer(node.run_dir / "tortie.sock", {
            "status": self.status, "routes": self.routes, "claim_block": self.claim_block,
            "endpoint_add": self.endpoint_added, "endpoint_del": self.endpoint_removed,
            "wireguard_rotate": self.wireguard_rotate})
        self.pidfile = node.run_dir / "tortie.pid"
        self.bfd = BfdService([a for a in (node.listen_address, node.listen_address6) if a is not None],
                              self._bfd_failed)
        self.bfd.configure(node.bgp_peers())
        self.cluster: Cluster | None = None
        self.policy: PolicySync | None = None
        self.dns: DnsService | None = None
        if node.datastore is not None:
            from bgpd.agent.cluster import Cluster
            from bgpd.dns.service import DnsService
            from config.datastore import open_datastore
            from policy.datastore_sync import PolicySync
            ds = open_datastore(node.datastore, node.name)
            self.cluster = Cluster(ds, file_config, self.reconfigure)
            self.cluster.published = self.wireguard.record() if self.wireguard else {}
            self.policy = PolicySync(ds, node.name, node.policy_backend, node.run_dir / "policy",
                                     self.metrics.registry)
            if node.dns.enabled:
                self.dns = DnsService(ds, node, self.metrics.registry)
        self._dirty_since: float | None = None  # when the core's plan last became non-empty
        self._wake = asyncio.Event()  # the plan has routes for the kernel writer
        self._timer: asyncio.TimerHandle | None = None  # for the core's latest WakeAt
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
        log.info("adopted kernel routes=%d protocol=%d", len(self.kernel.installed), self.node.route_protocol)
        await self.overlay.step()
        if self.wireguard:
            await self.wireguard.step()
        self._do(self.core.adopted(self.kernel.installed, time.monotonic()))
        self._save_blocks()
        self._write_exabgp_config(self.node)
        # what start-up made (modules, models: ~40,000 objects, a few of them garbage) lives as long as the daemon:
        # frozen, a full collection during a burst of routes no longer walks it (~0.1 s each at load)
        gc.freeze()
        tasks = [asyncio.create_task(self._program(), name="program"),
                 asyncio.create_task(self._start_bgp(), name="exabgp"),
                 asyncio.create_task(self.kernel.watch(self._drifted), name="kernel-watch"),
                 asyncio.create_task(self._watchdog(), name="watchdog"),
                 asyncio.create_task(self.overlay.run(), name="overlay")]
        if self.cluster:
            tasks.append(asyncio.create_task(self.cluster.run(), name="cluster"))
            tasks.append(asyncio.create_task(self._datastore_ready(), name="datastore-ready"))
            tasks.append(asyncio.create_task(self._run_policy(), name="policy"))
        if self.dns:
            tasks.append(asyncio.create_task(self._run_dns(), name="dns"))
        if self.wireguard:
            tasks.append(asyncio.create_task(self.wireguard.run(), name="wireguard"))
        tasks.append(asyncio.create_task(self._notify_ready(), name="ready"))
        for t in tasks:
            t.add_done_callback(self._task_done)
        await self._stop.wait()
        log.info("stopping cleanup=%s", self.cleanup_on_exit)
        notify("STOPPING=1")
        self._stopping = True  # sessions now go down because *we* stop: their routes stay
        self.bfd.close()  # AdminDown: peers do not take it for a failure
        if self.cleanup_on_exit and self._writer:
            self._send(msgs.withdraw_blocks(self.node.announced(), self.core.config.peers))
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
            await self.overlay.close()
            if self.wireguard:
                await self.wireguard.close()
        if self._timer:
            self._timer.cancel()
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
        """ExaBGP cannot bind before our BGP addresses exist (a host still coming up): wait for them."""
        if not self.node.bgp.enabled:
            return
        for address in (a for a in (self.node.listen_address, self.node.listen_address6) if a is not None):
            if not has_address(address):
                log.warning("waiting for listen address %s to be configured", address)
                while not has_address(address):
                    await asyncio.sleep(0.5)
        await self.bfd.start()
        await self.supervisor.run()

    async def _datastore_ready(self) -> None:
        """The peers come from the datastore: the initial sync cannot end before it answered."""
        await self.cluster.ready.wait()
        self._do(self.core.datastore_ready(time.monotonic()))

    async def _notify_ready(self) -> None:
        """READY=1 once the first BGP sync is over and, with a datastore, the first ruleset is in force."""
        await self.initial_sync.wait()
        if self.policy:
            await self.policy.applied.wait()
        notify("READY=1", f"STATUS=initial BGP sync done, {len(self.core.peers)} peers")

    def _devices_changed(self) -> None:
        """A VTEP or the WireGuard device was made or replaced: the core's routes through it need its index."""
        self._do(self.core.configure(self._core_config(self.node), time.monotonic()))

    def _core_config(self, node: EffectiveConfig) -> CoreConfig:
        return core_config(node, self.overlay.plan(node), self.wireguard.encryption(node) if self.wireguard else None)

    async def wireguard_rotate(self) -> dict:
        """`tortie wireguard rotate`: a new key pair, in force at once and published; peers that learn it
        from the datastore handshake again (traffic waits at most about one handshake)."""
        if self.wireguard is None:
            return {"error": "wireguard is not enabled"}
        public = await self.wireguard.rotate()
        if self.cluster:
            self.cluster.published = self.wireguard.record()
            await self.cluster.register()
        return {"public_key": public, "published": self.cluster is not None}

    async def _run_policy(self) -> None:
        await self.cluster.ready.wait()  # the datastore is loaded
        pods = {(p.namespace, p.name) for p in PodStore(self.node).all()}
        for k in self.cluster.ds.items(f"endpoints/{self.node.name}"):
            if tuple(k.split("/")[2:]) not in pods:  # deleted while the daemon was away
                await self.cluster.ds.delete(k)
        await self.policy.run()

    async def _run_dns(self) -> None:
        await self.cluster.ready.wait()  # the datastore is loaded: the first zone is complete
        await self.dns.run()

    async def endpoint_added(self, namespace: str, pod: str, endpoint: dict, moved: str = "") -> dict:
        """tortie-cni's ADD: publish the pod, answer once its policy is enforced: {"enforced", "reason" why not,
        "taken"}. `taken`: its addresses that another node holds (a block whose claims crossed ours); then the pod
        is not published, and this node moved to a block of its own for the ADD to try again (pods.add_pod()),
        which passes that answer's reason as `moved`."""
        if self.policy is None:
            return {"enforced": True, "reason": "", "taken": []}
        await self.cluster.ready.wait()
        if moved_off := await self._move_off(namespace, pod, endpoint):
            return moved_off
        refused = await self.policy.endpoint_added(namespace, pod, endpoint)
        if refused is not None and (moved_off := await self._move_off(namespace, pod, endpoint)):
            await self.policy.endpoint_removed(namespace, pod)  # its view caught up meanwhile
            return moved_off
        if refused is None and moved:
            log.warning("pod %s/%s has address(es) %s instead (%s)", namespace, pod, ", ".join(endpoint["ips"]),
                        moved)
        return {"enforced": refused is None, "reason": refused or "", "taken": []}

    async def _move_off(self, namespace: str, pod: str, endpoint: dict) -> dict | None:
        """If readers would give addresses of the endpoint to another node: moves to a block of our own
        (Cluster.move_off()) and says which (endpoint_added()'s answer)."""
        ips, addresses = endpoint.get("ips"), set()
        for ip in ips if isinstance(ips, list) else ():
            try:
                addresses.add(ip_address(ip if isinstance(ip, str) else ""))
            except ValueError:
                pass  # the policy sync refuses the endpoint, saying why
        if not (found := self.cluster.taken(addresses)):
            return None
        for t in found:
            log.warning("pod %s/%s: %s; moving to a block of our own", namespace, pod, t)
        await self.cluster.move_off(addresses)
        return {"enforced": False, "reason": "; ".join(map(str, found)),
                "taken": [{"address": str(t.address), "prefix": str(t.prefix), "holder": t.holder} for t in found]}

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
            new = effective(file_config, self.cluster.view(file_config) if self.cluster else None)
        except ConfigError as e:
            log.error("reload refused, the running configuration stays: %s", "; ".join(e.errors))
            notify("READY=1", "STATUS=reload refused: see the log")
            return False
        if self.cluster:
            self.cluster.base = file_config
        await self.reconfigure(new)
        log.info("reloaded peers=%d blocks=%d", len(self.core.peers), len(new.blocks))
        notify("READY=1", f"STATUS=reloaded, {len(self.core.peers)} peers")
        return True

    async def reconfigure(self, new: EffectiveConfig) -> None:
        """Moves to `new` (same restart-only fields): peers, blocks, pools, limits; other sessions stay up."""
        if new == self.node:
            return
        self.node = new
        commands = self.core.configure(self._core_config(new), time.monotonic())
        self.overlay.configure(new)
        if self.wireguard:
            self.wireguard.configure(new)
        self.bfd.configure(new.bgp_peers())
        self._write_exabgp_config(new)
        self.supervisor.reload()
        self._save_blocks()
        self._do(commands)

    def _write_exabgp_config(self, node: NodeConfig) -> None:
        """ExaBGP's configuration for `node`, at the paths the supervisor runs it with."""
        write_config(self.supervisor.config_path, render_config(node, self.supervisor.socket_path, self.relay))

    def _save_blocks(self) -> None:
        """The blocks in force, for `tortie pod add` and tortie-cni: claimed ones are not in the file."""
        save_ipam_state(self.node.state_dir, NodeBlocks(blocks=self.node.blocks, borrowed=self.node.borrowed))

    async def claim_block(self, version: int = 4, seen: list[str] = ()) -> str | None:
        """Another block of the IP version for this node's pods (the control socket's `claim_block`); failing that,
        when the version's pools have no free block, one address borrowed from another node's block.

        Only once the datastore is loaded (a claim decided on a partial view would cross other nodes' claims), and
        only if no block came since the caller read blocks.json (`seen`: its blocks of the version): one that did
        (the node's first, claimed as the daemon started) is the answer."""
        if self.cluster is None or version not in (4, 6):
            return None
        await self.cluster.ready.wait()
        if came := [p for p in self.node.announced() if p.version == version and str(p) not in seen]:
            return str(came[0])
        got = await self.cluster.claim_more(version)
        if got is not None:
            try:
                await self.reconfigure(self.cluster.desired())
            except ConfigError as e:
                log.error("cluster view refused, the running configuration stays: %s", "; ".join(e.errors))
                return None
        return str(got) if got else None

    # --- ExaBGP ------------------------------------------------------------------------------------
    async def _relay_session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                             fresh: bool) -> None:
        self._writer = writer
        self._do(self.core.relay_connected(fresh, time.monotonic()))
        try:
            while (line := await reader.readline()) and not self._stopping:
                now = time.monotonic()
                for event in msgs.parse_line(line.decode(errors="replace")):
                    self._do(self.core.event(event, now))
                if self.core.planned >= self.FLUSH_AT:
                    await asyncio.sleep(0)  # readline() does not yield while lines are buffered: let the writer run
        finally:
            self._writer = None
            self._do(self.core.relay_disconnected(time.monotonic()))

    def _send(self, lines: Iterable[str]) -> None:
        """To ExaBGP through the relay. Without one nothing is sent: the next one gets our blocks again."""
        if self._writer is not None:
            self._writer.write("".join(c + "\n" for c in lines).encode())

    def _bfd_failed(self, peer: str, reason: str) -> None:
        """BFD says the peer is gone: its routes go now, as on a hold-timer expiry, and its BGP session is torn
        down (ExaBGP reconnects on its own, and the peer's routes count again once the session is back up)."""
        self._do(self.core.peer_failed(peer, reason, time.monotonic()))
        self._send([msgs.teardown(peer, msgs.CEASE_BFD_DOWN)])

    def _exabgp_exited(self) -> None:
        if not self._stopping:  # sessions that end because *we* stop leave the kernel routes as they are
            self._do(self.core.exabgp_exited(time.monotonic()))

    def _drifted(self, prefixes: set[int]) -> None:
        self._do(self.core.drift(prefixes, time.monotonic()))

    def _tick(self) -> None:
        self._timer = None
        self._do(self.core.tick(time.monotonic()))

    # --- the core's commands -----------------------------------------------------------------------
    def _do(self, commands: list[Command]) -> None:
        for c in commands:
            if isinstance(c, Program):
                if self._dirty_since is None:
                    self._dirty_since = time.monotonic()
                self._wake.set()
            elif isinstance(c, Send):
                self._send(c.lines)
            elif isinstance(c, Log):
                log.log(c.level, c.message, *c.args)
            elif isinstance(c, WakeAt):  # earlier than the pending one, if any: it replaces it
                if self._timer:
                    self._timer.cancel()
                self._timer = asyncio.get_running_loop().call_later(max(0.0, c.when - time.monotonic()), self._tick)
            elif isinstance(c, Reload):
                self.supervisor.reload()
            elif isinstance(c, Ready):
                self.initial_sync.set()
                if self.wireguard:
                    self.wireguard.wake()  # peers and AllowedIPs are known now

    # --- kernel ------------------------------------------------------------------------------------
    async def _program(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.COALESCE)
            self._wake.clear()
            routes = self.core.plan(self.MAX_BATCH)  # small batches: the last one after a burst ends soon
            if self.wireguard:
                self.wireguard.routes_changed(routes)  # AllowedIPs follow the routes
            since = self._dirty_since
            if self.core.planned:
                self._wake.set()
            else:
                self._dirty_since = None
            result = await self.kernel.sync(routes)
            if result.errors:
                self.metrics.programming_errors.inc(len(result.errors))
            self._do(self.core.kernel_synced(routes, result.errors, time.monotonic()))
            if since is not None and (result.added or result.replaced or result.removed):
                self.metrics.programming_latency.observe(time.monotonic() - since)

    # --- views -------------------------------------------------------------------------------------
    def status(self) -> Status:
        """Also read by the metrics endpoint's thread: reads the state, never changes it."""
        now, core = time.monotonic(), self.core
        peers = []
        for addr, ps in list(core.peers.items()):
            rib = core.peer_routes(addr)
            peers.append(PeerStatus(
                name=ps.settings.name, address=addr, asn=ps.settings.asn, state=ps.state,
                uptime=round(now - ps.since, 1) if ps.state == "up" and ps.since is not None else 0,
                received=rib.received, accepted=len(rib.routes), rejected=sum(rib.rejected.values()),
                advertised=ps.advertised, stale=len(rib.stale), last_error=ps.last_error, updates=ps.updates,
                rejected_by_reason={r.value: n for r, n in rib.rejected.items()}, bfd=self.bfd.status(addr)))
        refused, installed = dict(core.refused), list(self.kernel.installed)
        return Status(
            node=self.node.name, asn=self.node.asn, router_id=str(self.node.router_id),
            blocks=[str(b) for b in self.node.blocks], borrowed=[str(a) for a in self.node.borrowed],
            initial_sync_done=core.initial_sync_done, kernel_routes=len(installed),
            kernel_routes_ipv6=sum(1 for p in installed if prefix_version(p) == 6),
            refused_ipv6=sum(1 for p in refused if prefix_version(p) == 6),
            refused_routes={text(p): why for p, why in sorted(refused.items())[:20]},
            exabgp_restarts=self.supervisor.restarts,
            datastore=None if self.cluster is None else DatastoreStatus(
                connected=self.cluster.ds.connected, resyncs=self.cluster.ds.resyncs, ready=self.cluster.ready.is_set()),
            peers=peers, refused_total=len(refused), kernel_repairs=self.kernel.repairs,
            malformed_messages=core.malformed, bgp_enabled=self.node.bgp.enabled,
            pools=[PoolStatus(str(p.cidr), p.vxlan, p.nat_outgoing) for p in self.node.pools],
            overlay=self.overlay.status(self.kernel.installed),
            wireguard=self.wireguard.status(self.kernel.installed) if self.wireguard else None)

    def routes(self) -> list[RouteStatus]:
        installed = self.kernel.installed
        return [RouteStatus(prefix=text(prefix), next_hops=sorted(map(str, want)) or ["blackhole"],
                            peers=peers or ["local"], in_kernel=installed.get(prefix) == want)
                for prefix, want, peers in self.core.routes()]
