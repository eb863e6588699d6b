"""BFD between Tortie hosts (containers/labs/bfd-mesh.clab.yml, mesh.bfd): a node that restarts its daemon keeps
its block on the other (AdminDown is no failure: graceful restart applies); a node cut off silently loses it on
BFD's word, not the 9 s hold time."""
import pytest

from tests.netns import requires_root, running_lab, wait_for
from tests.node.bfd_pair import SILENCE

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(300)]

BLOCK2 = "10.244.2.0/26"


@pytest.fixture(scope="module")
def lab():
    yield from running_lab("bfd-mesh.clab.yml", "m")


def peer(lab, node):
    return lab.json(node, "tortie", "status", "--json")["peers"][0]


def has_block2(lab):
    return BLOCK2 in lab.exec("node1", "ip", "route", "show", "proto", "201").stdout


def test_bfd_up_between_the_nodes(lab):
    wait_for(lambda: all((peer(lab, n).get("bfd") or {}).get("state") == "up" for n in ("node1", "node2")), 30,
             what="BFD up both ways")
    assert has_block2(lab)


def test_a_restart_is_not_a_failure(lab):
    wait_for(lambda: (peer(lab, "node1").get("bfd") or {}).get("armed"), 30, what="BFD armed on node1")
    pid = lab.exec("node2", "cat", "/run/tortie/tortie.pid").stdout.strip()
    lab.exec("node2", "kill", "-TERM", pid)
    wait_for(lambda: lab.exec("node2", "test", "-e", f"/proc/{pid}", check=False).returncode != 0, 15,
             what="node2's daemon to stop")
    bfd = wait_for(lambda: b if (b := peer(lab, "node1")["bfd"])["state"] == "down" else None, 10, what="BFD down")
    assert bfd["remote_state"] == "admin_down" and bfd["failures"] == 0
    assert has_block2(lab)  # kept as stale: graceful restart
    lab.exec("node2", "sh", "-c", "tortie run --config /etc/tortie/tortie.yaml >>/tmp/tortie.log 2>&1 &")
    wait_for(lambda: peer(lab, "node1")["state"] == "up" and peer(lab, "node1")["bfd"]["state"] == "up", 60,
             what="node2 back")
    assert has_block2(lab)


def test_a_silent_node_is_gone_on_bfd_not_on_the_hold_time(lab):
    """Its block leaves node1 because BFD said so (the timing is measured in test_bfd_lab and bench/bfd_bench.py:
    here every poll is a process start inside the node, slow on a busy machine)."""
    wait_for(lambda: (peer(lab, "node1").get("bfd") or {}).get("armed"), 30, what="BFD armed on node1")
    lab.exec("node2", "nft", "-f", "-", input=SILENCE)
    try:
        wait_for(lambda: not has_block2(lab), 15, interval=0.05, what="node2's block gone from node1")
        bfd = peer(lab, "node1")["bfd"]
        assert bfd["diag"] == "detection_time_expired" and bfd["failures"] == 1
        assert "session down peer=10.93.0.2 reason='bfd down (detection time expired)'" in lab.log("node1")
    finally:
        lab.exec("node2", "nft", "delete", "table", "inet", "cut")
    wait_for(lambda: has_block2(lab), 60, what="node2's block back on node1")
