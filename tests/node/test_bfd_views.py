"""BFD in the status contract: `tortie status --json` round-trips a peer's BFD view, and `tortie lab up` waits for
the BFD sessions of peers that have one."""
import dataclasses
import json

from bgpd.agent.views import BfdStatus, PeerStatus
from bgpd.lab.bgp_wait import parse_status, peer_problems


def test_peer_status_round_trips_bfd():
    peer = PeerStatus(name="h1", address="10.95.0.11", asn=65001, state="up",
                      bfd=BfdStatus(state="up", tx_interval_ms=300.0, detection_time_ms=900.0, armed=True,
                                    changes={"up": 1, "down": 0}))
    assert PeerStatus.from_json(json.loads(json.dumps(dataclasses.asdict(peer)))) == peer
    assert PeerStatus.from_json({"name": "x", "address": "10.0.0.1", "asn": 1, "state": "up"}).bfd is None


def test_lab_waits_for_bfd_where_configured():
    def status(bfd_state):
        peers = [{"name": "h1", "address": "10.95.0.11", "asn": 65001, "state": "up", "bfd": {"state": bfd_state}},
                 {"name": "h2", "address": "10.95.0.12", "asn": 65002, "state": "up"}]
        return parse_status(0, json.dumps({"peers": peers}), "")

    assert peer_problems(status("init")) == ["peer h1 (10.95.0.11): BFD is init"]
    assert peer_problems(status("up")) == []
