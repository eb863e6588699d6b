"""Dual-stack configuration: IPv6 pools, an IPv6 underlay address and IPv6 peers, in any mix with IPv4."""
import textwrap
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest
from hypothesis import given, strategies as st

from config.effective import ClusterView, effective
from config.load import ConfigError, load_model
from config.node import IPPool, NodeConfig

DUAL = """
name: node1
router_id: 10.99.0.1
asn: 64512
listen_address: 10.99.0.1
listen_address6: fd99::1
pools: [{cidr: 10.244.0.0/16}, {cidr: "fd00:244::/56"}]
blocks: [10.244.1.0/26, "fd00:244::40/122"]
peers: [{address: 10.98.0.254, asn: 65000}, {address: "fd98::fe", asn: 65000}]
mesh: {nodes: [{name: node1, address: 10.99.0.1, address6: "fd99::1"},
               {name: node2, address: 10.99.0.2, address6: "fd99::2"},
               {name: node0, address6: "fd99::"}]}
"""

V6ONLY = """
name: node1
router_id: 10.99.0.1
asn: 64512
listen_address6: fd99::1
pools: [{cidr: "fd00:244::/56", block_size: 120}]
blocks: ["fd00:244::100/120"]
mesh: {nodes: [{name: node2, address6: "fd99::2"}]}
"""


def load(tmp_path, text):
    p = tmp_path / "node.yaml"
    p.write_text(textwrap.dedent(text))
    return load_model(p, NodeConfig)


def refused(tmp_path, text) -> str:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    return "\n".join(e.value.errors)


def test_dual_stack_node(tmp_path):
    node = load(tmp_path, DUAL)
    v4, v6 = node.pools
    assert (v4.block_size, v6.block_size) == (26, 122)  # Calico's defaults, per family
    assert node.listen_address6 == IPv6Address("fd99::1")
    sessions = {(str(p.address), p.name, p.passive) for p in node.bgp_peers()}
    # one session per family both ends have an address of; IPv6 mesh sessions run over IPv6 addresses
    assert sessions == {("10.98.0.254", None, False), ("fd98::fe", None, False), ("10.99.0.2", "node2", False),
                        ("fd99::2", "node2", False), ("fd99::", "node0", True)}
    assert node.other_nodes() == {IPv4Address("10.99.0.2")}  # VTEPs: IPv4 underlay only


def test_ipv6_only_node(tmp_path):
    node = load(tmp_path, V6ONLY)
    assert node.listen_address is None and node.router_id == IPv4Address("10.99.0.1")
    assert [(str(p.address), p.passive) for p in node.bgp_peers()] == [("fd99::2", False)]
    assert node.other_nodes() == frozenset()


def test_ipv4_only_node_is_unchanged(tmp_path):
    text = DUAL.replace("listen_address6: fd99::1\n", "").replace(', {cidr: "fd00:244::/56"}', "") \
        .replace(', "fd00:244::40/122"', "").replace(', {address: "fd98::fe", asn: 65000}', "")
    node = load(tmp_path, text)
    # node0 has only an IPv6 address and node2's IPv6 address has no IPv6 end here: IPv4 sessions only
    assert {str(p.address) for p in node.bgp_peers()} == {"10.98.0.254", "10.99.0.2"}


@pytest.mark.parametrize("change, field, reason", [
    ('{cidr: "fd00:244::/56"}', '{cidr: "fd00:244::/56", block_size: 26}', "pools[1]: Value error, block_size /26: "
     "an IPv6 pool's blocks are /116 to /128"),
    ('{cidr: "fd00:244::/56"}', '{cidr: "fd00:244::/56", block_size: 115}', "/116 to /128"),
    ("{cidr: 10.244.0.0/16}", "{cidr: 10.244.0.0/16, block_size: 122}", "an IPv4 pool's blocks are /16 to /32"),
    ('{cidr: "fd00:244::/56"}', '{cidr: "fd00:244::/120", block_size: 119}', "is larger than the pool"),
    ("listen_address6: fd99::1\n", "", "pools[1]: IPv6 pool fd00:244::/56 needs listen_address6"),
    ("listen_address: 10.99.0.1\n", "", "pools[0]: IPv4 pool 10.244.0.0/16 needs listen_address"),
    ("listen_address6: fd99::1", "listen_address6: 10.99.0.9", "listen_address6"),
    ('"fd00:244::40/122"', '"fd00:244::100/120"', "blocks[1]: fd00:244::100/120 is not a /122 block"),
    ('"fd00:244::40/122"', '"fd01::/122"', "blocks[1]: fd01::/122 is not inside any pool"),
    ('"fd00:244::40/122"', '"fd00:244::41/122"', "blocks[1]: value is not a valid IPv4 or IPv6 network"),
    ("address: 10.98.0.254", "address: 10.98.0.300", "peers[0].address: value is not a valid IPv4 or IPv6 address"),
    ('{cidr: "fd00:244::/56"}', '{cidr: "fd00:244::/56"}, {cidr: "fd00:244:0:10::/64"}', "overlap"),
    ('{name: node0, address6: "fd99::"}', "{name: node0}", "a mesh node needs address, address6 or both"),
    ('{name: node0, address6: "fd99::"}', '{name: node0, address6: "fd98::fe"}', "a peer address appears twice"),
    ("asn: 64512\n", "asn: 64512\nwireguard: {enabled: true, required: true}\n",
     "wireguard.required: WireGuard encrypts the pods of IPv4 pools only; IPv6 pool fd00:244::/56"),
])
def test_bad_dual_stack_config_names_the_field(tmp_path, change, field, reason):
    assert change in DUAL
    errors = refused(tmp_path, DUAL.replace(change, field))
    assert reason in errors and errors.startswith(str(tmp_path / "node.yaml") + ": ")


def test_wireguard_without_required_takes_ipv6_pools(tmp_path):
    """Not required: IPv6 pod traffic goes unencrypted, as to a node without a key (docs/wireguard.md)."""
    assert load(tmp_path, DUAL.replace("asn: 64512\n", "asn: 64512\nwireguard: {enabled: true}\n")).wireguard.enabled


def test_ipv6_peer_needs_ipv6_underlay(tmp_path):
    text = V6ONLY.replace("listen_address6: fd99::1", "listen_address: 10.99.0.1\nlisten_address6: fd99::1") \
        + "peers: [{address: 10.98.0.254, asn: 65000}]\n"
    assert len(load(tmp_path, text).peers) == 1
    errors = refused(tmp_path, V6ONLY + "peers: [{address: 10.98.0.254, asn: 65000}]\n")
    assert "peers[0]: IPv4 peer 10.98.0.254 needs listen_address: the source address of its session" in errors


def test_a_node_needs_an_underlay_address(tmp_path):
    errors = refused(tmp_path, V6ONLY.replace("listen_address6: fd99::1\n", ""))
    assert "the node needs an underlay address: listen_address (IPv4), listen_address6 (IPv6) or both" in errors


def test_router_id_stays_ipv4(tmp_path):
    assert "router_id" in refused(tmp_path, V6ONLY.replace("router_id: 10.99.0.1", "router_id: fd99::1"))
    assert "router_id" in refused(tmp_path, V6ONLY.replace("router_id: 10.99.0.1\n", ""))


def test_effective_mixes_families(tmp_path):
    """Blocks and borrowed addresses of both families sort (IPv4 first) and borrowed ones become host prefixes."""
    node = load(tmp_path, DUAL)
    view = ClusterView(blocks=(ip_network("fd00:244::80/122"), ip_network("10.244.0.0/26")),
                       borrowed=(ip_address("fd00:244::1:5"), ip_address("10.244.7.9")))
    eff = effective(node, view)
    assert [str(b) for b in eff.blocks] == ["10.244.0.0/26", "10.244.1.0/26", "fd00:244::40/122",
                                            "fd00:244::80/122"]
    assert [str(p) for p in eff.announced()][-2:] == ["10.244.7.9/32", "fd00:244::1:5/128"]
    with pytest.raises(ConfigError, match="borrowed.0.: fd00:244::45 is inside a block of this node"):
        effective(node, ClusterView(borrowed=(ip_address("fd00:244::45"),)))
    with pytest.raises(ConfigError, match="borrowed.0.: fd01::5 is not inside any pool"):
        effective(node, ClusterView(borrowed=(ip_address("fd01::5"),)))


@given(st.integers(0, 2**64 - 1), st.integers(48, 128), st.one_of(st.none(), st.integers(100, 130)))
def test_ipv6_pool_block_sizes(bits, prefixlen, block_size):
    """Any IPv6 pool is accepted exactly when its block size is within /116../128 and not above the pool."""
    cidr = ip_network((bits << 64, prefixlen), strict=False)
    data = {"cidr": str(cidr)} if block_size is None else {"cidr": str(cidr), "block_size": block_size}
    size = 122 if block_size is None else block_size
    ok = 116 <= size <= 128 and size >= prefixlen
    try:
        pool = IPPool.model_validate(data)
    except ValueError:
        assert not ok
    else:
        assert ok and pool.block_size == size and pool.cidr == cidr


def test_ippool_resource_takes_the_family_default():
    from bgpd.cli.resources import entry
    doc = {"apiVersion": "tortie.io/v1", "kind": "IPPool", "metadata": {"name": "v6"}, "spec": {"cidr": "fd00::/48"}}
    assert entry(doc) == ("ippools/v6", {"cidr": "fd00::/48", "block_size": 122})
    doc["spec"]["cidr"] = "10.244.0.0/16"
    assert entry(doc)[1] == {"cidr": "10.244.0.0/16", "block_size": 26}


def test_ipam_show_with_an_ipv6_pool(tmp_path):
    """`tortie ipam show` counts an IPv6 pool's blocks instead of listing them (a /48 has 2^74 of /122)."""
    import asyncio
    import subprocess
    import sys

    from config.datastore.files import FilesDatastore
    from config.datastore.keys import cidr_segment, key

    store = tmp_path / "ds"

    async def fill() -> None:
        ds = FilesDatastore(store, "node1")
        await ds.start()
        await ds.put(key("claims", cidr_segment("10.244.1.0/26"), "node1"), {"at": 1.0})
        await ds.put(key("endpoints", "node1", "default", "web"), {"ips": ["10.244.1.5", "fd00:244::45"]})
        await ds.stop()
    asyncio.run(fill())
    conf = tmp_path / "node.yaml"
    conf.write_text(textwrap.dedent(DUAL.replace("pools: [{cidr: 10.244.0.0/16}, {cidr: \"fd00:244::/56\"}]",
                                                 'pools: [{cidr: 10.244.0.0/16}, {cidr: "fd00:244::/48"}]')
                                    .replace("listen_address: 10.99.0.1\n", f"listen_address: 10.99.0.1\n"
                                             f"datastore: {{type: files, path: {store}}}\n")))
    r = subprocess.run([sys.executable, "-m", "bgpd.cli.main", "ipam", "show", "--config", str(conf)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "pool 10.244.0.0/16  blocks /26: 1 of 1024 claimed" in r.stdout
    assert f"pool fd00:244::/48  blocks /122: 0 of {2 ** 74} claimed" in r.stdout
    assert "10.244.1.0/26" in r.stdout and "1/62" in r.stdout
