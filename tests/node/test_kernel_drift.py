"""KernelTable.watch against the real kernel: what others (or a link flap) do to our routes comes back.

Each test runs one script in a fresh namespace (see test_kernel_routes.host): a table with routes of our
protocol, watched with a periodic re-read far away (60 s), so only events can explain a report. The owner
does what the daemon does: it programs every reported prefix again, to its desired route.
"""
import json
import textwrap

import pytest

from tests.netns import requires_root, run_in_netns
from tests.node.test_kernel_routes import PRELUDE, host, routes  # noqa: F401 (host is a fixture)

pytestmark = [pytest.mark.netns, requires_root, pytest.mark.timeout(120)]

HARNESS = PRELUDE + textwrap.dedent("""
    import subprocess, time

    def ip(*args):
        subprocess.run(["ip", *args], check=True)

    def kernel(*selector):
        out = subprocess.run(["ip", "-j", "route", "show", *selector], capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    class Owner:
        def __init__(self, table, want):
            self.table, self.want = table, want
            self.reports = asyncio.Queue()
            self.syncs = []

        def __call__(self, prefixes):
            self.reports.put_nowait((set(prefixes), dict(self.table.installed)))
            self.syncs.append(asyncio.ensure_future(self.table.sync({p: self.want.get(p) for p in prefixes})))

        async def report(self, timeout=1.0):
            prefixes, installed = await asyncio.wait_for(self.reports.get(), timeout)
            await asyncio.gather(*self.syncs)
            return prefixes, installed

    async def watched(want):
        k = KernelTable(201)
        await k.adopt()
        await k.sync(want)
        owner = Owner(k, want)
        task = asyncio.create_task(k.watch(owner, interval=60))
        return k, owner, task

    def block(i):
        return N(f"10.{100 + i // 256}.{i % 256}.0/26")

    def out(**values):
        print(json.dumps({k: sorted(text(x) if isinstance(x, int) else str(x) for x in v)
                          if isinstance(v, (set, frozenset)) else v
                          for k, v in values.items()}))
""")


def run(ns: str, body: str) -> dict:
    r = run_in_netns(ns, HARNESS + textwrap.dedent(body), timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_deleted_route_is_reported_and_comes_back(host):
    got = run(host, """
        async def main():
            want = {block(i): GW for i in range(100)}
            k, owner, task = await watched(want)
            ip("route", "del", "10.100.7.0/26")
            start = time.monotonic()
            prefixes, installed = await owner.report()
            back = time.monotonic() - start
            out(reported=prefixes, believed=N("10.100.7.0/26") in installed, back=back,
                kernel=[r["gateway"] for r in kernel("10.100.7.0/26")], repairs=k.repairs)
        asyncio.run(main())
    """)
    assert got["reported"] == ["10.100.7.0/26"]
    assert got["believed"] is False  # at the report, the table already says what the kernel holds
    assert got["back"] < 1.0 and got["kernel"] == ["10.9.0.2"] and got["repairs"] == 1


def test_replaced_route_is_reported(host):
    got = run(host, """
        async def main():
            want = {block(i): GW for i in range(100)}
            k, owner, task = await watched(want)
            ip("route", "replace", "10.100.3.0/26", "via", "10.9.0.3", "proto", "201")   # ours, another gateway
            changed, installed = await owner.report()
            seen = sorted(map(str, installed[N("10.100.3.0/26")]))
            restored = [r["gateway"] for r in kernel("10.100.3.0/26")]
            ip("route", "replace", "10.100.4.0/26", "via", "10.9.0.3", "proto", "static")  # theirs in its place
            taken, installed = await owner.report()
            out(changed=changed, seen=seen, restored=restored, taken=taken,
                believed=N("10.100.4.0/26") in installed, refused=k.refused,
                foreign=[(r["gateway"], r["protocol"]) for r in kernel("10.100.4.0/26")], repairs=k.repairs)
        asyncio.run(main())
    """)
    assert got["changed"] == ["10.100.3.0/26"] and got["seen"] == ["10.9.0.3"] and got["restored"] == ["10.9.0.2"]
    assert got["taken"] == ["10.100.4.0/26"] and got["believed"] is False
    assert got["refused"] == ["10.100.4.0/26"]  # the owner's exclusive create: theirs is never clobbered
    assert got["foreign"] == [["10.9.0.3", "static"]] and got["repairs"] == 2


def test_link_flap_routes_return_within_a_second_of_link_up(host):
    got = run(host, """
        async def main():
            ip("link", "add", "w0", "type", "veth", "peer", "name", "w1")
            for dev in ("w0", "w1"):
                ip("link", "set", dev, "up")
            ip("addr", "add", "10.8.0.1/24", "dev", "w0")
            want = {block(i): GW for i in range(500)}         # through v0, which flaps
            want[N("10.200.0.0/26")] = frozenset([A("10.8.0.2")])  # through w0, which stays up
            want[N("10.244.9.0/26")] = frozenset()            # a blackhole needs no link
            k, owner, task = await watched(want)
            ip("link", "set", "v0", "down")
            lost, _ = await owner.report()
            refused = set(k.refused)                           # the kernel refuses them while v0 is down
            await asyncio.sleep(1)                             # the flap
            ip("link", "set", "v0", "up")
            start, reported = time.monotonic(), set()
            while len(kernel("proto", "201")) < len(want):
                prefixes, _ = await owner.report(timeout=max(start + 1 - time.monotonic(), 0.001))
                reported |= prefixes
            back = time.monotonic() - start
            out(lost=len(lost), lost_all=lost == {block(i) for i in range(500)}, refused=len(refused),
                reported_all=reported >= lost, back=back, installed=len(k.installed), still_refused=len(k.refused))
        asyncio.run(main())
    """)
    assert got["lost"] == 500 and got["lost_all"] and got["refused"] == 500
    assert got["reported_all"] and got["back"] < 1.0
    assert got["installed"] == 502 and got["still_refused"] == 0


def test_mass_flush_by_others_is_all_reported_and_repaired(host):
    """10,000 deletions at once: whether the events fit the socket or overflow it (ENOBUFS, then a dump)."""
    got = run(host, """
        async def main():
            want = {block(i): GW for i in range(10000)}
            k, owner, task = await watched(want)
            ip("route", "flush", "proto", "201")
            reported = set()
            while len(reported) < len(want):
                prefixes, _ = await owner.report(timeout=10)
                reported |= prefixes
            out(reported=len(reported), kernel=len(kernel("proto", "201")), installed=len(k.installed))
        asyncio.run(main())
    """)
    assert got == {"reported": 10000, "kernel": 10000, "installed": 10000}


def test_address_removed_and_back(host):
    """The last address of a link goes: IPv4 flushes the routes through it without a single event."""
    got = run(host, """
        async def main():
            want = {block(i): GW for i in range(100)}
            k, owner, task = await watched(want)
            ip("addr", "del", "10.9.0.1/24", "dev", "v0")
            lost, _ = await owner.report()
            ip("addr", "add", "10.9.0.1/24", "dev", "v0")
            start = time.monotonic()
            while len(kernel("proto", "201")) < len(want):
                await owner.report(timeout=max(start + 1 - time.monotonic(), 0.001))
            out(lost=len(lost), back=time.monotonic() - start, installed=len(k.installed), refused=len(k.refused))
        asyncio.run(main())
    """)
    assert got["lost"] == 100 and got["back"] < 1.0 and got["installed"] == 100 and got["refused"] == 0


def test_periodic_read_corrects_a_record_no_event_would(host):
    """Whatever no event shows (say, events lost), the full read every `interval` seconds finds."""
    got = run(host, """
        async def main():
            want = {block(i): GW for i in range(100)}
            k = KernelTable(201)
            await k.adopt()
            await k.sync(want)
            owner = Owner(k, want)
            del k.installed[block(5)]                    # our record is wrong; the kernel is right
            k.installed[block(6)] = ECMP
            task = asyncio.create_task(k.watch(owner, interval=0.3))
            first, installed = await owner.report()      # the first read, at start
            del k.installed[block(7)]
            second, installed = await owner.report(timeout=1)  # the next, 0.3 s later
            out(first=first, second=second, right=installed[block(7)] == GW and installed[block(6)] == GW,
                kernel=len(kernel("proto", "201")))
        asyncio.run(main())
    """)
    assert got == {"first": ["10.100.5.0/26", "10.100.6.0/26"], "second": ["10.100.7.0/26"], "right": True,
                   "kernel": 100}


def test_routes_of_other_protocols_are_never_reported_nor_touched(host):
    got = run(host, """
        async def main():
            want = {block(i): GW for i in range(100)}
            k, owner, task = await watched(want)
            ip("route", "add", "10.50.0.0/24", "via", "10.9.0.5", "proto", "static")
            ip("route", "add", "10.51.0.0/24", "via", "10.9.0.5", "proto", "12")
            ip("route", "add", "10.100.2.0/26", "via", "10.9.0.6", "proto", "12", "metric", "100")  # beside ours
            ip("route", "add", "10.52.0.0/24", "via", "10.9.0.5", "proto", "12")
            ip("route", "del", "10.52.0.0/24", "proto", "12")
            ip("route", "del", "10.100.5.0/26", "proto", "201")   # the marker: the events before it are read
            prefixes, installed = await owner.report()
            out(reported=prefixes, installed=len(installed), repairs=k.repairs,
                foreign=sorted((r["dst"], r["protocol"], r.get("metric", 0)) for r in kernel()
                               if r["protocol"] in ("static", "bird", "12")))
        asyncio.run(main())
    """)
    assert got["reported"] == ["10.100.5.0/26"] and got["installed"] == 99 and got["repairs"] == 1
    assert got["foreign"] == [["10.100.2.0/26", "bird", 100], ["10.50.0.0/24", "static", 0],
                              ["10.51.0.0/24", "bird", 0]]


def test_our_own_changes_are_not_drift(host):
    got = run(host, """
        async def main():
            want = {}
            k, owner, task = await watched(want)
            prefixes = [block(i) for i in range(1000)]
            results = []
            for change in ({p: GW for p in prefixes}, {p: ECMP for p in prefixes[:300]},  # add, replace
                           {p: None for p in prefixes[300:600]}, {p: frozenset() for p in prefixes[600:700]}):
                want.update(change)
                results.append(await k.sync(change))
            ip("route", "del", "10.103.200.0/26")               # the marker: the events before it are read
            prefixes, installed = await owner.report()
            out(results=[(r.added, r.replaced, r.removed, len(r.errors)) for r in results],
                reported=prefixes, installed=len(installed), repairs=k.repairs)
        asyncio.run(main())
    """)
    assert got["results"] == [[1000, 0, 0, 0], [0, 300, 0, 0], [0, 0, 300, 0], [0, 100, 0, 0]]
    assert got["reported"] == ["10.103.200.0/26"] and got["installed"] == 699 and got["repairs"] == 1
    assert len(routes(host, 201)) == 700  # the owner put the marker back
