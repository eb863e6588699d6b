"""Shared fixtures: per-run network namespaces that are always removed."""
from __future__ import annotations

import subprocess

import pytest

from tests.netns import RUN_PREFIX


@pytest.fixture
def make_netns():
    """make_netns("a") -> a fresh namespace named <run prefix>-<n>-a, with lo up; removed afterwards."""
    made: list[str] = []

    def make(suffix: str) -> str:
        name = f"{RUN_PREFIX}-{len(made)}-{suffix}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    yield make
    for name in reversed(made):
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
