"""tortie-cni driven as a CNI runtime drives it: environment, configuration on stdin, JSON out."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cni_driver import write_node_config
from tests.netns import requires_root

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(120)]
ROOT = Path(__file__).resolve().parents[2]
CNI = str(Path(sys.executable).with_name("tortie-cni"))


@pytest.fixture
def node(tmp_path, make_netns):
    ns = make_netns("cnihost")
    subprocess.run(["ip", "-n", ns, "addr", "add", "10.95.1.1/32", "dev", "lo"], check=True)
    config = write_node_config(tmp_path)
    conflist = json.loads((ROOT / "containers" / "cni" / "10-tortie.conflist").read_text())
    netconf = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **conflist["plugins"][0],
               "tortieConfig": str(config)}
    return ns, netconf


def cni(host_ns, command, netconf, container="c1", netns="", ifname="eth0", args="", raw=None):
    env = {**os.environ, "CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": netns,
           "CNI_IFNAME": ifname, "CNI_ARGS": args, "CNI_PATH": str(Path(CNI).parent)}
    stdin = raw if raw is not None else json.dumps(netconf)
    r = subprocess.run(["ip", "netns", "exec", host_ns, CNI], input=stdin, env=env, capture_output=True,
                       text=True, timeout=30)
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else None)


def test_version(node):
    ns, netconf = node
    code, out = cni(ns, "VERSION", netconf)
    assert code == 0 and "1.1.0" in out["supportedVersions"] and out["cniVersion"] == "1.1.0"


def test_add_check_del_lifecycle(node, make_netns):
    host, netconf = node
    pod_ns = make_netns("cnipod")
    netns_path = f"/run/netns/{pod_ns}"
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1"
    code, out = cni(host, "ADD", netconf, netns=netns_path, args=args)
    assert code == 0, out
    assert out["ips"][0]["address"] == "10.244.7.1/32" and out["ips"][0]["gateway"] == "169.254.1.1"
    assert out["interfaces"][1] == {"name": "eth0", "mac": out["interfaces"][1]["mac"], "sandbox": netns_path,
                                    "mtu": 1500}
    # the pod answers from the host, and reaches the host's address through its default route
    subprocess.run(["ip", "netns", "exec", host, "ping", "-c", "1", "-W", "2", "10.244.7.1"], check=True,
                   capture_output=True, timeout=10)
    subprocess.run(["ip", "netns", "exec", pod_ns, "ping", "-c", "1", "-W", "2", "10.95.1.1"], check=True,
                   capture_output=True, timeout=10)
    assert cni(host, "ADD", netconf, netns=netns_path, args=args) == (0, out)  # a retried ADD: same answer
    assert cni(host, "CHECK", netconf, netns=netns_path, args=args)[0] == 0
    # CHECK finds what someone else broke: the pod's address, then the host route
    subprocess.run(["ip", "-n", pod_ns, "addr", "del", "10.244.7.1/32", "dev", "eth0"], check=True)
    assert cni(host, "CHECK", netconf, netns=netns_path)[1]["msg"] == f"eth0 in {netns_path} lacks 10.244.7.1"
    subprocess.run(["ip", "-n", pod_ns, "addr", "add", "10.244.7.1/32", "dev", "eth0"], check=True)
    subprocess.run(["ip", "-n", host, "route", "del", "10.244.7.1/32"], check=True)
    err = cni(host, "CHECK", netconf, netns=netns_path)[1]
    assert err["code"] == 5 and err["msg"].startswith("the host has no route to 10.244.7.1 via tt"), err
    listed = subprocess.run(["ip", "netns", "exec", host, sys.executable, "-m", "bgpd.cli.main", "pod", "list", "--json",
                             "--config", netconf["tortieConfig"]], capture_output=True, text=True, cwd=ROOT)
    assert [p["namespace"] + "/" + p["name"] for p in json.loads(listed.stdout)] == ["shop/web-1"]
    assert cni(host, "DEL", netconf, netns=netns_path)[0] == 0
    assert cni(host, "DEL", netconf, netns=netns_path)[0] == 0  # idempotent
    code, err = cni(host, "CHECK", netconf, netns=netns_path)
    assert code != 0 and err["code"] == 3
    links = subprocess.run(["ip", "-n", pod_ns, "-o", "link"], capture_output=True, text=True).stdout
    assert "eth0" not in links  # the runtime's namespace stays, our interface is gone


def test_gc_removes_attachments_not_listed(node, make_netns):
    host, netconf = node
    pods = [make_netns(f"gc{i}") for i in range(2)]
    for i, p in enumerate(pods):
        assert cni(host, "ADD", netconf, container=f"c{i}", netns=f"/run/netns/{p}")[0] == 0
    gc = {**netconf, "cni.dev/valid-attachments": [{"containerID": "c0", "ifname": "eth0"}]}
    assert cni(host, "GC", gc)[0] == 0
    assert cni(host, "CHECK", netconf, container="c0", netns=f"/run/netns/{pods[0]}")[0] == 0
    assert cni(host, "CHECK", netconf, container="c1", netns=f"/run/netns/{pods[1]}")[1]["code"] == 3


@pytest.mark.parametrize("raw, env_missing, code", [
    ("{not json", False, 6),
    ('{"cniVersion": "9.9.9", "name": "x", "type": "tortie-cni"}', False, 1),
    ('{"cniVersion": "1.1.0", "type": "tortie-cni"}', False, 7),
    ('{"cniVersion": "1.1.0", "name": "x", "type": "tortie-cni", "ipam": {"type": "host-local"}}', False, 2),
    (None, True, 4),
])
def test_errors_follow_the_specification(node, raw, env_missing, code):
    host, netconf = node
    rc, err = cni(host, "ADD", netconf, raw=raw, netns="" if env_missing else "/run/netns/none")
    assert rc != 0 and err["code"] == code and err["msg"]


def test_status_reports_daemon_absent(node):
    host, netconf = node
    rc, err = cni(host, "STATUS", netconf)
    assert rc != 0 and err["code"] == 50


@pytest.mark.parametrize("netns, ifname", [("/etc/hostname", "eth0"), ("pod", "lo")])
def test_kernel_refusals_are_io_failures_and_leave_nothing(node, make_netns, netns, ifname):
    """A CNI_NETNS that is no namespace, a CNI_IFNAME the pod has already: code 5, no veth left on the host."""
    host, netconf = node
    if netns == "pod":
        netns = f"/run/netns/{make_netns('cnitaken')}"
    rc, err = cni(host, "ADD", netconf, netns=netns, ifname=ifname)
    reason = "Invalid argument" if ifname == "eth0" else "File exists"
    assert rc != 0 and err["code"] == 5, err
    assert err["msg"].startswith("cannot wire pod cni/c1: cannot create veth tt"), err
    assert err["msg"].endswith(f" with {ifname} in {netns}: {reason}"), err
    links = subprocess.run(["ip", "-n", host, "-o", "link"], capture_output=True, text=True).stdout
    assert " tt" not in links
