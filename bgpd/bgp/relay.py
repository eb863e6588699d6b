"""The helper ExaBGP runs as its API process: copies bytes between ExaBGP's pipes and the daemon's socket.

ExaBGP only talks to its own children and blocks while a child does not read (see the shared notes),
so this relay does nothing but copy, in two threads, and exits when either side closes: ExaBGP then
respawns it, and the daemon resynchronises on the new connection.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time

CHUNK = 1 << 16


def _pump(src: int, write) -> None:
    try:
        while data := os.read(src, CHUNK):
            write(data)
    except OSError:
        pass


def _write_fd(fd: int):
    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    return write


def connect(path: str, wait: float = 10.0) -> socket.socket:
    deadline = time.monotonic() + wait
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> int:
    sock = connect(sys.argv[1])

    def inbound() -> None:
        _pump(sys.stdin.fileno(), sock.sendall)
        sock.shutdown(socket.SHUT_RDWR)  # ExaBGP is gone: end the other direction too

    threading.Thread(target=inbound, daemon=True).start()
    _pump(sock.fileno(), _write_fd(sys.stdout.fileno()))  # returns when the daemon closes
    return 0


if __name__ == "__main__":
    sys.exit(main())
