"""etcd with TLS, client certificates and the shipped roles (containers/etcd/make-certs.sh, rbac.sh):
a node writes its own keys and claims, and nothing of another node's."""
from __future__ import annotations

import asyncio
import subprocess

import pytest

from config.datastore import DatastoreError, EtcdDatastore, TlsSettings
from tests.datastore.etcd_server import EtcdCluster, etcd_settings
from tests.datastore.broker import REPO
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(120)

SCRIPTS = REPO / "containers" / "etcd"


@pytest.fixture
def secure_etcd(tmp_path):
    pki = tmp_path / "pki"
    subprocess.run([SCRIPTS / "make-certs.sh", pki, "127.0.0.1", "root", "admin", "node1", "node2"], check=True,
                   timeout=60)
    cluster = EtcdCluster(tmp_path / "etcd", tls=pki).start()
    try:
        subprocess.run([SCRIPTS / "rbac.sh", cluster.endpoints[0], pki, "node1", "node2"], check=True, timeout=60)
        subprocess.run([SCRIPTS / "rbac.sh", cluster.endpoints[0], pki, "node1"], check=True, timeout=60)  # again
        yield cluster, pki
    finally:
        cluster.stop()


def tls(pki, user: str | None) -> TlsSettings:
    if user is None:
        return TlsSettings(ca=pki / "ca.crt")
    return TlsSettings(ca=pki / "ca.crt", cert=pki / f"{user}.crt", key=pki / f"{user}.key")


async def test_node_writes_only_its_own_keys(secure_etcd):
    cluster, pki = secure_etcd
    node1 = EtcdDatastore(etcd_settings(cluster, tls=tls(pki, "node1")), "node1")
    admin = EtcdDatastore(etcd_settings(cluster, tls=tls(pki, "admin")), "admin", observer=True)
    await node1.start()
    await admin.start()
    try:
        await node1.put("nodes/node1", {"address": "10.99.0.1"})
        await node1.put("endpoints/node1/default/web", {"ips": ["10.244.0.2"]})
        assert await node1.put_if_unchanged("claims/10.244.0.0-26/node1", {"owned": True, "at": 1.0},
                                            "claims/10.244.0.0-26")
        await node1.put("nodes/node2", {"address": "10.99.0.66"})  # not its key: refused and reverted
        await node1.put("endpoints/node2/default/fake", {"ips": ["10.244.0.9"]})
        await node1.put("globalpolicies/allow-all", {"spec": {}})
        assert await node1.flush(10)
        assert node1.get("nodes/node2") is None and node1.get("endpoints/node2/default/fake") is None
        assert node1.get("globalpolicies/allow-all") is None
        await eventually(lambda: admin.get("endpoints/node1/default/web") is not None, what="admin sees node1")
        assert admin.get("nodes/node2") is None and admin.alive("node1") is True
        # the claim another node cannot touch, even with a raw client
        ctl = cluster.members[0].ctl
        for args in (["put", "tortie/v1/claims/node1/10.244.0.0-26", "{}"], ["del", "tortie/v1/claims/node1/10.244.0.0-26"],
                     ["put", "tortie/v1/status/node1", '{"alive": false}'], ["put", "tortie/v1/namespaces/x", "{}"]):
            refused = ctl(*args, user="node2", check=False)
            assert refused.returncode != 0 and "permission denied" in refused.stderr, args
        await admin.put("namespaces/default", {"labels": {}})  # the admin writes cluster resources
        assert await admin.flush(10)
        await eventually(lambda: node1.get("namespaces/default") is not None, what="node1 sees the namespace")
        # a node cannot claim a block another node owns (the CAS only writes its own key; the rule decides)
        assert ctl("get", "tortie/v1/claims/node1/10.244.0.0-26", "--print-value-only").stdout.strip()
    finally:
        await asyncio.wait_for(node1.stop(), 15)
        await asyncio.wait_for(admin.stop(), 15)


async def test_without_a_client_certificate_nothing_is_read(secure_etcd):
    cluster, pki = secure_etcd
    ds = EtcdDatastore(etcd_settings(cluster, tls=tls(pki, None), start_timeout=3), "node1")
    with pytest.raises(DatastoreError):
        await ds.start()
    assert ds.get("namespaces/default") is None


async def test_unknown_user_is_refused(secure_etcd, tmp_path):
    cluster, pki = secure_etcd
    subprocess.run([SCRIPTS / "make-certs.sh", pki, "127.0.0.1", "stranger"], check=True, timeout=60)
    ds = EtcdDatastore(etcd_settings(cluster, tls=tls(pki, "stranger")), "stranger")
    with pytest.raises(DatastoreError, match="refused stranger"):
        await ds.start()
