"""`tortie pod add/exec/del` wire a pod for real (hand-packed rtnetlink, namespaces entered with setns) inside a
scratch host namespace: packets flow, the kernel holds what the wiring promises, a failure leaves nothing."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cni_driver import write_node_config
from tests.netns import RUN_PREFIX, requires_root

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(120)]


@pytest.fixture
def host(tmp_path, make_netns):
    ns = make_netns("podhost")
    subprocess.run(["ip", "-n", ns, "addr", "add", "10.95.1.1/32", "dev", "lo"], check=True)
    config = write_node_config(tmp_path)
    with config.open("a") as f:
        f.write(f"pod_netns_prefix: {RUN_PREFIX}p-\n")
    pod_ns = f"{RUN_PREFIX}p-shop-web"
    yield ns, config, pod_ns
    subprocess.run(["ip", "netns", "del", pod_ns], capture_output=True)  # only if a test failed half-way


def sh(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30, check=check)


def tortie(ns: str, config: Path, group: str, command: str, *args: str, check: bool = True
           ) -> subprocess.CompletedProcess:
    """Only the network namespace changes (nsenter, not `ip netns exec`, whose private mount namespace would hide
    the pod namespaces that tortie binds under /run/netns)."""
    return subprocess.run(["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "bgpd.cli.main", group,
                           command, "-c", str(config), *args], capture_output=True, text=True, timeout=30,
                          check=check)


def netns_list() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_add_exec_del(host):
    ns, config, pod_ns = host
    ip = tortie(ns, config, "pod", "add", "shop/web").stdout.strip()
    assert ip == "10.244.7.1" and pod_ns in netns_list()
    host_if = json.loads(tortie(ns, config, "pod", "list", "--json").stdout)[0]["host_interface"]
    host_link = json.loads(sh(ns, "ip", "-j", "link", "show", host_if).stdout)[0]
    assert "UP" in host_link["flags"] and "LOWER_UP" in host_link["flags"]
    routes = json.loads(sh(ns, "ip", "-j", "route", "show", f"{ip}/32").stdout)
    assert [(r["dst"], r["dev"], r["scope"]) for r in routes] == [(ip, host_if, "link")]
    assert routes[0]["protocol"] in ("tortie-pod", "202")  # pod_route_protocol, named in /etc/iproute2/rt_protos
    # inside the pod, through `tortie pod exec` (setns, then exec)
    addr = json.loads(tortie(ns, config, "pod", "exec", "shop/web", "--", "ip", "-j", "addr", "show", "eth0").stdout)
    assert [(a["local"], a["prefixlen"]) for a in addr[0]["addr_info"] if a["family"] == "inet"] == [(ip, 32)]
    neigh = json.loads(sh(pod_ns, "ip", "-j", "neigh", "show", "169.254.1.1").stdout)
    assert neigh[0]["lladdr"] == host_link["address"] and neigh[0]["state"] == ["PERMANENT"]
    pod_routes = {r["dst"]: r for r in json.loads(sh(pod_ns, "ip", "-j", "route").stdout)}
    assert pod_routes["default"]["gateway"] == "169.254.1.1" and pod_routes["169.254.1.1"]["scope"] == "link"
    sh(ns, "ping", "-c", "1", "-W", "2", ip)  # host -> pod
    sh(pod_ns, "ping", "-c", "1", "-W", "2", "10.95.1.1")  # pod -> host, via the gateway the host answers for
    tortie(ns, config, "pod", "del", "shop/web")
    assert pod_ns not in netns_list() and host_if not in sh(ns, "ip", "-o", "link").stdout


def test_a_failed_step_leaves_nothing(host):
    """The host route is the last step: a route already there makes it fail, and all before goes again."""
    ns, config, pod_ns = host
    sh(ns, "ip", "route", "add", "10.244.7.1/32", "dev", "lo", "proto", "static")
    r = tortie(ns, config, "pod", "add", "shop/web", check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr == "tortie pod add: cannot wire pod shop/web: cannot add the host route to 10.244.7.1: File exists\n"
    assert pod_ns not in netns_list() and " tt" not in sh(ns, "ip", "-o", "link").stdout
    assert json.loads(tortie(ns, config, "pod", "list", "--json").stdout) == []


def test_exec_in_a_vanished_namespace_is_one_line(host):
    ns, config, pod_ns = host
    tortie(ns, config, "pod", "add", "shop/web")
    subprocess.run(["ip", "netns", "del", pod_ns], check=True)
    r = tortie(ns, config, "pod", "exec", "shop/web", "--", "true", check=False)
    assert r.returncode == 1 and r.stderr.startswith("tortie pod exec: ") and "Traceback" not in r.stderr
    tortie(ns, config, "pod", "del", "shop/web")


def test_vxlan_pool_pods_get_room_for_the_headers(host):
    """The underlay (the interface holding listen_address, here lo at 1500 once set) minus VXLAN's 50 bytes."""
    ns, config, pod_ns = host
    text = config.read_text().replace("pools: [{cidr: 10.244.0.0/16}]", "pools: [{cidr: 10.244.0.0/16, vxlan: always}]")
    config.write_text(text)
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "mtu", "1500"], check=True)
    tortie(ns, config, "pod", "add", "shop/web")
    assert json.loads(sh(pod_ns, "ip", "-j", "link", "show", "eth0").stdout)[0]["mtu"] == 1450
    host_if = json.loads(tortie(ns, config, "pod", "list", "--json").stdout)[0]["host_interface"]
    assert json.loads(sh(ns, "ip", "-j", "link", "show", host_if).stdout)[0]["mtu"] == 1450
    tortie(ns, config, "pod", "del", "shop/web")
