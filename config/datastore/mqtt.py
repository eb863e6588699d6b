"""The MQTT backend: retained JSON messages under tortie/v1/<key>, one broker (mosquitto) for the cluster.

The cache holds the broker's state (`_remote`, as last received) overlaid by this node's own writes
that the broker has not echoed back yet (`_outbox`). Every session: connect (Last Will: status/<node>
= {"alive": false}, retained), subscribe, publish a marker to sync/<user>/<nonce> and take what came
before it back as the broker's whole state; then converge the cache to it (emitting the differences),
re-publish own keys the broker lacks, publish status/<node> = {"alive": true, ...} and the outbox.
Writes the broker dropped (the ACL) are found by a marker after each batch and reverted.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from config.datastore.base import ClientDatastore, Write, decode, encode, set_entry
from config.datastore.errors import DatastoreError, InvalidKey
from config.datastore.keys import KINDS, key, owner, parse_key
from config.datastore.settings import MqttSettings

log = logging.getLogger(__name__)

ROOT = "tortie/v1/"
# CONNACK refusals that retrying cannot fix (MQTT 3.1.1 codes and their MQTT 5 equivalents)
REFUSED = {1, 2, 4, 5, 128, 129, 132, 133, 134, 135, 138, 140}


class _Refused(Exception):
    """The broker refused the connection (credentials, client id)."""


class MqttDatastore(ClientDatastore):
    SERVER = "MQTT broker"

    def __init__(self, settings: MqttSettings, node: str, observer: bool = False):
        super().__init__(settings, node, observer)
        self._user = settings.username or node
        self._remote: dict[str, dict] = {}
        self._markers: dict[str, asyncio.Future] = {}
        self._fresh: dict[str, dict] | None = None  # the state being loaded, during a sync
        self._sync_nonce = ""
        self._status = key("status", node)
        self._syncs = 0
        # mosquitto closes a session when another connects with its client id (publishing its Last Will), and
        # does not bind client ids to users: a guessable id would let any node's credentials take ours over
        self._client_id = settings.client_id or f"{node}-{secrets.token_hex(8)}"

    async def stop(self) -> None:
        if self._task is None:
            return
        if self.connected:
            if not self.observer:
                await self.put(self._status, {"alive": False})
            if not await self.flush(self.settings.sync_timeout):
                log.warning("stopping with %d writes not confirmed by the broker", len(self._outbox))
        await self._halt()
        self._end_feeds()

    # the connection loop

    def _where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    async def _run(self) -> None:
        delay = self.settings.backoff_min
        while not self._stopping.is_set():
            syncs = self._syncs
            try:
                await self._session()
            except _Refused as e:
                self._last_error = str(e)
                if not self._started:
                    self._ready.set_exception(DatastoreError(f"MQTT broker {self._where()} refused {self.node}: {e}"))
                    return
                log.error("MQTT broker %s refused %s: %s", self._where(), self.node, e)
            except (aiomqtt.MqttError, OSError, asyncio.TimeoutError) as e:
                self._last_error = str(e) or type(e).__name__
                log.warning("MQTT connection of %s to %s: %s", self.node, self._where(), self._last_error)
            except Exception:  # noqa: BLE001 - a bug must not end the node's datastore: log it, reconnect
                self._last_error = "internal error"
                log.exception("MQTT session of %s failed", self.node)
            if self._syncs > syncs:
                delay = self.settings.backoff_min
            wait = delay * random.uniform(0.8, 1.0)
            delay = min(delay * 2, self.settings.backoff_max)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)

    def _client(self) -> aiomqtt.Client:
        s = self.settings
        will = aiomqtt.Will(ROOT + self._status, encode(self._status, {"alive": False}), qos=1, retain=True)
        return aiomqtt.Client(
            s.host, s.port, username=self._user, password=s.secret(), identifier=self._client_id,
            clean_session=True, keepalive=s.keepalive, will=None if self.observer else will,
            tls_context=s.tls.context() if s.tls else None, timeout=s.sync_timeout,
        )

    async def _session(self) -> None:
        """One connection: sync, then read and write until it breaks or stop() is called."""
        try:
            async with self._client() as client:
                tasks = [asyncio.create_task(self._read(client))]
                try:
                    self._fresh, self._sync_nonce = {}, secrets.token_hex(8)
                    await client.subscribe([(f"{ROOT}{kind}/#", 1) for kind in KINDS] + [(self._marker("+"), 1)])
                    await self._round_trip(client, self._sync_nonce)
                    tasks += [asyncio.create_task(self._write(client)), asyncio.create_task(self._stopping.wait())]
                    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()
                finally:
                    self.connected = False
                    self._fresh = None
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
        except MqttConnectError as e:
            if getattr(e.rc, "value", e.rc) in REFUSED:
                raise _Refused(str(e)) from None
            raise

    def _marker(self, nonce: str) -> str:
        return f"{ROOT}sync/{self._user}/{nonce}"

    async def _round_trip(self, client: aiomqtt.Client, nonce: str) -> None:
        """Publishes a marker and waits for it to come back: everything published before it has arrived."""
        arrived = self._markers[nonce] = asyncio.get_running_loop().create_future()
        try:
            await client.publish(self._marker(nonce), b"", qos=1)
            await asyncio.wait_for(arrived, self.settings.sync_timeout)
        except asyncio.TimeoutError:
            raise aiomqtt.MqttError(
                f"marker sync/{self._user}/{nonce} did not come back within {self.settings.sync_timeout:g} s "
                f"(does the ACL let user {self._user} write tortie/v1/sync/{self._user}/#?)"
            ) from None
        finally:
            self._markers.pop(nonce, None)

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = message.topic.value
            if topic.startswith(f"{ROOT}sync/"):
                nonce = topic.rsplit("/", 1)[1]
                if self._fresh is not None and nonce == self._sync_nonce:
                    self._synced()
                if (arrived := self._markers.get(nonce)) is not None and not arrived.done():
                    arrived.set_result(None)
                continue
            k = topic.removeprefix(ROOT)
            try:
                parse_key(k)
                value = decode(message.payload) if message.payload else None
            except (InvalidKey, ValueError) as e:
                self._reject(topic, e)
                continue
            self._receive(k, value)

    def _receive(self, key_: str, value: dict | None) -> None:
        if self._fresh is not None:
            set_entry(self._fresh, key_, value)
            return
        set_entry(self._remote, key_, value)
        write = self._outbox.get(key_)
        if write is None:
            self._apply(key_, value)
        elif write.value == value:
            self._unqueue(key_)  # the echo of an own write; the cache has it already

    def _synced(self) -> None:
        """The sync marker came back: the broker's state is in _fresh. Converge to it."""
        fresh, self._fresh = self._fresh, None
        if self._started:  # the node's own keys on the broker are made what it knows them to be
            for k in sorted(self._cache.keys() | fresh.keys()):
                if owner(k) == self.node and k not in self._outbox and fresh.get(k) != self._cache.get(k):
                    self._outbox[k] = Write(self._cache.get(k))
        if not self.observer:
            self._outbox[self._status] = Write({"alive": True, "since": time.time()})
        for write in self._outbox.values():
            write.sent = None
        if self._outbox:  # an observer may have nothing to send: its flush() must not wait for it
            self._empty.clear()
            self._pending.set()
        self._remote = fresh
        state = self._with_outbox(fresh)
        if self._started:
            self._converge(state)
            self.resyncs += 1
            log.info("%s resynchronised with MQTT broker %s", self.node, self._where())
        else:
            self._started = True
            self._cache = state
            self._ready.set_result(None)
        self._syncs += 1
        self.connected = True

    async def _write(self, client: aiomqtt.Client) -> None:
        """Publishes the outbox in batches; after each, a marker: a write not echoed before it was dropped."""
        while True:
            await self._pending.wait()
            self._pending.clear()
            batch = {k: w for k, w in self._outbox.items() if w.sent is None}
            if not batch:
                continue
            nonce = secrets.token_hex(8)
            for k, write in batch.items():
                write.sent = nonce
                payload = b"" if write.value is None else encode(k, write.value)
                await client.publish(ROOT + k, payload, qos=1, retain=True)
            await self._round_trip(client, nonce)
            for k, write in batch.items():
                if self._outbox.get(k) is write:
                    log.error("MQTT broker dropped %s's write of %s (not allowed by the ACL?); reverted", self.node, k)
                    self._unqueue(k)
                    self._apply(k, self._remote.get(k))
