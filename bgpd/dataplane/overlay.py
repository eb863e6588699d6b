"""The node's overlay in the kernel, kept as the configuration says: the VTEP device and its entries
(bgpd/dataplane/vxlan.py) and the overlay's firewall rules (bgpd/dataplane/overlay_firewall.py).

`step` is one blocking pass (run it in a worker thread); called again, it repairs what others changed.
"""
from __future__ import annotations

import logging

from pyroute2 import IPRoute

from bgpd.dataplane.overlay_firewall import OverlayFirewall
from bgpd.dataplane.vxlan import DeviceState, VtepDevice, overlay_mtu
from bgpd.overlay.firewall import OverlayRules, rules_for
from bgpd.overlay.vxlan import Overlay, vteps
from config.node import NodeConfig

log = logging.getLogger("tortie.overlay")


class OverlayDataplane:
    def __init__(self, node: NodeConfig):
        self.vtep = VtepDevice(node.vxlan, node.listen_address)
        self.firewall = OverlayFirewall(node.policy_backend)
        self.device: DeviceState | None = None
        self.rules: OverlayRules | None = None
        self.repairs = 0  # device, entries or firewall rules found changed by others, set again
        self.error = ""
        self._wanted: dict | None = None

    def step(self, node: NodeConfig) -> None:
        """Raises OSError, NetlinkError or policy.kernel.ApplyError; the next step tries again."""
        rules = rules_for(node)
        if rules != self.rules:
            self.firewall.apply(rules)
            self.rules = rules
        elif not rules.empty and not self.firewall.present(rules):
            log.warning("the overlay's firewall rules were removed: applying them again")
            self.firewall.apply(rules)
            self.repairs += 1
        if not node.uses_vxlan():
            if self.vtep.remove():
                log.info("removed vxlan device %s: no pool uses VXLAN", node.vxlan.device)
            self.device, self._wanted = None, None
            return
        with IPRoute() as ipr:
            mtu = overlay_mtu(node, ipr)
        device = self.vtep.ensure(mtu)
        want = vteps(node.other_nodes())
        changes = self.vtep.sync(want)
        if self.device is not None and device.index != self.device.index:
            self.repairs += 1
        elif changes and want == self._wanted:
            self.repairs += changes
            log.warning("vxlan neighbour/FDB entries differed from ours: %d set again", changes)
        self.device, self._wanted, self.error = device, want, ""

    def plan(self, node: NodeConfig) -> Overlay | None:
        """What decides the routes' encapsulation, once the device exists."""
        if self.device is None or not node.uses_vxlan():
            return None
        return Overlay(tuple((p.cidr, p.vxlan) for p in node.pools if p.vxlan != "never"), self.device.connected,
                       node.other_nodes(), self.device.index)

    def close(self) -> None:
        """Removes all of it (the daemon's cleanup on exit)."""
        self.vtep.remove()
        self.firewall.remove()
        self.device, self.rules = None, None
