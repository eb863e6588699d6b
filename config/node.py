"""The node configuration: one YAML file per host, validated by these models."""
from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress, field_validator, model_validator

from config.datastore.settings import DatastoreSettings

ASN = Annotated[int, Field(ge=1, le=4294967295, description="autonomous system number")]
IPv4Address = ipaddress.IPv4Address
IPv4Network = ipaddress.IPv4Network


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
    """A cluster IP pool, cut into per-host blocks."""

    cidr: IPv4Network = Field(description="the pool's addresses; pod blocks are cut from it")
    block_size: int = Field(26, ge=16, le=32, description="prefix length of each host block")
    vxlan: Literal["never", "always", "cross-subnet"] = Field(
        "never", description="encapsulate traffic to other nodes' blocks of this pool in VXLAN: never, always, or "
                             "only when the next hop is not on a subnet this node is connected to (docs/overlay.md)")
    nat_outgoing: bool = Field(True, description="masquerade traffic from this pool's pods to destinations outside "
                                                 "every pool (the node's address becomes the source)")

    @model_validator(mode="after")
    def _block_fits(self) -> IPPool:
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

    address: IPv4Address = Field(description="the peer's address; we connect to it from listen_address")
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
    address: IPv4Address = Field(description="the node's listen_address")
    public_key: str | None = Field(None, pattern=r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$",
                                   description="the node's WireGuard public key (base64); none: it is reached "
                                               "unencrypted, or not at all with wireguard.required")


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
    port: int = Field(53, ge=1, le=65535, description="UDP and TCP port, on address and on 127.0.0.1")
    upstreams: list[IPv4Address] = Field(default_factory=list, description="resolvers other names are forwarded "
                                         "to (port 53), in order; none: other names are refused")
    ttl: int = Field(5, ge=0, le=3600, description="seconds answers may be cached")
    rate_limit: DnsRateLimit = Field(default_factory=DnsRateLimit, description="per source (pod) token bucket")


class Vxlan(Strict):
    """The node's VXLAN tunnel endpoint, used when a pool has `vxlan` other than never (docs/overlay.md)."""

    vni: int = Field(4096, ge=1, le=16777215, description="VXLAN network identifier, the same on every node")
    port: int = Field(4789, ge=1, le=65535, description="UDP port of the VXLAN packets, the same on every node")
    device: str = Field("tortie.vxlan", pattern=r"^tortie[A-Za-z0-9_.-]{0,9}$",
                        description="name of the VXLAN device: a tortie prefix, 15 characters at most")
    mtu: int | None = Field(None, ge=576, le=65485, description="MTU of the VXLAN device and of pod interfaces; "
                                                               "default: the uplink's MTU minus 50")


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
    router_id: IPv4Address = Field(description="BGP router id", json_schema_extra=RESTART)
    asn: ASN = Field(description="this node's AS number", json_schema_extra=RESTART)
    listen_address: IPv4Address = Field(description="BGP source and listen address of this node",
                                        json_schema_extra=RESTART)
    pools: list[IPPool] = Field(min_length=1, description="the cluster's pod address pools")
    blocks: list[IPv4Network] = Field(default_factory=list, description="this node's pod address blocks")
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
        for i, block in enumerate(self.blocks):
            pool = next((p for p in self.pools if block.subnet_of(p.cidr)), None)
            if pool is None:
                raise ValueError(f"blocks[{i}]: {block} is not inside any pool")
            if block.prefixlen != pool.block_size:
                raise ValueError(f"blocks[{i}]: {block} is not a /{pool.block_size} block of pool {pool.cidr}")
        for i, a in enumerate(self.pools):
            for b in self.pools[i + 1:]:
                if a.cidr.overlaps(b.cidr):
                    raise ValueError(f"pools {a.cidr} and {b.cidr} overlap")
        if len(set(self.blocks)) != len(self.blocks):
            raise ValueError("blocks: duplicate block")
        addrs = [p.address for p in self.peers] + [m.address for m in self.mesh.nodes if m.name != self.name]
        if len(set(addrs)) != len(addrs):
            raise ValueError("a peer address appears twice (peers and mesh nodes together)")
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

    def other_nodes(self) -> frozenset[IPv4Address]:
        """The underlay addresses of the other nodes we know (mesh.nodes, or the datastore's): their VTEPs."""
        return frozenset(m.address for m in self.mesh.nodes
                         if m.name != self.name and m.address != self.listen_address)

    def bgp_peers(self) -> list[Peer]:
        """Every BGP neighbor: configured peers plus the other mesh members (iBGP)."""
        if not self.bgp.enabled:
            return []
        peers = list(self.peers)
        if self.mesh.enabled:
            for m in self.mesh.nodes:
                if m.name == self.name or m.address == self.listen_address:
                    continue
                peers.append(Peer(address=m.address, asn=self.asn, hold_time=self.mesh.hold_time,
                                  password=self.mesh.password, name=m.name, bfd=self.mesh.bfd,
                                  # one side connects, the other listens: the lower address is active
                                  passive=int(m.address) < int(self.listen_address)))
        return peers

    def max_prefixes_for(self, peer: Peer) -> int:
        return peer.max_prefixes if peer.max_prefixes is not None else self.max_prefixes


def restart_fields() -> list[str]:
    """The fields marked RESTART: they name the node, its sockets, or the routes it owns."""
    return [name for name, f in NodeConfig.model_fields.items() if f.json_schema_extra == RESTART]


def restart_changes(old: NodeConfig, new: NodeConfig) -> list[str]:
    """The restart-only fields whose values differ between two configurations."""
    return [name for name in restart_fields() if getattr(old, name) != getattr(new, name)]
