"""Runs ExaBGP as a supervised child and accepts its relay's connection on a unix socket."""
from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Awaitable, Callable

log = logging.getLogger("tortie.exabgp")
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # a daemon killed with SIGKILL must not leave ExaBGP holding its sessions
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def exabgp_command(config: Path) -> list[str]:
    return [str(Path(sys.executable).with_name("exabgp")), "server", str(config)]


def relay_program() -> str:
    """ExaBGP's API process: OpenBSD netcat copying bytes between ExaBGP's pipes and the daemon's unix socket.

    ExaBGP only talks to its own children and blocks while a child does not read (see the shared notes), so the
    relay only copies. `-N` passes ExaBGP's end of output on as a shutdown, and netcat exits when the daemon
    closes: ExaBGP then respawns it and the daemon resynchronises on the new connection. 1.5 MiB RSS, where a
    relay in Python (an interpreter of its own) took 8.7.
    """
    if path := shutil.which("nc.openbsd"):
        return path
    raise FileNotFoundError("nc.openbsd not found: ExaBGP's relay is OpenBSD netcat (Debian package netcat-openbsd)")


class ExaBGPSupervisor:
    """Starts ExaBGP, restarts it with backoff when it dies, and hands each relay connection on.

    `on_connect(reader, writer, fresh)` runs for every relay connection; `fresh` is True for the first
    connection of a new ExaBGP process (new sessions) and False when only the relay was respawned.
    `on_exit()` runs when the ExaBGP process ends.
    """

    def __init__(self, config_path: Path, socket_path: Path, env: dict[str, str],
                 on_connect: Callable[[asyncio.StreamReader, asyncio.StreamWriter, bool], Awaitable[None]],
                 on_exit: Callable[[], None], max_backoff: float = 30.0):
        self.config_path, self.socket_path, self.env = config_path, socket_path, env
        self.on_connect, self.on_exit = on_connect, on_exit
        self.max_backoff = max_backoff
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._fresh = False
        self._server: asyncio.base_events.Server | None = None
        self._stopping = False

    async def run(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._accept, path=str(self.socket_path),
                                                       limit=1 << 24)
        os.chmod(self.socket_path, 0o600)
        backoff = 1.0
        while not self._stopping:
            started = asyncio.get_running_loop().time()
            self._fresh = True
            self.process = await asyncio.create_subprocess_exec(
                *exabgp_command(self.config_path), env={**os.environ, **self.env},
                stdin=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent)
            log.info("exabgp started pid=%d", self.process.pid)
            code = await self.process.wait()
            self.on_exit()
            if self._stopping:
                break
            self.restarts += 1
            if asyncio.get_running_loop().time() - started > 60:
                backoff = 1.0
            log.error("exabgp exited code=%s restarting_in=%.0fs", code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fresh, self._fresh = self._fresh, False
        try:
            await self.on_connect(reader, writer, fresh)
        finally:
            writer.close()

    def reload(self) -> None:
        """SIGUSR1: ExaBGP re-reads its configuration, adding and removing neighbors, keeping the others."""
        if self.process and self.process.returncode is None:
            self.process.send_signal(signal.SIGUSR1)

    async def stop(self) -> None:
        """SIGTERM: with graceful restart negotiated ExaBGP closes sessions without NOTIFICATION."""
        self._stopping = True
        if self.process and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._server:
            self._server.close()
        self.socket_path.unlink(missing_ok=True)
