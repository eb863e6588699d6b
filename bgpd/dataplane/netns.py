"""Network namespaces by name (/run/netns/NAME, where `ip netns` keeps them) or by path, without a helper
process or thread: the calling thread enters a namespace with setns(2) and returns to its own (a network
namespace belongs to a thread). Python 3.11 has no os.setns/os.unshare, hence libc through ctypes (`libc` and
`check` also serve the lab keeper's mount namespace).
"""
from __future__ import annotations

import ctypes
import errno
import os
from contextlib import contextmanager
from typing import Iterator

RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
MS_BIND, MS_REC, MS_SHARED = 0x1000, 0x4000, 0x100000
MNT_DETACH = 2
_OWN = "/proc/thread-self/ns/net"
libc = ctypes.CDLL(None, use_errno=True)


def path(netns: str) -> str:
    """A name under /run/netns, or a path as is (a runtime's /proc/PID/ns/net or bind mount)."""
    return netns if "/" in netns else os.path.join(RUN_DIR, netns)


def exists(netns: str) -> bool:
    return os.path.exists(path(netns))


def check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"cannot {what}: {os.strerror(code)}")


def _setns(fd: int, what: str) -> None:
    check(libc.setns(fd, CLONE_NEWNET), what)


@contextmanager
def entered(netns: str) -> Iterator[None]:
    """The calling thread in network namespace `netns` until the block ends (sockets made there stay there)."""
    own = os.open(_OWN, os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path(netns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target, f"enter network namespace {netns}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own, "return to the original network namespace")
    finally:
        os.close(own)


def enter_for_good(netns: str) -> None:
    """Moves the calling thread into `netns` (before an exec)."""
    fd = os.open(path(netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd, f"enter network namespace {netns}")
    finally:
        os.close(fd)


def create(name: str) -> None:
    """A new namespace bound at /run/netns/NAME, made as `ip netns add` makes it (the directory a shared mount,
    so the binding shows in other mount namespaces). OSError if it exists; nothing is left on failure."""
    run_dir = RUN_DIR.encode()
    os.makedirs(RUN_DIR, mode=0o755, exist_ok=True)
    if libc.mount(b"", run_dir, b"none", MS_SHARED | MS_REC, None) != 0:  # not a mount point yet
        check(libc.mount(run_dir, run_dir, b"none", MS_BIND | MS_REC, None), f"bind-mount {RUN_DIR}")
        check(libc.mount(b"", run_dir, b"none", MS_SHARED | MS_REC, None), f"share {RUN_DIR}")
    target = path(name)
    os.close(os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
    own = os.open(_OWN, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            check(libc.unshare(CLONE_NEWNET), "make a network namespace")
            check(libc.mount(_OWN.encode(), target.encode(), b"none", MS_BIND, None), f"bind {target}")
        finally:
            _setns(own, "return to the original network namespace")
    except OSError:
        remove(name)
        raise
    finally:
        os.close(own)


def remove(name: str) -> None:
    """Unbinds and deletes /run/netns/NAME; absent is fine. The namespace goes with its last user."""
    target = path(name)
    if libc.umount2(target.encode(), MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        check(-1, f"unmount {target}")
    try:
        os.unlink(target)
    except FileNotFoundError:
        pass
