"""Local pods: a network namespace, a veth pair, an address from the node's blocks (bgpd/ipam/allocate.py),
a /32 host route.

Wiring follows Calico: the pod gets its address as a /32 and a default route via the link-local
gateway 169.254.1.1, which the host side answers for (a permanent neighbour entry in the pod, plus
proxy ARP on the host side), so no bridge and no per-pod subnet are needed.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Iterator

from pyroute2 import IPRoute, NetNS, netns

from bgpd.dataplane.vxlan import overlay_mtu
from bgpd.dns.client import pod_dns, resolv_conf
from bgpd.ipam.allocate import AddressError, allocate
from bgpd.ipam.state import IpamStateError
from config.node import NodeConfig

GATEWAY = "169.254.1.1"
NETNS_ETC = Path("/etc/netns")  # `ip netns exec NAME` binds /etc/netns/NAME/* over /etc/* (resolv.conf)
HOST_PREFIX = "tt"  # host-side interface names: tt + 11 hex digits, like Calico's cali...
NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")


class PodError(Exception):
    pass


class PodNotPoliced(PodError):
    """The daemon could not put the pod's network policy in force: the pod's network was taken down again."""


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    ip: str
    netns: str  # a name under /run/netns, or a path (a CNI runtime's /proc/PID/ns/net or bind mount)
    host_interface: str
    owns_netns: bool
    container_id: str = ""
    ifname: str = "eth0"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def parse_key(key: str) -> tuple[str, str]:
    ns, _, name = key.partition("/")
    if not name or not NAME.match(ns) or not NAME.match(name):
        raise PodError(f"{key!r}: expected NAMESPACE/POD, each a DNS label (lower case, digits, '-', '.')")
    return ns, name


def host_interface(namespace: str, name: str) -> str:
    return HOST_PREFIX + hashlib.sha1(f"{namespace}/{name}".encode()).hexdigest()[:11]


class PodStore:
    """The node's pods, one JSON file each in the state directory, changed under a file lock."""

    def __init__(self, node: NodeConfig):
        self.node = node
        self.dir = node.state_dir / "pods"

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def _path(self, namespace: str, name: str) -> Path:
        return self.dir / f"{namespace}_{name}.json"

    def get(self, namespace: str, name: str) -> Pod | None:
        p = self._path(namespace, name)
        return Pod(**json.loads(p.read_text())) if p.exists() else None

    def by_container(self, container_id: str, ifname: str) -> Pod | None:
        return next((p for p in self.all() if (p.container_id, p.ifname) == (container_id, ifname)), None)

    def all(self) -> list[Pod]:
        if not self.dir.exists():
            return []
        return sorted((Pod(**json.loads(p.read_text())) for p in self.dir.glob("*.json")), key=lambda p: p.key)

    def save(self, pod: Pod) -> None:
        tmp = self._path(pod.namespace, pod.name).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(pod), indent=2))
        tmp.rename(self._path(pod.namespace, pod.name))

    def delete(self, pod: Pod) -> None:
        self._path(pod.namespace, pod.name).unlink(missing_ok=True)


def _netns_exists(name: str) -> bool:
    return os.path.exists(name) if "/" in name else name in netns.listnetns()


def add_pod(node: NodeConfig, key: str, ip: str | None = None, existing_netns: str | None = None,
            container_id: str = "", ifname: str = "eth0", labels: dict[str, str] | None = None) -> Pod:
    """Wires a pod; with a datastore, also publishes it and returns once its policy is enforced."""
    pod = _add(node, key, ip, existing_netns, container_id, ifname)
    if node.datastore is not None:
        _publish(node, pod, labels or {})
    return pod


def _publish(node: NodeConfig, pod: Pod, labels: dict[str, str]) -> None:
    """Hands the pod to the daemon, which publishes it and answers once its policy is in force.

    Until then no packet may reach the pod unpoliced: if that cannot be done, the pod goes again.
    """
    from bgpd.agent.control import DaemonNotRunning, query
    endpoint = {"labels": labels, "ips": [pod.ip], "interface": pod.host_interface}
    try:
        answer = query(node.run_dir / "tortie.sock", "endpoint_add", timeout=60,
                       namespace=pod.namespace, pod=pod.name, endpoint=endpoint)
        enforced, why = answer["enforced"], answer["reason"]
    except DaemonNotRunning as e:
        enforced, why = False, str(e)
    if not enforced:
        del_pod(node, pod.key)
        raise PodNotPoliced(why)


def _add(node: NodeConfig, key: str, ip: str | None, existing_netns: str | None, container_id: str,
         ifname: str) -> Pod:
    namespace, name = parse_key(key)
    store = PodStore(node)
    with store.locked():
        if store.get(namespace, name):
            raise PodError(f"pod {key} exists already")
        if existing_netns and not _netns_exists(existing_netns):
            raise PodError(f"network namespace {existing_netns} does not exist")
        try:
            address = allocate(node, (IPv4Address(p.ip) for p in store.all()), ip)
        except (AddressError, IpamStateError) as e:
            raise PodError(str(e)) from None
        pod = Pod(namespace, name, str(address), existing_netns or f"{node.pod_netns_prefix}{namespace}-{name}",
                  host_interface(namespace, name), owns_netns=existing_netns is None,
                  container_id=container_id, ifname=ifname)
        try:
            _wire(node, pod)
        except Exception:
            _unwire(pod)
            raise
        store.save(pod)
        return pod


def _wire(node: NodeConfig, pod: Pod) -> None:
    if pod.owns_netns:
        netns.create(pod.netns)
        if dns := pod_dns(node, pod.namespace):  # the node's DNS server, for programs run with `ip netns exec`
            (NETNS_ETC / pod.netns).mkdir(parents=True, exist_ok=True)
            (NETNS_ETC / pod.netns / "resolv.conf").write_text(resolv_conf(dns))
    temp = "tp" + pod.host_interface[2:]
    with IPRoute() as host:
        host.link("add", ifname=pod.host_interface, kind="veth", peer=temp)
        (hidx,) = host.link_lookup(ifname=pod.host_interface)
        (pidx,) = host.link_lookup(ifname=temp)
        if mtu := overlay_mtu(node, host):  # room for the VXLAN headers
            host.link("set", index=hidx, mtu=mtu)
            host.link("set", index=pidx, mtu=mtu)
        host.link("set", index=pidx, net_ns_fd=pod.netns)
        host.link("set", index=hidx, state="up")
        host_mac = host.get_links(hidx)[0].get("address")
        Path(f"/proc/sys/net/ipv4/conf/{pod.host_interface}/proxy_arp").write_text("1")
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
    with NetNS(pod.netns) as ns:
        (lo,) = ns.link_lookup(ifname="lo")
        ns.link("set", index=lo, state="up")
        (idx,) = ns.link_lookup(ifname=temp)
        ns.link("set", index=idx, ifname=pod.ifname, state="up")
        ns.addr("add", index=idx, address=pod.ip, prefixlen=32)
        ns.neigh("add", dst=GATEWAY, lladdr=host_mac, ifindex=idx, state="permanent")
        ns.route("add", dst=f"{GATEWAY}/32", oif=idx, scope="link")
        ns.route("add", dst="0.0.0.0/0", gateway=GATEWAY, oif=idx)
    with IPRoute() as host:
        host.route("add", dst=f"{pod.ip}/32", oif=hidx, scope="link", proto=node.pod_route_protocol)


def _unwire(pod: Pod) -> None:
    """Removes what _wire made; each step tolerates that it was never done."""
    with IPRoute() as host:
        for idx in host.link_lookup(ifname=pod.host_interface):
            host.link("del", index=idx)  # the peer and the host route go with it
    if pod.owns_netns and pod.netns in netns.listnetns():
        netns.remove(pod.netns)
    if pod.owns_netns:
        (NETNS_ETC / pod.netns / "resolv.conf").unlink(missing_ok=True)
        if (NETNS_ETC / pod.netns).is_dir() and not any((NETNS_ETC / pod.netns).iterdir()):
            (NETNS_ETC / pod.netns).rmdir()


def del_pod(node: NodeConfig, key: str | None = None, container: tuple[str, str] | None = None) -> Pod | None:
    """Removes a pod found by NAMESPACE/POD or by (container id, interface). Idempotent: None if absent."""
    store = PodStore(node)
    with store.locked():
        pod = store.get(*parse_key(key)) if key else store.by_container(*container)
        if pod is None:
            return None
        _unwire(pod)
        store.delete(pod)
    if node.datastore is not None:
        from bgpd.agent.control import DaemonNotRunning, query
        try:
            query(node.run_dir / "tortie.sock", "endpoint_del", timeout=60, namespace=pod.namespace, pod=pod.name)
        except DaemonNotRunning:
            pass  # deleting must succeed; the daemon drops endpoints of pods that are gone when it starts
    return pod


def exec_in_pod(node: NodeConfig, key: str, argv: list[str]) -> None:
    pod = PodStore(node).get(*parse_key(key))
    if pod is None:
        raise PodError(f"no pod {key}")
    netns.setns(pod.netns)
    os.execvp(argv[0], argv)
