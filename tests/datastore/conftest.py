"""Fixtures: mosquitto brokers and datastore clients, all stopped afterwards (also when a test fails)."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
import pytest

from config.datastore import Datastore, FilesDatastore, MqttDatastore, MqttSettings
from tests.datastore.broker import REPO, USERS, Broker


async def collect(changes, until, timeout: float = 5.0) -> list:
    """Reads changes (bounded) until until(change) is true; returns all read, that one included."""
    seen = []

    async def read():
        async for change in changes:
            seen.append(change)
            if until(change):
                return

    try:
        await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"change not seen within {timeout} s; seen: {seen}") from None
    return seen


async def drain(changes, quiet: float = 0.3, limit: float = 10.0) -> list:
    """Every change that arrives until none comes for `quiet` seconds (at most `limit` seconds in all)."""
    seen = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            seen.append(await asyncio.wait_for(changes.__anext__(), quiet))
        except asyncio.TimeoutError:
            return seen
    raise AssertionError(f"changes kept coming for {limit} s: {seen[-5:]}")


async def publish_raw(broker: Broker, user: str, messages: list[tuple[str, bytes]]) -> None:
    """Retained messages published in order as `user` with a plain MQTT client, bypassing the datastore client's
    checks (as a hostile or broken tool would). QoS 1: the broker has handled each (delivered or dropped) when
    this returns."""
    async with aiomqtt.Client("127.0.0.1", broker.port, username=user, password=USERS[user],
                              identifier=f"raw-{user}") as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1, retain=True)


def make_certs(d: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client one (client.crt, client.key) signed by it:
    returns (ca.crt, server.crt, server.key)."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *a: subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True, timeout=30)  # noqa: E731
    run("req", "-x509", *ec, "-subj", f"/CN={name}-ca", "-days", "2", "-keyout", "ca.key", "-out", "ca.crt")
    run("req", *ec, "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "san.ext", "-out", "server.crt")
    run("req", *ec, "-subj", "/CN=node1", "-keyout", "client.key", "-out", "client.csr")
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-days", "2", "-out", "client.crt")
    return d / "ca.crt", d / "server.crt", d / "server.key"


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> tuple[Path, Path, Path]:
    return make_certs(tmp_path_factory.mktemp("pki"), "tortie-test")


@pytest.fixture
def make_broker(tmp_path):
    brokers: list[Broker] = []

    def make(**kw) -> Broker:
        broker = Broker(tmp_path / f"broker{len(brokers)}", **kw)
        brokers.append(broker)
        return broker.start()

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def broker(make_broker) -> Broker:
    return make_broker()


def settings(broker: Broker, user: str, **kw) -> MqttSettings:
    """Fast timers for tests; the password from USERS unless given. broker: anything with a loopback .port."""
    values = dict(host="127.0.0.1", port=broker.port, username=user, password=USERS.get(user, "?"),
                  backoff_min=0.2, backoff_max=1.0, start_timeout=5, sync_timeout=3)
    return MqttSettings(**(values | kw))


@pytest.fixture
def spawn_node():
    """spawn_node(broker, node) -> the PID of a node in a process of its own, connected; SIGKILLed afterwards."""
    procs: list[subprocess.Popen] = []

    async def spawn(broker: Broker, node: str) -> int:
        s = json.dumps({"host": "127.0.0.1", "port": broker.port, "username": node, "password": USERS[node],
                        "start_timeout": 5})
        proc = subprocess.Popen([sys.executable, "-m", "tests.datastore.hold_client", s, node], cwd=REPO,
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 15)
        assert line.strip() == "ready"
        return proc.pid

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


@pytest.fixture
async def clients():
    """clients.mqtt(broker, node) / clients.files(dir, node): started datastores, stopped afterwards."""
    started: list[Datastore] = []

    class Clients:
        async def mqtt(self, broker: Broker, node: str, user: str | None = None, **kw) -> MqttDatastore:
            return await self.add(MqttDatastore(settings(broker, user or node, **kw), node))

        async def files(self, path: Path, node: str, lease_ttl: float = 15.0) -> FilesDatastore:
            return await self.add(FilesDatastore(path, node, lease_ttl))

        async def add(self, ds: Datastore) -> Datastore:
            await ds.start()
            started.append(ds)
            return ds

    yield Clients()
    for ds in reversed(started):
        await asyncio.wait_for(ds.stop(), 15)
