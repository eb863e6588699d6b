"""Node configuration: valid files load, invalid ones are refused with field paths."""
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, strategies as st

from config.load import ConfigError, load_model
from config.node import NodeConfig

GOOD = """
name: node1
router_id: 10.99.0.1
asn: 64512
listen_address: 10.99.0.1
pools: [{cidr: 10.244.0.0/16, block_size: 26}]
blocks: [10.244.1.0/26]
peers: [{address: 10.98.0.254, asn: 65000, password: s3cret, hold_time: 30, max_prefixes: 10}]
mesh: {enabled: true, nodes: [{name: node1, address: 10.99.0.1}, {name: node2, address: 10.99.0.2},
                              {name: node0, address: 10.99.0.0}]}
"""


def write(tmp_path, text):
    p = tmp_path / "node.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_good_config_and_peers(tmp_path):
    node = load_model(write(tmp_path, GOOD), NodeConfig)
    peers = {str(p.address): p for p in node.bgp_peers()}
    assert set(peers) == {"10.98.0.254", "10.99.0.2", "10.99.0.0"}
    assert peers["10.99.0.2"].asn == 64512 and peers["10.99.0.2"].hold_time == 9
    # exactly one side of each mesh pair listens: the higher address waits for the lower one
    assert peers["10.99.0.2"].passive is False and peers["10.99.0.0"].passive is True
    assert node.max_prefixes_for(peers["10.98.0.254"]) == 10
    assert node.max_prefixes_for(peers["10.99.0.2"]) == node.max_prefixes


@pytest.mark.parametrize("change, field", [
    ("asn: 64512", "asn: 0"),
    ("blocks: [10.244.1.0/26]", "blocks: [10.245.1.0/26]"),
    ("blocks: [10.244.1.0/26]", "blocks: [10.244.1.0/25]"),
    ("hold_time: 30", "hold_time: 2"),
    ("password: s3cret", 'password: "a;b"'),
    ("router_id: 10.99.0.1", "router_id: 10.99.0.300"),
    ("listen_address: 10.99.0.1", "listen_address: 10.99.0.1\nbogus: 1"),
    ("cidr: 10.244.0.0/16, block_size: 26", "cidr: 10.244.0.0/16, block_size: 12"),
])
def test_bad_config_names_the_field(tmp_path, change, field):
    text = GOOD.replace(change, field)
    with pytest.raises(ConfigError) as e:
        load_model(write(tmp_path, text), NodeConfig)
    for line in e.value.errors:
        assert line.startswith(str(tmp_path / "node.yaml") + ": ")


def test_error_lines_carry_paths(tmp_path):
    text = GOOD.replace("hold_time: 30", "hold_time: 2").replace("asn: 65000", "asn: -1")
    with pytest.raises(ConfigError) as e:
        load_model(write(tmp_path, text), NodeConfig)
    fields = {line.split(": ")[1] for line in e.value.errors}
    assert fields == {"peers[0].asn", "peers[0].hold_time"}


def test_yaml_syntax_error_has_position(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_model(write(tmp_path, "name: [unclosed\n"), NodeConfig)
    assert "line" in e.value.errors[0] and "invalid YAML" in e.value.errors[0]


def test_cli_config_check(tmp_path):
    good = write(tmp_path, GOOD)
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("asn: 64512", "asn: many"))
    ok = subprocess.run([sys.executable, "-m", "bgpd.cli.main", "config", "check", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and "ok" in ok.stdout
    ko = subprocess.run([sys.executable, "-m", "bgpd.cli.main", "config", "check", str(bad)], capture_output=True, text=True)
    assert ko.returncode == 2 and f"{bad}: asn: " in ko.stderr


def test_daemon_refuses_invalid_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("blocks: [10.244.1.0/26]", "blocks: [nope]") + f"state_dir: {tmp_path}/state\n")
    r = subprocess.run([sys.executable, "-m", "bgpd.cli.main", "run", "--config", str(bad)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "blocks[0]" in r.stderr
    assert not (tmp_path / "state").exists()  # nothing was touched


@given(st.dictionaries(st.sampled_from(["name", "asn", "router_id", "pools", "blocks", "peers", "mesh"]),
                       st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2))))
def test_random_input_never_crashes_validation(data):
    from pydantic import ValidationError
    try:
        NodeConfig.model_validate(data)
    except ValidationError:
        pass
