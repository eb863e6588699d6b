"""The WireGuard device in the kernel: the kernel module's device where the host has one, else a supervised
`wireguard-go` (user space over TUN, its UAPI socket in /run/wireguard). Either way `wg syncconf` sets the
key, port and peers (it speaks the module's netlink and wireguard-go's UAPI alike), and `wg show dump`
reads handshakes and bytes.

Blocking calls: run them in a worker thread (`asyncio.to_thread`).
"""
from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from bgpd.dataplane.uplink import uplink_mtu
from bgpd.wireguard.guard import (IPSETS, IPT_CHAIN, IPTABLES_JUMP, NFT_TABLE, GuardRules, render_ipset,
                                  render_iptables, render_nft)
from bgpd.wireguard.plan import Peer, PeerStats, parse_dump, pod_mtu
from config.node import NodeConfig
from policy.kernel import ApplyError, run

log = logging.getLogger("tortie.wireguard")

START_TIMEOUT = 10.0  # seconds wireguard-go may take to make its device and socket
EOPNOTSUPP = 95


class WireguardError(OSError):
    pass


@dataclass(frozen=True)
class DeviceState:
    index: int
    mtu: int
    implementation: str  # "kernel" or "wireguard-go"


class WireguardDevice:
    def __init__(self, device: str):
        self.device = device
        self.implementation = ""  # chosen at the first ensure()
        self.process: subprocess.Popen | None = None
        self.restarts = 0  # wireguard-go found dead and started again
        self.configured = ""  # the text last given to wg syncconf

    def ensure(self, mtu: int) -> DeviceState:
        """The device, up with `mtu`: created (kernel module), or wireguard-go (re)started if it is gone."""
        with IPRoute() as ipr:
            index = self._index(ipr)
            if index is not None and not self.implementation:  # left by our previous run: adopted
                self.implementation = "kernel" if _kind(ipr, index) == "wireguard" else "wireguard-go"
                log.info("adopted wireguard device %s (%s)", self.device, self.implementation)
            if index is None and self.implementation != "wireguard-go":
                try:
                    ipr.link("add", ifname=self.device, kind="wireguard")
                    self.implementation = "kernel"
                    self.configured = ""
                    log.info("created wireguard device %s (kernel module)", self.device)
                except NetlinkError as e:
                    if e.code != EOPNOTSUPP:
                        raise
                    self.implementation = "wireguard-go"
                index = self._index(ipr)
            if index is None or (self.process is not None and self.process.poll() is not None):
                index = self._start_userspace(ipr)
            link = ipr.get_links(index)[0]
            if link.get_attr("IFLA_MTU") != mtu or not link["flags"] & 1:
                ipr.link("set", index=index, mtu=mtu, state="up")
        return DeviceState(index, mtu, self.implementation)

    def _start_userspace(self, ipr: IPRoute) -> int:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
            self.process.wait()
            self.restarts += 1
            log.warning("wireguard-go for %s was gone: starting it again", self.device)
        index = self._index(ipr)
        if index is not None:
            ipr.link("del", index=index)
        self.configured = ""
        # -f: stays a child of ours (supervised, stopped with us); the variable quiets its kernel-module notice
        self.process = subprocess.Popen(["wireguard-go", "-f", self.device], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        env={**os.environ, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"})
        deadline = time.monotonic() + START_TIMEOUT
        sock = f"/run/wireguard/{self.device}.sock"
        while (index := self._index(ipr)) is None or not os.path.exists(sock):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise WireguardError(f"wireguard-go did not make {self.device} (exit {self.process.poll()})")
            time.sleep(0.02)
        log.info("started wireguard-go pid=%d device=%s", self.process.pid, self.device)
        return index

    def _index(self, ipr: IPRoute) -> int | None:
        found = ipr.link_lookup(ifname=self.device)
        return found[0] if found else None

    def configure(self, text: str) -> bool:
        """Key, port and peers exactly as `text` (plan.render) says, whatever others changed meanwhile (wg
        syncconf changes only what differs); whether `text` differs from the last one."""
        r = subprocess.run(["wg", "syncconf", self.device, "/dev/stdin"], input=text, capture_output=True,
                           text=True, timeout=30)
        if r.returncode != 0:
            raise WireguardError(f"wg syncconf {self.device}: {r.stderr.strip()}")
        changed, self.configured = text != self.configured, text
        return changed

    def stats(self) -> list[PeerStats]:
        r = subprocess.run(["wg", "show", self.device, "dump"], capture_output=True, text=True, timeout=10)
        if r.returncode != 0:
            raise WireguardError(f"wg show {self.device}: {r.stderr.strip()}")
        return parse_dump(r.stdout)

    def remove(self) -> bool:
        """Stops wireguard-go and deletes the device (and the routes through it); False if there was none."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
            self.process.wait()
            self.process = None
        with IPRoute() as ipr:
            index = self._index(ipr)
            if index is not None:
                ipr.link("del", index=index)
        self.configured = ""
        return index is not None


def _kind(ipr: IPRoute, index: int) -> str | None:
    info = ipr.get_links(index)[0].get_attr("IFLA_LINKINFO")
    return None if info is None else info.get_attr("IFLA_INFO_KIND")


def wireguard_mtu(node: NodeConfig) -> int:
    """wireguard.mtu, or the MTU of the interface holding listen_address minus WireGuard's overhead."""
    if node.wireguard.mtu is not None:
        return node.wireguard.mtu
    return pod_mtu(uplink_mtu(node.listen_address, "wireguard.mtu"))


class WireguardDataplane:
    """The node's WireGuard as the configuration and the core's routes say. Called again, `ensure` and
    `configure` repair (a dead wireguard-go, a deleted device, peers changed by others)."""

    def __init__(self, node: NodeConfig, private_key: str):
        self.wg = WireguardDevice(node.wireguard.device)
        self.guard = WireguardGuard(node.policy_backend)
        self.private_key = private_key  # bgpd/wireguard/keys.py; never logged
        self.device: DeviceState | None = None
        self.error = ""
        self.peers: list[Peer] = []  # as last configured
        self.peer_stats: list[PeerStats] = []

    def ensure(self, node: NodeConfig) -> DeviceState:
        """The device, up with its MTU. Raises OSError or NetlinkError; the next pass tries again."""
        self.device = self.wg.ensure(wireguard_mtu(node))
        return self.device

    def configure(self, text: str, peers: list[Peer]) -> None:
        """Key, port and `peers` as `text` (plan.render of them) says, then the peers' handshakes and bytes."""
        if self.wg.configure(text):
            log.info("wireguard configured device=%s peers=%d", self.wg.device, len(peers))
        self.peers = peers
        self.peer_stats = self.wg.stats()
        self.error = ""

    def close(self) -> None:
        self.wg.remove()
        self.guard.remove()
        self.device = None


class WireguardGuard:
    """Applies bgpd/wireguard/guard.py's rules (None: none) with the node's policy backend's tools.
    Blocking subprocess calls: run them in a worker thread."""

    def __init__(self, backend: str):
        self.backend = backend
        self.rules: GuardRules | None = None  # in force

    def apply(self, rules: GuardRules | None) -> None:
        """Raises ApplyError, the previous rules still in force, if the tools refuse."""
        if rules == self.rules:
            return
        if rules is None:
            self.remove()
        elif self.backend == "nft":
            run(["nft", "-f", "-"], render_nft(rules))
        else:
            run(["ipset", "restore"], render_ipset(rules))
            run(["iptables-legacy-restore", "--noflush"], render_iptables(rules))
            table, chain, target = IPTABLES_JUMP
            try:
                run(["iptables-legacy", "-t", table, "-C", chain, "-j", target])
            except ApplyError:
                run(["iptables-legacy", "-t", table, "-I", chain, "1", "-j", target])
        self.rules = rules

    def remove(self) -> None:
        if self.backend == "nft":
            run(["nft", "-f", "-"], f"table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n")
        else:
            table, chain, target = IPTABLES_JUMP
            try:
                run(["iptables-legacy", "-t", table, "-D", chain, "-j", target])
            except ApplyError:
                pass  # not there
            run(["iptables-legacy-restore", "--noflush"], f"*raw\n:{IPT_CHAIN} - [0:0]\n-X {IPT_CHAIN}\nCOMMIT\n")
            ours = [n for n in run(["ipset", "list", "-n"]).split() if n in IPSETS]
            run(["ipset", "restore"], "".join(f"destroy {n}\n" for n in ours))
        self.rules = None
