"""`tortie lab gen`: what it writes (pure), and a generated 10-host lab (a BIRD or an FRR reflector) brought up with
the real daemon."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from ipaddress import IPv4Network
from pathlib import Path, PurePosixPath

import pytest
import yaml

from bgpd.lab import generate as g
from bgpd.lab.topology import load_lab
from config.load import load_model
from config.node import NodeConfig


def tortie(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bgpd.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reflectors,broker,impl", [(0, False, "bird"), (2, False, "bird"), (0, True, "bird"),
                                                    (1, True, "bird"), (2, False, "frr")])
def test_written_files_load_as_a_lab_and_as_node_configs(tmp_path, reflectors, broker, impl):
    path = g.write(g.Spec(hosts=5, reflectors=reflectors, broker=broker, pods=2, reflector_impl=impl), tmp_path)
    lab = load_lab(path)
    hosts = [f"h{i}" for i in range(1, 6)]
    assert set(lab.nodes) == {"sw", *hosts, *(f"rr{k}" for k in range(1, reflectors + 1)),
                              *(["broker"] if broker else [])}
    assert len(lab.links) == len(lab.nodes) - 1  # every node but the switch on one switch port
    assert len(lab.nodes["sw"].exec_) == len(lab.links) + 2
    blocks = set()
    for i, h in enumerate(hosts, 1):
        node = lab.nodes[h]
        assert node.runs_tortie() and node.tortie_config_args() == ["--config", "/etc/tortie/tortie.yaml"]
        conf = load_model(tmp_path / h / "tortie.yaml", NodeConfig)
        assert str(conf.listen_address) == f"10.100.0.{i}"
        assert [e.split()[-1] for e in node.exec_[1:]] == [f"default/{h}-pod1", f"default/{h}-pod2"]
        blocks.update(conf.blocks)
        peers = {str(p.address) for p in conf.bgp_peers()}
        if reflectors:
            assert peers == {f"10.100.255.{k}" for k in range(1, reflectors + 1)}
        elif not broker:
            assert peers == {f"10.100.0.{j}" for j in range(1, 6) if j != i}
        assert (conf.datastore is not None) == broker
    assert blocks == (set() if broker else {IPv4Network(f"10.244.{(i - 1) // 4}.{(i - 1) % 4 * 64}/26")
                                            for i in range(1, 6)})
    for k in range(1, reflectors + 1):
        assert lab.nodes[f"rr{k}"].binds[0].container == PurePosixPath(f"/etc/{impl}")
        if impl == "bird":
            conf = (tmp_path / f"rr{k}" / "bird.conf").read_text()
            assert conf.count("from host") == 5 and f"router id 10.100.255.{k};" in conf
        else:
            conf = (tmp_path / f"rr{k}" / "frr.conf").read_text()
            assert conf.count("peer-group hosts\n") == 5 and f"bgp router-id 10.100.255.{k}\n" in conf
            assert "neighbor hosts route-reflector-client" in conf and "bgp cluster-id 10.100.255.1\n" in conf
    if broker:
        assert "h5:h5-secret" in lab.nodes["broker"].cmd


@pytest.mark.timeout(30)
@pytest.mark.parametrize("args,why", [(["--hosts", "0"], "--hosts: 0"), (["--hosts", "1001"], "--hosts: 1001"),
                                      (["--hosts", "3", "--reflectors", "9"], "--reflectors: 9"),
                                      (["--hosts", "3", "--pods", "61"], "--pods: 61"),
                                      (["--hosts", "3", "--reflectors", "1", "--reflector-impl", "gobgp"],
                                       "--reflector-impl: gobgp: one of bird, frr")])
def test_refused_arguments_write_nothing(tmp_path, args, why):
    r = tortie("lab", "gen", *args, "--out", str(tmp_path / "out"))
    assert r.returncode == 1 and why in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_names_follow_the_options():
    names = [next(p for p in g.render(s) if p.endswith(".clab.yml"))
             for s in (g.Spec(20), g.Spec(50, reflectors=2, broker=True), g.Spec(3, name="x"),
                       g.Spec(100, reflectors=2, reflector_impl="frr"))]
    assert names == ["gen20-mesh.clab.yml", "gen50-rr2-mqtt.clab.yml", "x.clab.yml", "gen100-rr2-frr.clab.yml"]
    text = g.render(g.Spec(2))["gen2-mesh.clab.yml"]
    assert yaml.safe_load(text)["topology"]["kinds"]["linux"]["image"] == "tortie:dev"  # containerlab's image


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
@pytest.mark.parametrize("impl", ["bird", "frr"])
def test_ten_hosts_with_a_reflector_route_every_block_everywhere(tmp_path, impl):
    r = tortie("lab", "gen", "--hosts", "10", "--reflectors", "1", "--reflector-impl", impl, "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    topo, name = r.stdout.strip(), "tg" + secrets.token_hex(2)

    def lab(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
        return tortie("lab", args[0], topo, "--name", name, *args[1:], timeout=timeout)

    try:
        up = lab("up", "--timeout", "120")
        assert up.returncode == 0, up.stderr

        def routes(i: int) -> dict[str, str | None]:
            r = lab("exec", f"h{i}", "--", "ip", "-j", "route", "show", "proto", "tortie", timeout=20)
            assert r.returncode == 0, r.stderr
            return {x["dst"]: x.get("gateway") for x in json.loads(r.stdout)}

        # `lab up` waits for the sessions, not for the routes: the reflector sends its table after its update
        # timers (FRR's subgroup coalescing: a second or more), to the last host up too
        deadline = time.monotonic() + 30
        for i in range(1, 11):
            want = {str(g.host_block(j)): str(g.host_address(j)) for j in range(1, 11) if j != i}
            while (have := {d: gw for d, gw in routes(i).items() if d in want}) != want:
                if time.monotonic() > deadline:
                    status = lab("exec", f"h{i}", "--", "tortie", "status", timeout=20)
                    pytest.fail(f"h{i} has {have}, not {want}, 30 s after `lab up`; its status:\n{status.stdout}")
                time.sleep(0.5)
        first_of_h10 = str(g.host_block(10).network_address + 1)
        r = lab("exec", "h1", "--", "tortie", "pod", "exec", "default/h1-pod1", "--", "ping", "-c1", "-W2",
                first_of_h10, timeout=20)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        assert lab("down").returncode == 0
        assert not [n for n in os.listdir("/run/netns") if n.startswith(f"clab-{name}-")]


def test_a_lab_past_the_kernels_neighbour_table_is_named(tmp_path, monkeypatch):
    """The kernel's ARP table is shared by every namespace (gc_thresh3): a 50-host mesh (2,550 entries with one pod
    each) did not come up under the default 1024, a 100-host reflector lab (600) did."""
    limit = tmp_path / "gc_thresh3"
    limit.write_text("1024\n")
    monkeypatch.setattr(g, "NEIGH_LIMIT", limit)
    assert g.neighbour_entries(g.Spec(50)) == 2550 and g.neighbour_entries(g.Spec(100, reflectors=2)) == 600
    assert g.neighbour_problem(g.Spec(100, reflectors=2)) is None
    problem = g.neighbour_problem(g.Spec(50))
    assert "2550 ARP entries" in problem and "at most 1024" in problem and "gc_thresh3=8192" in problem
    monkeypatch.setattr(g, "NEIGH_LIMIT", tmp_path / "absent")
    assert g.neighbour_problem(g.Spec(50)) is None  # no such knob: nothing to say
