#!/usr/bin/env python3
"""CPU per stage of the daemon's route path, in process: ExaBGP's lines -> events -> RIB -> plan -> kernel ops.

Feeds N routes as ExaBGP 5 sends them (compact JSON, 256 prefixes per UPDATE, one next hop) through the
daemon's own code: the line decode, `json.loads`, `messages.parse_line` (the rest: prefix parsing),
`NodeCore.event` (import filter, RIB), `NodeCore.plan` in the daemon's batches, `KernelTable.sync`'s
bookkeeping (with its thread hop) and the encoding of every message (none sent), the route watch's
reconcile of those writes, and apart from the timed path the decoding of the same routes as a dump.
No kernel, no ExaBGP: `bench/bgp_bench.py` measures the real path; this says where its CPU goes. Best of
--repeat runs per stage (process time), microseconds per route.

Run: /opt/tortie-venv/bin/python bench/route_stages.py [--routes 10000] [--repeat 7]
Prints a table and writes bench/results/route_stages.json. Works against another tree with PYTHONPATH=TREE.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from bgpd.agent.daemon import Daemon, core_config
from bgpd.bgp import messages as msgs
from bgpd.bgp.core import NodeCore
from bgpd.dataplane import netlink_routes
from bgpd.dataplane.kernel_routes import KernelTable
from bgpd.dataplane.route_watch import Changes, reconcile
from config.effective import effective
from config.node import NodeConfig

RESULTS = Path(__file__).resolve().parent / "results" / "route_stages.json"
PEER, LOCAL = "10.97.0.2", "10.97.0.1"
PER_UPDATE = 256  # prefixes per UPDATE as BIRD packs /26s
PROTOCOL = 201


def exabgp_lines(n: int) -> list[bytes]:
    """The session's lines as ExaBGP writes them to its API process (state up, UPDATEs, End-of-RIB)."""
    head = ('{ "exabgp": "5.0.0", "time": 1796070084.3371553, "host" : "vm", "pid" : 5031, "ppid" : 5014, '
            '"counter": %d, "type": "%s", "neighbor": { "address": { "local": "' + LOCAL + '", "peer": "' + PEER
            + '" }, "asn": { "local": 64512, "peer": 64513 }, "router-id": "' + LOCAL + '" , ')
    lines = [head % (1, "state") + '"state": "up" } }']
    prefixes = [f"10.{i >> 10 & 255}.{i >> 2 & 255}.{(i & 3) * 64}/26" for i in range(n)]
    for start in range(0, n, PER_UPDATE):
        nlri = ", ".join(f'"{p}"' for p in prefixes[start:start + PER_UPDATE])
        lines.append(head % (len(lines) + 1, "update") + '"direction": "receive", "message": { "update": { '
                     '"attribute": { "origin": "igp", "as-path": {"0": {"element": "as-sequence", "value": '
                     '[64513]}} }, "announce": { "ipv4 unicast": { "' + PEER + '": [ ' + nlri + ' ] } } } } } }')
    lines.append(head % (len(lines) + 1, "update") + '"direction": "receive", "message": { "eor": { "afi" : '
                 '"ipv4", "safi" : "unicast" } } } }')
    return [(line + "\n").encode() for line in lines]


def node_core() -> NodeCore:
    node = NodeConfig.model_validate({
        "name": "recv", "router_id": LOCAL, "asn": 64512, "listen_address": LOCAL,
        "pools": [{"cidr": "10.0.0.0/8", "block_size": 26}], "blocks": ["10.255.255.0/26"],
        "mesh": {"enabled": False}, "max_prefixes": 1_000_000, "metrics": {"port": 0},
        "peers": [{"address": PEER, "asn": 64513, "passive": True, "name": "sender"}]})
    core = NodeCore(core_config(effective(node, None)))
    core.adopted([], 0.0)
    return core


class Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, since: float) -> float:
        now = time.process_time()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - since
        return now


async def one_run(lines: list[bytes]) -> dict[str, float]:
    """The stages of one session's routes, each timed on its own."""
    clock = Clock()
    core = node_core()
    table = KernelTable(PROTOCOL)
    table.close()
    writer = table._writer

    def encode_only(ops):  # the writer's work minus the system calls
        for i, op in enumerate(ops):
            netlink_routes.encode(op, i + 1, writer.protocol, writer.table, writer.metric, ack=False)
        return {}
    writes = []
    table._watching = type("Stream", (), {"wrote": lambda self, ops, failed: writes.append((ops, failed))})()
    t = time.process_time()
    texts = [line.decode(errors="replace") for line in lines]
    t = clock.add("line decode", t)
    for text in texts:
        json.loads(text)
    t = clock.add("json.loads", t)
    events = [e for text in texts for e in msgs.parse_line(text)]
    t = clock.add("parse_line", t)
    plans = []
    for event in events:
        core.event(event, 0.0)
        if core.planned >= Daemon.FLUSH_AT:
            t = clock.add("core.event", t)
            while core.planned:
                plans.append(core.plan(Daemon.MAX_BATCH))
            t = clock.add("core.plan", t)
    t = clock.add("core.event", t)
    while core.planned:
        plans.append(core.plan(Daemon.MAX_BATCH))
    t = clock.add("core.plan", t)
    check = core.rib.filter.prefix_check(4)
    t = time.process_time()
    for event in events:  # the import filter alone, again: the share of core.event it takes
        for prefix in getattr(event, "prefixes", ()):
            check(prefix)
    t = clock.add("  of which the import filter", t)
    writer.apply = lambda ops: {}
    for plan in plans:
        await table.sync(plan)
    t = clock.add("sync bookkeeping", t)
    ops = [op for ops, _ in writes for op in ops]
    t = time.process_time()
    encode_only(ops)
    t = clock.add("encode", t)
    messages = [netlink_routes.encode(op, 1, PROTOCOL, ack=False) for op in ops]
    t = time.process_time()
    for data in messages:  # what the watch's periodic dump (every 5 s) decodes; not on the timed path
        netlink_routes.decode_route(data, 16, len(data))
    t = clock.add("kernel route decode (watch dump)", t)
    for routes in plans:
        core.kernel_synced(routes, {}, 0.0)
    t = clock.add("core.kernel_synced", t)
    changes = Changes(writes=writes)
    reconcile(dict(table.installed), changes)
    clock.add("watch reconcile", t)
    clock.seconds["parse_line"] -= clock.seconds["json.loads"]
    order = ["line decode", "json.loads", "parse_line", "core.event", "  of which the import filter", "core.plan",
             "sync bookkeeping", "encode", "core.kernel_synced", "watch reconcile", "kernel route decode (watch dump)"]
    names = {"parse_line": "prefix parsing (parse_line - json)"}
    return {names.get(stage, stage): clock.seconds[stage] for stage in order}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--routes", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--output", type=Path, default=RESULTS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lines = exabgp_lines(args.routes)
    runs = [asyncio.run(one_run(lines)) for _ in range(args.repeat)]
    best = {stage: min(r[stage] for r in runs) for stage in runs[0]}
    total = sum(s for stage, s in best.items() if "watch dump" not in stage and "of which" not in stage)
    print(f"Route path CPU per stage, {args.routes} routes, best of {args.repeat} (microseconds per route)")
    for stage, s in best.items():
        print(f"  {stage:<38} {s / args.routes * 1e6:7.2f}   {s * 1e3:7.1f} ms")
    print(f"  {'total on the timed path':<38} {total / args.routes * 1e6:7.2f}   {total * 1e3:7.1f} ms")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"routes": args.routes, "repeat": args.repeat, "python": sys.version,
                                       "seconds": best, "total": total}, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
