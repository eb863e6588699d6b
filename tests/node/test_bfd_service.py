"""The daemon's BFD service in a namespace against a runner in another: status, metrics, hold-down, failures
reported within the detection time, peers removed by configure() end with AdminDown."""
import json

import pytest

from tests.netns import requires_root, run_in_netns
from tests.node.bfd_pair import LEFT, RIGHT, start_runner, stop_runner, veth_pair

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(120)]

SCENARIO = """
import asyncio, dataclasses, json, time
from ipaddress import IPv4Address
from bgpd.bfd.guard import HOLD_DOWN
from bgpd.bfd.service import BfdService
from config.node import Peer
from tests.node.bfd_pair import cut_bfd, heal_bfd, remove_and_close, second_service
from tests.waiting import eventually

async def main():
    failures, out = [], {{}}
    svc = BfdService([IPv4Address("{left}")], lambda peer, reason: failures.append((time.time(), peer, reason)))
    fast = {{"enabled": True, "min_rx": 100, "min_tx": 100}}
    svc.configure([Peer(address="{right}", asn=1, bfd=fast), Peer(address="10.77.0.9", asn=1)])
    await svc.start()
    state = lambda: svc.status("{right}").state
    await eventually(lambda: state() == "up", 10)
    out["status_up"] = dataclasses.asdict(svc.status("{right}"))
    out["no_bfd_peer"] = svc.status("10.77.0.9")
    out["second"] = dataclasses.asdict(await second_service("{left}", "{right}", fast))  # port 3784 taken: BFD off
    # a failure within the hold-down only counts
    cut_bfd("{theirs}")
    await eventually(lambda: state() == "down", 5)
    heal_bfd("{theirs}")
    out["failures_in_hold_down"] = len(failures)
    await eventually(lambda: state() == "up", 10)
    await asyncio.sleep(HOLD_DOWN + 0.2)
    out["armed"] = svc.status("{right}").armed
    cut = cut_bfd("{theirs}")
    await eventually(lambda: failures, 5)
    out["reported_after"] = failures[0][0] - cut
    out["failure"] = failures[0][1:]
    heal_bfd("{theirs}")
    await eventually(lambda: state() == "up", 10)
    out["after"] = dataclasses.asdict(svc.status("{right}"))
    out["after_removal"] = await remove_and_close(svc, [], "{right}")
    print(json.dumps(out))

asyncio.run(main())
"""


def test_service_reports_failures_after_the_hold_down(make_netns):
    a, b = veth_pair(make_netns)
    peer = start_runner(b, RIGHT, LEFT, "--min-rx", "100", "--min-tx", "100")
    try:
        r = run_in_netns(a, SCENARIO.format(theirs=b, left=LEFT, right=RIGHT), timeout=90)
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
