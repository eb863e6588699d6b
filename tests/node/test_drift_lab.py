"""mesh3 (containers/labs/mesh3.clab.yml): routes that someone deletes, or that a flap of the underlay link
takes away, come back within a second, measured with real pings; `tortie routes` says what the kernel holds."""
import json
import re

import pytest

from tests.netns import requires_root, running_lab
from tests.node.test_mesh_lab import NODES, POD1, remote_blocks_ok

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(240)]

REMOTE = [block for node, (_, block) in NODES.items() if node != "node1"]

FLAP = """
import json, subprocess, sys, time
def in_kernel():
    out = subprocess.run(["tortie", "routes", "--json"], capture_output=True, text=True, check=True).stdout
    return {r["prefix"]: r["in_kernel"] for r in json.loads(out)}
remote = sys.argv[1:]
subprocess.run(["ip", "link", "set", "eth1", "down"], check=True)
down = time.time()
view = in_kernel()
while any(view[p] for p in remote) and time.time() < down + 5:  # the daemon has seen the link go
    view = in_kernel()
time.sleep(max(0.0, down + 1 - time.time()))
subprocess.run(["ip", "link", "set", "eth1", "up"], check=True)
print(json.dumps({"view": view, "up": time.time()}))
"""


@pytest.fixture(scope="module")
def lab():
    yield from running_lab("mesh3.clab.yml", "d")


class Pinger:
    """Pings node1's pod1 from node3's pod1 every 10 ms, with receive timestamps (ping -D)."""

    def __init__(self, lab, count=600):
        self.count = count
        self.proc = lab.popen("node3", "tortie", "pod", "exec", "default/pod1", "--", "ping", "-D", "-i", "0.01",
                              "-c", str(count), "-W", "1", POD1["node1"])
        self.lines = []
        while True:  # runs once a reply came back
            line = self.proc.stdout.readline()
            assert line, self.proc.stderr.read()
            self.lines.append(line)
            if "bytes from" in line:
                break

    def replies(self) -> list[float]:
        """Receive times; a reply that never came after the last one received is an endless gap (inf)."""
        out, _ = self.proc.communicate(timeout=60)
        got = [(int(m.group(2)), float(m.group(1))) for m in re.finditer(
            r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)", "".join(self.lines) + out, re.M)]
        return [t for _, t in got] + ([] if got and got[-1][0] == self.count else [float("inf")])


def views_agree(lab):
    routes = lab.json("node1", "tortie", "routes", "--json")
    return remote_blocks_ok(lab, "node1") and all(r["in_kernel"] for r in routes)


def test_route_deleted_by_hand_is_back_within_a_second(lab):
    ping = Pinger(lab)
    start = float(lab.exec("node1", "sh", "-c", "ip route del 10.244.3.0/26 proto 201 && date +%s.%N").stdout)
    replies = [t for t in ping.replies() if t > start - 0.1]
    silence = max(b - a for a, b in zip(replies, replies[1:]))
    assert silence < 1.0, f"no reply for {silence:.3f} s"
    assert views_agree(lab)
    assert "kernel routes differ from ours: 1 (e.g. 10.244.3.0/26)" in lab.log("node1")


def test_link_flap_routes_back_within_a_second_of_link_up(lab):
    ping = Pinger(lab)
    flap = json.loads(lab.exec("node1", "python3", "-c", FLAP, *REMOTE).stdout)
    assert not any(flap["view"][p] for p in REMOTE), flap["view"]  # while down, the view says they are gone
    assert flap["view"][NODES["node1"][1]]  # our blackhole needs no link
    replies = [t for t in ping.replies() if t > flap["up"]]
    assert replies[0] - flap["up"] < 1.0, f"first reply {replies[0]} after link up at {flap['up']}"
    assert views_agree(lab)
    s = lab.json("node1", "tortie", "status", "--json")
    assert all(p["state"] == "up" for p in s["peers"])  # the sessions lived through the flap
