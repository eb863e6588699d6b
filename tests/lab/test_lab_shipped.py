"""The shipped labs with the real node daemon: sessions up, pods reach pods on other hosts."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(150),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")]

LABS = Path(__file__).resolve().parents[2] / "containers" / "labs"


def tortie(*args: str, timeout: float = 100) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bgpd.cli.main", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def lab(request):
    """(run, file): the lab named by the test's parameter, up under a random name; always brought down."""
    path, name = LABS / request.param, "tl" + secrets.token_hex(2)

    def run(*args: str, timeout: float = 100) -> subprocess.CompletedProcess:
        return tortie("lab", args[0], str(path), "--name", name, *args[1:], timeout=timeout)

    try:
        yield run
    finally:
        assert run("down").returncode == 0
        assert not [n for n in os.listdir("/run/netns") if n.startswith(f"clab-{name}-")]


def pod_ips(run, node: str) -> list[str]:
    r = run("exec", node, "--", "tortie", "pod", "list", "--json")
    assert r.returncode == 0, r.stderr
    return [p["ip"] for p in json.loads(r.stdout)]


def ping_from_pod(run, node: str, pod: str, ip: str) -> subprocess.CompletedProcess:
    return run("exec", node, "--", "tortie", "pod", "exec", pod, "--", "ping", "-c1", "-W2", ip, timeout=20)


@pytest.mark.parametrize("lab", ["mesh3.clab.yml"], indirect=True)
def test_mesh3(lab):
    up = lab("up", "--timeout", "60")
    assert up.returncode == 0, up.stderr
    for src, dst in (("node1", "node3"), ("node3", "node2"), ("node2", "node1")):
        r = ping_from_pod(lab, src, "default/pod1", pod_ips(lab, dst)[0])
        assert r.returncode == 0, (src, dst, r.stdout, r.stderr)


@pytest.mark.parametrize("lab", ["tor-bird.clab.yml"], indirect=True)
def test_tor_bird(lab):
    up = lab("up", "--timeout", "60")
    assert up.returncode == 0, up.stderr
    r = ping_from_pod(lab, "node1", "default/pod1", pod_ips(lab, "node3")[0])
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert lab("exec", "tor", "--", "ping", "-c1", "-W2", pod_ips(lab, "node2")[0]).returncode == 0
    # the tor's default and 192.0.2.0/24 are outside the pod pool: received, not installed
    routes = lab("exec", "node1", "--", "ip", "-4", "route", "show", "proto", "201").stdout
    assert "default" not in routes and "192.0.2.0/24" not in routes
    peer = json.loads(lab("exec", "node1", "--", "tortie", "status", "--json").stdout)["peers"][0]
    assert (peer["name"], peer["state"], peer["rejected"]) == ("tor", "up", 2)
