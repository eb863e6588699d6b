"""Local pods: a network namespace, a veth pair, an address of each IP version of the node's pools
(bgpd/ipam/allocate.py), a host route to each (/32, /128).

Wiring follows Calico: the pod gets its IPv4 address as a /32 and a default route via the link-local
gateway 169.254.1.1, which the host side answers for (a permanent neighbour entry in the pod, plus
proxy ARP on the host side), so no bridge and no per-pod subnet are needed. IPv6 the same way: the
address as a /128 and `::/0 via fe80::1`; fe80::1 is an address of every host-side veth (a link-local
address is per link), so the host's kernel answers neighbour discovery for it without proxy NDP
(docs/ipv6.md says why not Calico's fe80::ecee:eeff:feee:eeee), and the pod has a permanent neighbour
entry for it too.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Iterator, Sequence

from bgpd.dataplane import netns
from bgpd.dataplane.netlink_links import (RTPROT_STATIC, Link, Rtnl, address, addresses, decode_address, decode_link,
                                          delete_link, device_route, get_link, link_up, permanent_neighbour,
                                          route_oif, route_to, veth)
from bgpd.dns.client import pod_dns, resolv_conf
from bgpd.ipam.allocate import Address, AddressError, allocate, requested_addresses
from bgpd.ipam.state import IpamStateError
from config.node import NodeConfig

GATEWAYS: dict[int, Address] = {4: IPv4Address("169.254.1.1"), 6: IPv6Address("fe80::1")}  # by IP version
DEFAULT_ROUTES = {4: IPv4Network("0.0.0.0/0"), 6: IPv6Network("::/0")}
NETNS_ETC = Path("/etc/netns")  # `ip netns exec NAME` binds /etc/netns/NAME/* over /etc/* (resolv.conf)
HOST_PREFIX = "tt"  # host-side interface names: tt + 11 hex digits, like Calico's cali...
NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")
ADD_ATTEMPTS = 3  # addresses an ADD tries: another only when the daemon found the last one another node's


class PodError(Exception):
    pass


class PodNotPoliced(PodError):
    """The daemon could not put the pod's network policy in force: the pod's network was taken down again."""


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    ips: tuple[str, ...]  # one address of each IP version, IPv4 first
    netns: str  # a name under /run/netns, or a path (a CNI runtime's /proc/PID/ns/net or bind mount)
    host_interface: str
    owns_netns: bool
    container_id: str = ""
    ifname: str = "eth0"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ip(self) -> str:
        """The primary address (IPv4 when the pod has one), as Kubernetes' podIP beside podIPs."""
        return self.ips[0]

    def addresses(self) -> list[Address]:
        return [ip_address(ip) for ip in self.ips]

    @classmethod
    def load(cls, path: Path) -> Pod:
        """A pod file of the store; PodError naming it if it is not one (a file of an older Tortie has `ip`)."""
        try:
            data = json.loads(path.read_text())
            return cls(**{**data, "ips": tuple(data["ips"])})
        except (ValueError, TypeError, KeyError) as e:  # json.JSONDecodeError is a ValueError
            raise PodError(f"{path}: unreadable as a pod record ({type(e).__name__}: {e}); remove the pod's "
                           "interface and this file by hand") from None

    def to_json(self) -> dict:
        """What `tortie pod list --json` shows: the fields, and `ip` (the primary address)."""
        return {**asdict(self), "ip": self.ip}


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
        return Pod.load(p) if p.exists() else None

    def by_container(self, container_id: str, ifname: str) -> Pod | None:
        return next((p for p in self.all() if (p.container_id, p.ifname) == (container_id, ifname)), None)

    def all(self) -> list[Pod]:
        if not self.dir.exists():
            return []
        return sorted(map(Pod.load, self.dir.glob("*.json")), key=lambda p: p.key)

    def save(self, pod: Pod) -> None:
        tmp = self._path(pod.namespace, pod.name).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(pod), indent=2))
        tmp.rename(self._path(pod.namespace, pod.name))

    def delete(self, pod: Pod) -> None:
        self._path(pod.namespace, pod.name).unlink(missing_ok=True)


def add_pod(node: NodeConfig, key: str, ips: Sequence[str] = (), existing_netns: str | None = None,
            container_id: str = "", ifname: str = "eth0", labels: dict[str, str] | None = None) -> Pod:
    """Wires a pod (`ips`: addresses asked for, at most one per IP version); with a datastore, also publishes it
    and returns once its policy is enforced.

    An address the daemon finds another node's (claims crossed in a slow datastore, and this node's view caught up
    only after the address was chosen) is not published: the daemon moves to a block of its own, and the pod is
    taken down and wired again with other addresses, at most ADD_ATTEMPTS times in all; never for an address
    asked for."""
    attempts, avoid, moved = 1, [], ""
    while True:
        pod = _add(node, key, ips, existing_netns, container_id, ifname, avoid)
        if node.datastore is None:
            return pod
        answer = _publish(node, pod, labels or {}, moved)
        if answer.get("enforced") is True:
            return pod
        del_pod(node, pod.key)  # until its policy is in force no packet may reach the pod: it goes again
        # (an answer without "taken", from a daemon older than this command, is a plain refusal)
        taken = [ip_address(t["address"]) for t in answer.get("taken", ())]
        if not taken or attempts == ADD_ATTEMPTS or set(taken) & set(requested_addresses(ips, [4, 6]).values()):
            raise PodNotPoliced(answer.get("reason") or "the daemon did not say why")
        attempts, avoid, moved = attempts + 1, avoid + taken, answer["reason"]


def _publish(node: NodeConfig, pod: Pod, labels: dict[str, str], moved: str) -> dict:
    """Hands the pod to the daemon, which publishes it and answers once its policy is in force: {"enforced",
    "reason" why not, "taken": its addresses that another node holds} (Daemon.endpoint_added())."""
    from bgpd.agent.control import DaemonNotRunning, query
    endpoint = {"labels": labels, "ips": list(pod.ips), "interface": pod.host_interface}
    try:
        return query(node.run_dir / "tortie.sock", "endpoint_add", timeout=60,
                     namespace=pod.namespace, pod=pod.name, endpoint=endpoint, moved=moved)
    except DaemonNotRunning as e:
        return {"enforced": False, "reason": str(e), "taken": []}


def _add(node: NodeConfig, key: str, ips: Sequence[str], existing_netns: str | None, container_id: str,
         ifname: str, avoid: Sequence[Address]) -> Pod:
    namespace, name = parse_key(key)
    store = PodStore(node)
    with store.locked():
        if store.get(namespace, name):
            raise PodError(f"pod {key} exists already")
        if existing_netns and not netns.exists(existing_netns):
            raise PodError(f"network namespace {existing_netns} does not exist")
        try:
            given = allocate(node, [*(a for p in store.all() for a in p.addresses()), *avoid], ips)
        except (AddressError, IpamStateError) as e:
            raise PodError(str(e)) from None
        pod = Pod(namespace, name, tuple(map(str, given)),
                  existing_netns or f"{node.pod_netns_prefix}{namespace}-{name}",
                  host_interface(namespace, name), owns_netns=existing_netns is None,
                  container_id=container_id, ifname=ifname)
        try:
            _wire(node, pod)
        except Exception as e:
            denied = isinstance(e, OSError) and e.errno in (errno.EPERM, errno.EACCES)
            try:
                _unwire(pod)
            except OSError:
                if not denied:  # else the undo was refused as the wiring was: nothing was made to undo
                    raise
            if isinstance(e, OSError):
                reason = f"{e.strerror}: {e.filename}" if e.filename else e.strerror or str(e)
                if e.errno in (errno.EPERM, errno.EACCES):
                    reason += "; it needs CAP_NET_ADMIN and CAP_SYS_ADMIN (run the node privileged or with them)"
                raise PodError(f"cannot wire pod {key}: {reason}") from None
            raise
        store.save(pod)
        return pod


def _wire(node: NodeConfig, pod: Pod) -> None:
    """Three batches of rtnetlink requests: the veth (its peer made in the pod's namespace), the pod's side (up,
    per address: the address, its gateway's neighbour entry, routes), the host side (up, fe80::1 for IPv6, a route
    and a neighbour entry for each address); the caller removes what a failure left."""
    if pod.owns_netns:
        netns.create(pod.netns)
        if dns := pod_dns(node, pod.namespace, pod.addresses()):  # the node's DNS server, for `ip netns exec`
            (NETNS_ETC / pod.netns).mkdir(parents=True, exist_ok=True)
            (NETNS_ETC / pod.netns / "resolv.conf").write_text(resolv_conf(dns))
    mtu = _pod_mtu(node)
    ns_fd = os.open(netns.path(pod.netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        with Rtnl() as host:
            made = host.run([(f"create veth {pod.host_interface} with {pod.ifname} in {pod.netns}",
                              veth(pod.host_interface, pod.ifname, ns_fd, mtu)),
                             ("read the veth back", get_link(pod.host_interface))])
    finally:
        os.close(ns_fd)
    link = decode_link(made["read the veth back"][0])
    ips = pod.addresses()
    pod_side = [("set lo up", link_up("lo")), (f"set {pod.ifname} up", link_up(pod.ifname)),
                ("read the pod side", get_link(pod.ifname))]
    host_side = [(f"set {pod.host_interface} up", link_up(pod.host_interface))]
    for ip in ips:
        gateway, idx = GATEWAYS[ip.version], link.peer_index
        pod_side += [(f"add {ip}/{ip.max_prefixlen} to {pod.ifname}", address(idx, ip, ip.max_prefixlen)),
                     (f"add the neighbour {gateway}", permanent_neighbour(idx, gateway, link.mac))]
        if ip.version == 4:  # an IPv6 link-local gateway needs no route: it is on the link by definition
            pod_side.append((f"add the route to {gateway}", device_route(ip_network(gateway), idx, RTPROT_STATIC)))
        pod_side.append((f"add the default route via {gateway}",
                         device_route(DEFAULT_ROUTES[ip.version], idx, RTPROT_STATIC, gateway)))
        host_side.append((f"add the host route to {ip}",
                          device_route(ip_network(ip), link.index, node.pod_route_protocol)))
    if any(ip.version == 4 for ip in ips):
        _sysctl(f"net/ipv4/conf/{pod.host_interface}/proxy_arp", f"proxy_arp on {pod.host_interface}")
        _sysctl("net/ipv4/ip_forward", "ip_forward")
    if any(ip.version == 6 for ip in ips):
        _sysctl("net/ipv6/conf/all/forwarding", "IPv6 forwarding")
        _sysctl(f"net/ipv6/conf/{pod.host_interface}/disable_ipv6", f"IPv6 on {pod.host_interface}", "0")
        host_side.insert(1, (f"add {GATEWAYS[6]} to {pod.host_interface}", address(link.index, GATEWAYS[6], 64)))
    with netns.entered(pod.netns), Rtnl() as ns:
        if any(ip.version == 6 for ip in ips):  # a runtime may make namespaces with IPv6 off (Docker does)
            _sysctl("net/ipv6/conf/all/disable_ipv6", f"IPv6 on in {pod.netns}", "0")
        pod_mac = decode_link(ns.run(pod_side)["read the pod side"][0]).mac
    # the pod's addresses as permanent neighbours of the host side, as the gateway's are in the pod: no ARP or
    # neighbour discovery towards the pod, and entries the kernel never counts against its neighbour table limit
    # (gc_thresh3 is for the whole machine, every namespace's entries together)
    host_side += [(f"add the neighbour {ip}", permanent_neighbour(link.index, ip, pod_mac)) for ip in ips]
    with Rtnl() as host:
        host.run(host_side)


def _pod_mtu(node: NodeConfig) -> int | None:
    """Room for the VXLAN headers, or WireGuard's (the larger: encryption replaces encapsulation); None: the
    kernel's default. Only WireGuard's module loads pyroute2 (its device needs it); the MTUs are hand-packed reads."""
    if not node.uses_vxlan() and not node.wireguard.enabled:
        return None
    from bgpd.dataplane.vxlan import overlay_mtu
    mtus = [overlay_mtu(node)]
    if node.wireguard.enabled:
        from bgpd.dataplane.wireguard import wireguard_mtu
        mtus.append(wireguard_mtu(node))
    return min(filter(None, mtus), default=None)


def pod_links(pod: Pod) -> tuple[Link, Link]:
    """The pod's veth as the kernel has it: (host side, pod side)."""
    with Rtnl() as host:
        host_link = host.run([("read the host side", get_link(pod.host_interface))])["read the host side"][0]
    with netns.entered(pod.netns), Rtnl() as ns:
        pod_link = ns.run([("read the pod side", get_link(pod.ifname))])["read the pod side"][0]
    return decode_link(host_link), decode_link(pod_link)


def check_pod(pod: Pod) -> None:
    """Raises PodError unless the pod's interface holds its addresses and the host routes each to its veth."""
    ips = pod.addresses()
    with netns.entered(pod.netns), Rtnl() as ns:
        answers = ns.run([("read the pod side", get_link(pod.ifname)), ("read the addresses", addresses())])
    index = decode_link(answers["read the pod side"][0]).index
    held = set(map(decode_address, answers["read the addresses"]))
    for ip in ips:
        if (index, ip, ip.max_prefixlen) not in held:
            raise PodError(f"{pod.ifname} in {pod.netns} lacks {ip}")
    with Rtnl() as host:
        veth_index = decode_link(host.run([("read the host side", get_link(pod.host_interface))])
                                 ["read the host side"][0]).index
        for ip in ips:
            try:
                route = host.run([(f"find the route to {ip}", route_to(ip))])
                oif = route_oif(route[f"find the route to {ip}"][0])
            except OSError as e:
                if e.errno not in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                    raise
                oif = 0
            if oif != veth_index:
                raise PodError(f"the host has no route to {ip} via {pod.host_interface}")


def _sysctl(key: str, what: str, value: str = "1") -> None:
    """Sets /proc/sys/KEY (of the calling thread's network namespace); a container without a writable
    /proc/sys/net gets one line saying so."""
    try:
        Path("/proc/sys", key).write_text(value)
    except OSError as e:
        reason = ("/proc/sys is read-only in this container" if e.errno == errno.EROFS
                  else e.strerror or str(e))
        raise PodError(f"cannot set {what}: {reason}; run the node privileged or with a writable "
                       "/proc/sys/net (and CAP_NET_ADMIN)") from None


def _unwire(pod: Pod) -> None:
    """Removes what _wire made; each step tolerates that it was never done."""
    with Rtnl() as host:
        try:
            host.run([(f"delete {pod.host_interface}", delete_link(pod.host_interface))])  # the peer and route go too
        except OSError as e:
            if e.errno != errno.ENODEV:
                raise
    if pod.owns_netns:
        netns.remove(pod.netns)
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
    try:
        netns.enter_for_good(pod.netns)
        os.execvp(argv[0], argv)
    except OSError as e:
        raise PodError(f"{argv[0]} in pod {key}: {e.strerror or e}") from None
