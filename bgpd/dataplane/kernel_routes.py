"""Reconciles the kernel's routing table to the RIB's desired routes, for routes of our protocol only.

The kernel is the truth: `KernelTable.watch` follows its change events and re-reads it, so routes that
others delete or change, or that a link flap removes, are found and handed back to the owner.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Callable, Mapping

from bgpd.dataplane.netlink_routes import RT_TABLE_MAIN, KernelRoute, RouteOp, RouteWriter, strerror
from bgpd.dataplane.route_watch import (RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR,
                                        RTMGRP_IPV6_ROUTE, RTMGRP_LINK, Changes, RouteMonitor, RouteStream,
                                        reconcile)
from bgpd.prefixes import text

log = logging.getLogger("tortie.kernel")


@dataclass
class SyncResult:
    added: int = 0
    replaced: int = 0
    removed: int = 0
    errors: dict[int, str] = field(default_factory=dict)


class KernelTable:
    """Our view of the kernel's routes of our protocol, IPv4 and IPv6, and the writer that changes them.

    `installed` is what the kernel holds: adopted from a dump at start (no flush, no flap), updated from
    the acknowledgements of every change and, while `watch` runs, from what the kernel reports.
    """

    INTERVAL = 5.0  # seconds between full re-reads while watching

    def __init__(self, protocol: int, table: int = RT_TABLE_MAIN):
        self.protocol, self.table = protocol, table
        self.installed: dict[int, KernelRoute] = {}  # by prefix key (bgpd.prefixes)
        self.refused: set[int] = set()  # prefixes whose last change the kernel refused
        self.repairs = 0  # routes found differing from `installed` (deleted, changed, lost with a link)
        self._writer = RouteWriter(protocol, table)
        self._lock = asyncio.Lock()  # one write at a time, and none while the watch compares
        self._watching: RouteStream | None = None  # told what we write

    def close(self) -> None:
        self._writer.close()

    def _stream(self) -> RouteStream:
        return RouteStream(self.protocol, self.table, self._writer.port, self._writer.metric)

    async def adopt(self) -> int:
        with RouteMonitor(self._stream()) as monitor:
            monitor.dump()
            await monitor.settle()
            changes = monitor.stream.take()
        if not changes.full:
            raise OSError(changes.dump_error, f"route dump: {strerror(changes.dump_error)}")
        async with self._lock:
            self.installed = reconcile(self.installed, changes)[0]
        return len(self.installed)

    async def sync(self, desired: Mapping[int, KernelRoute | None]) -> SyncResult:
        """Makes the kernel match `desired` for these prefixes (None: no route). Batched, in a thread."""
        result = SyncResult()
        async with self._lock:  # the watch changes `installed` only while holding it
            installed, refused = self.installed, self.refused
            ops = []
            for prefix, want in desired.items():
                have = installed.get(prefix)
                if want == have:
                    refused.discard(prefix)
                    continue
                ops.append(RouteOp(prefix, want, have is not None))
            if not ops:
                return result
            failed = await asyncio.to_thread(self._writer.apply, ops)
            if self._watching is not None:
                self._watching.wrote(ops, failed)
            added = replaced = removed = 0
            for prefix, hops, replace in ops:
                code = failed.get(prefix) if failed else None
                if code is not None:  # the kernel kept what it had: so does our view
                    result.errors[prefix] = strerror(code)
                    refused.add(prefix)
                    continue
                if refused:
                    refused.discard(prefix)
                if hops is None:
                    installed.pop(prefix, None)
                    removed += 1
                else:
                    installed[prefix] = hops
                    if replace:
                        replaced += 1
                    else:
                        added += 1
            result.added, result.replaced, result.removed = added, replaced, removed
        if result.errors:
            sample = ", ".join(f"{text(p)}: {e}" for p, e in list(result.errors.items())[:3])
            log.warning("kernel rejected %d route change(s), e.g. %s", len(result.errors), sample)
        return result

    async def watch(self, on_drift: Callable[[set[int]], None], interval: float = INTERVAL) -> None:
        """Follows the kernel until cancelled; `on_drift(prefixes)` gets the routes to program again.

        Those are the prefixes whose kernel route differs from `installed` (which then says what the kernel
        holds) and, after a link or address changed or a route of another protocol appeared, the ones the
        kernel refused last (a gateway may be reachable again). Read on every event, in full every
        `interval` seconds and whenever events may be missing.
        """
        loop = asyncio.get_running_loop()
        groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
        with RouteMonitor(self._stream(), groups) as monitor:
            self._watching = monitor.stream
            try:
                monitor.dump()  # whatever changed since adopt()
                due, retry = loop.time() + interval, False
                while True:
                    await monitor.wait(max(due - loop.time(), 0))
                    if loop.time() >= due:
                        monitor.dump()
                        due = loop.time() + interval
                    async with self._lock:  # no write in flight: the stream knows all of ours
                        retry |= self._read(monitor)
                        if not monitor.stream.settled:
                            continue
                        changes, drift = await self._compare(monitor)
                    if changes.dump_error:
                        log.warning("kernel route dump failed: %s (next try in %.0f s)",
                                    strerror(changes.dump_error), interval)
                    if drift:
                        self.repairs += len(drift)
                        log.warning("kernel routes differ from ours: %d (e.g. %s), programming them again",
                                    len(drift), ", ".join(map(text, sorted(drift)[:3])))
                    if retry and self.refused:
                        log.info("a link, address or route changed: retrying %d refused route(s)",
                                 len(self.refused))
                        drift |= self.refused
                    retry = False
                    if drift:
                        on_drift(drift)
            finally:
                self._watching = None

    def _read(self, monitor: RouteMonitor) -> bool:
        """Reads what is queued; a link or address change, or a route of others where one of ours was, asks
        for a dump (once). True if a link or address changed or a route of others appeared: refused routes
        may go in now."""
        monitor.drain()
        changes = monitor.stream.changes
        if changes.links or changes.foreign & self.installed.keys():
            monitor.dump()
        news = changes.links or changes.foreign_added
        changes.links, changes.foreign, changes.foreign_added = False, set(), False
        return news

    async def _compare(self, monitor: RouteMonitor) -> tuple[Changes, set[int]]:
        """Sets `installed` to what the kernel holds; returns what was read and the prefixes that changed.
        Called with the lock held."""
        changes = monitor.stream.take()
        result = reconcile(self.installed, changes)
        if result is None:  # we and others changed a prefix, order unknown: read it all again
            monitor.dump()
            await monitor.settle()  # holding the lock: no write of ours meanwhile, so no doubt after
            changes = monitor.stream.take()
            result = reconcile(self.installed, changes)
            assert result is not None
        self.installed, drift = result
        return changes, drift
