"""The node's VXLAN overlay service: keeps the VTEP devices, their neighbour and FDB entries and the overlay's
firewall rules as the effective configuration says (bgpd/dataplane/overlay.py, in a worker thread), every
`INTERVAL` seconds (repairing what others changed) and at once when the configuration changes.

The daemon hands it the configuration (`configure`, also on reload), reads `plan(node)` for the core's
configuration, and hears `on_devices()` when a pass made or replaced a device (routes through it need its
index); `status(installed)` is its part of `tortie status`.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from bgpd.agent.passes import run_passes
from bgpd.agent.views import OverlayStatus
from bgpd.dataplane.netlink_routes import DeviceHop, KernelRoute
from bgpd.dataplane.overlay import OverlayDataplane
from bgpd.overlay.vxlan import Overlay
from config.effective import EffectiveConfig
from policy.kernel import ApplyError

log = logging.getLogger("tortie.overlay")
INTERVAL = 5.0  # seconds between checks of the VTEP devices, their entries and the overlay's rules


class OverlayService:
    def __init__(self, node: EffectiveConfig, on_devices: Callable[[], None]):
        self.node = node
        self.dataplane = OverlayDataplane(node)
        self.on_devices = on_devices
        self._planned: dict = {}  # the devices the last plan was made of
        self._wake = asyncio.Event()

    def configure(self, node: EffectiveConfig) -> None:
        """VTEP entries and firewall rules follow the new nodes and pools (at the next pass, right away)."""
        self.node = node
        self._wake.set()

    def plan(self, node: EffectiveConfig) -> Overlay | None:
        self._planned = dict(self.dataplane.devices)
        return self.dataplane.plan(node)

    async def step(self) -> None:
        """One pass; a failure is logged (once until it changes) and tried again at the next one."""
        node, dp = self.node, self.dataplane
        try:
            await asyncio.to_thread(dp.step, node)
        except (OSError, ApplyError) as e:
            if str(e) != dp.error:
                log.error("overlay: %s (trying again every %.0f s)", e, INTERVAL)
            dp.error = str(e)
            return
        if node is self.node and dp.devices != self._planned:  # also what a pass for an older node made
            self.on_devices()

    async def run(self) -> None:
        await run_passes(self.step, self._wake, INTERVAL)

    async def close(self) -> None:
        """Removes the devices and rules (the daemon's cleanup on exit)."""
        await asyncio.to_thread(self.dataplane.close)

    def status(self, installed: Mapping[int, KernelRoute]) -> OverlayStatus | None:
        """Also read by the metrics endpoint's thread: reads, never changes."""
        node, dp = self.node, self.dataplane
        if not node.uses_vxlan():
            return None
        devices = [d for _, d in sorted(dp.devices.items())]  # the IPv4 VTEP first, then the IPv6 one
        oifs = {d.index for d in devices}
        encapsulated = sum(1 for hops in list(installed.values())
                           if any(isinstance(h, DeviceHop) and h.oif in oifs for h in hops))
        names = [dp.vteps[v].name for v in sorted({p.cidr.version for p in node.pools if p.vxlan != "never"})]
        return OverlayStatus(device=", ".join(names), vni=node.vxlan.vni, port=node.vxlan.port,
                             mtu=min((d.mtu for d in devices), default=0),
                             remote_vteps=sum(len(v.installed) for v in dp.vteps.values()),
                             encapsulated_routes=encapsulated, repairs=dp.repairs,
                             offloads=dict(devices[0].offloads) if devices else {}, error=dp.error)
