"""The node's WireGuard service: keeps the device (kernel module or wireguard-go), the guard of
`wireguard.required` and the peers with their AllowedIPs as the effective configuration and the core's routes
say (bgpd/dataplane/wireguard.py, in a worker thread), every `INTERVAL` seconds (repairing what others
changed) and soon after a change.

The daemon hands it the configuration (`configure`, also on reload) and each batch of the core's plan
(`routes_changed`: the new desired routes of the prefixes whose route may have changed, so AllowedIPs follow
the routes without a pass over all of them), reads `encryption(node)` for the core's configuration, and
hears `on_device()` when the device was made or replaced (routes through it need its index). Until the
initial sync is done (`synced`) the device keeps the peers it has: a restart keeps traffic flowing.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from pyroute2.netlink.exceptions import NetlinkError

from bgpd.agent.passes import run_passes
from bgpd.agent.views import WireguardPeerStatus, WireguardStatus
from bgpd.dataplane.netlink_routes import DeviceHop, KernelRoute
from bgpd.dataplane.wireguard import WireguardDataplane
from bgpd.wireguard import keys
from bgpd.wireguard.guard import GuardRules
from bgpd.wireguard.plan import AllowedIps, Encryption, encryption, render
from config.effective import EffectiveConfig
from policy.kernel import ApplyError

log = logging.getLogger("tortie.wireguard")
INTERVAL = 5.0  # seconds between checks of the device, wireguard-go and the peers
COALESCE = 0.05  # seconds to gather a burst of route changes into one `wg syncconf`


def guard_rules(node: EffectiveConfig) -> GuardRules | None:
    """With `required`, the guard's rules: IPv4, as the peers' AllowedIPs."""
    if not node.wireguard.required:
        return None
    return GuardRules(node.wireguard.device, tuple(p.cidr for p in node.pools if p.cidr.version == 4),
                      tuple(p for p in node.announced() if p.version == 4))


class WireguardService:
    def __init__(self, node: EffectiveConfig, on_device: Callable[[], None], synced: asyncio.Event):
        """Raises ValueError or OSError if the key file cannot be read or made."""
        self.node = node
        self.dataplane = WireguardDataplane(node, keys.load_or_create(node.state_dir))
        self.on_device = on_device
        self.synced = synced
        self.allowed = AllowedIps()
        self._oif = 0  # the device's ifindex in the core's routes: that of the last `encryption` handed out
        self._wake = asyncio.Event()

    def configure(self, node: EffectiveConfig) -> None:
        """Peers follow the new nodes and keys (at the next pass, soon)."""
        self.node = node
        self._wake.set()

    def wake(self) -> None:
        """A pass soon (the initial sync is done: peers and AllowedIPs are known)."""
        self._wake.set()

    def encryption(self, node: EffectiveConfig) -> Encryption:
        """Which routes go through WireGuard. Until its device exists every node counts as without a key:
        reached unencrypted, or (required) not at all."""
        device = self.dataplane.device
        members = node.mesh.nodes if device is not None else [m.model_copy(update={"public_key": None})
                                                              for m in node.mesh.nodes]
        self._oif = device.index if device else 0
        return encryption(members, node.name, node.listen_address, [p.cidr for p in node.pools],
                          node.wireguard.required, self._oif)

    def routes_changed(self, routes: Mapping[int, KernelRoute | None]) -> None:
        if self.allowed.update(routes, self._oif):
            self._wake.set()

    def record(self) -> dict:
        """What the node record publishes of WireGuard: the public key and port (never the private key)."""
        return {"wireguard": {"public_key": keys.public_key(self.dataplane.private_key),
                              "port": self.node.wireguard.port}}

    async def step(self) -> None:
        """The device (and wireguard-go) up, the daemon told of a new one, the guard, then key, port and peers
        with AllowedIPs. A failure is logged (once until it changes) and tried again at the next pass."""
        node, wg = self.node, self.dataplane
        try:
            device = await asyncio.to_thread(wg.ensure, node)
            await asyncio.to_thread(wg.guard.apply, guard_rules(node))
            if node is self.node and device.index != self._oif:  # also what a pass for an older node made
                self.on_device()
            if not self.synced.is_set():
                return
            peers = self.allowed.peers(node.mesh.nodes, node.name)
            await asyncio.to_thread(wg.configure, render(wg.private_key, node.wireguard.port, peers), peers)
        except (OSError, NetlinkError, ApplyError) as e:
            if str(e) != wg.error:
                log.error("wireguard: %s (trying again every %.0f s)", e, INTERVAL)
            wg.error = str(e)

    async def run(self) -> None:
        await run_passes(self.step, self._wake, INTERVAL, COALESCE)

    async def rotate(self) -> str:
        """A new key pair, in force at once; its public key (for the daemon to publish)."""
        public = await asyncio.to_thread(keys.rotate, self.node.state_dir)
        self.dataplane.private_key = keys.load_or_create(self.node.state_dir)
        log.info("wireguard key rotated public_key=%s", public)
        await self.step()
        return public

    async def close(self) -> None:
        """Removes the device and the guard (the daemon's cleanup on exit)."""
        await asyncio.to_thread(self.dataplane.close)

    def status(self, installed: Mapping[int, KernelRoute]) -> WireguardStatus:
        """Also read by the metrics endpoint's thread: reads, never changes."""
        wg, node = self.dataplane, self.node
        device, now = wg.device, time.time()
        names = {m.public_key: m.name for m in node.mesh.nodes if m.public_key}
        encrypted = sum(1 for hops in list(installed.values())
                        if device and any(isinstance(h, DeviceHop) and h.oif == device.index for h in hops))
        allowed = {p.public_key: len(p.allowed_ips) for p in wg.peers}
        return WireguardStatus(
            device=node.wireguard.device, implementation=device.implementation if device else "",
            public_key=keys.public_key(wg.private_key), port=node.wireguard.port, mtu=device.mtu if device else 0,
            required=node.wireguard.required,
            peers=[WireguardPeerStatus(names.get(p.public_key, p.public_key), p.endpoint,
                                       allowed.get(p.public_key, 0),
                                       round(now - p.latest_handshake, 1) if p.latest_handshake else None,
                                       p.rx_bytes, p.tx_bytes) for p in wg.peer_stats],
            nodes_without_key=sorted(m.name for m in node.mesh.nodes
                                     if not m.public_key and m.name != node.name
                                     and m.address != node.listen_address),
            encrypted_routes=encrypted, restarts=wg.wg.restarts, error=wg.error)
