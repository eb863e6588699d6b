"""A node's credentials own only its own keys (the broker's ACL), and readers ignore what a node may not say:
a claim on a block another node owns, an endpoint with another node's address, a node record with another
node's address. Real mosquitto with the shipped ACL, and the files backend (no ACL there: the readers' checks)."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import aiomqtt
import pytest

from bgpd.agent.cluster import Cluster
from bgpd.ipam.ownership import EndpointGate, registration
from config.node import NodeConfig
from tests.datastore.broker import USERS
from tests.datastore.conftest import collect, drain, publish_raw
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)

BLOCK = IPv4Network("10.244.2.0/26")  # node2's
CLAIM2, CLAIM1 = "claims/10.244.2.0-26/node2", "claims/10.244.2.0-26/node1"


async def test_node_credentials_cannot_write_other_nodes_keys_or_malformed_own_ones(broker, clients):
    """Raw MQTT as node1, bypassing the client's checks: only keys carrying its name, of their exact shape."""
    admin = await clients.mqtt(broker, "admin")
    feed = admin.changes()
    denied = ["nodes/node2", "status/node2", CLAIM2, "claims/x/y/node1", "endpoints/node2/default/x",
              "endpoints/node1/default/x/deeper", "endpoints/node1/default", "sync/node2/abc", "sync/node1/a/b",
              "blocks/10.244.2.0-26", "namespaces/default", "policies/default/p", "globalpolicies/g", "v2/nodes/node1"]
    allowed = [CLAIM1, "endpoints/node1/default/x", "status/node1", "nodes/node1"]
    await publish_raw(broker, "node1", [(f"tortie/v1/{k}", b'{"by":"node1"}') for k in denied + allowed])
    seen = await drain(feed)
    assert {c.key for c in seen} == set(allowed)
    assert admin.rejected == 0  # the malformed keys never reached a reader either


def node_config(name: str, tmp_path) -> NodeConfig:
    n = name[-1]
    return NodeConfig.model_validate({
        "name": name, "router_id": f"10.99.0.{n}", "asn": 64512, "listen_address": f"10.99.0.{n}",
        "pools": [{"cidr": "10.244.0.0/16", "block_size": 26}], "state_dir": str(tmp_path / name)})


async def open_nodes(backend: str, broker_or_dir, clients) -> dict:
    if backend == "mqtt":
        return {n: await clients.mqtt(broker_or_dir, n) for n in ("node1", "node2", "node3")}
    return {n: await clients.files(broker_or_dir, n) for n in ("node1", "node2", "node3")}


@pytest.fixture(params=["mqtt", "files"])
async def nodes(request, tmp_path, clients):
    where = request.getfixturevalue("broker") if request.param == "mqtt" else tmp_path / "state"
    return await open_nodes(request.param, where, clients)


async def test_a_node_cannot_take_over_another_nodes_block(nodes, tmp_path):
    """node1 sorts before node2: under the old rule (the lowest name keeps a block) its owned claim took it."""
    one, two, three = nodes["node1"], nodes["node2"], nodes["node3"]
    await two.put(CLAIM2, {"owned": True, "at": 1000.0})
    await eventually(lambda: three.get(CLAIM2) is not None and one.get(CLAIM2) is not None)
    await one.put(CLAIM1, {"owned": True, "at": 2000.0})
    await eventually(lambda: three.get(CLAIM1) is not None and two.get(CLAIM1) is not None)
    for ds in (two, three, one):  # every reader, the intruder's own included
        cluster = Cluster(ds, node_config(ds.node, tmp_path), apply=None)
        assert (BLOCK in cluster.owned()) == (ds.node == "node2")
        assert cluster.ignored_claims.current == {CLAIM1: "10.244.2.0/26 is owned by node2, who claimed it first"}


async def test_endpoints_with_another_nodes_addresses_are_ignored(nodes):
    one, two, three = nodes["node1"], nodes["node2"], nodes["node3"]
    await two.put(CLAIM2, {"owned": True, "at": 1000.0})
    await one.put("claims/10.244.1.0-26/node1", {"owned": True, "at": 1000.0})
    await two.put("endpoints/node2/default/db", {"ips": ["10.244.2.5"]})
    await one.put("endpoints/node1/default/web", {"ips": ["10.244.1.5"]})
    await one.put("endpoints/node1/default/fake-db", {"ips": ["10.244.2.5"], "labels": {"app": "db"}})
    await eventually(lambda: len(three.items("endpoints")) == 3 and len(three.items("claims")) == 2)
    gate = EndpointGate("node3")
    eps = three.items("endpoints")
    applied = gate.filter(eps, eps, three.items("claims"), lambda n: three.alive(n) is not False)
    assert {k for k, v in applied.items() if v is not None} == {"endpoints/node2/default/db",
                                                                "endpoints/node1/default/web"}
    assert gate.ignored.current == {
        "endpoints/node1/default/fake-db": "address 10.244.2.5 is not in a block its node owns or borrowed"}


async def test_a_node_cannot_register_another_nodes_address(nodes, tmp_path):
    one, two, three = nodes["node1"], nodes["node2"], nodes["node3"]
    await two.put("nodes/node2", registration(None, "10.99.0.2", 64512, "10.99.0.2", now=1000.0))
    await three.put("nodes/node3", registration(None, "10.99.0.3", 64512, "10.99.0.3", now=1000.0))
    await eventually(lambda: one.get("nodes/node2") is not None)
    await one.put("nodes/node1", registration(one.get("nodes/node1"), "10.99.0.2", 64512, "10.99.0.1", now=2000.0))
    await eventually(lambda: three.get("nodes/node1") is not None and two.get("nodes/node1") is not None)
    for ds in (three, two):
        cluster = Cluster(ds, node_config(ds.node, tmp_path), apply=None)
        members = {m.name: m.address for m in cluster.view().members}
        assert members == {"node2": IPv4Address("10.99.0.2"), "node3": IPv4Address("10.99.0.3")}
        assert list(cluster.ignored_records.current) == ["nodes/node1"]
    # node2 restarts: it keeps its marker, so it keeps its address
    again = registration(two.get("nodes/node2"), "10.99.0.2", 64512, "10.99.0.2", now=3000.0)
    assert again["since"] == 1000.0


async def test_a_claim_on_no_valid_block_is_dropped_on_arrival(broker, clients, tmp_path):
    """claims/<not a CIDR>/node1 matches the ACL (claims/+/node1); before, it made every node's cluster task raise."""
    three = await clients.mqtt(broker, "node3")
    await publish_raw(broker, "node1", [("tortie/v1/claims/garbage/node1", b'{"owned":true,"at":1}'),
                                        ("tortie/v1/claims/10.244.2.1-26/node1", b'{"owned":true,"at":1}'),
                                        ("tortie/v1/nodes/node1", b'{"address":"10.99.0.1"}')])
    await eventually(lambda: three.get("nodes/node1") is not None)
    assert three.items("claims") == {} and three.rejected == 2
    assert Cluster(three, node_config("node3", tmp_path), apply=None).owned() == []
    state = tmp_path / "state"
    (state / "claims/garbage").mkdir(parents=True)
    (state / "claims/garbage/node1.json").write_text('{"owned": true, "at": 1}')
    files = await clients.files(state, "node3")
    assert files.items("claims") == {}
    assert Cluster(files, node_config("node3", tmp_path), apply=None).owned() == []


async def test_another_nodes_credentials_cannot_take_over_its_session(broker, clients):
    """mosquitto closes a session when another connects with its client id, publishing its Last Will, and the
    password file and ACL do not bind client ids to users: a node's client id must not be guessable."""
    admin = await clients.mqtt(broker, "admin")
    two = await clients.mqtt(broker, "node2")
    await eventually(lambda: admin.alive("node2") is True)
    feed = admin.changes()
    for guess in ("node2", "node2-cli"):
        async with aiomqtt.Client("127.0.0.1", broker.port, username="node1", password=USERS["node1"],
                                  identifier=guess) as intruder:
            await intruder.publish("tortie/v1/nodes/node1", b'{"address":"10.99.0.1"}', qos=1, retain=True)
    await collect(feed, lambda c: c.key == "nodes/node1")
    assert admin.alive("node2") is True and two.connected and two.resyncs == 0
