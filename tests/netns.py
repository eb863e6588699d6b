"""Helpers for tests that use network namespaces (imported by tests; fixtures live in conftest.py)."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys

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
