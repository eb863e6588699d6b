"""The typed status and routes views: the JSON the control socket sends reads back as the same object."""
import json

import pytest

from bgpd.agent.control import _fields
from bgpd.agent.views import DatastoreStatus, PeerStatus, RouteStatus, Status

PEER = PeerStatus(name="n2", address="10.99.0.2", asn=64512, state="up", uptime=12.5, received=3, accepted=2,
                  rejected=1, advertised=1, stale=0, last_error="", updates=2, rejected_by_reason={"not_in_pool": 1})
STATUS = Status(node="n1", asn=64512, router_id="10.99.0.1", blocks=["10.244.1.0/26"], borrowed=[],
                initial_sync_done=True, kernel_routes=3, refused_routes={}, exabgp_restarts=0,
                datastore=DatastoreStatus(connected=True, resyncs=0, ready=True), peers=[PEER])


def wire(value):
    return json.loads(json.dumps(value, default=_fields))


def test_status_round_trips_through_json():
    data = wire(STATUS)
    assert Status.from_json(data) == STATUS
    assert Status.from_json({**data, "datastore": None}).datastore is None


def test_status_json_keeps_the_documented_keys():
    assert {"node", "asn", "router_id", "blocks", "borrowed", "initial_sync_done", "kernel_routes", "refused_routes",
            "exabgp_restarts", "datastore", "peers"} <= wire(STATUS).keys()
    assert {"name", "address", "asn", "state", "uptime", "received", "accepted", "rejected", "advertised", "stale",
            "last_error"} <= wire(STATUS)["peers"][0].keys()


def test_routes_round_trip():
    route = RouteStatus(prefix="10.244.2.0/26", next_hops=["10.99.0.2"], peers=["10.99.0.2"], in_kernel=True)
    assert [RouteStatus.from_json(r) for r in wire([route])] == [route]


def test_readers_need_only_their_part_and_ignore_new_keys():
    assert PeerStatus.from_json({"name": "p", "address": "10.0.0.1", "asn": 1, "state": "up", "new": 1}).received == 0


@pytest.mark.parametrize("data", [[], "x", {"name": "p", "address": "10.0.0.1", "asn": 1}])
def test_bad_shapes_are_errors(data):
    with pytest.raises((KeyError, TypeError)):
        PeerStatus.from_json(data)


def test_only_dataclasses_are_serialised():
    with pytest.raises(TypeError):
        wire(object())
