"""The BGP waiting logic of `lab up`, against stand-in status output."""
import json

import pytest

from bgpd.lab.bgp_wait import StatusError, parse_status, peer_problems, wait_until_up

pytestmark = pytest.mark.timeout(10)


def status(*states: str) -> str:
    return json.dumps({"node": "n1", "peers": [
        {"name": f"p{i}", "address": f"10.0.0.{i}", "asn": 64512, "state": s} for i, s in enumerate(states)]})


def test_parse_and_problems():
    assert peer_problems(parse_status(0, status("up", "up"), "")) == []
    assert peer_problems(parse_status(0, status("up", "idle"), "")) == ["peer p1 (10.0.0.1) is idle"]
    assert peer_problems(parse_status(0, json.dumps({"peers": []}), "")) == []


@pytest.mark.parametrize("rc, out, err, expect", [
    (1, "", "cannot reach the daemon\n", "exited 1: cannot reach the daemon"),
    (0, "not json", "", "printed no peer list"),
    (0, "{}", "", "printed no peer list"),
    (0, '{"peers": ["x"]}', "", "printed no peer list"),
])
def test_status_errors(rc, out, err, expect):
    with pytest.raises(StatusError, match=expect):
        parse_status(rc, out, err)


def test_wait_returns_when_all_up():
    answers = iter([{"n1": ["peer p1 is idle"]}, {"n1": ["peer p1 is connected"]}, {"n1": []}])
    assert wait_until_up(lambda: next(answers), timeout=5, interval=0.01) == {}


def test_wait_times_out_with_last_problems():
    assert wait_until_up(lambda: {"n1": [], "n2": ["peer x is down"]}, timeout=0.2, interval=0.05) == {
        "n2": ["peer x is down"]}
