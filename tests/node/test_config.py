"""Node configuration: valid files load, invalid ones are refused with field paths."""
import subprocess
import sys
import textwrap

from ipaddress import IPv4Address, IPv4Network as N

import pytest
import yaml
from hypothesis import given, strategies as st
from pydantic import ValidationError

from config.effective import ClusterView, EffectiveConfig, effective
from config.load import ConfigError, load_model
from config.node import FOREIGN_PROTOCOLS, MeshMember, NodeConfig, restart_changes, restart_fields

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


# Cheap to draw: strings come from a small alphabet. The first draw from all of Unicode builds hypothesis's
# character table (0.9 s of CPU when .hypothesis/unicode_data is absent, as in a fresh clone), which counted
# as data generation and tripped the too_slow health check on a loaded machine. Each key is optional rather
# than drawn (a dictionary of unique keys from seven names rejects draws as it fills up).
VALUES = st.one_of(st.none(), st.integers(), st.text("0123456789abz./:-", max_size=12), st.lists(st.integers(), max_size=2))


@given(st.fixed_dictionaries({}, optional={k: VALUES for k in
                                           ("name", "asn", "router_id", "pools", "blocks", "peers", "mesh")}))
def test_random_input_never_crashes_validation(data):
    from pydantic import ValidationError
    try:
        NodeConfig.model_validate(data)
    except ValidationError:
        pass


def good_node(tmp_path, text=GOOD) -> NodeConfig:
    return load_model(write(tmp_path, text), NodeConfig)


def test_file_schema_has_no_derived_fields():
    assert "borrowed" not in NodeConfig.model_fields
    with pytest.raises(ValidationError, match="borrowed"):
        NodeConfig.model_validate({**yaml.safe_load(GOOD), "borrowed": ["10.244.2.1"]})


def test_effective_without_a_datastore_is_the_file(tmp_path):
    node = good_node(tmp_path)
    eff = effective(node, None)
    assert isinstance(eff, EffectiveConfig) and eff.borrowed == []
    assert eff.model_dump(exclude={"borrowed", "cluster_routes"}) == node.model_dump()
    assert eff.announced() == [N("10.244.1.0/26")]


def test_effective_merges_the_cluster_view(tmp_path):
    node = good_node(tmp_path, GOOD[:GOOD.index("mesh:")] + "mesh: {enabled: true}\n")
    members = (MeshMember(name="node1", address="10.99.0.1"), MeshMember(name="node7", address="10.99.0.7"))
    view = ClusterView(members=members, blocks=(N("10.244.9.0/26"), N("10.244.1.0/26")),
                       borrowed=(IPv4Address("10.244.5.3"),))
    eff = effective(node, view)
    assert eff.blocks == [N("10.244.1.0/26"), N("10.244.9.0/26")]
    assert eff.borrowed == [IPv4Address("10.244.5.3")]
    assert eff.announced() == [N("10.244.1.0/26"), N("10.244.9.0/26"), N("10.244.5.3/32")]
    assert [m.name for m in eff.mesh.nodes] == ["node1", "node7"]
    assert {str(p.address) for p in eff.bgp_peers()} == {"10.98.0.254", "10.99.0.7"}
    # a file that lists the mesh keeps its list
    listed = effective(good_node(tmp_path), view)
    assert [m.name for m in listed.mesh.nodes] == ["node1", "node2", "node0"]


@pytest.mark.parametrize("view, reason", [
    (ClusterView(blocks=(N("10.250.0.0/26"),)), "blocks[1]: 10.250.0.0/26 is not inside any pool"),
    (ClusterView(borrowed=(IPv4Address("10.250.0.1"),)), "borrowed[0]: 10.250.0.1 is not inside any pool"),
    (ClusterView(borrowed=(IPv4Address("10.244.1.5"),)), "borrowed[0]: 10.244.1.5 is inside a block of this node"),
])
def test_effective_validates_the_merge(tmp_path, view, reason):
    with pytest.raises(ConfigError) as e:
        effective(good_node(tmp_path), view)
    assert any(reason in line for line in e.value.errors), e.value.errors


def test_restart_fields_are_marked_on_the_model(tmp_path):
    assert set(restart_fields()) == {"name", "router_id", "asn", "listen_address", "listen_address6",
                                     "route_protocol", "pod_route_protocol", "pod_netns_prefix", "state_dir", "run_dir", "metrics",
                                     "datastore", "policy_backend", "dns", "vxlan", "bgp", "wireguard"}
    old = effective(good_node(tmp_path), ClusterView(blocks=(N("10.244.9.0/26"),)))
    same = good_node(tmp_path, GOOD.replace("hold_time: 30", "hold_time: 60").replace("blocks: [10.244.1.0/26]",
                                                                                     "blocks: []"))
    assert restart_changes(old, same) == []
    moved = good_node(tmp_path, GOOD.replace("asn: 64512", "asn: 64513") + "metrics: {port: 0}\n")
    assert restart_changes(old, moved) == ["asn", "metrics"]


@pytest.mark.parametrize("field, number, daemon", [
    ("route_protocol", 186, "bgp (FRR)"), ("route_protocol", 12, "bird"), ("pod_route_protocol", 16, "dhcp"),
    ("pod_route_protocol", 42, "babel"), ("route_protocol", 196, "static (FRR)")])
def test_route_protocol_of_another_daemon_is_refused(tmp_path, field, number, daemon):
    with pytest.raises(ConfigError) as e:
        good_node(tmp_path, GOOD + f"{field}: {number}\n")
    (line,) = e.value.errors
    assert f": {field}: " in line and f"{number} is the protocol number of {daemon}" in line


def test_every_protocol_named_on_this_machine_is_refused():
    """The numbers /etc/iproute2 names for other daemons (Tortie's own tortie.conf aside) are all refused."""
    from pathlib import Path
    names = {}
    for f in [Path("/etc/iproute2/rt_protos"), *sorted(Path("/etc/iproute2/rt_protos.d").glob("*.conf"))]:
        if f.exists() and f.name != "tortie.conf":
            for line in f.read_text().splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    number, name = line.split()[:2]
                    names[int(number)] = name
    for number in names:
        if 5 <= number <= 254:
            assert number in FOREIGN_PROTOCOLS, (number, names[number])


def imported_by(code: str) -> set[str]:
    """The top-level packages a fresh interpreter has imported after running `code`."""
    probe = f"import sys\n{code}\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.splitlines()[-1].split())


HEAVY = {"aiomqtt", "watchfiles", "pyroute2", "prometheus_client", "exabgp"}


def test_config_and_ipam_modules_import_no_client_or_netlink_library():
    """Every CLI call and tortie-cni run loads these: the datastore clients and netlink stay out."""
    assert not imported_by("import config.node, config.effective, bgpd.ipam.allocate") & (HEAVY | {"asyncio", "ssl"})


def test_cli_imports_only_what_the_command_uses(tmp_path):
    version = imported_by("from bgpd.cli.main import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n    pass")
    assert not version & (HEAVY | {"pydantic", "yaml", "asyncio", "policy", "config"})
    check = imported_by(f"from bgpd.cli.main import main\nmain(['config', 'check', {str(write(tmp_path, GOOD))!r}])")
    assert not check & (HEAVY | {"asyncio", "policy"})


def test_cli_command_table_matches_the_modules():
    """bgpd/cli/main.py lists each module's commands without importing it: the list must be what it adds."""
    import argparse
    import importlib

    from bgpd.cli.main import COMMANDS
    for entry, commands in COMMANDS.items():
        module, function = entry.split(":")
        sub = argparse.ArgumentParser().add_subparsers()
        getattr(importlib.import_module(module), function)(sub)
        assert list(sub.choices) == list(commands), entry
    listed = subprocess.run([sys.executable, "-m", "bgpd.cli.main", "--help"], capture_output=True, text=True)
    assert listed.returncode == 0 and all(name in listed.stdout for c in COMMANDS.values() for name in c)
