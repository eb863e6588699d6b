"""The resource CLI (tortie apply/get/delete, node list, ipam release) on files, MQTT and etcd, and its pure part."""
from __future__ import annotations

import asyncio
import json
import subprocess
import textwrap

import pytest
import yaml

from bgpd.cli.main import main
from bgpd.cli.resources import document, entry, load_entries
from config.datastore import EtcdDatastore, FilesDatastore, MqttDatastore
from config.load import ConfigError
from tests.datastore.broker import REPO, USERS
from tests.datastore.conftest import settings as mqtt_settings
from tests.datastore.etcd_server import EtcdCluster, etcd_settings

pytestmark = pytest.mark.timeout(120)


def pool_and_peer(pool: str, block_size: int) -> str:
    """YAML documents: an IPPool of 10.244.0.0/16 and the BGPPeer tor1."""
    return f"""\
apiVersion: tortie.io/v1
kind: IPPool
metadata: {{name: {pool}}}
spec: {{cidr: 10.244.0.0/16, blockSize: {block_size}}}
---
apiVersion: tortie.io/v1
kind: BGPPeer
metadata: {{name: tor1}}
spec: {{address: 10.99.0.254, asn: 65000}}
"""


RESOURCES = """\
apiVersion: tortie.io/v1
kind: GlobalNetworkPolicy
metadata: {name: deny-web}
spec:
  selector: app == 'web'
  types: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-db, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
---
apiVersion: tortie.io/v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
---
apiVersion: tortie.io/v1
kind: HostEndpoint
metadata: {name: node1-eth0, labels: {role: edge}}
spec: {node: node1, interface: eth0, ips: [10.99.0.1]}
---
""" + pool_and_peer("default", 26)
KEYS = ["globalpolicies/deny-web", "policies/shop/allow-db", "namespaces/shop", "hostendpoints/node1-eth0",
        "ippools/default", "bgppeers/tor1"]


def test_every_kind_loads_and_round_trips(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(RESOURCES)
    entries = load_entries([f])
    assert list(entries) == KEYS
    assert entries["namespaces/shop"] == {"labels": {"team": "a"}}
    assert entries["ippools/default"] == {"cidr": "10.244.0.0/16", "block_size": 26}
    for k, v in entries.items():
        assert entry(document(k, v)) == (k, v)


def test_errors_name_file_document_and_field_and_nothing_is_taken(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(RESOURCES + "---\n" + pool_and_peer("small", 8) + textwrap.dedent("""\
        ---
        apiVersion: tortie.io/v1
        kind: Gadget
        metadata: {name: x}
        ---
        apiVersion: tortie.io/v1
        kind: Namespace
        metadata: {name: "a/b"}
        """))
    with pytest.raises(ConfigError) as e:
        load_entries([f])
    errors = e.value.errors
    assert len(errors) == 4, errors
    assert errors[0].startswith(f"{f}: document 7 (line ") and "block_size" in errors[0]
    assert "document 8" in errors[1] and "bgppeers/tor1 is already given at" in errors[1]
    assert "document 9" in errors[2] and "unknown 'tortie.io/v1' 'Gadget'" in errors[2]
    assert "document 10" in errors[3] and "metadata.name" in errors[3]


def node_yaml(tmp_path, section: dict):
    """node1's configuration file with that datastore section."""
    config = tmp_path / "node1.yaml"
    config.write_text(yaml.safe_dump({
        "name": "node1", "router_id": "10.99.0.1", "asn": 64512, "listen_address": "10.99.0.1",
        "state_dir": str(tmp_path / "state"), "pools": [{"cidr": "10.244.0.0/24", "block_size": 26}],
        "datastore": section}))
    return config


@pytest.fixture(params=["files", "mqtt", "etcd"])
def backend(request, tmp_path, make_broker):
    """(node configuration file, admin credential options, a reader datastore factory) for each backend."""
    kind = request.param
    cluster = None
    if kind == "files":
        section = {"type": "files", "path": str(tmp_path / "ds")}
        admin: list[str] = []
        reader = lambda: FilesDatastore(tmp_path / "ds", "reader", observer=True)  # noqa: E731
    elif kind == "mqtt":
        broker = make_broker()
        section = {"type": "mqtt", "mqtt": {"host": "127.0.0.1", "port": broker.port, "password": USERS["node1"],
                                            "start_timeout": 5, "sync_timeout": 3}}
        (tmp_path / "admin.pw").write_text(USERS["admin"])
        admin = ["--user", "admin", "--password-file", str(tmp_path / "admin.pw")]
        reader = lambda: MqttDatastore(mqtt_settings(broker, "admin"), "reader", observer=True)  # noqa: E731
    else:
        cluster = EtcdCluster(tmp_path / "etcd").start()
        section = {"type": "etcd", "etcd": {"endpoints": cluster.endpoints, "start_timeout": 5, "sync_timeout": 3}}
        admin = []
        reader = lambda: EtcdDatastore(etcd_settings(cluster), "reader", observer=True)  # noqa: E731
    yield node_yaml(tmp_path, section), admin, reader
    if cluster is not None:
        cluster.stop()


def tortie(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def _state(reader, *puts: tuple[str, dict]) -> dict:
    ds = reader()
    await ds.start()
    try:
        for k, v in puts:
            await ds.put(k, v)
        assert await ds.flush(10)
        return {k: v for kind in ("nodes", "status", "claims", "endpoints") for k, v in ds.items(kind).items()}
    finally:
        await ds.stop()


def test_apply_get_delete(backend, tmp_path, capsys):
    config, admin, _ = backend
    f = tmp_path / "r.yaml"
    f.write_text(RESOURCES)
    c = ["-c", str(config), *admin]
    code, out, err = tortie(capsys, "apply", "-f", str(f), *c)
    assert code == 0, err
    assert out.splitlines() == [f"{k}: configured" for k in KEYS]
    code, out, _ = tortie(capsys, "apply", "-f", str(f), *c)  # idempotent
    assert code == 0 and out.splitlines() == [f"{k}: unchanged" for k in KEYS]
    code, out, _ = tortie(capsys, "get", "gnp", *c)
    assert code == 0 and out.split() == ["NAME", "deny-web"]
    code, out, _ = tortie(capsys, "get", "policies", "-o", "wide", *c)
    assert out.splitlines()[0].split() == ["NAMESPACE", "NAME", "APIVERSION", "ORDER", "SELECTOR"]
    assert out.splitlines()[1].split()[:3] == ["shop", "allow-db", "networking.k8s.io/v1"]
    code, out, _ = tortie(capsys, "get", "ippool", "default", "-o", "json", *c)
    assert json.loads(out) == {"apiVersion": "tortie.io/v1", "kind": "IPPool", "metadata": {"name": "default"},
                               "spec": {"cidr": "10.244.0.0/16", "blockSize": 26}}
    code, out, _ = tortie(capsys, "get", "hep", "-o", "yaml", *c)
    assert yaml.safe_load(out)["spec"]["node"] == "node1"
    code, _, err = tortie(capsys, "get", "ns", "nope", *c)
    assert code == 1 and "not found" in err
    code, _, err = tortie(capsys, "get", "gadgets", *c)
    assert code == 2 and "unknown resource kind" in err
    code, out, _ = tortie(capsys, "delete", "bgppeer", "tor1", *c)
    assert code == 0 and out.strip() == "bgppeers/tor1: deleted"
    code, out, _ = tortie(capsys, "delete", "-f", str(f), *c)
    assert code == 1 and "bgppeers/tor1: not found" in out and "namespaces/shop: deleted" in out
    code, out, _ = tortie(capsys, "get", "ns", *c)
    assert out.split() == ["NAME"]


def test_apply_of_a_bad_file_writes_nothing(backend, tmp_path, capsys):
    config, admin, _ = backend
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(RESOURCES)
    bad.write_text("apiVersion: tortie.io/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.1/8}\n")
    code, _, err = tortie(capsys, "apply", "-f", str(good), "-f", str(bad), "-c", str(config), *admin)
    assert code == 2 and err.startswith(f"{bad}: document 1 (line 1): spec.cidr") or "cidr" in err, err
    code, out, _ = tortie(capsys, "get", "gnp", "-c", str(config), *admin)
    assert out.split() == ["NAME"]


def test_node_list_and_ipam_release(backend, capsys):
    config, admin, reader = backend
    now = 1e9
    asyncio.run(_state(reader, *[
        ("nodes/node1", {"address": "10.99.0.1", "asn": 64512, "router_id": "10.99.0.1", "since": now}),
        ("nodes/node2", {"address": "10.99.0.2", "asn": 64512, "router_id": "10.99.0.2", "since": now}),
        ("status/node1", {"alive": True}),
        ("status/node2", {"alive": False}),
        ("claims/10.244.0.0-26/node1", {"owned": True, "at": 1.0}),
        ("claims/10.244.0.64-26/node2", {"owned": True, "at": 2.0}),
        ("claims/10.244.0.70-32/node2", {"owned": True, "at": 3.0}),  # a borrowed address, leaked
        ("endpoints/node2/default/old", {"ips": ["10.244.0.70"]}),
        ("endpoints/node1/default/web", {"ips": ["10.244.0.5"]}),
    ]))
    c = ["-c", str(config), *admin]
    code, out, _ = tortie(capsys, "node", "list", "--json", *c)
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["node1"]["blocks"] == ["10.244.0.0/26"] and rows["node2"]["alive"] is False
    assert rows["node2"]["blocks"] == ["10.244.0.64/26", "10.244.0.70/32"] and rows["node1"]["address"] == "10.99.0.1"
    code, out, _ = tortie(capsys, "node", "list", *c)
    assert out.splitlines()[0].split() == ["NAME", "ADDRESS", "AS", "ALIVE", "LAST", "SEEN", "BLOCKS"]
    code, _, err = tortie(capsys, "ipam", "release", "10.244.0.5", *c)  # node1's pod: alive, in use
    assert code == 1 and "in use" in err and "endpoints/node1/default/web" in err
    code, _, err = tortie(capsys, "ipam", "release", "10.244.0.0/26", *c)
    assert code == 1 and "in use" in err
    code, out, err = tortie(capsys, "ipam", "release", "10.244.0.70", *c)
    assert code == 0, err
    assert sorted(out.split()) == sorted(["claims/10.244.0.70-32/node2:", "deleted", "endpoints/node2/default/old:", "deleted"])
    code, out, err = tortie(capsys, "ipam", "release", "10.244.0.64/26", *c)
    assert code == 0 and out.strip() == "claims/10.244.0.64-26/node2: deleted", err
    left = asyncio.run(_state(reader))
    assert "claims/10.244.0.64-26/node2" not in left and "claims/10.244.0.0-26/node1" in left


def test_etcd_node_credentials_cannot_apply_cluster_resources(tmp_path, capsys):
    pki = tmp_path / "pki"
    scripts = REPO / "containers" / "etcd"
    subprocess.run([scripts / "make-certs.sh", pki, "127.0.0.1", "root", "admin", "node1"], check=True, timeout=60)
    cluster = EtcdCluster(tmp_path / "etcd", tls=pki).start()
    try:
        subprocess.run([scripts / "rbac.sh", cluster.endpoints[0], pki, "node1"], check=True, timeout=60)
        config = node_yaml(tmp_path, {"type": "etcd", "etcd": {
            "endpoints": cluster.endpoints, "start_timeout": 5, "sync_timeout": 3,
            "tls": {"ca": str(pki / "ca.crt"), "cert": str(pki / "node1.crt"), "key": str(pki / "node1.key")}}})
        f = tmp_path / "r.yaml"
        f.write_text(RESOURCES)
        code, _, err = tortie(capsys, "apply", "-f", str(f), "-c", str(config))
        assert code == 1 and "did not take" in err
        code, out, err = tortie(capsys, "apply", "-f", str(f), "-c", str(config),
                                "--cert", str(pki / "admin.crt"), "--key", str(pki / "admin.key"))
        assert code == 0, err
        code, _, err = tortie(capsys, "apply", "-f", str(f), "-c", str(config), "--cert", str(pki / "admin.crt"))
        assert code == 2 and "cert and key go together" in err
    finally:
        cluster.stop()
