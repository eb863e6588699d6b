"""Helpers for tests that use network namespaces (imported by tests; fixtures live in conftest.py)."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

RUN_PREFIX = "tt" + secrets.token_hex(2)  # every namespace of this test run starts with this


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def run_in_netns(ns: str, code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs Python code in a fresh interpreter inside `ns`: the test process itself never leaves the root ns."""
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": os.getcwd()})


requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


class Lab:
    """A lab brought up with `tortie lab` from a topology in containers/labs, under a per-run name."""

    def __init__(self, topology: str, suffix: str):
        self.topology = str(Path(__file__).resolve().parent.parent / "containers" / "labs" / topology)
        self.name = f"{RUN_PREFIX}{suffix}"

    def tortie(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "bgpd.cli.main", "lab", *args, self.topology, "--name", self.name],
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"tortie lab {args[0]} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def up(self, timeout: float = 120) -> None:
        self.tortie("up", "--timeout", str(timeout - 10), timeout=timeout)

    def down(self) -> None:
        self.tortie("down", timeout=60, check=False)

    def exec(self, node: str, *cmd: str, timeout: float = 60, check: bool = True, input: str | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        if env:
            cmd = ("env", *(f"{k}={v}" for k, v in env.items()), *cmd)
        r = subprocess.run([sys.executable, "-m", "bgpd.cli.main", "lab", "exec", self.topology, "--name", self.name,
                            node, "--", *cmd], capture_output=True, text=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"{node}: {' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def popen(self, node: str, *cmd: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "bgpd.cli.main", "lab", "exec", self.topology, "--name", self.name,
                                 node, "--", *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def json(self, node: str, *cmd: str):
        return json.loads(self.exec(node, *cmd).stdout)

    @property
    def state_dir(self) -> Path:
        return Path("/run/tortie-lab") / self.name

    def log(self, node: str) -> str:
        path = self.state_dir / f"{node}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def running_lab(topology: str, suffix: str):
    """For module fixtures: `yield from running_lab(...)` brings a lab up and always takes it down."""
    lab = Lab(topology, suffix)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Polls predicate() until it returns something truthy; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
