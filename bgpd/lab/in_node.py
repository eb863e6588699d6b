"""Running commands inside a node: both its namespaces, a container-like environment."""
from __future__ import annotations

import os
import subprocess
import sys

from bgpd.lab.topology import Node

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def node_env(lab_name: str, node: Node) -> dict[str, str]:
    """A fresh environment, as a container has: the running venv's bin first on PATH, the node's `env`.

    TORTIE_LAB_NAME also marks every process of the lab, so `lab down` finds even those that left
    the node's namespaces (pods' network namespaces).
    """
    env = {"PATH": f"{os.path.dirname(sys.executable)}:{SYSTEM_PATH}", "HOME": "/root", "TERM": os.environ.get("TERM", "dumb")}
    env.update(node.env)
    env.update({"TORTIE_LAB": "1", "TORTIE_LAB_NAME": lab_name})
    return env


def argv(keeper_pid: int, command: list[str]) -> list[str]:
    return ["nsenter", "-t", str(keeper_pid), "-m", "-n", "--", *command]


def shell(keeper_pid: int, command: str) -> list[str]:
    return argv(keeper_pid, ["sh", "-c", command])


def run(keeper_pid: int, env: dict[str, str], command: list[str], timeout: float | None,
        **kw) -> subprocess.CompletedProcess:
    """Runs `command` in the node and waits; `kw` goes to subprocess.run (e.g. capture_output)."""
    return subprocess.run(argv(keeper_pid, command), env=env, cwd="/", text=True, timeout=timeout, **kw)
