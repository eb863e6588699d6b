"""The daemon's `status` and `routes` answers, typed: built by the daemon, read by its metrics collector,
sent as JSON over the control socket (their fields), read back by the CLI and the lab runner.

The JSON shape is a contract (`tortie status --json` / `tortie routes --json`, docs, labs): add fields,
never rename or remove one. `from_json` ignores keys it does not know and fills fields that have a
default, so a reader needs only the part of the contract it uses.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

T = TypeVar("T")


def _known(cls: type[T], data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    missing = [f.name for f in fields(cls)
               if f.name not in data and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise KeyError(f"{cls.__name__}: missing {', '.join(missing)}")
    return {f.name: data[f.name] for f in fields(cls) if f.name in data}


@dataclass(frozen=True)
class BfdStatus:
    """A peer's BFD session (bgpd/bfd/service.py); state "off" with `error` when BFD could not start."""

    state: str  # admin_down, down, init, up, off
    diag: str = "none"  # why it last went down (RFC 5880 diagnostic), e.g. detection_time_expired
    remote_state: str = "down"
    since: float = 0.0  # seconds since the last state change
    tx_interval_ms: float | None = None  # negotiated, while up
    detection_time_ms: float | None = None
    armed: bool = False  # up for the hold-down: a failure now takes the peer's routes out
    dampened: bool = False  # flapping: failures are ignored for now
    failures: int = 0  # acted on
    ignored_failures: int = 0  # within the hold-down or dampened
    detections: int = 0  # times the peer fell silent for a detection time
    changes: dict[str, int] = field(default_factory=dict)  # state changes, by new state
    error: str = ""

    @classmethod
    def from_json(cls, data: Any) -> BfdStatus:
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class PeerStatus:
    name: str
    address: str
    asn: int
    state: str  # idle, connected, up, down
    uptime: float = 0.0  # seconds the session has been up
    received: int = 0  # prefix announcements
    accepted: int = 0  # prefixes held now
    rejected: int = 0  # prefix announcements the import filter refused
    advertised: int = 0
    stale: int = 0  # routes kept across the peer's graceful restart
    last_error: str = ""
    updates: int = 0  # UPDATE messages
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    bfd: BfdStatus | None = None  # None: no BFD with this peer

    @classmethod
    def from_json(cls, data: Any) -> PeerStatus:
        known = _known(cls, data)
        bfd = known.get("bfd")
        return cls(**{**known, "bfd": None if bfd is None else BfdStatus.from_json(bfd)})


@dataclass(frozen=True)
class DatastoreStatus:
    connected: bool
    resyncs: int
    ready: bool


@dataclass(frozen=True)
class PoolStatus:
    cidr: str
    vxlan: str  # never, always, cross-subnet
    nat_outgoing: bool


@dataclass(frozen=True)
class OverlayStatus:
    """The VXLAN tunnel endpoint (docs/overlay.md)."""

    device: str
    vni: int
    port: int
    mtu: int
    remote_vteps: int  # neighbour + FDB entries programmed, one per other node
    encapsulated_routes: int  # kernel routes of ours through the VTEP
    repairs: int = 0  # entries or device found changed by others (and set again)
    offloads: dict[str, bool] = field(default_factory=dict)  # checksum/segmentation offloads of the device
    error: str = ""  # why the device could not be set up, if it could not


@dataclass(frozen=True)
class WireguardPeerStatus:
    node: str
    endpoint: str
    allowed_ips: int  # prefixes routed to it through the device
    handshake_age: float | None  # seconds since the latest handshake; None: none yet
    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True)
class WireguardStatus:
    """Encryption of pod traffic between nodes (docs/wireguard.md)."""

    device: str
    implementation: str  # kernel or wireguard-go ("" until the device exists)
    public_key: str
    port: int
    mtu: int
    required: bool
    peers: list[WireguardPeerStatus] = field(default_factory=list)
    nodes_without_key: list[str] = field(default_factory=list)  # reached unencrypted, or not at all if required
    encrypted_routes: int = 0  # kernel routes of ours through the device
    restarts: int = 0  # wireguard-go found dead and started again
    error: str = ""

    @classmethod
    def from_json(cls, data: Any) -> WireguardStatus:
        known = _known(cls, data)
        return cls(**{**known, "peers": [WireguardPeerStatus(**_known(WireguardPeerStatus, p))
                                         for p in known.get("peers", [])]})


@dataclass(frozen=True)
class Status:
    node: str
    asn: int
    router_id: str
    blocks: list[str]
    borrowed: list[str]
    initial_sync_done: bool
    kernel_routes: int  # routes of our protocol in the kernel, of both families
    refused_routes: dict[str, str]  # a sample of the routes the kernel refused, with its reason
    exabgp_restarts: int
    datastore: DatastoreStatus | None
    peers: list[PeerStatus]
    refused_total: int = 0  # all routes the kernel refused at the last try
    kernel_routes_ipv6: int = 0  # of kernel_routes, the IPv6 ones
    refused_ipv6: int = 0  # of refused_total, the IPv6 ones
    kernel_repairs: int = 0  # kernel routes found changed by others (and programmed again)
    malformed_messages: int = 0  # ExaBGP messages that could not be parsed
    bgp_enabled: bool = True
    pools: list[PoolStatus] = field(default_factory=list)
    overlay: OverlayStatus | None = None  # None: no pool uses VXLAN
    wireguard: WireguardStatus | None = None  # None: wireguard.enabled is false

    @classmethod
    def from_json(cls, data: Any) -> Status:
        known = _known(cls, data)
        datastore, overlay, wireguard = known["datastore"], known.get("overlay"), known.get("wireguard")
        return cls(**{**known, "peers": [PeerStatus.from_json(p) for p in known["peers"]],
                      "pools": [PoolStatus(**_known(PoolStatus, p)) for p in known.get("pools", [])],
                      "overlay": None if overlay is None else OverlayStatus(**_known(OverlayStatus, overlay)),
                      "wireguard": None if wireguard is None else WireguardStatus.from_json(wireguard),
                      "datastore": None if datastore is None else DatastoreStatus(**_known(DatastoreStatus,
                                                                                            datastore))})


@dataclass(frozen=True)
class RouteStatus:
    prefix: str
    next_hops: list[str]  # ["blackhole"] for our own blocks
    peers: list[str]  # the peers it came from, ["local"] for our own blocks
    in_kernel: bool  # the kernel holds exactly this route

    @classmethod
    def from_json(cls, data: Any) -> RouteStatus:
        return cls(**_known(cls, data))
