"""The datastore interface: a cache of the cluster state, own writes, and a feed of changes."""
from __future__ import annotations

import asyncio
import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

from config.datastore.errors import DatastoreError
from config.datastore.keys import check_segment, key, parse_key, under


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


def encode(key_: str, value: dict) -> bytes:
    """The JSON form of a value (compact, sorted keys); DatastoreError if it is not a JSON object."""
    if not isinstance(value, dict):
        raise DatastoreError(f"value of {key_} must be a dict, not {type(value).__name__}")
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise DatastoreError(f"value of {key_} is not JSON: {e}") from None


def decode(payload: bytes) -> dict:
    """A stored value; ValueError if the payload is not a JSON object."""
    value = json.loads(payload)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


class Datastore(ABC):
    """One node's view of the cluster state. Values are JSON objects; treat returned dicts as read-only.

    changes(): the first feed gets every change after start() (buffered until it is asked for); later
    feeds get the changes after their creation. Feeds end after stop(); aclose() one you abandon.
    """

    def __init__(self, node: str, observer: bool = False):
        self.node = check_segment(node)
        self.observer = observer  # reads and writes, but has no liveness of its own (tools)
        self.connected = False
        self.resyncs = 0
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

    def _end_feeds(self) -> None:
        for feed in self._feeds:
            feed.queue.put_nowait(_END)


def checked(key_: str, value: dict | None) -> dict | None:
    """Validates a key and value for writing; the value as it will read back (a JSON round trip)."""
    parse_key(key_)
    return None if value is None else decode(encode(key_, value))
