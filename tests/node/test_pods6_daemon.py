"""A dual-stack node with a datastore, for real: the daemon claims a block of each IP version at start, a pod's
endpoint carries both addresses (a NetworkPolicy selects them by both: ICMP and ICMPv6 allowed or dropped alike),
full IPv6 blocks make `tortie pod add` ask the daemon for another IPv6 block, `pod del` withdraws the endpoints."""
import asyncio
import json
import subprocess
import sys
from itertools import islice
from pathlib import Path

import pytest

from bgpd.ipam.claims import blocks_from
from bgpd.ipam.state import NodeBlocks, load
from config.datastore import FilesDatastore
from config.node import IPPool
from tests.netns import RUN_PREFIX, requires_root, wait_for

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(120)]
ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
name: solo
router_id: 10.95.0.1
asn: 64512
listen_address: 10.95.0.1
listen_address6: "fd95::1"
pools: [{{cidr: 10.244.0.0/24, block_size: 28}}, {{cidr: "fd00:244::/120", block_size: 126}}]
mesh: {{enabled: false}}
bgp: {{enabled: false}}
datastore: {{type: files, path: {tmp}/ds}}
claim_settle: 0.2
dns: {{enabled: false}}
metrics: {{port: 0}}
pod_netns_prefix: {prefix}d-
state_dir: {tmp}/state
run_dir: {tmp}/run
"""
# where "solo" starts its search in each pool (claims.start_index()), and its next IPv6 block
B4 = next(blocks_from(IPPool(cidr="10.244.0.0/24", block_size=28), "solo"))
B6, B6_NEXT = islice(blocks_from(IPPool(cidr="fd00:244::/120", block_size=126), "solo"), 2)
V4, V6 = [str(a) for a in list(B4.hosts())[:4]], [str(a) for a in [*B6.hosts(), next(B6_NEXT.hosts())]]


APPS = ["web", "client", "other", "other"]
POLICY = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
          "metadata": {"name": "web", "namespace": "shop"},
          "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]}}


async def publish(path: Path, key: str, value: dict) -> None:
    ds = FilesDatastore(path, "admin", observer=True)
    await ds.start()
    try:
        await ds.put(key, value)
    finally:
        await ds.stop()


async def endpoints(path: Path) -> dict:
    ds = FilesDatastore(path, "observer", observer=True)
    await ds.start()
    try:
        return ds.items("endpoints")
    finally:
        await ds.stop()


def test_a_dual_stack_node_claims_both_families_and_publishes_both_addresses(tmp_path, make_netns):
    ns = make_netns("pod6d")
    subprocess.run(["ip", "-n", ns, "addr", "add", "10.95.0.1/32", "dev", "lo"], check=True)
    subprocess.run(["ip", "-n", ns, "addr", "add", "fd95::1/128", "dev", "lo", "nodad"], check=True)
    config = tmp_path / "tortie.yaml"
    config.write_text(CONFIG.format(tmp=tmp_path, prefix=RUN_PREFIX))

    def tortie(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "bgpd.cli.main", *args,
                               "-c", str(config)], capture_output=True, text=True, timeout=60, cwd=ROOT)

    asyncio.run(publish(tmp_path / "ds", "policies/shop/web", POLICY))
    log = open(tmp_path / "daemon.log", "w")
    daemon = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "bgpd.cli.main", "run",
                               "--config", str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    pods = [f"shop/p{i}" for i in range(4)]
    try:
        wait_for(lambda: len(load(tmp_path / "state", NodeBlocks).blocks) == 2 or daemon.poll() is not None, 30,
                 interval=0.1, what="a block of each version in blocks.json")
        assert load(tmp_path / "state", NodeBlocks).blocks == [B4, B6]
        added = [tortie("pod", "add", pod, "--label", f"app={app}") for pod, app in zip(pods, APPS)]
        assert [r.returncode for r in added] == [0] * 4, [r.stderr for r in added]
        # the IPv6 block holds three pod addresses (::0 is the subnet-router anycast): the fourth pod's came
        # from a second IPv6 block the daemon claimed when asked
        assert [r.stdout.split() for r in added] == [list(ips) for ips in zip(V4, V6)]
        assert load(tmp_path / "state", NodeBlocks).blocks == [B4, B6, B6_NEXT]
        got = asyncio.run(endpoints(tmp_path / "ds"))
        assert got["endpoints/solo/shop/p3"]["ips"] == [V4[3], V6[3]]
        # the policy (in force before the pods came) selects p0 and its clients by both addresses
        for src, allowed in (("p1", True), ("p2", False)):
            for dst in (V4[0], V6[0]):
                ping = subprocess.run(["ip", "netns", "exec", f"{RUN_PREFIX}d-shop-{src}", "ping", "-c", "1", "-W",
                                       "1", dst], capture_output=True, timeout=10)
                assert (ping.returncode == 0) == allowed, (src, dst)
        for pod in pods:
            assert tortie("pod", "del", pod).returncode == 0
        assert asyncio.run(endpoints(tmp_path / "ds")) == {}
    finally:
        for pod in pods:
            subprocess.run(["ip", "netns", "del", f"{RUN_PREFIX}d-{pod.replace('/', '-')}"], capture_output=True)
        daemon.terminate()
        daemon.wait(timeout=20)
        log.close()
    assert daemon.returncode == 0, (tmp_path / "daemon.log").read_text()[-3000:]
