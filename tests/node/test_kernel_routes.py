"""KernelTable against the real kernel, inside a throwaway namespace."""
import json
import subprocess
import textwrap

import pytest

from tests.netns import requires_root, run_in_netns

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(120)]

PRELUDE = textwrap.dedent("""
    import asyncio, json
    from ipaddress import IPv4Address as A, IPv4Network
    from bgpd.dataplane.kernel_routes import KernelTable
    from bgpd.prefixes import key, text

    def N(prefix):  # the key KernelTable is keyed by
        return key(IPv4Network(prefix))
    GW = frozenset([A("10.9.0.2")])
    ECMP = frozenset([A("10.9.0.2"), A("10.9.0.3")])
""")


def routes(ns, proto=None):
    args = ["ip", "-n", ns, "-j", "route", "show"] + (["proto", str(proto)] if proto else [])
    return json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)


@pytest.fixture
def host(make_netns):
    ns = make_netns("krt")
    for cmd in (["link", "add", "v0", "type", "veth", "peer", "name", "v1"], ["link", "set", "v0", "up"],
                ["link", "set", "v1", "up"], ["addr", "add", "10.9.0.1/24", "dev", "v0"]):
        subprocess.run(["ip", "-n", ns, *cmd], check=True)
    return ns


def test_sync_adopt_and_remove(host):
    r = run_in_netns(host, PRELUDE + textwrap.dedent("""
        async def main():
            k = KernelTable(201)
            await k.adopt()
            want = {N(f"10.{100 + i // 256}.{i % 256}.0/26"): GW for i in range(2000)}
            want[N("10.244.1.0/26")] = frozenset()      # blackhole
            want[N("10.244.2.0/26")] = ECMP
            want[N("10.3.0.0/24")] = frozenset([A("10.50.0.4")])  # unreachable gateway: refused mid-batch
            r = await k.sync(want)
            again = KernelTable(201)
            await again.adopt()                         # a restarted daemon sees exactly what we wrote
            same = again.installed == k.installed
            r2 = await k.sync({N("10.100.0.0/26"): ECMP})  # replace
            r3 = await k.sync({N("10.100.1.0/26"): None})  # delete
            print(json.dumps([r.added, sorted(map(text, r.errors)), same, r2.replaced, r3.removed]))
        asyncio.run(main())
    """))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [2002, ["10.3.0.0/24"], True, 1, 1]
    ours = routes(host, 201)
    assert len(ours) == 2001
    by_dst = {x["dst"]: x for x in ours}
    assert by_dst["10.244.1.0/26"]["type"] == "blackhole"
    assert {h["gateway"] for h in by_dst["10.244.2.0/26"]["nexthops"]} == {"10.9.0.2", "10.9.0.3"}
    assert {h["gateway"] for h in by_dst["10.100.0.0/26"]["nexthops"]} == {"10.9.0.2", "10.9.0.3"}


def test_never_touches_foreign_routes(host):
    subprocess.run(["ip", "-n", host, "route", "add", "10.50.0.0/24", "via", "10.9.0.5", "proto", "static"], check=True)
    r = run_in_netns(host, PRELUDE + textwrap.dedent("""
        async def main():
            k = KernelTable(201)
            print(await k.adopt())                      # the static route is not ours
            r = await k.sync({N("10.50.0.0/24"): GW})   # the same prefix: create must not clobber
            print(sorted(map(text, r.errors)))
            r = await k.sync({N("10.50.0.0/24"): None}) # nothing of ours there: deleting is a no-op
            print(r.removed)
            from bgpd.dataplane.netlink_routes import RouteOp
            failed = k._writer.apply([RouteOp(N("10.50.0.0/24"), None)])  # a raw delete with our protocol
            print(len(failed))
        asyncio.run(main())
    """))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:4] == ["0", "['10.50.0.0/24']", "0", "0"]
    foreign = [x for x in routes(host) if x["dst"] == "10.50.0.0/24"]
    assert len(foreign) == 1 and foreign[0]["gateway"] == "10.9.0.5" and foreign[0]["protocol"] == "static"
