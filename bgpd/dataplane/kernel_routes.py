"""Reconciles the kernel's routing table to the RIB's desired routes, for routes of our protocol only."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Mapping

from pyroute2 import AsyncIPRoute

from bgpd.dataplane.netlink_routes import RT_TABLE_MAIN, RouteOp, RouteWriter, strerror

log = logging.getLogger("tortie.kernel")
KernelRoute = frozenset[IPv4Address]  # empty: blackhole


@dataclass
class SyncResult:
    added: int = 0
    replaced: int = 0
    removed: int = 0
    errors: dict[IPv4Network, str] = field(default_factory=dict)


async def dump_routes(protocol: int, table: int = RT_TABLE_MAIN) -> dict[IPv4Network, KernelRoute]:
    """The IPv4 routes of `protocol` in `table`, as prefix -> next hops (empty for blackholes)."""
    out: dict[IPv4Network, KernelRoute] = {}
    async with AsyncIPRoute() as ipr:
        async for r in await ipr.route("dump", table=table, proto=protocol, family=2):
            if r["proto"] != protocol or r.get("table") != table:
                continue
            prefix = IPv4Network(f"{r.get('dst') or '0.0.0.0'}/{r['dst_len']}")
            if r.get("gateway"):
                hops = frozenset((IPv4Address(r.get("gateway")),))
            else:
                hops = frozenset(IPv4Address(dict(nh["attrs"])["RTA_GATEWAY"])
                                 for nh in r.get("multipath") or () if "RTA_GATEWAY" in dict(nh["attrs"]))
            out[prefix] = hops
    return out


async def has_address(address: IPv4Address) -> bool:
    async with AsyncIPRoute() as ipr:
        async for a in await ipr.addr("dump", family=2):
            if a.get("address") == str(address):
                return True
    return False


class KernelTable:
    """Our view of the kernel's routes of our protocol, and the writer that changes them.

    `installed` is what we believe is in the kernel: adopted from a dump at start (no flush, no flap)
    and updated from the acknowledgements of every change.
    """

    def __init__(self, protocol: int, table: int = RT_TABLE_MAIN):
        self.protocol, self.table = protocol, table
        self.installed: dict[IPv4Network, KernelRoute] = {}
        self._writer = RouteWriter(protocol, table)
        self._lock = asyncio.Lock()

    def close(self) -> None:
        self._writer.close()

    async def adopt(self) -> int:
        self.installed = await dump_routes(self.protocol, self.table)
        return len(self.installed)

    async def sync(self, desired: Mapping[IPv4Network, KernelRoute | None]) -> SyncResult:
        """Makes the kernel match `desired` for these prefixes (None: no route). Batched, in a thread."""
        ops = []
        for prefix, want in desired.items():
            have = self.installed.get(prefix)
            if want == have:
                continue
            ops.append(RouteOp(prefix, want, replace=have is not None))
        result = SyncResult()
        if not ops:
            return result
        async with self._lock:
            failed = await asyncio.to_thread(self._writer.apply, ops)
        for op in ops:
            code = failed.get(op)
            if code is not None:  # the kernel kept what it had: so does our view
                result.errors[op.prefix] = strerror(code)
                continue
            if op.next_hops is None:
                self.installed.pop(op.prefix, None)
                result.removed += 1
            else:
                self.installed[op.prefix] = op.next_hops
                if op.replace:
                    result.replaced += 1
                else:
                    result.added += 1
        if result.errors:
            sample = ", ".join(f"{p}: {e}" for p, e in list(result.errors.items())[:3])
            log.warning("kernel rejected %d route change(s), e.g. %s", len(result.errors), sample)
        return result
