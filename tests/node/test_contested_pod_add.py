"""A pod ADD whose address turns out to be another node's, for real: a daemon, "loser" (a scratch namespace, a files
datastore), owns a block and one pod in it. `tortie pod add` takes the block's next address; while the ADD is between
choosing it and publishing the pod (held on the pod's resolv.conf, a FIFO here), "winner" writes an owned claim on the
block marked earlier (the two claims crossed: propagation outran claim_settle) and a pod of its own on that address.
The daemon keeps its claim (its first pod uses the block), claims a block of its own; the ADD's first address is not
published, the pod is wired again with an address of the new block, and its endpoint is one every reader accepts.
The daemon's log names the block, the owner and the new address; once its pods are gone it gives the block up.
And an ADD that needs a block before the daemon has loaded its datastore waits for it rather than have one claimed
on an empty view (which is how claims cross at start-up)."""
import asyncio
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from bgpd.dataplane.pods import NETNS_ETC
from bgpd.ipam.claims import blocks_from
from bgpd.ipam.ownership import endpoint_prefixes, foreign_endpoints
from bgpd.ipam.state import NodeBlocks, load
from config.datastore import FilesDatastore, cidr_segment
from config.node import IPPool
from tests.netns import RUN_PREFIX, netns_names, requires_root, wait_for
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


class Loser:
    """The daemon of node "loser" in a scratch namespace, and its `tortie` commands."""

    def __init__(self, tmp: Path, ns: str):
        self.tmp, self.prefix = tmp, f"{RUN_PREFIX}c-"
        self.config = tmp / "tortie.yaml"
        self.config.write_text(CONFIG.format(name="loser", router_id="10.96.0.1", underlay="listen_address: 10.96.0.1",
                                             pools=f"[{{cidr: {POOL.cidr}, block_size: {POOL.block_size}}}]", tmp=tmp,
                                             prefix=self.prefix))
        self.command = ["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "bgpd.cli.main"]
        self.log = open(tmp / "daemon.log", "w")
        self.daemon = subprocess.Popen([*self.command, "run", "--config", str(self.config)], stdout=self.log,
                                       stderr=subprocess.STDOUT, cwd=ROOT)

    def tortie(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([*self.command, *args, "-c", str(self.config)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=ROOT)

    def text(self) -> str:
        return (self.tmp / "daemon.log").read_text()

    def blocks(self) -> list:
        assert self.daemon.poll() is None, self.text()[-3000:]
        return load(self.tmp / "loser" / "state", NodeBlocks).blocks

    def entries(self, writes: dict[str, dict] | None = None) -> dict[str, dict]:
        return asyncio.run(datastore(self.tmp / "ds", writes or {}))


@contextmanager
def loser(tmp: Path, make_netns) -> Iterator[Loser]:
    """The node, its pods' namespaces removed and its daemon stopped afterwards (a clean exit)."""
    ns = make_netns("contest")
    subprocess.run(["ip", "-n", ns, "addr", "add", "10.96.0.1/32", "dev", "lo"], check=True)
    node = Loser(tmp, ns)
    try:
        yield node
    finally:
        for name in netns_names():
            if name.startswith(node.prefix):
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
        node.daemon.terminate()
        node.daemon.wait(timeout=20)
        node.log.close()
    assert node.daemon.returncode == 0, node.text()[-3000:]


def test_an_add_whose_address_another_node_owned_first_gets_one_of_a_block_of_its_own(tmp_path, make_netns):
    with loser(tmp_path, make_netns) as node:
        fifo = NETNS_ETC / f"{node.prefix}default-late" / "resolv.conf"
        late = None
        try:
            wait_for(lambda: node.blocks() == [BLOCK], 30, interval=0.1, what="the loser's block in blocks.json")
            out, err = node.tortie("pod", "add", "default/early").communicate(timeout=60)
            assert out.split() == [FIRST], err

            fifo.parent.mkdir(parents=True)
            os.mkfifo(fifo)
            late = node.tortie("pod", "add", "default/late")
            # its namespace is made right before its resolv.conf is written: the address is chosen, not published
            wait_for(lambda: Path("/run/netns", fifo.parent.name).exists() or late.poll() is not None, 30,
                     interval=0.05, what="the late pod's address chosen")
            assert late.poll() is None, late.communicate()
            node.entries({"status/winner": {"alive": True, "expires": time.time() + 3600},
                          f"claims/{cidr_segment(BLOCK)}/winner": {"owned": True, "at": 1.0},
                          "endpoints/winner/default/web": {"labels": {}, "ips": [SECOND], "interface": "ttwinner0"}})
            wait_for(lambda: node.blocks() not in ([BLOCK], []), 30, interval=0.1, what="a block of the loser's own")
            (own,) = node.blocks()
            with open(fifo) as f:  # the ADD goes on
                f.read()
            out, err = late.communicate(timeout=90)
            assert late.returncode == 0, err
            assert out.split() == [str(next(own.hosts()))]

            entries = node.entries()
            endpoints = {k: v for k, v in entries.items() if k.startswith("endpoints/")}
            claims = {k: v for k, v in entries.items() if k.startswith("claims/")}
            assert endpoints["endpoints/loser/default/late"]["ips"] == out.split()
            # as every reader sees them: the late pod and the winner's accepted, the early pod not (a contested block)
            assert foreign_endpoints(endpoints, endpoint_prefixes(claims, lambda n: True)).keys() == {
                "endpoints/loser/default/early"}
            text = node.text()
            assert f"pod default/late: address {SECOND} is in {BLOCK}, which winner holds" in text, text[-3000:]
            assert f"pod default/late has address(es) {out.split()[0]} instead (address {SECOND} is in {BLOCK}" in text

            for pod in ("late", "early"):
                _, err = node.tortie("pod", "del", f"default/{pod}").communicate(timeout=60)
                assert not err
            key = f"claims/{cidr_segment(BLOCK)}/loser"
            wait_for(lambda: key not in node.entries(), 30, interval=0.2, what="the contested block given up")
        finally:
            if late is not None and late.poll() is None:  # held on the FIFO by a failure above
                late.kill()
                late.communicate()
            fifo.unlink(missing_ok=True)
            if fifo.parent.is_dir() and not any(fifo.parent.iterdir()):
                fifo.parent.rmdir()


def test_an_add_before_the_datastore_is_loaded_waits_for_the_nodes_first_block(tmp_path, make_netns):
    """The daemon cannot read its datastore yet (its directory is a file: it tries again 1 s, 2 s, ... later). A
    `tortie pod add` meanwhile finds no block and asks the daemon for one; the daemon waits until the datastore is
    loaded and its first block claimed, and answers with that block rather than claim one on an empty view (and
    then a second one)."""
    (tmp_path / "ds").write_text("")
    with loser(tmp_path, make_netns) as node:
        control = str(tmp_path / "loser" / "run" / "tortie.sock")
        wait_for(lambda: os.path.exists(control) or node.daemon.poll() is not None, 30, interval=0.05,
                 what="the control socket")
        add = node.tortie("pod", "add", "default/first")

        def asking() -> bool:  # a connection to the control socket besides the listening one: the block asked for
            assert add.poll() is None, add.communicate()
            return sum(control in line for line in open(f"/proc/{node.daemon.pid}/net/unix")) > 1
        wait_for(asking, 30, interval=0.05, what="the ADD asking for a block")
        (tmp_path / "ds").unlink()
        (tmp_path / "ds").mkdir()
        out, err = add.communicate(timeout=90)
        assert out.split() == [FIRST], err
        assert node.blocks() == [BLOCK]
        assert [k for k in node.entries() if k.startswith("claims/")] == [f"claims/{cidr_segment(BLOCK)}/loser"]
        _, err = node.tortie("pod", "del", "default/first").communicate(timeout=60)
        assert not err
