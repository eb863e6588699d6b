"""What a running lab made, kept in /run/tortie-lab/NAME/state.json so `lab down` can undo it."""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field

STATE_ROOT = Path("/run/tortie-lab")


class NodeState(BaseModel):
    netns: str
    keeper_pid: int | None = Field(None, description="the keeper, or a container node's init process")
    keeper_mnt: str | None = Field(None, description="the keeper's mount namespace, as /proc/PID/ns/mnt reads")
    cmd_pid: int | None = None


class LabState(BaseModel):
    name: str
    topology: str
    engine: str = Field("netns", description="netns, or the container engine running the nodes (docker, podman)")
    nodes: dict[str, NodeState] = Field(default_factory=dict)

    @staticmethod
    def dir(name: str) -> Path:
        return STATE_ROOT / name

    @classmethod
    def load(cls, name: str) -> LabState | None:
        try:
            return cls.model_validate_json((cls.dir(name) / "state.json").read_text())
        except FileNotFoundError:
            return None

    def save(self) -> None:
        d = self.dir(self.name)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "state.json.tmp"
        tmp.write_text(self.model_dump_json(indent=2))
        os.replace(tmp, d / "state.json")

    def log_path(self, node: str) -> Path:
        return self.dir(self.name) / f"{node}.log"
