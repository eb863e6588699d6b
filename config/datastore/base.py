"""The datastore interface: a cache of the cluster state, own writes, and a feed of changes."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

from config.datastore.errors import DatastoreError
from config.datastore.keys import check_segment, key, parse_key, under

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    key: str  # e.g. "nodes/node1", "endpoints/node1/default/web-1"
    value: dict | None  # None: the key was deleted


_END = object()


class ChangeFeed:
    """An async iterator of Changes; a cancelled wait for the next one loses nothing. Ends after stop()."""

    def __init__(self, feeds: list[ChangeFeed]):
        self.queue: asyncio.Queue = asyncio.Queue()
        self._feeds = feeds

    def __aiter__(self) -> ChangeFeed:
        return self

    async def __anext__(self) -> Change:
        change = await self.queue.get()
        if change is _END:
            self.queue.put_nowait(_END)
            raise StopAsyncIteration
        return change

    async def aclose(self) -> None:
        """Stops receiving changes."""
        if self in self._feeds:
            self._feeds.remove(self)


# Every value, read or written: at most this many bytes of JSON and this many levels of objects and arrays.
# Beyond that an entry is refused on write and dropped on arrival (counted in `rejected`), so no entry can
# exhaust a reader's memory or stack (json.loads raises RecursionError at ~1000 levels).
MAX_VALUE_BYTES = 1 << 20
MAX_DEPTH = 32


def too_deep(value: object) -> bool:
    """Whether dicts and lists nest deeper than MAX_DEPTH (level by level: safe on any depth, and on cycles)."""
    level, depth = [value], 0
    while level:
        depth += 1
        containers = []
        for v in level:
            if isinstance(v, dict):
                v = v.values()
            elif not isinstance(v, (list, tuple)):
                continue
            if depth > MAX_DEPTH:
                return True
            containers += [x for x in v if isinstance(x, (dict, list, tuple))]
        level = containers
    return False


def _nested(data: bytes, value: object) -> bool:
    """Whether a value (and data, its JSON) nests deeper than MAX_DEPTH; the walk only when data has more
    opening brackets than that (most values do not)."""
    return data.count(b"{") + data.count(b"[") > MAX_DEPTH and too_deep(value)


def encode(key_: str, value: dict) -> bytes:
    """The JSON form of a value (compact, sorted keys); DatastoreError if it is not a JSON object within the limits."""
    if not isinstance(value, dict):
        raise DatastoreError(f"value of {key_} must be a dict, not {type(value).__name__}")
    try:
        data = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    except RecursionError:
        raise DatastoreError(f"value of {key_} is nested deeper than {MAX_DEPTH} levels") from None
    except (TypeError, ValueError) as e:
        raise DatastoreError(f"value of {key_} is not JSON: {e}") from None
    if _nested(data, value):
        raise DatastoreError(f"value of {key_} is nested deeper than {MAX_DEPTH} levels")
    if len(data) > MAX_VALUE_BYTES:
        raise DatastoreError(f"value of {key_} is {len(data)} bytes of JSON, more than {MAX_VALUE_BYTES}")
    return data


def _constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text[:20]} is out of range")
    return number


_DECODER = json.JSONDecoder(parse_constant=_constant, parse_float=_finite)  # made once: json.loads(**kw) makes one per call


def decode(payload: bytes) -> dict:
    """A stored value; ValueError (with the reason) if the payload is not a JSON object within the limits
    (numbers included: NaN, Infinity and 1e400 do not read back as JSON)."""
    if len(payload) > MAX_VALUE_BYTES:
        raise ValueError(f"more than {MAX_VALUE_BYTES} bytes")
    try:
        value = _DECODER.decode(payload.decode())
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    if _nested(payload, value):
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    return value


class Datastore(ABC):
    """One node's view of the cluster state. Values are JSON objects; treat returned dicts as read-only.

    changes(): the first feed gets every change after start() (buffered until it is asked for); later
    feeds get the changes after their creation. Feeds end after stop(); aclose() one you abandon.
    """

    atomic = False  # put_if_unchanged() is a compare-and-swap in the store (etcd); False: no such thing

    def __init__(self, node: str, observer: bool = False):
        self.node = check_segment(node)
        self.observer = observer  # reads and writes, but has no liveness of its own (tools)
        self.connected = False
        self.resyncs = 0
        self.rejected = 0  # entries dropped on arrival: not a JSON object within the limits
        self._cache: dict[str, dict] = {}
        self._feeds: list[ChangeFeed] = []
        self._first_feed: ChangeFeed | None = ChangeFeed(self._feeds)
        self._feeds.append(self._first_feed)

    @abstractmethod
    async def start(self) -> None:
        """Connects and returns once the initial state is loaded; DatastoreError if it cannot (bounded)."""

    @abstractmethod
    async def stop(self) -> None:
        """Marks this node down and closes."""

    @abstractmethod
    async def put(self, key: str, value: dict) -> None:
        """Creates or replaces a key."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Deletes a key (no error if it does not exist)."""

    async def flush(self, timeout: float) -> bool:
        """Waits until own writes reached the store; False if they did not within timeout."""
        return True

    async def put_if_unchanged(self, key: str, value: dict, scope: str) -> bool:
        """Writes key in one transaction if no key under scope changed in the store since the state this cache
        shows (created, replaced or deleted): False if one did; the cache then catches up, decide again. True once
        the cache shows the write too (so that the next call decides on it).
        Only backends with `atomic`; DatastoreError if the store cannot be asked."""
        raise NotImplementedError(f"{type(self).__name__} has no compare-and-swap")

    def get(self, key: str) -> dict | None:
        return self._cache.get(key)

    def items(self, prefix: str) -> dict[str, dict]:
        return {k: v for k, v in self._cache.items() if under(k, prefix)}

    def alive(self, node: str) -> bool | None:
        """Liveness from status/<node>: None if unknown, False if down or its lease expired."""
        status = self._cache.get(key("status", node))
        if status is None:
            return None
        expires = status.get("expires")
        lease_ok = not isinstance(expires, (int, float)) or expires > time.time()
        return status.get("alive") is True and lease_ok

    def changes(self) -> ChangeFeed:
        if self._first_feed is not None:
            feed, self._first_feed = self._first_feed, None
            return feed
        feed = ChangeFeed(self._feeds)
        self._feeds.append(feed)
        return feed

    def _apply(self, key_: str, value: dict | None) -> None:
        """Sets a key in the cache and emits a Change if that changed it."""
        if self._cache.get(key_) == value:
            return
        if value is None:
            del self._cache[key_]
        else:
            self._cache[key_] = value
        for feed in self._feeds:
            feed.queue.put_nowait(Change(key_, value))

    def _converge(self, state: dict[str, dict], prefix: str = "") -> None:
        """Makes the cache under prefix equal to state, emitting exactly the differences (in key order)."""
        for k in sorted(self.items(prefix).keys() | state.keys()):
            self._apply(k, state.get(k))

    def _reject(self, where: str, reason: object) -> None:
        """An entry that arrived malformed or beyond the limits: dropped (the cached value stays), counted, logged."""
        self.rejected += 1
        log.warning("ignoring datastore entry %s: %s", where, reason)

    def _end_feeds(self) -> None:
        for feed in self._feeds:
            feed.queue.put_nowait(_END)


class _Timers(Protocol):
    start_timeout: float
    sync_timeout: float


@dataclass(eq=False)
class Write:
    """An own write in a client's outbox until the server confirms it."""

    value: dict | None
    sent: str | None = None  # what carried it (an MQTT batch's marker, an etcd session); None: not sent yet


class ClientDatastore(Datastore):
    """A datastore behind a server (MQTT broker, etcd): a connection loop (`_run`, started by start()) and own
    writes in an outbox, cached and emitted at once, sent by the loop now or after the next (re)connect.

    `_run` resolves `_ready` once the first state is loaded (or fails it with a DatastoreError)."""

    SERVER = "server"

    def __init__(self, settings: _Timers, node: str, observer: bool = False):
        super().__init__(node, observer)
        self.settings = settings
        self._outbox: dict[str, Write] = {}
        self._pending = asyncio.Event()  # the outbox holds unsent writes
        self._empty = asyncio.Event()  # the outbox is empty
        self._empty.set()
        self._ready: asyncio.Future | None = None
        self._started = False
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._last_error = ""

    @abstractmethod
    async def _run(self) -> None:
        """The connection loop, until _stopping is set."""

    @abstractmethod
    def _where(self) -> str:
        """The server's address, for messages."""

    async def start(self) -> None:
        """See Datastore.start(); may be called again after it failed."""
        self._stopping.clear()
        self._ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(), name=f"datastore-{self.SERVER.split()[0].lower()}-{self.node}")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), self.settings.start_timeout)
        except asyncio.TimeoutError:
            await self._halt()
            raise DatastoreError(
                f"cannot load the state from {self.SERVER} {self._where()} within {self.settings.start_timeout:g} s: "
                f"{self._last_error or 'no answer'}"
            ) from None
        except DatastoreError:
            await self._halt()
            raise

    async def put(self, key_: str, value: dict) -> None:
        self._queue(key_, checked(key_, value))

    async def delete(self, key_: str) -> None:
        self._queue(key_, checked(key_, None))

    async def flush(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def _queue(self, key_: str, value: dict | None) -> None:
        self._outbox[key_] = Write(value)
        self._empty.clear()
        self._pending.set()
        self._apply(key_, value)

    def _unqueue(self, key_: str) -> None:
        del self._outbox[key_]
        if not self._outbox:
            self._empty.set()

    def _with_outbox(self, state: dict[str, dict]) -> dict[str, dict]:
        """The server's state overlaid by the own writes it has not confirmed."""
        state = dict(state)
        for k, write in self._outbox.items():
            set_entry(state, k, write.value)
        return state

    async def _halt(self) -> None:
        """Ends the connection loop: a connected session gets sync_timeout to close cleanly."""
        self._stopping.set()
        if self._task is not None:
            grace = self.settings.sync_timeout if self.connected else 0
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, grace)
            self._task = None


def set_entry(state: dict[str, dict], key_: str, value: dict | None) -> None:
    """Sets a key of a state mapping; None deletes it."""
    if value is None:
        state.pop(key_, None)
    else:
        state[key_] = value


def checked(key_: str, value: dict | None) -> dict | None:
    """Validates a key and value for writing; the value as it will read back (a JSON round trip)."""
    parse_key(key_)
    return None if value is None else decode(encode(key_, value))
