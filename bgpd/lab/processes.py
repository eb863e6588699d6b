"""Finding a lab's processes by their namespaces, and stopping them by PID."""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path


def ns_id(pid: int, kind: str) -> str | None:
    """The namespace of `pid`, e.g. 'mnt:[4026532301]'; None once the process is gone (or a zombie)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def netns_file_id(path: str | Path) -> str | None:
    """The id of a network namespace bound at `path`, in the form ns_id reads."""
    try:
        return f"net:[{os.stat(path).st_ino}]"
    except OSError:
        return None


def alive_in(pid: int | None, mnt: str | None) -> bool:
    """True while `pid` runs in mount namespace `mnt` (guards against PID reuse)."""
    return pid is not None and mnt is not None and ns_id(pid, "mnt") == mnt


def _environ_has(pid: int, marker: bytes) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def find(mnt_ids: set[str], net_ids: set[str], env_marker: str) -> set[int]:
    """PIDs in one of the mount or network namespaces, or started with `env_marker` in their environment.

    The marker catches what a node started in namespaces of its own (e.g. `ip netns exec POD`).
    """
    me, marker = os.getpid(), env_marker.encode()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        if ns_id(pid, "mnt") in mnt_ids or ns_id(pid, "net") in net_ids or _environ_has(pid, marker):
            found.add(pid)
    return found


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _running(pids: set[int]) -> set[int]:
    return {p for p in pids if ns_id(p, "mnt") is not None}


def stop(pids: set[int], grace: float = 3.0) -> set[int]:
    """SIGTERM, then SIGKILL what still runs after `grace` seconds; returns PIDs that survived both."""
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while (left := _running(pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal(left, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while (left := _running(left)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left
