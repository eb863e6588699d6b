"""The helper ExaBGP runs as its API process: copies bytes between ExaBGP's pipes and the daemon's socket.

ExaBGP only talks to its own children and blocks while a child does not read (see the shared notes),
so this relay does nothing but copy, in two threads, and exits when either side closes: ExaBGP then
respawns it, and the daemon resynchronises on the new connection.

It runs as `python -S -E -I relay.py SOCKET` and imports only built-in modules and `_socket`: one
relay per node, so its few MiB count (`import socket, threading` alone would double its memory).
"""
import _socket
import _thread
import os
import sys
import time

CHUNK = 1 << 16


def _pump(src: int, dst: int) -> None:
    try:
        while data := os.read(src, CHUNK):
            view = memoryview(data)
            while view:
                view = view[os.write(dst, view):]
    except OSError:
        pass


def connect(path: str, wait: float = 10.0) -> _socket.socket:
    deadline = time.monotonic() + wait
    while True:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> None:
    sock = connect(sys.argv[1])

    def inbound() -> None:
        _pump(0, sock.fileno())
        sock.shutdown(_socket.SHUT_RDWR)  # ExaBGP is gone: end the other direction too

    _thread.start_new_thread(inbound, ())
    _pump(sock.fileno(), 1)  # returns when the daemon closes
    os._exit(0)  # the inbound thread may still be blocked reading ExaBGP


if __name__ == "__main__":
    main()
