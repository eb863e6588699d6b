"""The daemon's local control socket: one JSON request, one JSON answer, per connection.

The client side (`query`) is what every CLI call and CNI ADD pays to import: standard library only, so
asyncio loads with the server, in the daemon.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable


class ControlServer:
    def __init__(self, path: Path, views: dict[str, Callable[[], Any]]):
        """views: name -> a function (or coroutine function) whose result answers the request: JSON-able,
        or dataclasses (bgpd/agent/views.py), sent as their fields."""
        self.path = path
        self.views = views
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        """Raises DaemonRunning if another daemon answers on our socket: two daemons would fight."""
        import asyncio

        try:
            query(self.path, "status", timeout=2)
            raise DaemonRunning(f"another tortie daemon is running (it answers on {self.path})")
        except DaemonNotRunning:
            pass
        self.path.unlink(missing_ok=True)
        old = os.umask(0o077)  # root only
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old)

    async def stop(self) -> None:
        if self._server:
            self._server.close()
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import asyncio
        import inspect

        try:
            request = json.loads(await asyncio.wait_for(reader.readline(), 5))
            view = self.views.get(request.get("view"))
            if view is None:
                answer = {"ok": False, "error": "unknown view"}
            else:
                result = view(**request.get("args", {}))
                answer = {"ok": True, "result": await result if inspect.isawaitable(result) else result}
        except (ValueError, AttributeError, TypeError, asyncio.TimeoutError) as e:
            answer = {"ok": False, "error": f"bad request: {e}"}
        writer.write(json.dumps(answer, default=_fields).encode() + b"\n")
        await writer.drain()
        writer.close()


def _fields(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class DaemonNotRunning(Exception):
    pass


class DaemonRunning(Exception):
    pass


def query(path: Path, view: str, timeout: float = 10.0, **args: Any) -> Any:
    """Asks the running daemon for a view; raises DaemonNotRunning with a one-line reason."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError, socket.timeout):
            raise DaemonNotRunning(f"tortie is not running (no daemon at {path})") from None
        data = b""
        try:
            sock.sendall(json.dumps({"view": view, "args": args}).encode() + b"\n")
            while chunk := sock.recv(1 << 16):
                data += chunk
        except OSError as e:  # a hung daemon: socket.timeout is an OSError
            raise DaemonNotRunning(f"the daemon at {path} did not answer: {e.strerror or 'timed out'}") from None
    try:
        answer = json.loads(data)
        ok, result, error = answer.get("ok"), answer.get("result"), answer.get("error", "daemon refused the request")
    except (ValueError, AttributeError):
        raise DaemonNotRunning(f"the daemon at {path} gave no valid answer ({len(data)} bytes)") from None
    if not ok:
        raise DaemonNotRunning(str(error))
    return result
