"""DNS for IPv6 pods, for real: two daemons in scratch host namespaces over one files datastore, "six" (IPv6
pools only) and "dual" (both families). An IPv6-only pod resolves a pod and a service by name over IPv6 through
the resolv.conf `tortie pod add` wrote (its one nameserver: dns.address6, a ULA on the node's lo, reached via
the pod's ::/0 route); a dual-stack pod does so over IPv6 too; the CNI result names the server of each of the
pod's families; the address is deprecated (never the node's own source), marked, and gone when the daemon
stops; the underlay is not answered, and an egress policy denies IPv6 DNS as it does IPv4."""
import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bgpd.dns.address import PROTO
from tests.netns import RUN_PREFIX, requires_root, wait_for
from tests.node.test_pods6 import cni
from tests.node.test_pods6_daemon import publish

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(180)]
ROOT = Path(__file__).resolve().parents[2]
SERVER6 = "fd00:a9fe::101"
CONFIG = """
name: {name}
router_id: {router_id}
asn: 64512
{underlay}
pools: {pools}
mesh: {{enabled: false}}
bgp: {{enabled: false}}
datastore: {{type: files, path: {tmp}/ds}}
claim_settle: 0.2
metrics: {{port: 0}}
pod_netns_prefix: {prefix}
state_dir: {tmp}/{name}/state
run_dir: {tmp}/{name}/run
"""
POOL6 = '{cidr: "fd00:246::/120", block_size: 124}'
NODES = {
    "six": ("10.95.6.6", 'listen_address6: "fd95::6"', f"[{POOL6}]", ["fd95::6"]),
    "dual": ("10.95.6.2", 'listen_address: 10.95.6.2\nlisten_address6: "fd95::2"',
             f"[{{cidr: 10.246.0.0/24, block_size: 28}}, {POOL6}]", ["10.95.6.2", "fd95::2"]),
}
WEB = ["--label", "tortie.io/service=web"]
NO_EGRESS = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "no-egress", "namespace": "shop"},
             "spec": {"podSelector": {"matchLabels": {"app": "quiet"}}, "policyTypes": ["Egress"], "egress": []}}


class Node:
    def __init__(self, name: str, tmp: Path):
        router_id, underlay, pools, addresses = NODES[name]
        self.name, self.ns, self.prefix = name, f"{RUN_PREFIX}-dns6-{name}", f"{RUN_PREFIX}{name[0]}-"
        self.config = tmp / f"{name}.yaml"
        self.config.write_text(CONFIG.format(name=name, router_id=router_id, underlay=underlay, pools=pools,
                                             tmp=tmp, prefix=self.prefix))
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        self.sh("ip", "link", "set", "lo", "up")
        for a in addresses:
            self.sh("ip", "addr", "add", a, "dev", "lo", *(["nodad"] if ":" in a else []))
        self.log = open(tmp / f"{name}.log", "w")
        self.daemon = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.ns}", sys.executable, "-m",
                                        "bgpd.cli.main", "run", "--config", str(self.config)],
                                       stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.pods: list[str] = []

    def sh(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True, text=True, timeout=30,
                              check=check)

    def tortie(self, *args: str) -> list[str]:
        r = subprocess.run(["nsenter", f"--net=/run/netns/{self.ns}", sys.executable, "-m", "bgpd.cli.main", *args,
                            "-c", str(self.config)], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    def pod(self, name: str, *args: str) -> list[str]:
        self.pods.append(f"{self.prefix}shop-{name}")
        return self.tortie("pod", "add", f"shop/{name}", *args)

    def lo6(self) -> list[dict]:
        (lo,) = json.loads(self.sh("ip", "-j", "-6", "addr", "show", "lo").stdout)
        return lo["addr_info"]

    def stop(self) -> str:
        if self.daemon.poll() is None:
            self.daemon.terminate()
            self.daemon.wait(timeout=30)
        self.log.close()
        return Path(self.log.name).read_text()

    def remove(self) -> None:
        for pod in self.pods:
            subprocess.run(["ip", "netns", "del", pod], capture_output=True)
            shutil.rmtree(f"/etc/netns/{pod}", ignore_errors=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


def dig(pod: str, *args: str) -> list[str] | None:
    """dig +short in a pod (1 s, one try): the answer's lines, None when nothing came back."""
    r = subprocess.run(["ip", "netns", "exec", pod, "dig", "+short", "+time=1", "+tries=1", *args],
                       capture_output=True, text=True, timeout=30)
    return r.stdout.split() if r.returncode == 0 else None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dns6")
    nodes = {}
    try:
        for name in NODES:
            nodes[name] = Node(name, tmp)
        for node in nodes.values():
            wait_for(lambda: any(a["local"] == SERVER6 for a in node.lo6()) or node.daemon.poll() is not None, 60,
                     what=f"the DNS address on {node.name}")
            assert node.daemon.poll() is None, node.stop()[-3000:]
        six, dual = nodes["six"], nodes["dual"]
        ips = {"web6": six.pod("web6", *WEB), "client6": six.pod("client6"), "webd": dual.pod("webd", *WEB)}
        yield six, dual, ips
    finally:
        logs = {name: node.stop() for name, node in nodes.items()}
        for node in nodes.values():
            node.remove()
    for name, log in logs.items():
        assert "Traceback" not in log and "dns not served" not in log, f"{name}:\n{log[-3000:]}"


def test_an_ipv6_only_pod_resolves_pods_and_services_through_its_resolv_conf(cluster):
    six, dual, ips = cluster
    assert len(ips["web6"]) == 1 and ips["webd"][0].startswith("10.246.") and len(ips["webd"]) == 2
    client = f"{six.prefix}shop-client6"
    conf = Path(f"/etc/netns/{client}/resolv.conf").read_text()
    assert conf == f"nameserver {SERVER6}\nsearch shop.svc.tortie.local svc.tortie.local\n"
    wait_for(lambda: dig(client, "AAAA", "webd.shop.pod.tortie.local") == [ips["webd"][1]], 20,
             what="the dual-stack pod on the other node, by name, over IPv6")
    assert dig(client, "A", "webd.shop.pod.tortie.local") == [ips["webd"][0]]  # its IPv4 address, asked over IPv6
    assert dig(client, "AAAA", "web6.shop.pod.tortie.local") == ips["web6"]
    # the service, by its short name through the search list: the IPv6 addresses of its pods on both nodes
    assert sorted(dig(client, "+search", "AAAA", "web")) == sorted([ips["web6"][0], ips["webd"][1]])
    assert dig(client, "AAAA", "nope.shop.pod.tortie.local") == []  # NXDOMAIN
    assert dig(client, "-x", ips["web6"][0]) == ["web6.shop.pod.tortie.local."]


def test_a_dual_stack_pod_resolves_over_ipv6_and_has_both_servers(cluster):
    six, dual, ips = cluster
    webd = f"{dual.prefix}shop-webd"
    conf = Path(f"/etc/netns/{webd}/resolv.conf").read_text()
    assert conf.startswith(f"nameserver 169.254.1.1\nnameserver {SERVER6}\n"), conf
    wait_for(lambda: dig(webd, f"@{SERVER6}", "AAAA", "web6.shop.pod.tortie.local") == ips["web6"], 20,
             what="the IPv6-only pod, asked over IPv6")
    assert dig(webd, f"@{SERVER6}", "+tcp", "AAAA", "web6.shop.pod.tortie.local") == ips["web6"]
    assert dig(webd, "@169.254.1.1", "AAAA", "web6.shop.pod.tortie.local") == ips["web6"]


@pytest.mark.parametrize("node, servers", [("six", [SERVER6]), ("dual", ["169.254.1.1", SERVER6])])
def test_the_cni_result_names_a_server_of_each_of_the_pods_families(cluster, make_netns, node, servers):
    six, dual, _ = cluster
    host = {"six": six, "dual": dual}[node]
    pod_ns = make_netns("cnidns6")
    netconf = {"cniVersion": "1.0.0", "name": "tortie", "type": "tortie-cni", "tortieConfig": str(host.config)}
    code, out = cni(host.ns, "ADD", netconf, f"/run/netns/{pod_ns}")
    try:
        assert code == 0, out
        assert out["dns"] == {"nameservers": servers, "search": ["shop.svc.tortie.local", "svc.tortie.local"]}
        assert dig(pod_ns, f"@{SERVER6}", "AAAA", "webd.shop.pod.tortie.local") is not None  # answered over IPv6
    finally:
        assert cni(host.ns, "DEL", netconf, f"/run/netns/{pod_ns}")[0] == 0


def test_the_address_is_deprecated_marked_and_the_underlay_not_answered(cluster):
    six, dual, ips = cluster
    for node in (six, dual):
        (ours,) = [a for a in node.lo6() if a["local"] == SERVER6]
        assert (ours["prefixlen"], ours["preferred_life_time"]) == (128, 0)
    probe = "from pyroute2 import IPRoute; print(IPRoute().get_addr(family=10, address='%s')[0].get('proto'))" % SERVER6
    assert six.sh(sys.executable, "-c", probe).stdout.strip() == str(PROTO)
    # the node's own traffic to pods never comes from the server's address (its replies would go astray)
    (route,) = json.loads(six.sh("ip", "-j", "-6", "route", "get", ips["web6"][0]).stdout)
    assert route["prefsrc"] == "fd95::6"
    # the node itself over loopback is answered, from its underlay address it is not (no open resolver)
    assert six.sh("dig", "@127.0.0.1", "+short", "+time=1", "+tries=1", "AAAA",
                  "web6.shop.pod.tortie.local").stdout.split() == ips["web6"]
    assert six.sh("dig", f"@{SERVER6}", "-b", "fd95::6", "+short", "+time=1", "+tries=1", "AAAA",
                  "web6.shop.pod.tortie.local", check=False).returncode == 9


def test_an_egress_policy_denies_ipv6_dns(cluster):
    six, dual, ips = cluster
    quiet = f"{six.prefix}shop-quiet"
    six.pod("quiet", "--label", "app=quiet")
    assert dig(quiet, "AAAA", "web6.shop.pod.tortie.local") == ips["web6"]
    asyncio.run(publish(six.config.parent / "ds", "policies/shop/no-egress", NO_EGRESS))
    wait_for(lambda: dig(quiet, "AAAA", "web6.shop.pod.tortie.local") is None, 20, what="the quiet pod's DNS denied")
    assert dig(f"{six.prefix}shop-client6", "AAAA", "web6.shop.pod.tortie.local") == ips["web6"]


def test_stopping_the_daemon_removes_its_address(cluster):
    six, _, _ = cluster
    six.stop()
    assert not any(a["local"] == SERVER6 for a in six.lo6())
