"""A pod ADD whose address turns out to be another node's, for real: a daemon, "loser" (a scratch namespace, a files
datastore), owns a block and one pod in it. `tortie pod add` takes the block's next address; while the ADD is between
choosing it and publishing the pod (held on the pod's resolv.conf, a FIFO here), "winner" writes an owned claim on the
block marked earlier (the two claims crossed: propagation outran claim_settle) and a pod of its own on that address.
The daemon keeps its claim (its first pod uses the block), claims a block of its own; the ADD's first address is not
published, the pod is wired again with an address of the new block, and its endpoint is one every reader accepts.
The daemon's log names the block, the owner and the new address; once its pods are gone it gives the block up."""
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bgpd.dataplane.pods import NETNS_ETC
from bgpd.ipam.claims import blocks_from
from bgpd.ipam.ownership import endpoint_prefixes, foreign_endpoints
from bgpd.ipam.state import NodeBlocks, load
from config.datastore import FilesDatastore, cidr_segment
from config.node import IPPool
from tests.netns import RUN_PREFIX, requires_root, wait_for
from tests.node.test_dns6_pods import CONFIG  # a node with a files datastore, DNS on, BGP off

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(120)]
ROOT = Path(__file__).resolve().parents[2]
POOL = IPPool(cidr="10.244.0.0/24", block_size=28)
BLOCK = next(blocks_from(POOL, "loser"))  # where the loser starts its search: the block it claims first
FIRST, SECOND = [str(a) for a in list(BLOCK.hosts())[:2]]


async def datastore(path: Path, writes: dict[str, dict]) -> dict[str, dict]:
    """Writes entries as another node would (files: no ACL) and reads every entry back."""
    ds = FilesDatastore(path, "admin", observer=True)
    await ds.start()
    try:
        for k, v in writes.items():
            await ds.put(k, v)
        return {k: v for kind in ("claims", "endpoints") for k, v in ds.items(kind).items()}
    finally:
        await ds.stop()


def test_an_add_whose_address_another_node_owned_first_gets_one_of_a_block_of_its_own(tmp_path, make_netns):
    ns = make_netns("contest")
    subprocess.run(["ip", "-n", ns, "addr", "add", "10.96.0.1/32", "dev", "lo"], check=True)
    prefix = f"{RUN_PREFIX}c-"
    config = tmp_path / "tortie.yaml"
    config.write_text(CONFIG.format(name="loser", router_id="10.96.0.1", underlay="listen_address: 10.96.0.1",
                                    pools=f"[{{cidr: {POOL.cidr}, block_size: {POOL.block_size}}}]", tmp=tmp_path,
                                    prefix=prefix))
    state = tmp_path / "loser" / "state"
    command = ["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "bgpd.cli.main"]

    def tortie(*args: str, **kw) -> subprocess.Popen:
        return subprocess.Popen([*command, *args, "-c", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=ROOT, **kw)

    log = open(tmp_path / "daemon.log", "w")
    daemon = subprocess.Popen([*command, "run", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                              cwd=ROOT)
    late_netns = f"{prefix}default-late"
    fifo = NETNS_ETC / late_netns / "resolv.conf"
    late = None
    try:
        def blocks() -> list:
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            return load(state, NodeBlocks).blocks
        wait_for(lambda: blocks() == [BLOCK], 30, interval=0.1, what="the loser's block in blocks.json")
        out, err = tortie("pod", "add", "default/early").communicate(timeout=60)
        assert out.split() == [FIRST], err

        fifo.parent.mkdir(parents=True)
        os.mkfifo(fifo)
        late = tortie("pod", "add", "default/late")
        # its namespace is made right before its resolv.conf is written: the address is chosen, nothing published
        wait_for(lambda: Path("/run/netns", late_netns).exists() or late.poll() is not None, 30, interval=0.05,
                 what="the late pod's address chosen")
        assert late.poll() is None, late.communicate()
        asyncio.run(datastore(tmp_path / "ds", {
            "status/winner": {"alive": True, "expires": time.time() + 3600},
            f"claims/{cidr_segment(BLOCK)}/winner": {"owned": True, "at": 1.0},
            "endpoints/winner/default/web": {"labels": {}, "ips": [SECOND], "interface": "ttwinner0"}}))
        wait_for(lambda: blocks() not in ([BLOCK], []), 30, interval=0.1, what="a block of the loser's own")
        (own,) = blocks()
        with open(fifo) as f:  # the ADD goes on
            f.read()
        out, err = late.communicate(timeout=90)
        assert late.returncode == 0, err
        assert out.split() == [str(next(own.hosts()))]

        entries = asyncio.run(datastore(tmp_path / "ds", {}))
        endpoints = {k: v for k, v in entries.items() if k.startswith("endpoints/")}
        claims = {k: v for k, v in entries.items() if k.startswith("claims/")}
        assert endpoints["endpoints/loser/default/late"]["ips"] == out.split()
        # as every reader sees them: the late pod and the winner's accepted, the early pod not (a contested block)
        assert foreign_endpoints(endpoints, endpoint_prefixes(claims, lambda node: True)).keys() == {
            "endpoints/loser/default/early"}
        text = (tmp_path / "daemon.log").read_text()
        assert f"pod default/late: address {SECOND} is in {BLOCK}, which winner holds" in text, text[-3000:]
        assert f"pod default/late has address(es) {out.split()[0]} instead (address {SECOND} is in {BLOCK}" in text

        for pod in ("late", "early"):
            _, err = tortie("pod", "del", f"default/{pod}").communicate(timeout=60)
            assert not err
        key = f"claims/{cidr_segment(BLOCK)}/loser"
        wait_for(lambda: key not in asyncio.run(datastore(tmp_path / "ds", {})), 30, interval=0.2,
                 what="the contested block given up")
    finally:
        if late is not None and late.poll() is None:  # held on the FIFO by a failure above
            late.kill()
            late.communicate()
        for pod in ("early", "late"):
            subprocess.run(["ip", "netns", "del", f"{prefix}default-{pod}"], capture_output=True)
        fifo.unlink(missing_ok=True)
        for d in (fifo.parent, NETNS_ETC / f"{prefix}default-early"):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        daemon.terminate()
        daemon.wait(timeout=20)
        log.close()
    assert daemon.returncode == 0, (tmp_path / "daemon.log").read_text()[-3000:]
