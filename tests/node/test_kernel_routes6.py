"""IPv6 routes through the hand-packed writer and KernelTable in the real kernel, in a throwaway namespace (write,
adopt after a restart, ECMP, blackholes, routes of others, drift repaired), with IPv4 routes of ours beside them
in the same table. The codec against pyroute2's, for both families: tests/node/test_netlink_routes.py."""
import json
import subprocess
import textwrap

import pytest

from tests.netns import requires_root, run_in_netns
from tests.node.test_kernel_drift import HARNESS

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(120)]

PRELUDE = HARNESS + textwrap.dedent("""
    from ipaddress import IPv6Address as A6, IPv6Network

    def N6(prefix):
        return key(IPv6Network(prefix))
    GW4 = GW
    GW = frozenset([A6("fd09::2")])
    ECMP = frozenset([A6("fd09::2"), A6("fd09::3")])

    def kernel(*selector):
        out = subprocess.run(["ip", "-j", "-6", "route", "show", *selector], capture_output=True, text=True,
                             check=True)
        return json.loads(out.stdout)

    def block(i):
        return N6(f"fd00:244:0:{i:x}::/120")
""")


def run(ns: str, body: str) -> dict:
    r = run_in_netns(ns, PRELUDE + textwrap.dedent(body), timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture
def host(make_netns):
    ns = make_netns("krt6")
    for cmd in (["link", "add", "v0", "type", "veth", "peer", "name", "v1"], ["link", "set", "v0", "up"],
                ["link", "set", "v1", "up"], ["addr", "add", "fd09::1/64", "dev", "v0", "nodad"],
                ["addr", "add", "10.9.0.1/24", "dev", "v0"]):
        subprocess.run(["ip", "-n", ns, *cmd], check=True)
    return ns


def routes6(ns: str, *selector: str) -> list[dict]:
    out = subprocess.run(["ip", "-n", ns, "-j", "-6", "route", "show", *selector], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def test_sync_adopt_ecmp_blackhole_and_both_families(host):
    got = run(host, """
        async def main():
            k = KernelTable(201)
            await k.adopt()
            want = {block(i): GW for i in range(2000)}
            want[N6("fd00:244:1::/122")] = frozenset()           # blackhole: an own block
            want[N6("fd00:244:2::/122")] = ECMP
            want[N6("fd00:244:3::/122")] = frozenset([A6("fd50::4")])  # unreachable gateway: refused mid-batch
            want[N("10.244.2.0/26")] = GW4                        # IPv4 in the same batch
            r = await k.sync(want)
            again = KernelTable(201)
            adopted = await again.adopt()                         # a restarted daemon reads back what we wrote
            same = again.installed == k.installed
            r2 = await k.sync({block(0): ECMP, N6("fd00:244:2::/122"): GW})  # replace: to ECMP and back
            r3 = await k.sync({block(1): None, N6("fd00:244:1::/122"): None, N("10.244.2.0/26"): None})
            third = KernelTable(201)
            await third.adopt()
            out(added=r.added, errors=set(r.errors), adopted=adopted, same=same, replaced=r2.replaced,
                removed=r3.removed, same_after=third.installed == k.installed)
        asyncio.run(main())
    """)
    assert got == {"added": 2003, "errors": ["fd00:244:3::/122"], "adopted": 2003, "same": True, "replaced": 2,
                   "removed": 3, "same_after": True}
    ours = {r["dst"]: r for r in routes6(host, "proto", "201")}
    assert len(ours) == 2000
    assert {h["gateway"] for h in ours["fd00:244::/120"]["nexthops"]} == {"fd09::2", "fd09::3"}
    assert ours["fd00:244:2::/122"]["gateway"] == "fd09::2" and "fd00:244:1::/122" not in ours


def test_never_touches_foreign_routes(host):
    subprocess.run(["ip", "-n", host, "-6", "route", "add", "fd50::/64", "via", "fd09::5", "proto", "static"],
                   check=True)
    got = run(host, """
        async def main():
            k = KernelTable(201)
            adopted = await k.adopt()                            # the static route is not ours
            r1 = await k.sync({N6("fd50::/64"): GW})             # the same prefix: create must not clobber
            r2 = await k.sync({N6("fd50::/64"): None})           # nothing of ours there: deleting is a no-op
            from bgpd.dataplane.netlink_routes import RouteOp
            failed = k._writer.apply([RouteOp(N6("fd50::/64"), None)])  # a raw delete with our protocol
            out(adopted=adopted, errors=set(r1.errors), removed=r2.removed, failed=len(failed))
        asyncio.run(main())
    """)
    assert got == {"adopted": 0, "errors": ["fd50::/64"], "removed": 0, "failed": 0}
    foreign = routes6(host, "fd50::/64")
    assert len(foreign) == 1 and foreign[0]["gateway"] == "fd09::5" and foreign[0]["protocol"] == "static"


def test_drift_repaired(host):
    """One script, the IPv6 drift cases in turn: a route deleted, one hop of an ECMP route deleted (the other
    stays in the kernel), a hop appended by others, a route replaced by another protocol's (never clobbered),
    and a link down (IPv6 deletes its routes with an event per hop, and the link's addresses) then up."""
    got = run(host, """
        async def main():
            ip("link", "add", "w0", "type", "veth", "peer", "name", "w1")
            for dev in ("w0", "w1"):
                ip("link", "set", dev, "up")
            ip("addr", "add", "fd0a::1/64", "dev", "w0", "nodad")
            want = {block(i): GW for i in range(300)}           # through v0, which goes down at the end
            want[N6("fd00:245::/122")] = frozenset([A6("fd0a::2")])  # through w0, which stays up
            want[N6("fd00:246::/122")] = frozenset([A6("fd09::2"), A6("fd0a::2")])  # ECMP over both
            want[N6("fd00:247::/122")] = frozenset()           # a blackhole needs no link
            want[N("10.244.9.0/26")] = GW4
            k, owner, task = await watched(want)
            results = {}

            ip("-6", "route", "del", "fd00:244:0:7::/120")
            results["deleted"], installed = await owner.report(timeout=2)
            results["deleted_back"] = [r["gateway"] for r in kernel("fd00:244:0:7::/120")]

            ip("-6", "route", "del", "fd00:246::/122", "via", "fd0a::2", "proto", "201")
            results["hop_deleted"], installed = await owner.report(timeout=2)
            results["hop_seen"] = sorted(map(str, installed.get(N6("fd00:246::/122"), ())))
            results["hop_back"] = sorted(h["gateway"] for h in kernel("fd00:246::/122")[0]["nexthops"])

            ip("-6", "route", "append", "fd00:244:0:8::/120", "via", "fd09::3", "proto", "201")
            results["appended"], installed = await owner.report(timeout=2)
            results["appended_seen"] = sorted(map(str, installed[block(8)]))
            results["appended_back"] = [r["gateway"] for r in kernel("fd00:244:0:8::/120")]

            ip("-6", "route", "replace", "fd00:244:0:9::/120", "via", "fd09::3", "proto", "static")
            results["taken"], installed = await owner.report(timeout=2)
            results["taken_refused"] = sorted(map(text, k.refused))
            results["taken_kernel"] = [(r["gateway"], r["protocol"]) for r in kernel("fd00:244:0:9::/120")]
            del want[block(9)]                                  # the owner gives the prefix up

            ip("link", "set", "v0", "down")                     # IPv6 also drops the link's addresses
            lost, through_v0 = set(), {block(i) for i in range(300) if i != 9} | {N("10.244.9.0/26")}
            while not through_v0 <= lost:
                prefixes, _ = await owner.report(timeout=2)
                lost |= prefixes
            results["lost_others"] = sorted(map(text, lost - through_v0))  # the refused one is retried
            results["ecmp_kept"] = [h.get("flags", []) for h in kernel("fd00:246::/122")[0]["nexthops"]]
            results["refused_down"] = len(k.refused)
            ip("link", "set", "v0", "up")
            ip("addr", "add", "fd09::1/64", "dev", "v0", "nodad")
            start = time.monotonic()
            while len(kernel("proto", "201")) < 302 or k.refused:
                await owner.report(timeout=max(start + 2 - time.monotonic(), 0.001))
            results["back"] = time.monotonic() - start < 2
            results["installed"], results["repairs"] = len(k.installed), k.repairs
            results["ipv4"] = [r["gateway"] for r in json.loads(subprocess.run(
                ["ip", "-j", "route", "show", "10.244.9.0/26"], capture_output=True, text=True).stdout)]
            out(**results)
        asyncio.run(main())
    """)
    assert got["deleted"] == ["fd00:244:0:7::/120"] and got["deleted_back"] == ["fd09::2"]
    assert got["hop_deleted"] == ["fd00:246::/122"] and got["hop_seen"] == ["fd09::2"]
    assert got["hop_back"] == ["fd09::2", "fd0a::2"]
    assert got["appended"] == ["fd00:244:0:8::/120"] and got["appended_seen"] == ["fd09::2", "fd09::3"]
    assert got["appended_back"] == ["fd09::2"]
    assert got["taken"] == ["fd00:244:0:9::/120"] and got["taken_refused"] == ["fd00:244:0:9::/120"]
    assert got["taken_kernel"] == [["fd09::3", "static"]]
    assert got["lost_others"] == ["fd00:244:0:9::/120"] and got["refused_down"] == 300  # 299 IPv6, 1 IPv4
    assert got["ecmp_kept"] == [["dead", "linkdown"], []]  # an ECMP route with a live hop stays, as in IPv4
    assert got["back"] and got["installed"] == 303 and got["ipv4"] == ["10.9.0.2"]
