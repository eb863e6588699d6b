"""The files backend: one JSON file per key in a directory, watched for changes by other processes.

Key `a/b/c` is `<dir>/a/b/c.json`, written atomically (temporary file + rename). Liveness is a lease:
the node rewrites status/<node> with {"alive": true, "expires": now + ttl} every ttl/3; a lease that
runs out is cached (and emitted) as {"alive": false, ...} so watchers react.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

from watchfiles import awatch

from config.datastore.base import MAX_VALUE_BYTES, Datastore, checked, decode, encode
from config.datastore.errors import DatastoreError, InvalidKey
from config.datastore.keys import key, parse_key

log = logging.getLogger(__name__)

WATCH_READY_TIMEOUT = 10.0
RESTART_DELAY = 1.0


def lease_view(key_: str, value: dict | None) -> dict | None:
    """A status value as it reads now: a lapsed lease reads alive: false."""
    if value is None or not key_.startswith("status/") or value.get("alive") is not True:
        return value
    expires = value.get("expires")
    if isinstance(expires, (int, float)) and expires <= time.time():
        return {**value, "alive": False}
    return value


class FilesDatastore(Datastore):
    def __init__(self, path: Path, node: str, lease_ttl: float = 15.0, observer: bool = False):
        super().__init__(node, observer)
        self.path = Path(path)
        self.lease_ttl = lease_ttl
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task] = []
        self._stop = asyncio.Event()
        self._loaded = False

    async def start(self) -> None:
        """See Datastore.start(); may be called again after it failed."""
        self._stop.clear()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DatastoreError(f"datastore directory {self.path}: {e.strerror}") from None
        ready = asyncio.get_running_loop().create_future()
        self._tasks.append(asyncio.create_task(self._watch(ready), name=f"datastore-watch-{self.node}"))
        try:
            await asyncio.wait_for(ready, WATCH_READY_TIMEOUT)
        except (asyncio.TimeoutError, OSError, RuntimeError) as e:
            await self._cancel_tasks()
            raise DatastoreError(f"cannot watch datastore directory {self.path}: {e or 'timed out'}") from None
        if not self.observer:
            try:
                self._renew_lease()
            except DatastoreError:
                await self._cancel_tasks()
                raise
        for k, v in self._scan().items():  # the initial state: cached, not emitted
            self._cache[k] = v = lease_view(k, v)
            if k.startswith("status/"):
                self._schedule_expiry(k, v)
        self._loaded = True
        self.connected = True
        if not self.observer:
            self._tasks.append(asyncio.create_task(self._keep_lease(), name=f"datastore-lease-{self.node}"))

    async def stop(self) -> None:
        self._stop.set()
        await self._cancel_tasks()
        if self._loaded and not self.observer:
            try:
                await self.put(key("status", self.node), {"alive": False})
            except DatastoreError as e:
                log.error("cannot mark %s down: %s", self.node, e)
        for handle in self._expiry.values():
            handle.cancel()
        self.connected = False
        self._end_feeds()

    async def put(self, key_: str, value: dict) -> None:
        value = checked(key_, value)
        self._write(key_, value)
        self._apply(key_, value)

    async def delete(self, key_: str) -> None:
        parse_key(key_)
        try:
            self._file(key_).unlink(missing_ok=True)
        except OSError as e:
            raise DatastoreError(f"cannot delete {self._file(key_)}: {e.strerror}") from None
        self._apply(key_, None)

    def _apply(self, key_: str, value: dict | None) -> None:
        value = lease_view(key_, value)
        super()._apply(key_, value)
        if key_.startswith("status/"):
            self._schedule_expiry(key_, value)

    def _schedule_expiry(self, key_: str, value: dict | None) -> None:
        if (old := self._expiry.pop(key_, None)) is not None:
            old.cancel()
        expires = value.get("expires") if value and value.get("alive") is True else None
        if isinstance(expires, (int, float)):
            delay = max(0.0, expires - time.time()) + 0.01
            self._expiry[key_] = asyncio.get_running_loop().call_later(delay, self._expire, key_)

    def _expire(self, key_: str) -> None:
        self._expiry.pop(key_, None)
        self._apply(key_, self._cache.get(key_))

    def _write(self, key_: str, value: dict) -> None:
        path = self._file(key_)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(encode(key_, value))
            os.replace(tmp, path)
        except OSError as e:
            raise DatastoreError(f"cannot write {path}: {e.strerror}") from None

    def _renew_lease(self) -> None:
        status = key("status", self.node)
        value = {"alive": True, "expires": time.time() + self.lease_ttl}
        self._write(status, value)
        if self._loaded:
            self._apply(status, value)

    async def _keep_lease(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            try:
                self._renew_lease()
            except DatastoreError as e:
                log.error("cannot renew the liveness lease of %s: %s", self.node, e)

    async def _watch(self, ready: asyncio.Future) -> None:
        """Follows the directory with watchfiles; if the watcher fails it restarts and rescans."""
        while not self._stop.is_set():
            try:
                async for changes in awatch(
                    self.path, watch_filter=lambda _, p: not p.endswith(".tmp"), debounce=50, step=10,
                    rust_timeout=200, yield_on_timeout=True, stop_event=self._stop,
                ):
                    if not ready.done():
                        ready.set_result(None)
                    elif self._loaded:
                        for _, p in sorted(changes, key=lambda c: c[1]):
                            self._changed(Path(p))
            except Exception as e:  # noqa: BLE001 - a watcher failure must not end the node
                if not ready.done():
                    ready.set_exception(e)
                    return
                log.error("watching %s failed (%s); restarting the watcher", self.path, e)
                await asyncio.sleep(RESTART_DELAY)
                self._converge(self._scan())

    def _changed(self, path: Path) -> None:
        """A file changed, or a directory came or went (its files may predate the watch on it): rescan it."""
        if path.suffix == ".json":
            if (k := self._key_of(path)) is not None:
                self._apply(k, self._read(path))
        elif path != self.path and path.is_relative_to(self.path):
            self._converge(self._scan(path), str(path.relative_to(self.path)).replace(os.sep, "/"))

    def _scan(self, under: Path | None = None) -> dict[str, dict]:
        state = {}
        for p in (under or self.path).rglob("*.json"):
            if (k := self._key_of(p)) is not None and (v := self._read(p)) is not None:
                state[k] = v
        return state

    def _file(self, key_: str) -> Path:
        *dirs, last = key_.split("/")
        return self.path.joinpath(*dirs, last + ".json")

    def _key_of(self, path: Path) -> str | None:
        try:
            rel = path.relative_to(self.path)
        except ValueError:
            return None
        k = str(rel.with_suffix("")).replace(os.sep, "/")
        try:
            parse_key(k)
        except InvalidKey:
            return None
        return k

    def _read(self, path: Path) -> dict | None:
        """A file's value, None if it is gone; a malformed one is rejected and keeps the cached value."""
        k = self._key_of(path)
        try:
            with path.open("rb") as f:
                return decode(f.read(MAX_VALUE_BYTES + 1))  # no more than the limit is ever read
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            self._reject(str(path), e)
            return self._cache.get(k)

    async def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
