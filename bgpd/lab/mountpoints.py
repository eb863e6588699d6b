"""The host directories and files that nodes mount over, made by `lab up` where missing.

Labs share them (two mesh3 copies both bind over /etc/tortie), so they are recorded in one registry
for all labs rather than per lab: whichever `lab down` finds one unused and empty removes it.
Removing one that another lab still mounts on would silently detach that lab's mounts (Linux >= 3.18).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from bgpd.lab.processes import ns_id
from bgpd.lab.state import STATE_ROOT

REGISTRY = STATE_ROOT / "mountpoints.json"


@contextmanager
def registry() -> Iterator[list[str]]:
    """The paths labs created, in creation order, under a lock held by one `lab up` or `down` at a time."""
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(STATE_ROOT / "mountpoints.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        paths = json.loads(REGISTRY.read_text()) if REGISTRY.exists() else []
        try:
            yield paths
        finally:
            tmp = REGISTRY.with_suffix(".tmp")
            tmp.write_text(json.dumps(paths, indent=1))
            os.replace(tmp, REGISTRY)


def make(targets: dict[PurePosixPath, bool], created: list[str]) -> None:
    """Creates each missing target (a directory if True, else an empty file) and its parents."""
    for target, directory in sorted(targets.items()):
        for p in reversed([p for p in [target, *target.parents] if not os.path.exists(p)]):
            if p == target and not directory:
                open(p, "x").close()
            else:
                os.mkdir(p)
            created.append(str(p))


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounted_anywhere(path: str) -> bool:
    """True if `path`, or something under it, is a mount point in any process's mount namespace."""
    seen: set[str] = set()
    prefix = path.rstrip("/") + "/"
    for entry in filter(str.isdigit, os.listdir("/proc")):
        mnt = ns_id(int(entry), "mnt")
        if mnt is None or mnt in seen:
            continue
        seen.add(mnt)
        try:
            lines = Path(f"/proc/{entry}/mountinfo").read_text().splitlines()
        except OSError:
            continue
        if any((p := _unescape(line.split()[4])) == path or p.startswith(prefix) for line in lines):
            return True
    return False


def remove_unused(created: list[str]) -> None:
    """Removes, newest first, what no mount uses and nothing was put into; keeps the rest listed."""
    for path in reversed(list(created)):
        if mounted_anywhere(path):
            continue
        try:
            if os.path.isdir(path):
                os.rmdir(path)
            elif os.path.getsize(path) == 0:
                os.unlink(path)
            else:
                continue
        except FileNotFoundError:
            pass
        except OSError:
            continue  # a directory something else filled
        created.remove(path)
