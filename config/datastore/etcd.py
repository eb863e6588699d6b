"""The etcd backend: key `a/b/c` is the etcd key `tortie/v1/a/b/c` holding its JSON value, except that
claims/<cidr>/<node> is stored as claims/<node>/<cidr>: every key a node owns then lies under a prefix its
etcd role can be granted alone (containers/etcd/rbac.sh), and no other node can write or delete it.

The client is grpc.aio on the etcd v3 API stubs that aetcd ships (aetcd's own Client dials without TLS and
to one host only). A session talks to one endpoint; when it breaks the next endpoint is tried (failover).

The cache holds the store's state (`_remote`, as of revision `_rev`) overlaid by own writes not yet
acknowledged (`_outbox`). The first session reads everything under the root at one revision, later ones
resume the watch at `_rev + 1`: every change made while disconnected arrives as an event, nothing is read
twice; only a compacted history forces a full read (counted in `resyncs`). Liveness is a lease: status/<node>
is bound to it and kept alive every ttl/3, so etcd deletes the key when the node stops renewing it.
put_if_unchanged() is one transaction (compare-and-swap) for claims.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

import grpc
from aetcd import rpc

from config.datastore.base import ClientDatastore, checked, decode, encode, set_entry
from config.datastore.errors import DatastoreError, InvalidKey
from config.datastore.keys import key, parse_key
from config.datastore.settings import EtcdSettings

log = logging.getLogger(__name__)

ROOT = b"tortie/v1/"
# answers that reconnecting cannot change: wrong credentials, a user without the right role
REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT}


def prefix_end(prefix: bytes) -> bytes:
    """The end of etcd's key range of a prefix (keys here are ASCII: the last byte plus one)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _swap_claim(path: str) -> str:
    """claims/<a>/<b> -> claims/<b>/<a> (its own inverse); any other path as it is."""
    parts = path.split("/")
    return f"claims/{parts[2]}/{parts[1]}" if parts[0] == "claims" and len(parts) == 3 else path


def etcd_key(key_: str) -> bytes:
    return ROOT + _swap_claim(key_).encode()


def datastore_key(raw: bytes) -> str:
    """The datastore key of an etcd key under ROOT (not validated)."""
    return _swap_claim(raw[len(ROOT):].decode())


def scope_range(scope: str) -> tuple[bytes, bytes]:
    """The etcd key range holding every key under a key prefix (segment-wise: claims/a does not cover claims/ab).
    Claims are stored by node, so any scope of claims is the range of all claims: wider, never narrower."""
    path = scope.strip("/")
    low = ROOT + (b"claims" if path.split("/")[0] == "claims" else path.encode()) + b"/"
    return low, prefix_end(low)


class _Refused(Exception):
    """etcd refused this client (authentication, permission): retrying the same cannot help."""


class _Lost(Exception):
    """The session cannot go on (a watch cancelled, the lease expired): start another."""


class EtcdDatastore(ClientDatastore):
    SERVER = "etcd"
    atomic = True

    def __init__(self, settings: EtcdSettings, node: str, observer: bool = False):
        super().__init__(settings, node, observer)
        self.failovers = 0  # sessions ended by a failure (the next one uses the next endpoint)
        self.resumes = 0  # sessions that resumed the watch where the previous one stopped
        self._remote: dict[str, dict] = {}
        self._rev = 0  # the store revision the cache reflects
        self._advanced = asyncio.Event()  # set (and replaced) whenever _rev grows
        self._lease = 0
        self._endpoint = 0
        self._kv: rpc.KVStub | None = None  # of the session serving now (on _live_channel)
        self._live_channel: grpc.aio.Channel | None = None
        self._metadata: tuple | None = None
        self._compacted = False
        self._status = key("status", node)

    # the Datastore interface

    async def stop(self) -> None:
        """Sends the outbox (bounded), revokes the lease (status/<node> goes at once) and closes."""
        if self._task is None:
            return
        if self.connected:
            if not await self.flush(self.settings.sync_timeout):
                log.warning("stopping with %d writes not confirmed by etcd", len(self._outbox))
            if self._lease and self._kv is not None:
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.TimeoutError):
                    await rpc.LeaseStub(self._live_channel).LeaseRevoke(
                        rpc.LeaseRevokeRequest(ID=self._lease), timeout=self.settings.sync_timeout,
                        metadata=self._metadata)
        await self._halt()
        self._end_feeds()

    def alive(self, node: str) -> bool | None:
        """A registered node (nodes/<node>) without status/<node> is down: etcd deleted it with its lease."""
        if self._cache.get(key("status", node)) is None:
            return False if key("nodes", node) in self._cache else None
        return super().alive(node)

    async def put_if_unchanged(self, key_: str, value: dict, scope: str) -> bool:
        """See Datastore.put_if_unchanged(): one etcd transaction comparing every key under scope (for claims:
        every claim) with the revision the cache reflects (a deletion is not a change here: it only frees)."""
        value = checked(key_, value)
        low, high = scope_range(scope)
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=etcd_key(key_), value=encode(key_, value)))
        seen = self._rev  # the state the caller decided on: a retry compares with it too, never with a later one
        compare = rpc.Compare(result=rpc.Compare.LESS, target=rpc.Compare.MOD, key=low, range_end=high,
                              mod_revision=seen + 1)
        deadline = time.monotonic() + self.settings.start_timeout
        while True:  # a session that is down or an election under way is waited out, start_timeout at most
            error = f"not connected to etcd ({self._last_error or 'connecting'})"
            if self.connected and self._kv is not None:
                try:
                    answer = await self._kv.Txn(rpc.TxnRequest(compare=[compare], success=[put]),
                                                timeout=self.settings.sync_timeout, metadata=self._metadata)
                    break
                except grpc.aio.AioRpcError as e:
                    if e.code() in REFUSED:
                        raise DatastoreError(f"etcd refused the transaction on {key_}: {e.details()}") from None
                    error = _reason(e)
            if time.monotonic() > deadline:
                raise DatastoreError(f"cannot write {key_}: {error}")
            await asyncio.sleep(self.settings.backoff_min)
        if answer.succeeded:
            self._apply(key_, value)
            # the next transaction compares with the cache's revision: until the cache reflects this write, our
            # own key would look newer than what we decided on, and the next claim would fail for nothing
            await self._caught_up(answer.header.revision - 1)
            return True
        await self._caught_up(seen)
        return self._remote.get(key_) == value  # a retry of a transaction that did go through sees itself

    # the connection loop

    def _where(self) -> str:
        return ",".join(self.settings.endpoints)

    async def _run(self) -> None:
        delay = self.settings.backoff_min
        while not self._stopping.is_set():
            endpoint = self.settings.endpoints[self._endpoint]
            synced = False
            try:
                synced = await self._session(endpoint)
            except _Refused as e:
                self._last_error = str(e)
                if not self._started:
                    self._ready.set_exception(DatastoreError(f"etcd {endpoint} refused {self.node}: {e}"))
                    return
                log.error("etcd %s refused %s: %s", endpoint, self.node, e)
            except (grpc.aio.AioRpcError, _Lost, OSError, asyncio.TimeoutError) as e:
                self._last_error = _reason(e)
                log.warning("etcd session of %s with %s: %s", self.node, endpoint, self._last_error)
            except Exception:  # noqa: BLE001 - a bug must not end the node's datastore: log it, reconnect
                self._last_error = "internal error"
                log.exception("etcd session of %s failed", self.node)
            finally:
                self.connected = False
                self._kv = None
            if self._stopping.is_set():
                return
            self.failovers += 1
            self._endpoint = (self._endpoint + 1) % len(self.settings.endpoints)
            if synced:
                delay = self.settings.backoff_min
            if synced or self._endpoint != 0:  # the next member at once; a round of them all failed: back off
                continue
            wait = delay * random.uniform(0.8, 1.0)
            delay = min(delay * 2, self.settings.backoff_max)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)

    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        options = [("grpc.max_receive_message_length", 256 << 20), ("grpc.enable_retries", 0),
                   ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000)]
        tls = self.settings.tls
        if tls is None:
            return grpc.aio.insecure_channel(endpoint, options)
        read = lambda path: None if path is None else path.read_bytes()  # noqa: E731
        credentials = grpc.ssl_channel_credentials(read(tls.ca), read(tls.key), read(tls.cert))
        return grpc.aio.secure_channel(endpoint, credentials, options)

    async def _session(self, endpoint: str) -> bool:
        """One session with one endpoint: catch up, then watch, write and keep the lease until it breaks or
        stop() is called. Returns whether it got as far as serving."""
        channel = self._live_channel = self._channel(endpoint)
        synced = False
        try:
            metadata = await self._authenticate(channel)
            kv = rpc.KVStub(channel)
            if not self._started or self._compacted:
                await self._load(kv, metadata)
            watch = rpc.WatchStub(channel).Watch(metadata=metadata)
            await self._create_watch(watch, kv, metadata)
            lease = None if self.observer else rpc.LeaseStub(channel)
            if lease is not None:
                await self._ensure_lease(lease, kv, metadata)
            self._kv, self._metadata = kv, metadata
            for write in self._outbox.values():
                write.sent = None
            if self._outbox:
                self._pending.set()
            self.connected = synced = True
            if self._started:
                self.resumes += 1
                log.info("%s resumed its etcd watch at revision %d on %s", self.node, self._rev + 1, endpoint)
            else:
                self._started = True
                self._ready.set_result(None)
            tasks = [asyncio.create_task(self._follow(watch)), asyncio.create_task(self._write(kv, metadata, endpoint)),
                     asyncio.create_task(self._stopping.wait())]
            if lease is not None:
                tasks.append(asyncio.create_task(self._keep_lease(lease, metadata)))
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                watch.cancel()
        except grpc.aio.AioRpcError as e:
            if e.code() in REFUSED:
                raise _Refused(e.details()) from None
            raise
        finally:
            await channel.close(grace=None)
        return synced

    async def _authenticate(self, channel: grpc.aio.Channel) -> tuple | None:
        """A token for password authentication; None with a client certificate (etcd takes its common name)."""
        s = self.settings
        if s.username is None:
            return None
        answer = await rpc.AuthStub(channel).Authenticate(
            rpc.AuthenticateRequest(name=s.username, password=s.secret() or ""), timeout=s.sync_timeout)
        return (("token", answer.token),)

    async def _load(self, kv: rpc.KVStub, metadata: tuple | None) -> None:
        """Everything under the root at one revision: the cache converges to it (own unsent writes kept)."""
        answer = await kv.Range(rpc.RangeRequest(key=ROOT, range_end=prefix_end(ROOT)),
                                timeout=self.settings.sync_timeout, metadata=metadata)
        fresh: dict[str, dict] = {}
        for item in answer.kvs:
            if (entry := self._entry(item.key, item.value)) is not None and entry[1] is not None:
                fresh[entry[0]] = entry[1]
        self._remote = fresh
        state = self._with_outbox(fresh)
        if self._started:
            self._converge(state)
            self.resyncs += 1
            log.info("%s read the whole etcd state again (history compacted)", self.node)
        else:
            self._cache = state
        self._compacted = False
        self._advance(answer.header.revision)

    async def _create_watch(self, watch, kv: rpc.KVStub, metadata: tuple | None) -> None:
        """Watches the root from _rev + 1; a compacted history is read whole first."""
        for _ in range(2):
            create = rpc.WatchCreateRequest(key=ROOT, range_end=prefix_end(ROOT), start_revision=self._rev + 1,
                                            progress_notify=True)
            await watch.write(rpc.WatchRequest(create_request=create))
            answer = await asyncio.wait_for(watch.read(), self.settings.sync_timeout)
            if answer is grpc.aio.EOF:
                raise _Lost("the watch stream closed")
            if not answer.compact_revision:
                if answer.canceled:
                    raise _Lost(f"watch refused: {answer.cancel_reason}")
                self._receive(answer)
                return
            self._compacted = True
            await self._load(kv, metadata)
        raise _Lost("the history was compacted twice while reading the state")

    async def _follow(self, watch) -> None:
        while True:
            answer = await watch.read()
            if answer is grpc.aio.EOF:
                raise _Lost("the watch stream closed")
            if answer.compact_revision:
                self._compacted = True
                raise _Lost(f"watch history compacted at revision {answer.compact_revision}")
            if answer.canceled:
                raise _Lost(f"watch cancelled: {answer.cancel_reason}")
            self._receive(answer)

    def _receive(self, answer) -> None:
        for event in answer.events:
            if (entry := self._entry(event.kv.key, event.kv.value)) is None:
                continue
            k, value = entry
            value = None if event.type == rpc.Event.DELETE else value
            set_entry(self._remote, k, value)
            if k not in self._outbox:
                self._apply(k, value)
        # a response with events covers them; one without (created, progress) covers its header revision
        self._advance(answer.events[-1].kv.mod_revision if answer.events else answer.header.revision)

    def _entry(self, raw_key: bytes, raw_value: bytes) -> tuple[str, dict | None] | None:
        """(key, value) of an etcd entry (value None if empty: a delete event); None if malformed (rejected)."""
        try:
            k = datastore_key(raw_key)
            parse_key(k)
            return k, decode(raw_value) if raw_value else None
        except (InvalidKey, ValueError) as e:
            self._reject(raw_key.decode(errors="replace"), e)
            return None

    def _advance(self, revision: int) -> None:
        if revision > self._rev:
            self._rev = revision
            self._advanced.set()
            self._advanced = asyncio.Event()

    async def _caught_up(self, seen: int) -> None:
        """Waits (bounded) until the cache reflects a revision after `seen`."""
        deadline = time.monotonic() + self.settings.sync_timeout
        while self._rev <= seen and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), left)

    # own writes

    async def _write(self, kv: rpc.KVStub, metadata: tuple | None, endpoint: str) -> None:
        """Sends the outbox in order; a write etcd refuses (RBAC) is reverted to the store's value."""
        while True:
            await self._pending.wait()
            self._pending.clear()
            for k, write in list(self._outbox.items()):
                if write.sent or self._outbox.get(k) is not write:
                    continue
                write.sent = endpoint
                try:
                    if write.value is None:
                        answer = await kv.DeleteRange(rpc.DeleteRangeRequest(key=etcd_key(k)),
                                                      timeout=self.settings.sync_timeout, metadata=metadata)
                    else:
                        answer = await kv.Put(rpc.PutRequest(key=etcd_key(k), value=encode(k, write.value)),
                                              timeout=self.settings.sync_timeout, metadata=metadata)
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.PERMISSION_DENIED:
                        write.sent = None
                        raise
                    log.error("etcd refused %s's write of %s (%s); reverted", self.node, k, e.details())
                    if self._outbox.get(k) is write:
                        self._unqueue(k)
                        self._apply(k, self._remote.get(k))
                    continue
                if self._outbox.get(k) is write:
                    self._unqueue(k)
                    if self._rev >= answer.header.revision:  # its echo came (and was held back) already
                        self._apply(k, self._remote.get(k))

    # liveness

    async def _ensure_lease(self, lease: rpc.LeaseStub, kv: rpc.KVStub, metadata: tuple | None) -> None:
        """A lease of our own, alive (the one of the last session if it did not lapse), with status/<node> on it."""
        s = self.settings
        if self._lease:
            left = await lease.LeaseTimeToLive(rpc.LeaseTimeToLiveRequest(ID=self._lease), timeout=s.sync_timeout,
                                               metadata=metadata)
            if left.TTL > 0 and self._remote.get(self._status) is not None:
                return
        granted = await lease.LeaseGrant(rpc.LeaseGrantRequest(TTL=s.lease_ttl), timeout=s.sync_timeout,
                                         metadata=metadata)
        self._lease = granted.ID
        status = {"alive": True, "since": time.time()}
        await kv.Put(rpc.PutRequest(key=etcd_key(self._status), value=encode(self._status, status), lease=self._lease),
                     timeout=s.sync_timeout, metadata=metadata)
        if self._started:
            self._apply(self._status, status)
        else:  # part of the initial state, not a change
            self._cache[self._status] = status

    async def _keep_lease(self, lease: rpc.LeaseStub, metadata: tuple | None) -> None:
        """Renews the lease every ttl/3; an answer that is late or says it expired ends the session (a member
        without quorum cannot renew: the next endpoint can)."""
        s = self.settings
        stream = lease.LeaseKeepAlive(metadata=metadata)
        try:
            while True:
                await stream.write(rpc.LeaseKeepAliveRequest(ID=self._lease))
                answer = await asyncio.wait_for(stream.read(), s.sync_timeout)
                if answer is grpc.aio.EOF:
                    raise _Lost("the lease keep-alive stream closed")
                if answer.TTL <= 0:
                    raise _Lost(f"lease {self._lease:x} expired")
                await asyncio.sleep(s.lease_ttl / 3)
        finally:
            stream.cancel()


def _reason(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error) or type(error).__name__


