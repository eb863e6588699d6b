"""The keeper of a node: holds the node's private mount namespace inside its network namespace.

Run as `python -m bgpd.lab.keeper SPEC_JSON`. It enters the node's network namespace, makes a
private mount namespace with its own /sys, tmpfs on the per-node directories and the node's bind
mounts, prints "ready", then becomes `sleep infinity`. Every other process of the node is started
with `nsenter -t KEEPER_PID -m -n`. The system calls go through bgpd/dataplane/netns.py's libc (that module
imports nothing beyond the standard library, so the keeper stays a small process).
"""
from __future__ import annotations

import json
import os
import stat
import sys

from bgpd.dataplane.netns import MNT_DETACH, MS_BIND, MS_REC, check, enter_for_good, libc

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_PRIVATE = 0x1, 0x2, 0x4, 0x20, 0x40000


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _make_mountpoint(target: str, directory: bool) -> None:
    """A directory, or for a file bind an empty file, to mount over (if missing)."""
    if directory:
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()


def setup(netns_path: str, tmpfs: list[str], binds: list[tuple[str, str, bool]]) -> None:
    enter_for_good(netns_path)
    check(libc.unshare(CLONE_NEWNS), "unshare the mount namespace")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Open the bind sources first: a tmpfs mounted next may hide them (a lab under /tmp).
    sources = [os.open(host, os.O_PATH) for host, _, _ in binds]
    # A sysfs of this network namespace, as `ip netns exec` does, so /sys/class/net shows the node's links.
    check(libc.umount2(b"/sys", MNT_DETACH), "unmount /sys")
    _mount("sysfs", "/sys", "sysfs", 0)
    for d in tmpfs:
        _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777" if d == "/tmp" else "mode=755")
    for fd, (_, target, read_only) in zip(sources, binds):
        _make_mountpoint(target, stat.S_ISDIR(os.fstat(fd).st_mode))
        _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
        if read_only:
            _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
        os.close(fd)


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        setup(spec["netns"], spec["tmpfs"], [tuple(b) for b in spec["binds"]])
    except OSError as e:
        print(f"error: {e}", flush=True)
        sys.exit(1)
    print("ready", flush=True)
    os.dup2(os.open(os.devnull, os.O_RDWR), 1)
    os.execvp("sleep", ["sleep", "infinity"])


if __name__ == "__main__":
    main()
