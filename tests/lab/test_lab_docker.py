"""The shipped labs as containers of the image tortie:dev (`tortie lab up --engine docker`), as containerlab
runs them: sessions up, pods reach pods on other hosts; and a node without a writable /proc/sys/net.

The image is built once per run by scripts/build-image.sh (skipped when it already holds these sources).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from bgpd.lab import container_nodes
from bgpd.lab.topology import load_lab
from tests.lab.test_lab_shipped import LABS, ping_from_pod, pod_ips, tortie
# collected here too, with this module's `lab` fixture: tor-bird in containers, with the same checks
from tests.lab.test_lab_shipped import test_tor_bird  # noqa: F401

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "tortie:dev"


@pytest.fixture(scope="session")
def engine():
    """docker (or podman) with tortie:dev built from this checkout; skipped where no engine can run."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a container engine and namespaces")
    name = next((e for e in ("podman", "docker") if shutil.which(e)), None)
    if name is None and not shutil.which("dockerd"):
        pytest.skip("no container engine installed (docker.io: scripts/setup.sh)")
    r = subprocess.run([str(ROOT / "scripts" / "build-image.sh")], capture_output=True, text=True, timeout=1200)
    if r.returncode != 0:
        why = r.stderr.strip().splitlines()[-1:] or ["no output"]
        if "dockerd did not come up" in r.stderr:
            pytest.skip(f"no container engine can run here: {why[0]}")
        pytest.fail(f"scripts/build-image.sh failed:\n{r.stderr[-3000:]}")
    name = name or "docker"
    assert container_nodes.available(name) is None
    return name


@pytest.fixture
def lab(request, engine):
    """(run, file): the lab of the test's parameter, up in containers under a random name; always brought down."""
    path, name = LABS / request.param, "td" + secrets.token_hex(2)

    def run(*args: str, timeout: float = 100) -> subprocess.CompletedProcess:
        if args[0] == "up":  # containers start slower than namespaces (vfs copies each one's filesystem)
            args, timeout = (args[0], "--engine", engine, *args[1:]), max(timeout, 1500)
        return tortie("lab", args[0], str(path), "--name", name, *args[1:], timeout=timeout)

    try:
        yield run
    finally:
        assert run("down", timeout=900).returncode == 0
        assert not [n for n in os.listdir("/run/netns") if n.startswith(f"clab-{name}-")]
        left = subprocess.run([engine, "ps", "--all", "--quiet", "--filter", f"label=tortie.lab={name}"],
                              capture_output=True, text=True, timeout=300).stdout
        assert not left.strip()


@pytest.mark.parametrize("lab", ["mesh3.clab.yml"], indirect=True)
def test_mesh3_in_containers(lab, engine):
    up = lab("up", "--timeout", "90")
    assert up.returncode == 0, up.stderr
    st = json.loads(lab("status", "--json").stdout)["nodes"]
    assert all(n["keeper_alive"] and n["netns_present"] for n in st.values())
    assert {p["state"] for p in st["node1"]["peers"]} == {"up"}
    for src, dst in (("node1", "node3"), ("node3", "node2"), ("node2", "node1")):
        r = ping_from_pod(lab, src, "default/pod1", pod_ips(lab, dst)[0])
        assert r.returncode == 0, (src, dst, r.stdout, r.stderr)
    # each node is a container of the image, named as containerlab names it, without a network of the engine
    name = json.loads(lab("status", "--json").stdout)["nodes"]["node1"]["netns"]
    info = json.loads(subprocess.run([engine, "inspect", name], capture_output=True, text=True, timeout=60).stdout)[0]
    assert info["Config"]["Image"] == IMAGE and info["HostConfig"]["NetworkMode"] == "none"
    assert info["Config"]["Hostname"] == "node1"
    # what `tortie lab gen` reflectors run in the image: BIRD, FRR's zebra and bgpd (with its user)
    r = lab("exec", "node1", "--", "sh", "-c", "command -v bird && test -x /usr/lib/frr/zebra "
            "&& test -x /usr/lib/frr/bgpd && id frr")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("caps", [("NET_ADMIN", "SYS_ADMIN"), ()], ids=["read-only-proc-sys", "no-capabilities"])
def test_pod_add_in_a_container_lacking_what_it_needs_says_so_and_leaves_nothing(engine, caps):
    """Containers as a host that refuses --privileged makes them: /proc/sys read-only, maybe no capabilities."""
    name = "tortie-ro-" + secrets.token_hex(3)
    conf = ROOT / "containers" / "labs" / "mesh3" / "node1"
    subprocess.run([engine, "run", "--detach", "--name", name, "--network", "none",
                    *(a for c in caps for a in ("--cap-add", c)), "--volume", f"{conf}:/etc/tortie:ro", IMAGE],
                   check=True, capture_output=True, timeout=600)
    try:
        def sh(command: str) -> subprocess.CompletedProcess:
            return subprocess.run([engine, "exec", name, "sh", "-c", command], capture_output=True, text=True,
                                  timeout=300)

        r = sh("tortie pod add --config /etc/tortie/tortie.yaml default/pod1")
        assert r.returncode == 1
        (line,) = r.stderr.strip().splitlines()
        if caps:
            assert line == (f"tortie pod add: cannot set proxy_arp on {pod_host_if(sh)}: /proc/sys is read-only in "
                            "this container; run the node privileged or with a writable /proc/sys/net "
                            "(and CAP_NET_ADMIN)")
        else:
            assert line.startswith("tortie pod add: cannot wire pod default/pod1: ")
            assert "Operation not permitted" in line
            assert line.endswith("it needs CAP_NET_ADMIN and CAP_SYS_ADMIN (run the node privileged or with them)")
        # nothing half made: no veth, no pod namespace, no pod in the store
        assert sh("ip -o link show type veth").stdout == ""
        assert sh("ls /run/netns 2>/dev/null").stdout == ""
        assert json.loads(sh("tortie pod list --config /etc/tortie/tortie.yaml --json").stdout) == []
    finally:
        subprocess.run([engine, "rm", "--force", name], capture_output=True, timeout=600)


def pod_host_if(sh) -> str:
    """The host-side interface name `tortie pod add` gives default/pod1 (a hash of its key)."""
    return sh("python3 -c 'from bgpd.dataplane.pods import host_interface; "
              "print(host_interface(\"default\", \"pod1\"))'").stdout.strip()


def test_node_container_as_containerlab_makes_it():
    """Pure: the `run` arguments of a node (no network, binds, env, cmd split into words, capabilities)."""
    lab = load_lab(LABS / "tor-bird.clab.yml", "x1")
    args = container_nodes.run_args(lab, lab.nodes["tor"])
    assert args[:9] == ["run", "--detach", "--name", "clab-x1-tor", "--hostname", "tor", "--network", "none",
                        "--label"]
    assert f"{LABS / 'tor-bird' / 'tor'}:/etc/bird" in args and "TORTIE_LAB_NAME=x1" in args
    assert [args[i + 1] for i, a in enumerate(args) if a == "--cap-add"] == ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"]
    assert "--privileged" not in args
    assert args[-4:] == ["tortie:dev", "sh", "-c", "mkdir -p /run/bird && exec bird -f -c /etc/bird/bird.conf "
                                                   "-s /run/bird/bird.ctl"]
