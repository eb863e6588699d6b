"""The daemon's BFD service in a namespace against a runner in another: status, metrics, hold-down, failures
reported within the detection time, peers removed by configure() end with AdminDown."""
import json

import pytest

from tests.netns import requires_root, run_in_netns
from tests.node.bfd_pair import BFD_CUT, LEFT, RIGHT, start_runner, state_is, stop_runner, veth_pair

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(120)]

SCENARIO = """
import asyncio, dataclasses, json, subprocess, time
from ipaddress import IPv4Address
from bgpd.bfd.guard import HOLD_DOWN
from bgpd.bfd.service import BfdService
from config.node import Peer

CUT = {cut!r}

def nft(*args, input=None):
    subprocess.run(["ip", "netns", "exec", "{theirs}", "nft", *args], input=input, text=True, check=True)

async def until(pred, timeout):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.01)

async def main():
    failures, out = [], {{}}
    svc = BfdService([IPv4Address("{left}")], lambda peer, reason: failures.append((time.time(), peer, reason)))
    fast = {{"enabled": True, "min_rx": 100, "min_tx": 100}}
    svc.configure([Peer(address="{right}", asn=1, bfd=fast), Peer(address="10.77.0.9", asn=1)])
    await svc.start()
    state = lambda: svc.status("{right}").state
    await until(lambda: state() == "up", 10)
    out["status_up"] = dataclasses.asdict(svc.status("{right}"))
    out["no_bfd_peer"] = svc.status("10.77.0.9")
    second = BfdService([IPv4Address("{left}")], lambda peer, reason: None)  # port 3784 taken: BFD off, logged
    second.configure([Peer(address="{right}", asn=1, bfd=fast)])
    await second.start()
    out["second"] = dataclasses.asdict(second.status("{right}"))
    second.close()
    # a failure within the hold-down only counts
    nft("-f", "-", input=CUT)
    await until(lambda: state() == "down", 5)
    nft("delete", "table", "inet", "bfdcut")
    out["failures_in_hold_down"] = len(failures)
    await until(lambda: state() == "up", 10)
    await asyncio.sleep(HOLD_DOWN + 0.2)
    out["armed"] = svc.status("{right}").armed
    nft("-f", "-", input=CUT)
    cut = time.time()
    await until(lambda: failures, 5)
    out["reported_after"] = failures[0][0] - cut
    out["failure"] = failures[0][1:]
    nft("delete", "table", "inet", "bfdcut")
    await until(lambda: state() == "up", 10)
    out["after"] = dataclasses.asdict(svc.status("{right}"))
    svc.configure([])
    out["after_removal"] = svc.status("{right}")
    await asyncio.sleep(0.3)
    svc.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def test_service_reports_failures_after_the_hold_down(make_netns):
    a, b = veth_pair(make_netns)
    peer = start_runner(b, RIGHT, LEFT, "--min-rx", "100", "--min-tx", "100")
    try:
        r = run_in_netns(a, SCENARIO.format(theirs=b, left=LEFT, right=RIGHT, cut=BFD_CUT), timeout=90)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        removed = peer.wait(lambda d: d.get("remote") == "ADMIN_DOWN", 5, "AdminDown from the removed session")
    finally:
        stop_runner(peer)
    up = out["status_up"]
    assert up["state"] == "up" and up["detection_time_ms"] == 300 and up["tx_interval_ms"] == 100
    assert out["no_bfd_peer"] is None and out["after_removal"] is None
    assert out["second"]["state"] == "off"
    assert out["second"]["error"] == f"cannot listen on {LEFT}:3784: Address already in use"
    assert out["failures_in_hold_down"] == 0 and out["armed"] is True
    assert out["failure"] == [RIGHT, "bfd down (detection time expired)"]
    assert out["reported_after"] < 0.3 + 0.2  # detection time plus scheduling slack
    after = out["after"]
    assert after["state"] == "up" and after["failures"] == 1 and after["ignored_failures"] == 1
    assert after["detections"] == 2 and after["changes"]["down"] == 2 and after["changes"]["up"] == 3
    assert removed["new"] == "DOWN"
