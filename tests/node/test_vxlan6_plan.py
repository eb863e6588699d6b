"""The VXLAN overlay of IPv6 pools, pure parts: configuration (the refusal lifted, a second device, the IPv6
minimum MTU), IPv6 VTEP MACs, encapsulation per family on the VTEP of the prefix's family, the firewall
rules' families, and the neighbour/FDB messages with IPv6 addresses (checked against pyroute2's codec)."""
from __future__ import annotations

from ipaddress import IPv4Address as A, IPv4Network as N, IPv6Address as A6, IPv6Network as N6

import pytest
from hypothesis import given, strategies as st
from pydantic import ValidationError

from bgpd.dataplane.netlink_routes import DeviceHop
from bgpd.dataplane.vxlan import RTM_DELNEIGH, RTM_NEWNEIGH
from bgpd.overlay.firewall import rules_for
from bgpd.overlay.vxlan import Overlay, pod_mtu, vtep_gateway, vtep_mac, vteps
from config.node import NodeConfig
from tests.node.test_vxlan_plan import entry_reads_back

POOL4, POOL6, DIRECT6 = N("10.244.0.0/16"), N6("fd00:244::/56"), N6("fd00:245::/56")
SAME4, SAME6, OTHER6 = A("192.168.1.12"), A6("fd99:1::12"), A6("fd99:2::13")
CONNECTED = (N("192.168.1.0/24"), N6("fd99:1::/64"))
OIF4, OIF6 = 7, 8

addresses6 = st.integers(1, 2**128 - 1).map(A6)


def node(pools, **extra) -> NodeConfig:
    return NodeConfig.model_validate({
        "name": "n1", "router_id": "192.168.1.11", "asn": 64512, "listen_address": "192.168.1.11",
        "listen_address6": "fd99:1::11", "pools": pools,
        "mesh": {"nodes": [{"name": "n1", "address": "192.168.1.11", "address6": "fd99:1::11"},
                           {"name": "n2", "address": str(SAME4), "address6": str(SAME6)},
                           {"name": "n3", "address6": str(OTHER6)}]}, **extra})


def test_an_ipv6_pool_may_use_vxlan_over_its_own_device():
    cfg = node([{"cidr": str(POOL6), "vxlan": "always"}, {"cidr": str(POOL4)}])
    assert cfg.uses_vxlan() and cfg.vxlan.device6 == "tortie.vxlan6"
    assert cfg.other_nodes(6) == {SAME6, OTHER6} and cfg.other_nodes(4) == {SAME4}


@pytest.mark.parametrize("extra, reason", [
    ({"vxlan": {"device6": "tortie.vxlan"}}, "device6: tortie.vxlan is the IPv4 device's name too"),
    ({"vxlan": {"device6": "vxlan6"}}, "vxlan.device6"),
    ({"vxlan": {"mtu": 1200}}, "vxlan.mtu: 1200 is below 1280, the IPv6 minimum"),
])
def test_bad_ipv6_overlay_settings_are_refused_with_the_field(extra, reason):
    with pytest.raises(ValidationError) as e:
        node([{"cidr": str(POOL6), "vxlan": "cross-subnet"}], **extra)
    assert reason in str(e.value).replace("\n", " ")


def test_an_ipv4_only_overlay_keeps_its_576_minimum():
    cfg = NodeConfig.model_validate({"name": "n1", "router_id": "192.168.1.11", "asn": 64512,
                                     "listen_address": "192.168.1.11", "vxlan": {"mtu": 1200},
                                     "pools": [{"cidr": str(POOL4), "vxlan": "always"}]})
    assert cfg.vxlan.mtu == 1200


@given(addresses6, addresses6)
def test_ipv6_vtep_macs_are_unicast_local_and_distinct(a, b):
    mac = vtep_mac(a)
    first = int(mac.split(":")[0], 16)
    assert len(mac.split(":")) == 6 and first & 1 == 0 and first & 2 == 2  # unicast, locally administered
    assert (vtep_mac(a) == vtep_mac(b)) == (a == b)  # a 40-bit hash: equal only by a 2^-40 chance
    assert vteps([b, a]) == {a: vtep_mac(a), b: vtep_mac(b)}


def test_macs_of_nodes_sharing_their_low_bits_differ():
    assert vtep_mac(A6("fd99:1::5")) != vtep_mac(A6("fd99:2::5"))


@given(addresses6)
def test_an_ipv6_vteps_gateway_is_the_link_local_address_of_its_mac(a):
    gateway, mac = vtep_gateway(a), vtep_mac(a).split(":")
    assert gateway.is_link_local and gateway.packed[:8] == bytes.fromhex("fe80000000000000")
    assert gateway.packed[8:] == bytes([int(mac[0], 16) ^ 2, *(int(b, 16) for b in mac[1:3]), 0xFF, 0xFE,
                                        *(int(b, 16) for b in mac[3:])])
    assert vtep_gateway(A("192.168.1.12")) == A("192.168.1.12")  # IPv4: the underlay address itself


def test_ipv6_overhead_is_70():
    assert pod_mtu(1500, 6) == 1430 and pod_mtu(9000, 6) == 8930


def test_each_family_goes_through_its_own_vtep():
    ov = Overlay(((POOL4, "always"), (POOL6, "cross-subnet")), CONNECTED, frozenset({SAME4, SAME6, OTHER6}),
                 OIF4, OIF6)
    b6 = N6("fd00:244::40/122")
    assert ov.route(N("10.244.1.0/26"), frozenset({SAME4})) == {DeviceHop(SAME4, OIF4)}
    through = DeviceHop(vtep_gateway(OTHER6), OIF6)  # via the other VTEP's link-local address
    assert ov.route(b6, frozenset({OTHER6})) == {through}  # another subnet: encapsulated
    assert ov.route(b6, frozenset({SAME6})) == {SAME6}  # cross-subnet, on our subnet: direct
    assert ov.route(b6, frozenset({SAME6, OTHER6})) == {SAME6, through}
    assert ov.route(DIRECT6.subnets(new_prefix=122).__next__(), frozenset({OTHER6})) == {OTHER6}  # no VXLAN
    assert ov.route(b6, frozenset({A6("fd99:2::fe")})) == {A6("fd99:2::fe")}  # a router: no VTEP
    assert ov.route(b6, frozenset()) == frozenset()
    # the IPv6 VTEP not there yet: IPv6 routes stay direct, IPv4 ones are unaffected
    v4_only = Overlay(ov.pools, CONNECTED, ov.nodes, OIF4, None)
    assert v4_only.route(b6, frozenset({OTHER6})) == {OTHER6}
    assert v4_only.route(N("10.244.1.0/26"), frozenset({SAME4})) == {DeviceHop(SAME4, OIF4)}


def test_the_vxlan_guard_follows_the_families_whose_pools_use_it():
    rules = rules_for(node([{"cidr": str(POOL6), "vxlan": "always"}, {"cidr": str(POOL4), "nat_outgoing": False}]))
    assert rules.vxlan_versions == {6} and rules.of(6).vxlan_port == 4789 and rules.of(4).vxlan_port is None
    assert rules.of(6).nodes == (SAME6, OTHER6) and rules.of(4).nodes == (SAME4,)
    assert rules.of(6).nat_pools == (POOL6,) and rules.versions() == (6,)


@given(st.sampled_from([RTM_NEWNEIGH, RTM_DELNEIGH]), st.sampled_from([10, 7]), addresses6,
       st.integers(1, 2**31 - 1), st.integers(0, 2**32 - 1))
def test_ipv6_vtep_entries_encode_as_pyroute2_reads_them(kind, family, address, index, seq):
    entry_reads_back(kind, family, address, index, seq)
