"""The node's overlay in the kernel, kept as the configuration says: a VTEP device and its entries per
underlay family whose pools use VXLAN (bgpd/dataplane/vxlan.py) and the overlay's firewall rules
(bgpd/dataplane/overlay_firewall.py).

`step` is one blocking pass (run it in a worker thread); called again, it repairs what others changed.
"""
from __future__ import annotations

import logging

from bgpd.dataplane.overlay_firewall import OverlayFirewall
from bgpd.dataplane.vxlan import DeviceState, VtepDevice, vtep_mtus
from bgpd.overlay.firewall import OverlayRules, rules_for
from bgpd.overlay.vxlan import Overlay, vteps
from config.node import NodeConfig

log = logging.getLogger("tortie.overlay")


class OverlayDataplane:
    def __init__(self, node: NodeConfig):
        self.vteps = {local.version: VtepDevice(node.vxlan, local)
                      for local in (node.listen_address, node.listen_address6) if local is not None}
        self.firewall = OverlayFirewall(node.policy_backend)
        self.devices: dict[int, DeviceState] = {}  # per underlay family (4, 6): the VTEPs that exist
        self.rules: OverlayRules | None = None
        self.repairs = 0  # devices, entries or firewall rules found changed by others, set again
        self.error = ""
        self._wanted: dict[int, dict] = {}

    def step(self, node: NodeConfig) -> None:
        """Raises OSError or policy.kernel.ApplyError; the next step tries again."""
        rules = rules_for(node)
        if rules != self.rules:
            self.firewall.apply(rules)
            self.rules = rules
        elif not rules.empty and not self.firewall.present(rules):
            log.warning("the overlay's firewall rules were removed: applying them again")
            self.firewall.apply(rules)
            self.repairs += 1
        mtus = vtep_mtus(node)
        for version, vtep in self.vteps.items():
            if version not in mtus:
                if vtep.remove():
                    log.info("removed vxlan device %s: no IPv%d pool uses VXLAN", vtep.name, version)
                self.devices.pop(version, None)
                self._wanted.pop(version, None)
                continue
            device = vtep.ensure(mtus[version])
            want = vteps(node.other_nodes(version))
            changes = vtep.sync(want)
            old = self.devices.get(version)
            if old is not None and device.index != old.index:
                self.repairs += 1
            elif changes and want == self._wanted.get(version):
                self.repairs += changes
                log.warning("vxlan neighbour/FDB entries of %s differed from ours: %d set again", vtep.name, changes)
            self.devices[version], self._wanted[version] = device, want
        self.error = ""

    def plan(self, node: NodeConfig) -> Overlay | None:
        """What decides the routes' encapsulation, once a device exists."""
        if not self.devices or not node.uses_vxlan():
            return None
        device = next(iter(self.devices.values()))
        oifs = {v: d.index for v, d in self.devices.items()}
        return Overlay(tuple((p.cidr, p.vxlan) for p in node.pools if p.vxlan != "never"), device.connected,
                       node.other_nodes(4) | node.other_nodes(6), oifs.get(4), oifs.get(6))

    def close(self) -> None:
        """Removes all of it (the daemon's cleanup on exit)."""
        for vtep in self.vteps.values():
            vtep.remove()
        self.firewall.remove()
        self.devices, self.rules = {}, None
