"""WireGuard beside IPv6 routes: the plan compares a route with the pools of its own family only (an IPv6 route
with IPv4 pools raised TypeError in ipaddress' subnet_of)."""
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from bgpd.dataplane.netlink_routes import DeviceHop
from bgpd.wireguard import keys
from bgpd.wireguard.plan import encryption
from config.node import MeshMember

ME, KEYED = IPv4Address("192.168.1.11"), IPv4Address("192.168.1.12")
MEMBERS = [MeshMember(name="n1", address=ME, public_key=keys.public_key(keys.generate())),
           MeshMember(name="n2", address=KEYED, address6="fd99::2", public_key=keys.public_key(keys.generate()))]
POOLS = [IPv4Network("10.244.0.0/16"), IPv6Network("fd00:244::/56")]


def test_an_ipv6_route_is_compared_with_pools_of_its_family_only():
    e = encryption(MEMBERS, "n1", ME, POOLS, False, 9)
    v6 = frozenset({IPv6Address("fd99::2")})
    assert e.route(IPv6Network("fd00:244::40/122"), v6) == v6  # IPv4 tunnel: IPv6 blocks stay as routed
    assert e.route(IPv6Network("fd98::/64"), v6) == v6
    assert e.route(IPv4Network("10.244.2.0/26"), frozenset({KEYED})) == frozenset({DeviceHop(KEYED, 9)})
