"""The effective configuration: the user's file plus what the cluster decided, validated as one.

`NodeConfig` is exactly what the user writes. What a node learns at run time (the blocks it claimed,
the addresses it borrowed, the registered mesh members, the IP pools and BGP peers applied with
`tortie apply`) comes in as a `ClusterView`; `effective()`
builds the configuration the daemon runs on from both, through the same validators as the file.
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_network

from pydantic import Field, ValidationError, model_validator

from config.load import ConfigError, validation_errors
from config.node import IPAddress, IPNetwork, IPPool, Mesh, MeshMember, NodeConfig, Peer


@dataclass(frozen=True)
class ClusterView:
    """What the datastore says about this node: mesh members that count, blocks it owns, addresses it borrowed,
    and the cluster-wide pools (ippools/) and peers (bgppeers/) that do not clash with the file's."""

    members: tuple[MeshMember, ...] = ()
    blocks: tuple[IPNetwork, ...] = ()
    borrowed: tuple[IPAddress, ...] = ()
    routes: tuple[tuple[IPNetwork, IPAddress], ...] = ()  # other nodes' prefixes via their addresses
    pools: tuple[IPPool, ...] = ()
    peers: tuple[Peer, ...] = ()


class EffectiveConfig(NodeConfig):
    """The configuration in force: the file's, with the cluster's blocks, borrowed addresses and mesh members."""

    borrowed: list[IPAddress] = Field(
        default_factory=list, description="addresses taken from other nodes' blocks when the pools had no free "
                                          "block, announced as /32 or /128")
    cluster_routes: dict[IPNetwork, IPAddress] = Field(
        default_factory=dict, description="with bgp.enabled false: other nodes' blocks and borrowed addresses, "
                                          "via their node's address, from the datastore")

    @model_validator(mode="after")
    def _borrowed_fit(self) -> EffectiveConfig:
        for i, a in enumerate(self.borrowed):
            if not any(a.version == p.cidr.version and a in p.cidr for p in self.pools):
                raise ValueError(f"borrowed[{i}]: {a} is not inside any pool")
            if any(a.version == b.version and a in b for b in self.blocks):
                raise ValueError(f"borrowed[{i}]: {a} is inside a block of this node")
        return self

    def announced(self) -> list[IPNetwork]:
        """What we announce: our blocks, then each borrowed address as a host prefix (/32, /128)."""
        return list(self.blocks) + [ip_network(a) for a in self.borrowed]


def _by_family(x: IPNetwork | IPAddress) -> tuple:
    """Sort key putting IPv4 before IPv6 (the two do not compare)."""
    return x.version, x


def effective(node: NodeConfig, view: ClusterView | None) -> EffectiveConfig:
    """The configuration to run: `node` as the file says, merged with the cluster's `view` (None: no datastore).

    Raises ConfigError if the merge is not a valid configuration (e.g. a claimed block outside the pools).
    """
    data = {name: getattr(node, name) for name in NodeConfig.model_fields}
    if view is not None:
        data["blocks"] = sorted(set(node.blocks) | set(view.blocks), key=_by_family)
        data["borrowed"] = sorted(set(view.borrowed), key=_by_family)
        data["pools"] = [*node.pools, *view.pools]
        data["peers"] = [*node.peers, *view.peers]
        if not node.bgp.enabled:
            data["cluster_routes"] = dict(view.routes)
        if node.mesh.enabled and not node.mesh.nodes:
            data["mesh"] = {**{name: getattr(node.mesh, name) for name in Mesh.model_fields},
                            "nodes": list(view.members)}
    try:
        return EffectiveConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(validation_errors(f"{node.name}: configuration with the cluster's view", e)) from None
