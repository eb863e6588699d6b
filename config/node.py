"""The node configuration: one YAML file per host, validated by these models."""
from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress, IPvAnyNetwork, field_validator, model_validator

from config.datastore.settings import DatastoreSettings

ASN = Annotated[int, Field(ge=1, le=4294967295, description="autonomous system number")]
IPv4Address = ipaddress.IPv4Address
IPv4Network = ipaddress.IPv4Network
IPv6Address = ipaddress.IPv6Address
IPv6Network = ipaddress.IPv6Network
IPAddress = IPvAnyAddress  # IPv4Address | IPv6Address, one error message when it is neither
IPNetwork = IPvAnyNetwork  # IPv4Network | IPv6Network

# prefix lengths a host block may have, per IP version, and the default (Calico's: /26 and /122)
BLOCK_SIZES = {4: (16, 32, 26), 6: (116, 128, 122)}


RESTART = {"restart": True}  # json_schema_extra of the fields a running daemon cannot change: a reload refuses them


# rtnetlink protocol numbers of other routing daemons (linux/rtnetlink.h; FRR's /etc/iproute2/rt_protos.d/frr.conf)
FOREIGN_PROTOCOLS = {
    8: "gated", 9: "ra", 10: "mrt", 11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp", 15: "ntk", 16: "dhcp",
    17: "mrouted", 18: "keepalived", 42: "babel", 99: "openr", 186: "bgp (FRR)", 187: "isis", 188: "ospf",
    189: "rip", 190: "ripng", 191: "nhrp", 192: "eigrp", 193: "ldp", 194: "sharp", 195: "pbr", 196: "static (FRR)",
    197: "openfabric",
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WithPassword(Strict):
    """A model with a TCP MD5 `password` written into ExaBGP's configuration."""

    @field_validator("password", check_fields=False)
    @classmethod
    def _password(cls, v: str | None) -> str | None:
        # ExaBGP's tokenizer ends a quoted word at either quote and drops control characters, and it hands the
        # key to the kernel as ASCII (measured with `exabgp validate`, ExaBGP 5.0)
        if v is not None and (not (v.isascii() and v.isprintable()) or any(c in v for c in "\"'\\;{}")):
            raise ValueError('password: printable ASCII only, without quotes, backslashes, ";", "{" or "}"')
        return v


class IPPool(Strict):
    """A cluster IP pool of either family, cut into per-host blocks."""

    cidr: IPNetwork = Field(description="the pool's addresses (IPv4 or IPv6); pod blocks are cut from it")
    block_size: int = Field(BLOCK_SIZES[4][2], description="prefix length of each host block: 16..32 for IPv4, "
                                                           "116..128 for IPv6 (default there: 122)")
    vxlan: Literal["never", "always", "cross-subnet"] = Field(
        "never", description="encapsulate traffic to other nodes' blocks of this pool in VXLAN: never, always, or "
                             "only when the next hop is not on a subnet this node is connected to (docs/overlay.md)")
    nat_outgoing: bool = Field(True, description="masquerade traffic from this pool's pods to destinations outside "
                                                 "every pool (the node's address becomes the source)")

    @model_validator(mode="before")
    @classmethod
    def _default_block_size(cls, data: Any) -> Any:
        if isinstance(data, dict) and "block_size" not in data:
            try:
                version = ipaddress.ip_network(str(data.get("cidr"))).version
            except ValueError:
                return data  # the cidr field names the problem
            return {**data, "block_size": BLOCK_SIZES[version][2]}
        return data

    @model_validator(mode="after")
    def _block_fits(self) -> IPPool:
        low, high, _ = BLOCK_SIZES[self.cidr.version]
        if not low <= self.block_size <= high:
            raise ValueError(f"block_size /{self.block_size}: an IPv{self.cidr.version} pool's blocks are "
                             f"/{low} to /{high}")
        if self.block_size < self.cidr.prefixlen:
            raise ValueError(f"block_size /{self.block_size} is larger than the pool {self.cidr}")
        return self


class Bfd(Strict):
    """BFD for a BGP session (RFC 5880/5881): a silent peer is down after multiplier x its TX interval."""

    enabled: bool = Field(False, description="run a single-hop BFD session with the peer")
    min_rx: int = Field(300, ge=10, le=60000, description="milliseconds: the fastest we accept the peer's packets")
    min_tx: int = Field(300, ge=10, le=60000, description="milliseconds: the rate we would like to send at")
    multiplier: int = Field(3, ge=1, le=255, description="packets missed in a row before the peer is down")


class Peer(WithPassword):
    """A BGP peer: a top-of-rack router, a route reflector or a host outside the mesh."""

    address: IPAddress = Field(description="the peer's address; we connect to it from listen_address, or from "
                                           "listen_address6 for an IPv6 peer (a separate IPv6 session)")
    asn: ASN = Field(description="the peer's AS (equal to ours: iBGP)")
    password: str | None = Field(None, min_length=1, max_length=80, description="TCP MD5 password")
    hold_time: int = Field(90, description="seconds; 0 or 3..65535")
    passive: bool = Field(False, description="wait for the peer to connect instead of connecting")
    max_prefixes: int | None = Field(None, ge=1, description="overrides the node's max_prefixes")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,63}$", description="shown in status and metrics")
    bfd: Bfd = Field(default_factory=Bfd, description="BFD with this peer: a failure takes its routes out at once")

    @field_validator("hold_time")
    @classmethod
    def _hold(cls, v: int) -> int:
        if v != 0 and not 3 <= v <= 65535:
            raise ValueError("hold_time must be 0 or between 3 and 65535")
        return v


class MeshMember(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,63}$", description="the node's name")
    address: IPv4Address | None = Field(None, description="the node's listen_address")
    address6: IPv6Address | None = Field(None, description="the node's listen_address6")
    public_key: str | None = Field(None, pattern=r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$",
                                   description="the node's WireGuard public key (base64); none: it is reached "
                                               "unencrypted, or not at all with wireguard.required")

    @model_validator(mode="after")
    def _addressed(self) -> MeshMember:
        if self.address is None and self.address6 is None:
            raise ValueError("a mesh node needs address, address6 or both")
        return self


class Mesh(WithPassword):
    """The node-to-node iBGP full mesh."""

    enabled: bool = Field(True, description="peer with every other node of the mesh over iBGP")
    nodes: list[MeshMember] = Field(default_factory=list, description="every node of the mesh; this node is skipped")
    hold_time: int = Field(9, ge=3, le=65535, description="seconds; a dead node's routes go after this long")
    password: str | None = Field(None, min_length=1, max_length=80, description="TCP MD5 password of mesh sessions")
    bfd: Bfd = Field(default_factory=Bfd, description="BFD with every other mesh node")


class Metrics(Strict):
    address: IPvAnyAddress = Field(IPv4Address("127.0.0.1"), description="address of the /metrics endpoint")
    port: int = Field(9473, ge=0, le=65535, description="0 disables the endpoint")


class DnsRateLimit(Strict):
    rate: float = Field(200.0, gt=0, description="queries per second each source may send on average")
    burst: int = Field(400, ge=1, description="queries each source may send at once")


class Dns(Strict):
    """Pod and service names served to pods by every node (docs/dns.md); runs with a datastore."""

    enabled: bool = Field(True, description="serve DNS to this node's pods (only with a datastore)")
    domain: str = Field("tortie.local", max_length=200, pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
                                                                r"(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$",
                        description="the cluster domain: <pod>.<ns>.pod.<domain>, <service>.<ns>.svc.<domain>")
    address: IPv4Address = Field(IPv4Address("169.254.1.1"), description="the link-local address pods reach the "
                                 "server at: the pods' gateway, made local on the node (on lo, label lo:tortie-dns)")
    address6: IPv6Address = Field(IPv6Address("fd00:a9fe::101"), description="the address IPv6 pods reach the "
                                  "server at, through their default route: a ULA made local on nodes with IPv6 "
                                  "pools (on lo, deprecated: never the source of the node's own traffic)")
    port: int = Field(53, ge=1, le=65535, description="UDP and TCP port, on the addresses and on 127.0.0.1")
    upstreams: list[IPv4Address] = Field(default_factory=list, description="resolvers other names are forwarded "
                                         "to (port 53), in order; none: other names are refused")
    ttl: int = Field(5, ge=0, le=3600, description="seconds answers may be cached")
    rate_limit: DnsRateLimit = Field(default_factory=DnsRateLimit, description="per source (pod) token bucket")

    @field_validator("address6")
    @classmethod
    def _routed_to_the_node(cls, v: IPv6Address) -> IPv6Address:
        if v.is_link_local or v.is_multicast or v.is_loopback or v.is_unspecified or v.ipv4_mapped:
            raise ValueError(f"{v}: pods reach it through their default route, so it must be a unicast address "
                             "outside fe80::/10 (a link-local one needs the pod's interface as zone in "
                             "resolv.conf), e.g. a ULA")
        return v


class Vxlan(Strict):
    """The node's VXLAN tunnel endpoint, used when a pool has `vxlan` other than never (docs/overlay.md)."""

    vni: int = Field(4096, ge=1, le=16777215, description="VXLAN network identifier, the same on every node")
    port: int = Field(4789, ge=1, le=65535, description="UDP port of the VXLAN packets, the same on every node")
    device: str = Field("tortie.vxlan", pattern=r"^tortie[A-Za-z0-9_.-]{0,9}$",
                        description="name of the VXLAN device of IPv4 pools (over listen_address): a tortie "
                                    "prefix, 15 characters at most")
    device6: str = Field("tortie.vxlan6", pattern=r"^tortie[A-Za-z0-9_.-]{0,9}$",
                         description="name of the VXLAN device of IPv6 pools (over listen_address6)")
    mtu: int | None = Field(None, ge=576, le=65485, description="MTU of the VXLAN devices and of pod interfaces; "
                                                               "default: the uplink's MTU minus 50 (IPv4 "
                                                               "underlay) or 70 (IPv6), the smaller if both")

    @model_validator(mode="after")
    def _two_devices(self) -> Vxlan:
        if self.device == self.device6:
            raise ValueError(f"device6: {self.device6} is the IPv4 device's name too: the IPv6 pools' VTEP needs "
                             "a device of its own")
        return self


class Wireguard(Strict):
    """Encryption of pod traffic between nodes (docs/wireguard.md): the kernel module where the host has it,
    wireguard-go otherwise."""

    enabled: bool = Field(False, description="send pod traffic to other nodes' blocks through WireGuard")
    required: bool = Field(False, description="a node without a public key is not reached at all (default: "
                                              "unencrypted) and its unencrypted pod traffic is dropped")
    port: int = Field(51820, ge=1, le=65535, description="UDP port of the WireGuard packets, the same on every node")
    device: str = Field("tortie.wg", pattern=r"^tortie[A-Za-z0-9_.-]{0,9}$",
                        description="name of the WireGuard device: a tortie prefix, 15 characters at most")
    mtu: int | None = Field(None, ge=576, le=65475, description="MTU of the WireGuard device and of pod "
                                                               "interfaces; default: the uplink's MTU minus 60")


class Bgp(Strict):
    enabled: bool = Field(True, description="run ExaBGP; false (with a datastore): routes to other nodes' blocks "
                                            "come from the datastore's block ownership and node records")


class NodeConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,63}$", description="this node's name, unique in the cluster",
                      json_schema_extra=RESTART)
    router_id: IPv4Address = Field(description="BGP router id, IPv4 also in an IPv6-only cluster",
                                   json_schema_extra=RESTART)
    asn: ASN = Field(description="this node's AS number", json_schema_extra=RESTART)
    listen_address: IPv4Address | None = Field(None, description="IPv4 underlay address: BGP source and listen "
                                               "address of IPv4 sessions, next hop of IPv4 blocks",
                                               json_schema_extra=RESTART)
    listen_address6: IPv6Address | None = Field(None, description="IPv6 underlay address: source of IPv6 "
                                                "sessions, next hop of IPv6 blocks", json_schema_extra=RESTART)
    pools: list[IPPool] = Field(min_length=1, description="the cluster's pod address pools, of either family")
    blocks: list[IPNetwork] = Field(default_factory=list, description="this node's pod address blocks")
    peers: list[Peer] = Field(default_factory=list, description="BGP peers outside the mesh: ToR routers, route reflectors")
    mesh: Mesh = Field(default_factory=Mesh, description="the node-to-node full mesh")
    max_prefixes: int = Field(100000, ge=1, description="per peer, unless the peer says otherwise")
    graceful_restart: int = Field(120, ge=0, le=4095, description="seconds peers keep our routes while we restart")
    initial_sync_timeout: float = Field(30.0, gt=0, description="seconds to wait for End-of-RIB before removing unjustified kernel routes")
    route_protocol: int = Field(201, ge=5, le=254, description="rtnetlink protocol number of Tortie's BGP routes",
                                json_schema_extra=RESTART)
    pod_route_protocol: int = Field(202, ge=5, le=254, description="rtnetlink protocol number of local pod routes",
                                    json_schema_extra=RESTART)
    pod_netns_prefix: str = Field("tortie-", pattern=r"^[A-Za-z0-9_.-]{0,24}$", json_schema_extra=RESTART,
                                  description="prefix of the network namespaces `tortie pod add` creates")
    metrics: Metrics = Field(default_factory=Metrics, description="the Prometheus endpoint", json_schema_extra=RESTART)
    datastore: DatastoreSettings | None = Field(
        None, description="the cluster datastore: with it, an empty mesh.nodes means every registered node, "
                          "and a node without blocks claims one from the pools", json_schema_extra=RESTART)
    policy_backend: Literal["nft", "iptables"] = Field(
        "nft", description="how network policy from the datastore is enforced on this node", json_schema_extra=RESTART)
    dns: Dns = Field(default_factory=Dns, description="the DNS server for pods", json_schema_extra=RESTART)
    vxlan: Vxlan = Field(default_factory=Vxlan, description="the VXLAN tunnel endpoint", json_schema_extra=RESTART)
    bgp: Bgp = Field(default_factory=Bgp, description="BGP on or off", json_schema_extra=RESTART)
    wireguard: Wireguard = Field(default_factory=Wireguard, description="WireGuard encryption of pod traffic "
                                 "between nodes", json_schema_extra=RESTART)
    nat_outgoing_exclude_nodes: bool = Field(False, description="NAT outgoing leaves traffic to the other nodes' "
                                                                "addresses alone too (not only pod-to-pod)")
    node_grace: float = Field(60.0, ge=0, description="seconds a node that went away keeps its mesh place and blocks")
    claim_settle: float = Field(1.0, gt=0, description="seconds a block claim waits for competing claims; "
                                                       "more than twice the datastore's propagation delay")
    state_dir: Path = Field(Path("/var/lib/tortie"), description="pods and their addresses, kept across restarts",
                            json_schema_extra=RESTART)
    run_dir: Path = Field(Path("/run/tortie"), description="control socket, pid file, ExaBGP configuration and socket",
                          json_schema_extra=RESTART)

    @field_validator("route_protocol", "pod_route_protocol")
    @classmethod
    def _own_protocol(cls, v: int) -> int:
        if v in FOREIGN_PROTOCOLS:
            raise ValueError(f"{v} is the protocol number of {FOREIGN_PROTOCOLS[v]}: Tortie adopts and deletes "
                             "every route of its protocols, so they must be numbers no other routing daemon uses")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> NodeConfig:
        if self.listen_address is None and self.listen_address6 is None:
            raise ValueError("the node needs an underlay address: listen_address (IPv4), listen_address6 (IPv6) "
                             "or both")
        underlay = {4: ("listen_address", self.listen_address), 6: ("listen_address6", self.listen_address6)}
        for i, pool in enumerate(self.pools):
            name, address = underlay[pool.cidr.version]
            if address is None:
                raise ValueError(f"pools[{i}]: IPv{pool.cidr.version} pool {pool.cidr} needs {name}: the next "
                                 "hop other nodes route its blocks to")
        for i, peer in enumerate(self.peers):
            name, address = underlay[peer.address.version]
            if address is None:
                raise ValueError(f"peers[{i}]: IPv{peer.address.version} peer {peer.address} needs {name}: the "
                                 "source address of its session")
        for i, block in enumerate(self.blocks):
            pool = next((p for p in self.pools if block.version == p.cidr.version and block.subnet_of(p.cidr)), None)
            if pool is None:
                raise ValueError(f"blocks[{i}]: {block} is not inside any pool")
            if block.prefixlen != pool.block_size:
                raise ValueError(f"blocks[{i}]: {block} is not a /{pool.block_size} block of pool {pool.cidr}")
        for i, a in enumerate(self.pools):
            for b in self.pools[i + 1:]:
                if a.cidr.version == b.cidr.version and a.cidr.overlaps(b.cidr):
                    raise ValueError(f"pools {a.cidr} and {b.cidr} overlap")
        if len(set(self.blocks)) != len(self.blocks):
            raise ValueError("blocks: duplicate block")
        addrs = [p.address for p in self.peers] + [a for m in self.mesh.nodes if m.name != self.name
                                                   for a in (m.address, m.address6) if a is not None]
        if len(set(addrs)) != len(addrs):
            raise ValueError("a peer address appears twice (peers and mesh nodes together)")
        if (self.uses_vxlan() and self.vxlan.mtu is not None and self.vxlan.mtu < 1280
                and any(p.cidr.version == 6 for p in self.pools)):
            raise ValueError(f"vxlan.mtu: {self.vxlan.mtu} is below 1280, the IPv6 minimum: the pods of IPv6 "
                             "pools would have no IPv6")
        six = next((p.cidr for p in self.pools if p.cidr.version == 6), None)
        if self.wireguard.enabled and self.wireguard.required and six is not None:
            raise ValueError(f"wireguard.required: WireGuard encrypts the pods of IPv4 pools only; IPv6 pool {six} "
                             "would cross the underlay unencrypted")
        for field, address in (("address", self.dns.address), ("address6", self.dns.address6)):
            pool = next((p.cidr for p in self.pools if address in p.cidr), None)
            if pool is not None:
                raise ValueError(f"dns.{field}: {address} is inside pool {pool}: the node would take a pod's "
                                 "address for its DNS server")
        if self.route_protocol == self.pod_route_protocol:
            raise ValueError("route_protocol and pod_route_protocol must differ")
        if not self.bgp.enabled:
            if self.datastore is None:
                raise ValueError("bgp.enabled: false needs a datastore: the routes to other nodes' blocks come "
                                 "from its block ownership and node records")
            if self.peers:
                raise ValueError("peers: there are no BGP peers with bgp.enabled: false")
        return self

    def uses_vxlan(self) -> bool:
        return any(p.vxlan != "never" for p in self.pools)

    def other_nodes(self, version: int = 4) -> frozenset[IPv4Address] | frozenset[IPv6Address]:
        """The underlay addresses of one family of the other nodes we know (mesh.nodes, or the datastore's):
        their VTEPs of that family."""
        mine = self.listen_address if version == 4 else self.listen_address6
        found = (m.address if version == 4 else m.address6 for m in self.mesh.nodes if m.name != self.name)
        return frozenset(a for a in found if a is not None and a != mine)

    def bgp_peers(self) -> list[Peer]:
        """Every BGP neighbor: configured peers plus the other mesh members (iBGP), one session per family both
        ends have an underlay address of (IPv6 routes over IPv6 sessions: docs/ipv6.md)."""
        if not self.bgp.enabled:
            return []
        peers = list(self.peers)
        if self.mesh.enabled:
            for m in self.mesh.nodes:
                if m.name == self.name:
                    continue
                for mine, theirs in ((self.listen_address, m.address), (self.listen_address6, m.address6)):
                    if mine is None or theirs is None or theirs == mine:
                        continue
                    peers.append(Peer(address=theirs, asn=self.asn, hold_time=self.mesh.hold_time,
                                      password=self.mesh.password, name=m.name, bfd=self.mesh.bfd,
                                      # one side connects, the other listens: the lower address is active
                                      passive=int(theirs) < int(mine)))
        return peers

    def max_prefixes_for(self, peer: Peer) -> int:
        return peer.max_prefixes if peer.max_prefixes is not None else self.max_prefixes


def restart_fields() -> list[str]:
    """The fields marked RESTART: they name the node, its sockets, or the routes it owns."""
    return [name for name, f in NodeConfig.model_fields.items() if f.json_schema_extra == RESTART]


def restart_changes(old: NodeConfig, new: NodeConfig) -> list[str]:
    """The restart-only fields whose values differ between two configurations."""
    return [name for name in restart_fields() if getattr(old, name) != getattr(new, name)]
