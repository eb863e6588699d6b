"""Parsing containerlab topology files: the supported subset, and errors naming file and field."""
from pathlib import Path, PurePosixPath

import pytest

from bgpd.lab.topology import load_lab
from config.load import ConfigError

pytestmark = pytest.mark.timeout(10)

LABS = Path(__file__).resolve().parents[2] / "containers" / "labs"


def write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "t.clab.yml"
    f.write_text(text)
    return f


def errors(tmp_path: Path, text: str, name: str | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        load_lab(write(tmp_path, text), name)
    return str(e.value)


def test_merges_defaults_kinds_and_node(tmp_path):
    lab = load_lab(write(tmp_path, """
name: t1
topology:
  defaults: {env: {A: "1", B: "1"}, binds: [d:/etc/d], cmd: sleep 1}
  kinds: {linux: {image: "tortie:dev", env: {B: "2"}}}
  nodes:
    n1: {kind: linux, exec: ["true"], binds: ["n1:/etc/tortie:ro"], env: {C: 3, D: true}, network-mode: none}
    n2: {cmd: "tortie run --config /etc/tortie/tortie.yaml"}
  links:
    - endpoints: ["n1:eth1", "n2:eth1"]
"""))
    n1, n2 = lab.nodes["n1"], lab.nodes["n2"]
    assert (n1.image, n1.cmd, n1.exec_) == ("tortie:dev", "sleep 1", ["true"])
    assert n1.env == {"A": "1", "B": "2", "C": "3", "D": "true"}
    assert [(b.host, b.container, b.read_only) for b in n1.binds] == [
        (tmp_path / "d", PurePosixPath("/etc/d"), False), (tmp_path / "n1", PurePosixPath("/etc/tortie"), True)]
    assert lab.links == [(("n1", "eth1"), ("n2", "eth1"))]
    assert not n1.runs_tortie() and n2.runs_tortie()
    assert n2.tortie_config_args() == ["--config", "/etc/tortie/tortie.yaml"] and n1.tortie_config_args() == []
    assert lab.netns("n2") == "clab-t1-n2"


def test_name_override(tmp_path):
    text = "name: t1\ntopology: {nodes: {a: {}}}\n"
    assert load_lab(write(tmp_path, text), "tl0abc").netns("a") == "clab-tl0abc-a"
    assert "--name" in errors(tmp_path, text, "bad name")


@pytest.mark.parametrize("text, where", [
    ("name: t\ntopology: {nodes: {a: {kind: nokia_srlinux}}}", "topology.nodes.a.kind"),
    ("name: t\ntopology: {nodes: {a: {ports: ['80:80']}}}", "topology.nodes.a.ports"),
    ("name: t\ntopology: {nodes: {a: {network-mode: host}}}", "topology.nodes.a.network-mode"),
    ("name: t\ntopology: {nodes: {a: {env: {A: [1]}}}}", "topology.nodes.a.env.A"),
    ("name: t\ntopology: {nodes: {a: {binds: ['only-one-part']}}}", "topology.nodes.a.binds"),
    ("name: t\ntopology: {nodes: {a: {binds: ['x:relative']}}}", "topology.nodes.a.binds"),
    ("name: t\ntopology: {nodes: {a: {}}, links: [{endpoints: ['a:eth1', 'host:veth0']}]}",
     "topology.links[0].endpoints"),
    ("name: t\ntopology: {nodes: {a: {}}, links: [{endpoints: ['a:eth1', 'b:eth1']}]}", "topology"),
    ("name: t\ntopology: {nodes: {a: {}}, links: [{endpoints: ['a:eth1', 'a:averyverylongname0']}]}",
     "topology.links[0].endpoints"),
    ("name: t\ntopology: {nodes: {}}", "topology.nodes"),
    ("name: t\ntopology: {nodes: {a: {cmd: 'sh -c \"unclosed'}}}", "topology.nodes.a.cmd"),
    ("name: t\ntopology: {nodes: {a: {exec: ['true', 'echo \"x']}}}", "topology.nodes.a.exec"),
    ("topology: {nodes: {a: {}}}", "name"),
    ("name: t\nprefix: x\ntopology: {nodes: {a: {}}}", "prefix"),
])
def test_errors_name_file_and_field(tmp_path, text, where):
    msg = errors(tmp_path, text)
    assert msg.startswith(f"{tmp_path / 't.clab.yml'}: {where}:"), msg


def test_interface_used_twice(tmp_path):
    msg = errors(tmp_path, "name: t\ntopology:\n  nodes: {a: {}, b: {}, c: {}}\n  links:\n"
                           "    - endpoints: [a:eth1, b:eth1]\n    - endpoints: [a:eth1, c:eth1]\n")
    assert "links[1]" in msg and "a:eth1" in msg


@pytest.mark.parametrize("lab_file", sorted(LABS.glob("*.clab.yml")), ids=lambda p: p.name)
def test_shipped_labs_parse_and_their_binds_exist(lab_file):
    lab = load_lab(lab_file)
    assert any(n.runs_tortie() for n in lab.nodes.values())
    for node in lab.nodes.values():
        assert node.image == "tortie:dev"
        for b in node.binds:
            assert b.host.is_dir(), b.host


def test_shipped_tortie_configs_are_valid():
    from config.load import load_model
    from config.node import NodeConfig
    configs = sorted(LABS.glob("*/*/tortie.yaml"))
    assert len(configs) >= 5
    for f in configs:
        cfg = load_model(f, NodeConfig)
        assert cfg.name == f.parent.name
