"""Waiting until every BGP session of the lab's tortie nodes is up (and its BFD session, where configured).

The contract with the node daemon: `tortie status --json`, run inside the node, prints its status
(bgpd/agent/views.py: Status), of which this reads `peers` (`PeerStatus`: name, address, asn, state), and exits 0.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable

from bgpd.agent.views import PeerStatus

STATUS_COMMAND = ["tortie", "status", "--json"]


class StatusError(Exception):
    """The status command failed or printed something other than the contract."""


def parse_status(returncode: int, stdout: str, stderr: str) -> list[PeerStatus]:
    """The peer list from one run of the status command, or StatusError saying why there is none."""
    command = " ".join(STATUS_COMMAND)
    if returncode != 0:
        detail = (stderr or stdout).strip().splitlines()
        raise StatusError(f"`{command}` exited {returncode}" + (f": {detail[-1]}" if detail else ""))
    try:
        peers = json.loads(stdout)["peers"]
        if not isinstance(peers, list):
            raise TypeError("peers must be a list")
        return [PeerStatus.from_json(p) for p in peers]
    except (ValueError, KeyError, TypeError) as e:
        raise StatusError(f"`{command}` printed no peer list: {e}") from None


def peer_problems(peers: list[PeerStatus]) -> list[str]:
    """Sessions not up, and BFD sessions (peers with bfd enabled) not up."""
    return ([f"peer {p.name or '?'} ({p.address}) is {p.state}" for p in peers if p.state != "up"]
            + [f"peer {p.name or '?'} ({p.address}): BFD is {p.bfd.state}" for p in peers
               if p.bfd is not None and p.bfd.state != "up"])


def wait_until_up(check: Callable[[], dict[str, list[str]]], timeout: float,
                  interval: float = 1.0) -> dict[str, list[str]]:
    """Calls `check` (node -> problems) until it reports none or `timeout` passes; returns the last problems."""
    deadline = time.monotonic() + timeout
    while True:
        problems = {node: p for node, p in check().items() if p}
        if not problems or time.monotonic() >= deadline:
            return problems
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
