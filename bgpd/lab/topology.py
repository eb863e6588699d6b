"""The subset of containerlab's `.clab.yml` topology format that `tortie lab` realizes.

Only `kind: linux` nodes and veth links between two nodes are supported; a key we would
silently ignore is rejected instead, so a lab never looks as if it honored something it did not.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from config.load import ConfigError, load_model

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$"
IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class NodeSettings(Strict):
    """Keys a node, a kind or the defaults may set; unset ones come from kind, then defaults."""

    kind: Literal["linux"] | None = None
    image: str | None = None
    cmd: str | None = Field(None, description="the node's main command, kept running in the background")
    exec_: list[str] | None = Field(None, alias="exec", description="run in order after cmd; each must exit 0")
    binds: list[str] | None = Field(None, description="host:container[:ro], host relative to the topology file")
    env: dict[str, str] | None = None
    labels: dict[str, str] | None = Field(None, description="metadata only")
    network_mode: Literal["none"] | None = Field(None, alias="network-mode",
                                                 description="no management network: never one here")

    @field_validator("env", mode="before")
    @classmethod
    def _env_scalars(cls, v):
        """containerlab takes numbers and booleans as values too."""
        if isinstance(v, dict):
            return {k: str(x).lower() if isinstance(x, bool) else str(x) if isinstance(x, int | float) else x
                    for k, x in v.items()}
        return v

    @field_validator("cmd", "exec_")
    @classmethod
    def _shell_words(cls, v: str | list[str] | None) -> str | list[str] | None:
        """containerlab splits cmd and exec entries into words: they must split."""
        for command in [v] if isinstance(v, str) else v or []:
            try:
                shlex.split(command)
            except ValueError as e:
                raise ValueError(f"{command!r}: {e}") from None
        return v

    @field_validator("binds")
    @classmethod
    def _binds(cls, v: list[str] | None) -> list[str] | None:
        for b in v or []:
            parts = b.split(":")
            if len(parts) not in (2, 3) or not all(parts[:2]) or parts[2:] not in ([], ["ro"], ["rw"]):
                raise ValueError(f"bind {b!r} is not host:container or host:container:ro")
            if not parts[1].startswith("/"):
                raise ValueError(f"bind {b!r}: the container path must be absolute")
        return v


class Link(Strict):
    endpoints: tuple[str, str]

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: tuple[str, str]) -> tuple[str, str]:
        for ep in v:
            node, _, ifname = ep.partition(":")
            if node in ("host", "mgmt-net", "macvlan", "bridge"):
                raise ValueError(f"endpoint {ep!r}: only links between two lab nodes are supported")
            if not node or not IFNAME.match(ifname):
                raise ValueError(f"endpoint {ep!r} is not node:interface (interface name of 1 to 15 characters)")
        return v


class Topology(Strict):
    nodes: dict[str, NodeSettings] = Field(min_length=1)
    links: list[Link] = Field(default_factory=list)
    kinds: dict[Literal["linux"], NodeSettings] = Field(default_factory=dict)
    defaults: NodeSettings = Field(default_factory=NodeSettings)

    @field_validator("nodes")
    @classmethod
    def _node_names(cls, v: dict[str, NodeSettings]) -> dict[str, NodeSettings]:
        for name in v:
            if not re.match(NAME, name):
                raise ValueError(f"node name {name!r} must match {NAME}")
        return v

    @model_validator(mode="after")
    def _links_known(self) -> Topology:
        seen: set[str] = set()
        for i, link in enumerate(self.links):
            for ep in link.endpoints:
                node = ep.partition(":")[0]
                if node not in self.nodes:
                    raise ValueError(f"links[{i}]: endpoint {ep!r} names no node of the topology")
                if ep in seen:
                    raise ValueError(f"links[{i}]: interface {ep!r} is used by two links")
                seen.add(ep)
        return self


class LabFile(Strict):
    name: str = Field(pattern=NAME)
    topology: Topology
    mgmt: dict | None = Field(None, description="containerlab's management network; ignored here")


class Bind(BaseModel):
    host: Path
    container: PurePosixPath
    read_only: bool


class Node(BaseModel):
    """One node with kind and defaults merged in, host paths resolved."""

    name: str
    image: str | None
    cmd: str | None
    exec_: list[str]
    binds: list[Bind]
    env: dict[str, str]

    def runs_tortie(self) -> bool:
        return shlex.split(self.cmd or "")[:2] == ["tortie", "run"]

    def tortie_config_args(self) -> list[str]:
        """The `--config FILE` of the node's `tortie run`, for other tortie commands in the node."""
        words = shlex.split(self.cmd or "")
        for i, w in enumerate(words):
            if w in ("--config", "-c") and i + 1 < len(words):
                return ["--config", words[i + 1]]
            if w.startswith("--config="):
                return ["--config", w.partition("=")[2]]
        return []


class Lab(BaseModel):
    name: str
    path: Path
    nodes: dict[str, Node]
    links: list[tuple[tuple[str, str], tuple[str, str]]]

    def netns(self, node: str) -> str:
        """The node's network namespace name, as containerlab names its containers."""
        return f"clab-{self.name}-{node}"


def _merge(layers: list[NodeSettings], name: str, base: Path) -> Node:
    def pick(key: str):
        return next((getattr(s, key) for s in layers if getattr(s, key) is not None), None)

    env: dict[str, str] = {}
    binds: list[Bind] = []
    for s in reversed(layers):  # defaults first, the node's own last
        env.update(s.env or {})
        for b in s.binds or []:
            host, container, *mode = b.split(":")
            binds.append(Bind(host=(base / host).resolve(), container=PurePosixPath(container),
                              read_only=mode == ["ro"]))
    return Node(name=name, image=pick("image"), cmd=pick("cmd"), exec_=pick("exec_") or [],
                binds=binds, env=env)


def load_lab(path: str | Path, name: str | None = None) -> Lab:
    """Reads a topology file; `name` overrides its `name`. Raises ConfigError naming file and field."""
    path = Path(path)
    if name is not None and not re.match(NAME, name):
        raise ConfigError([f"--name: {name!r} must match {NAME}"])
    f = load_model(path, LabFile)
    t = f.topology
    nodes = {}
    for n, s in t.nodes.items():
        kind = s.kind or t.defaults.kind or "linux"
        nodes[n] = _merge([s, t.kinds.get(kind, NodeSettings()), t.defaults], n, path.parent.resolve())
    links = [tuple(tuple(ep.split(":", 1)) for ep in link.endpoints) for link in t.links]
    return Lab(name=name or f.name, path=path.resolve(), nodes=nodes, links=links)
