"""BFD configuration: per peer and for the mesh, defaults 300 ms x 3 and off; bad values refused with the field."""
import textwrap

import pytest

from config.load import ConfigError, load_model
from config.node import NodeConfig

BASE = """
name: node1
router_id: 10.99.0.1
asn: 64512
listen_address: 10.99.0.1
pools: [{cidr: 10.244.0.0/16}]
"""


def load(tmp_path, extra):
    p = tmp_path / "node.yaml"
    p.write_text(textwrap.dedent(BASE) + textwrap.dedent(extra))
    return load_model(p, NodeConfig)


def test_defaults_off_300ms_x3(tmp_path):
    node = load(tmp_path, "peers: [{address: 10.98.0.254, asn: 65000}]\n")
    bfd = node.bgp_peers()[0].bfd
    assert (bfd.enabled, bfd.min_rx, bfd.min_tx, bfd.multiplier) == (False, 300, 300, 3)


def test_peer_and_mesh_settings_reach_bgp_peers(tmp_path):
    node = load(tmp_path, """
        peers: [{address: 10.98.0.254, asn: 65000, bfd: {enabled: true, min_rx: 100, min_tx: 50, multiplier: 5}}]
        mesh:
          bfd: {enabled: true, min_rx: 200}
          nodes: [{name: node1, address: 10.99.0.1}, {name: node2, address: 10.99.0.2}]
        """)
    peers = {str(p.address): p.bfd for p in node.bgp_peers()}
    assert (peers["10.98.0.254"].min_rx, peers["10.98.0.254"].min_tx, peers["10.98.0.254"].multiplier) == (100, 50, 5)
    assert peers["10.99.0.2"].enabled and peers["10.99.0.2"].min_rx == 200 and peers["10.99.0.2"].min_tx == 300


@pytest.mark.parametrize("bfd, field", [
    ("{min_rx: 5}", "peers[0].bfd.min_rx"),
    ("{min_tx: 60001}", "peers[0].bfd.min_tx"),
    ("{multiplier: 0}", "peers[0].bfd.multiplier"),
    ("{multiplier: 256}", "peers[0].bfd.multiplier"),
    ("{enabled: true, echo: true}", "peers[0].bfd.echo"),
])
def test_bad_values_name_the_field(tmp_path, bfd, field):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, f"peers: [{{address: 10.98.0.254, asn: 65000, bfd: {bfd}}}]\n")
    assert field in str(e.value)
