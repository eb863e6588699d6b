"""`tortie lab` end to end on small topologies of plain commands (no tortie daemon).

Every lab has a random per-run name (namespaces clab-tlXXXX-NODE); a fixture always runs
`lab down` and checks that nothing of the lab is left.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")]

TWO_NODES = """
name: two
topology:
  nodes:
    a:
      kind: linux
      cmd: sleep infinity
      binds: [cfg:/etc/tortie-lab-test:ro]
      env: {GREETING: hello}
      exec:
        - ip addr add 10.77.0.1/24 dev eth1
        - touch /run/only-in-a
    b:
      kind: linux
      cmd: sh -c "echo b started; exec sleep infinity"
      binds: [cfg/hello.txt:/etc/tortie-lab-test.txt, cfg:/tmp/cfg]
      exec: ["ip addr add 10.77.0.2/24 dev eth1"]
  links:
    - endpoints: ["a:eth1", "b:eth1"]
"""

STAND_IN_TORTIE = """#!/bin/sh
# Stands in for the node daemon: `run` idles, `status --json` reports what /run/peer-state says.
case "$1" in
  run) echo "stand-in daemon running"; exec sleep infinity ;;
  status) state=$(cat /run/peer-state 2>/dev/null || echo idle)
          echo "{\\"node\\": \\"n\\", \\"peers\\": [{\\"name\\": \\"tor\\", \\"address\\": \\"10.98.0.254\\", \\"asn\\": 64512, \\"state\\": \\"$state\\"}]}" ;;
esac
"""


class Lab:
    def __init__(self, path: Path, name: str):
        self.path, self.name = path, name

    def tortie(self, *args: str, timeout: float = 45, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bgpd.cli.main", "lab", *args[:1], str(self.path),
                               "--name", self.name, *args[1:]],
                              capture_output=True, text=True, timeout=timeout, **kw)

    def exec(self, node: str, *command: str, **kw) -> subprocess.CompletedProcess:
        return self.tortie("exec", node, "--", *command, **kw)

    def state(self) -> dict:
        return json.loads((Path("/run/tortie-lab") / self.name / "state.json").read_text())


def leftovers(name: str, pids: set[int]) -> list[str]:
    found = [f"netns {n}" for n in os.listdir("/run/netns") if n.startswith(f"clab-{name}-")]
    found += [f"pid {p}" for p in pids if os.path.exists(f"/proc/{p}/ns/mnt")]
    marker = f"TORTIE_LAB_NAME={name}".encode()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                found.append(f"pid {entry} with the lab's environment")
        except OSError:
            pass
    if os.path.exists(f"/run/tortie-lab/{name}"):
        found.append("state dir")
    found += [p for p in ("/etc/tortie-lab-test", "/etc/tortie-lab-test.txt", "/opt/tortie-lab-standin")
              if os.path.exists(p)]
    return found


@pytest.fixture
def make_lab(tmp_path):
    """Writes a topology (and a `cfg` dir beside it) and yields a Lab; always brings it down."""
    labs: list[Lab] = []

    def make(text: str) -> Lab:
        (tmp_path / "cfg").mkdir(exist_ok=True)
        (tmp_path / "cfg" / "hello.txt").write_text("from the host\n")
        name = "tl" + secrets.token_hex(2)
        path = tmp_path / f"{name}.clab.yml"
        path.write_text(text)
        labs.append(Lab(path, name))
        return labs[-1]

    yield make
    pids: dict[str, set[int]] = {}
    for lab in labs:  # all down first, then check: a lab up concurrently may hold a mountpoint
        if os.path.exists(f"/run/tortie-lab/{lab.name}/state.json"):
            pids[lab.name] = {p for n in lab.state()["nodes"].values() for p in (n["keeper_pid"], n["cmd_pid"]) if p}
    downs = [lab.tortie("down") for lab in labs]
    assert [d.stderr for d in downs if d.returncode] == []
    for lab in labs:
        assert leftovers(lab.name, pids.get(lab.name, set())) == []
        assert lab.tortie("down").returncode == 0  # idempotent

def test_up_exec_status_down(make_lab):
    lab = make_lab(TWO_NODES)
    up = lab.tortie("up")
    assert up.returncode == 0, up.stderr
    assert f"lab {lab.name} is up" in up.stderr

    assert lab.exec("a", "ping", "-c1", "-W2", "10.77.0.2").returncode == 0
    r = lab.exec("a", "sh", "-c", 'cat /etc/tortie-lab-test/hello.txt; echo "$GREETING $TORTIE_LAB"; exit 7')
    assert (r.returncode, r.stdout) == (7, "from the host\nhello 1\n")
    assert lab.exec("b", "cat", input="through stdin").stdout == "through stdin"
    assert lab.exec("b", "cat", "/etc/tortie-lab-test.txt", "/tmp/cfg/hello.txt").stdout == "from the host\n" * 2
    assert lab.exec("a", "touch", "/etc/tortie-lab-test/x").returncode != 0  # bound read-only
    assert lab.exec("a", "ls", "/sys/class/net").stdout.split() == ["eth1", "lo"]

    # /run is each node's own
    assert lab.exec("a", "test", "-e", "/run/only-in-a").returncode == 0
    assert lab.exec("b", "test", "-e", "/run/only-in-a").returncode == 1
    assert not os.path.exists("/run/only-in-a")

    st = lab.tortie("status", "--json")
    assert st.returncode == 0, st.stderr
    nodes = json.loads(st.stdout)["nodes"]
    assert all(n["netns_present"] and n["keeper_alive"] and n["cmd_alive"] for n in nodes.values())
    assert "b started" in Path(f"/run/tortie-lab/{lab.name}/b.log").read_text()

    bad = lab.exec("c", "true")
    assert bad.returncode == 1 and "no node 'c'" in bad.stderr
    assert lab.tortie("up").returncode == 1  # exists already

    # a process a node started in a namespace of its own (a pod) goes too
    assert lab.exec("a", "sh", "-c", "ip netns add pod-1 && (ip netns exec pod-1 sleep 300 >/dev/null 2>&1 &)").returncode == 0
    down = lab.tortie("down")
    assert down.returncode == 0, down.stderr
    st = lab.tortie("status", "--json")
    assert st.returncode == 3
    assert not any(n["netns_present"] or n["keeper_alive"] for n in json.loads(st.stdout)["nodes"].values())


def test_failed_exec_leaves_lab_for_down(make_lab):
    lab = make_lab(TWO_NODES.replace("touch /run/only-in-a", "sh -c 'echo broken >&2; exit 4'"))
    up = lab.tortie("up")
    assert up.returncode == 1
    assert "node a: exec" in up.stderr and "exited 4" in up.stderr and "broken" in up.stderr
    # the fixture's `lab down` must clean everything


def test_waits_for_bgp_sessions(make_lab, tmp_path):
    standin = tmp_path / "bin"
    standin.mkdir()
    (standin / "tortie").write_text(STAND_IN_TORTIE)
    (standin / "tortie").chmod(0o755)
    node = {"kind": "linux", "cmd": "tortie run --config /etc/tortie/tortie.yaml",
            "binds": ["bin:/opt/tortie-lab-standin:ro"],  # the node's /tmp is its own: bind tmp_path's bin
            "env": {"PATH": "/opt/tortie-lab-standin:/usr/sbin:/usr/bin:/sbin:/bin"}}
    ok = {**node, "exec": ["sh -c 'echo up > /run/peer-state'"]}
    lab = make_lab(yaml.safe_dump({"name": "bgp", "topology": {"nodes": {"ok": ok, "stuck": node}}}))
    up = lab.tortie("up", "--timeout", "3")
    assert up.returncode == 1
    assert "node stuck: peer tor (10.98.0.254) is idle" in up.stderr
    assert "node ok" not in up.stderr.split("last lines")[0]
    assert "stand-in daemon running" in up.stderr  # the log tail
    st = json.loads(lab.tortie("status", "--json").stdout)["nodes"]
    assert [p["state"] for p in st["ok"]["peers"]] == ["up"]

    assert lab.exec("stuck", "sh", "-c", "echo up > /run/peer-state").returncode == 0
    st = lab.tortie("status")
    assert st.returncode == 0 and st.stdout.count("peer tor 10.98.0.254: up") == 2, st.stdout

    lab2 = make_lab(yaml.safe_dump({"name": "bgp", "topology": {"nodes": {"ok": ok}}}))
    up = lab2.tortie("up", "--timeout", "10")
    assert up.returncode == 0, up.stderr
    assert "1 BGP peerings up" in up.stderr


def test_up_fails_when_a_cmd_exits(make_lab):
    lab = make_lab(yaml.safe_dump({"name": "dies", "topology": {"nodes": {
        "x": {"cmd": "sh -c 'echo dying >&2; exit 3'", "exec": ["sleep 1"]}}}}))
    up = lab.tortie("up")
    assert up.returncode == 1
    assert "node x: its cmd" in up.stderr and "exited" in up.stderr and "dying" in up.stderr
