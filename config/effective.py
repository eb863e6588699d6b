"""The effective configuration: the user's file plus what the cluster decided, validated as one.

`NodeConfig` is exactly what the user writes. What a node learns at run time (the blocks it claimed,
the addresses it borrowed, the registered mesh members) comes in as a `ClusterView`; `effective()`
builds the configuration the daemon runs on from both, through the same validators as the file.
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network

from pydantic import Field, ValidationError, model_validator

from config.load import ConfigError, validation_errors
from config.node import IPv4Address, Mesh, MeshMember, NodeConfig


@dataclass(frozen=True)
class ClusterView:
    """What the datastore says about this node: mesh members that count, blocks it owns, addresses it borrowed."""

    members: tuple[MeshMember, ...] = ()
    blocks: tuple[IPv4Network, ...] = ()
    borrowed: tuple[IPv4Address, ...] = ()
    routes: tuple[tuple[IPv4Network, IPv4Address], ...] = ()  # other nodes' prefixes via their addresses


class EffectiveConfig(NodeConfig):
    """The configuration in force: the file's, with the cluster's blocks, borrowed addresses and mesh members."""

    borrowed: list[IPv4Address] = Field(
        default_factory=list, description="addresses taken from other nodes' blocks when the pools had no free "
                                          "block, announced as /32")
    cluster_routes: dict[IPv4Network, IPv4Address] = Field(
        default_factory=dict, description="with bgp.enabled false: other nodes' blocks and borrowed addresses, "
                                          "via their node's address, from the datastore")

    @model_validator(mode="after")
    def _borrowed_fit(self) -> EffectiveConfig:
        for i, a in enumerate(self.borrowed):
            if not any(a in p.cidr for p in self.pools):
                raise ValueError(f"borrowed[{i}]: {a} is not inside any pool")
            if any(a in b for b in self.blocks):
                raise ValueError(f"borrowed[{i}]: {a} is inside a block of this node")
        return self

    def announced(self) -> list[IPv4Network]:
        """What we announce: our blocks, then each borrowed address as a /32."""
        return list(self.blocks) + [IPv4Network(a) for a in self.borrowed]


def effective(node: NodeConfig, view: ClusterView | None) -> EffectiveConfig:
    """The configuration to run: `node` as the file says, merged with the cluster's `view` (None: no datastore).

    Raises ConfigError if the merge is not a valid configuration (e.g. a claimed block outside the pools).
    """
    data = {name: getattr(node, name) for name in NodeConfig.model_fields}
    if view is not None:
        data["blocks"] = sorted(set(node.blocks) | set(view.blocks))
        data["borrowed"] = sorted(set(view.borrowed))
        if not node.bgp.enabled:
            data["cluster_routes"] = dict(view.routes)
        if node.mesh.enabled and not node.mesh.nodes:
            data["mesh"] = {**{name: getattr(node.mesh, name) for name in Mesh.model_fields},
                            "nodes": list(view.members)}
    try:
        return EffectiveConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(validation_errors(f"{node.name}: configuration with the cluster's view", e)) from None
