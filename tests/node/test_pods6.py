"""Dual-stack pods for real, in a scratch host namespace: `tortie pod add` and tortie-cni give a pod an IPv4 and an
IPv6 address, the IPv6 default route via fe80::1 on the host side; ICMPv6 and TCP over IPv6 reach the host and
another local pod; CHECK sees a lost IPv6 address; DEL releases both addresses."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cni_driver import write_node_config
from tests.netns import RUN_PREFIX, requires_root

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(120)]
CNI = str(Path(sys.executable).with_name("tortie-cni"))
HOST6 = "fd95::1"  # the node's IPv6 underlay address (listen_address6 of write_node_config's dual-stack node)
SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6)
s.bind(("::", 8080)); s.listen(); print("ready", flush=True)
c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()
"""
CLIENT = "import socket, sys; print(socket.create_connection((sys.argv[1], 8080), timeout=5).recv(100).decode())"


@pytest.fixture
def host(tmp_path, make_netns):
    ns = make_netns("pod6host")
    subprocess.run(["ip", "-n", ns, "addr", "add", "10.95.1.1/32", "dev", "lo"], check=True)
    subprocess.run(["ip", "-n", ns, "addr", "add", f"{HOST6}/128", "dev", "lo"], check=True)
    config = write_node_config(tmp_path, ipv6=True)
    config.write_text(config.read_text() + f"pod_netns_prefix: {RUN_PREFIX}q-\n")
    yield ns, config
    for pod in ("shop-web", "shop-db", "shop-v6"):  # only if a test failed half-way
        subprocess.run(["ip", "netns", "del", f"{RUN_PREFIX}q-{pod}"], capture_output=True)


def sh(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30, check=check)


def tortie(ns: str, config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "bgpd.cli.main", *args,
                           "-c", str(config)], capture_output=True, text=True, timeout=30, check=check)


def test_dual_stack_pods_reach_the_host_and_each_other_over_ipv6(host):
    ns, config = host
    assert tortie(ns, config, "pod", "add", "shop/web").stdout.split() == ["10.244.7.1", "fd00:244::1c1"]
    assert tortie(ns, config, "pod", "add", "shop/db").stdout.split() == ["10.244.7.2", "fd00:244::1c2"]
    web, db = json.loads(tortie(ns, config, "pod", "list", "--json").stdout)[::-1]  # sorted by key: db first
    assert (web["ip"], web["ips"]) == ("10.244.7.1", ["10.244.7.1", "fd00:244::1c1"])
    web_ns, host_if = web["netns"], web["host_interface"]
    # the pod: its /128 without duplicate address detection, ::/0 via fe80::1 (a permanent neighbour entry)
    (eth0,) = json.loads(sh(web_ns, "ip", "-j", "-6", "addr", "show", "eth0").stdout)
    ours = [a for a in eth0["addr_info"] if a["scope"] == "global"]
    assert [(a["local"], a["prefixlen"], a.get("tentative", False)) for a in ours] == [("fd00:244::1c1", 128, False)]
    (default,) = json.loads(sh(web_ns, "ip", "-j", "-6", "route", "show", "default").stdout)
    assert (default["gateway"], default["dev"]) == ("fe80::1", "eth0")
    (link,) = json.loads(sh(ns, "ip", "-j", "link", "show", host_if).stdout)
    (neigh,) = json.loads(sh(web_ns, "ip", "-j", "-6", "neigh", "show", "fe80::1").stdout)
    assert neigh["lladdr"] == link["address"] and neigh["state"] == ["PERMANENT"]
    # the host: fe80::1 on the veth (it answers neighbour discovery itself), a /128 route to the pod
    (veth,) = json.loads(sh(ns, "ip", "-j", "-6", "addr", "show", host_if).stdout)
    assert ("fe80::1", 64) in [(a["local"], a["prefixlen"]) for a in veth["addr_info"]]
    (route,) = json.loads(sh(ns, "ip", "-j", "-6", "route", "show", "fd00:244::1c1/128").stdout)
    assert route["dev"] == host_if and route["protocol"] in ("tortie-pod", "202")
    # and each pod address as a permanent neighbour: no ARP or ND towards the pod, outside the table's limit
    (pod_link,) = json.loads(sh(web_ns, "ip", "-j", "link", "show", "eth0").stdout)
    permanent = json.loads(sh(ns, "ip", "-j", "neigh", "show", "dev", host_if, "nud", "permanent").stdout)
    assert {(n["dst"], n["lladdr"]) for n in permanent} == {("10.244.7.1", pod_link["address"]),
                                                           ("fd00:244::1c1", pod_link["address"])}
    # packets: the gateway itself, the host's address through the default route, the other pod, TCP
    sh(web_ns, "ip", "-6", "neigh", "del", "fe80::1", "dev", "eth0")  # so that the host must answer for it
    sh(web_ns, "ping", "-6", "-c", "1", "-W", "2", "-I", "eth0", "fe80::1")
    sh(web_ns, "ping", "-6", "-c", "1", "-W", "2", HOST6)
    sh(web_ns, "ping", "-6", "-c", "1", "-W", "2", "fd00:244::1c2")
    sh(web_ns, "ping", "-c", "1", "-W", "2", "10.244.7.2")
    server = subprocess.Popen(["ip", "netns", "exec", db["netns"], sys.executable, "-c", SERVER],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline() == "ready\n"
        assert sh(web_ns, sys.executable, "-c", CLIENT, "fd00:244::1c2").stdout.strip() == "fd00:244::1c1"
        assert server.wait(10) == 0
    finally:
        server.kill()
        server.wait()
    tortie(ns, config, "pod", "del", "shop/web")
    assert not sh(ns, "ip", "-6", "route", "show", "fd00:244::1c1/128").stdout  # gone with the veth
    # both addresses free again: the next pod gets them
    assert tortie(ns, config, "pod", "add", "shop/v6").stdout.split() == ["10.244.7.1", "fd00:244::1c1"]
    for pod in ("shop/db", "shop/v6"):
        tortie(ns, config, "pod", "del", pod)


def test_requested_addresses_and_an_ipv6_only_node(host):
    ns, config = host
    r = tortie(ns, config, "pod", "add", "shop/web", "--ip", "fd00:244::1d0", "--ip", "10.244.7.9")
    assert r.stdout.split() == ["10.244.7.9", "fd00:244::1d0"]
    r = tortie(ns, config, "pod", "add", "shop/db", "--ip", "fd00:244::1d0", check=False)
    assert (r.returncode, r.stderr) == (1, "tortie pod add: fd00:244::1d0 is already used by another pod\n")
    r = tortie(ns, config, "pod", "add", "shop/db", "--ip", "fd00:244::1", "--ip", "fd00:244::2", check=False)
    assert r.stderr == "tortie pod add: fd00:244::1 and fd00:244::2: one IPv6 address per pod\n"
    tortie(ns, config, "pod", "del", "shop/web")
    config.write_text(config.read_text().replace("pools: [{cidr: 10.244.0.0/16}, ", "pools: [")
                      .replace("blocks: [10.244.7.0/26, ", "blocks: ["))
    sh(ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")  # new links of the node without IPv6
    assert tortie(ns, config, "pod", "add", "shop/v6").stdout.split() == ["fd00:244::1c1"]
    (pod,) = json.loads(tortie(ns, config, "pod", "list", "--json").stdout)
    (eth0,) = json.loads(sh(pod["netns"], "ip", "-j", "addr", "show", "eth0").stdout)
    assert {a["family"] for a in eth0["addr_info"]} == {"inet6"}
    sh(pod["netns"], "ping", "-6", "-c", "1", "-W", "2", HOST6)
    r = tortie(ns, config, "pod", "add", "shop/db", "--ip", "10.244.7.3", check=False)
    assert r.stderr == "tortie pod add: 10.244.7.3: this node's pools have no IPv4 addresses\n"
    tortie(ns, config, "pod", "del", "shop/v6")
    old = config.parent / "state" / "pods" / "shop_old.json"  # a pod file of an older Tortie: `ip`, no `ips`
    old.write_text(json.dumps({"namespace": "shop", "name": "old", "ip": "10.244.7.5", "netns": "x",
                               "host_interface": "tt0", "owns_netns": True}))
    for args in (("pod", "list"), ("pod", "add", "shop/db")):
        r = tortie(ns, config, *args, check=False)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith(f"tortie {' '.join(args[:2])}: {old}: unreadable as a pod record (KeyError: 'ips')")


def cni(host_ns: str, command: str, netconf: dict, netns: str = "") -> tuple[int, dict | None]:
    env = {**os.environ, "CNI_COMMAND": command, "CNI_CONTAINERID": "c6", "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
           "CNI_ARGS": "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web", "CNI_PATH": str(Path(CNI).parent)}
    r = subprocess.run(["ip", "netns", "exec", host_ns, CNI], input=json.dumps(netconf), env=env,
                       capture_output=True, text=True, timeout=30)
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else None)


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_cni_result_has_both_families(host, make_netns, version):
    ns, config = host
    pod_ns = make_netns("cni6pod")
    if version == "0.4.0":  # a runtime's namespace with IPv6 off (Docker makes them so): the pod gets it anyway
        sh(pod_ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    netconf = {"cniVersion": version, "name": "tortie", "type": "tortie-cni", "tortieConfig": str(config)}
    code, out = cni(ns, "ADD", netconf, f"/run/netns/{pod_ns}")
    assert code == 0, out
    assert out["ips"] == [{"address": "10.244.7.1/32", "gateway": "169.254.1.1", "interface": 1},
                          {"address": "fd00:244::1c1/128", "gateway": "fe80::1", "interface": 1}]
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}, {"dst": "::/0", "gw": "fe80::1"}]
    assert [i["name"] for i in out["interfaces"]] == [out["interfaces"][0]["name"], "eth0"]
    sh(pod_ns, "ping", "-6", "-c", "1", "-W", "2", HOST6)
    assert cni(ns, "CHECK", netconf, f"/run/netns/{pod_ns}") == (0, None)
    sh(pod_ns, "ip", "addr", "del", "fd00:244::1c1/128", "dev", "eth0")
    code, err = cni(ns, "CHECK", netconf, f"/run/netns/{pod_ns}")
    assert code != 0 and err["msg"] == f"eth0 in /run/netns/{pod_ns} lacks fd00:244::1c1", err
    sh(pod_ns, "ip", "addr", "add", "fd00:244::1c1/128", "dev", "eth0", "nodad")
    sh(ns, "ip", "-6", "route", "del", "fd00:244::1c1/128")
    code, err = cni(ns, "CHECK", netconf, f"/run/netns/{pod_ns}")
    assert code != 0 and err["msg"].startswith("the host has no route to fd00:244::1c1 via tt"), err
    assert cni(ns, "DEL", netconf, f"/run/netns/{pod_ns}")[0] == 0
    assert json.loads(tortie(ns, config, "pod", "list", "--json").stdout) == []
    assert cni(ns, "ADD", netconf, f"/run/netns/{pod_ns}")[1]["ips"] == out["ips"]  # both released: the same again
    assert cni(ns, "DEL", netconf, f"/run/netns/{pod_ns}")[0] == 0
