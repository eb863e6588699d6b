"""IPAM state files in the node's state_dir: one typed schema for each, used by every writer and reader.

The daemon writes `blocks.json` (what it announces: claimed blocks and borrowed addresses included), the
cluster writes `lent.json` (addresses of our blocks that other nodes borrowed); `tortie pod add` and
tortie-cni read both to hand out addresses without asking the daemon.
"""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError


class IpamStateError(Exception):
    """A state file that cannot be read: the message names the file and the reason."""


class StateFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    FILE: ClassVar[str]


class NodeBlocks(StateFile):
    """state_dir/blocks.json: the blocks in force (the file's and the claimed ones) and the borrowed addresses,
    of both IP versions."""

    FILE: ClassVar[str] = "blocks.json"
    blocks: list[IPv4Network | IPv6Network] = []
    borrowed: list[IPv4Address | IPv6Address] = []


class Lent(StateFile):
    """state_dir/lent.json: addresses of this node's blocks that other nodes borrowed, never to be handed out."""

    FILE: ClassVar[str] = "lent.json"
    addresses: list[IPv4Address | IPv6Address] = []


S = TypeVar("S", bound=StateFile)


def save(state_dir: Path, state: StateFile) -> None:
    """Writes atomically: a reader sees the old file or the new one."""
    path = state_dir / state.FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state.model_dump_json())
    tmp.rename(path)


def load(state_dir: Path, kind: type[S]) -> S:
    """The file's content; empty if there is none yet (no daemon has run)."""
    path = state_dir / kind.FILE
    try:
        return kind.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return kind()
    except OSError as e:
        raise IpamStateError(f"{path}: cannot read: {e.strerror}") from None
    except ValidationError as e:
        raise IpamStateError(f"{path}: invalid: {e.errors()[0]['msg']}") from None
