"""`tortie apply`, `get`, `delete`, `node list` and `ipam release`: cluster resources in the datastore the node
configuration names (files, MQTT or etcd), as calicoctl does. Documents and entries: bgpd/cli/resources.py.

Cluster-wide resources need the admin's credentials (MQTT: --user admin; etcd: --cert admin.crt --key admin.key);
a write the datastore refuses is reported, never taken for done.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time

import yaml

from bgpd.cli.cluster import datastore_options, run_async, tool_datastore
from bgpd.cli.resources import KINDS, Kind, document, field, kind_of, load_entries
from bgpd.ipam.claims import claims_by_block
from bgpd.ipam.ownership import owned_prefixes
from config.datastore import Datastore, cidr_segment, parse_key
from config.datastore.base import checked
from config.load import ConfigError

FLUSH_TIMEOUT = 15.0


async def _write(ds: Datastore, changes: dict[str, dict | None]) -> list[str]:
    """Writes (None: deletes) and waits for the store: the keys it did not keep as written."""
    for k, value in changes.items():
        if value is None:
            await ds.delete(k)
        else:
            await ds.put(k, value)
    flushed = await ds.flush(FLUSH_TIMEOUT)
    return [k for k, v in changes.items() if not flushed or ds.get(k) != v]


def _refused(command: str, keys: list[str]) -> int:
    print(f"tortie {command}: the datastore did not take {', '.join(keys)} (credentials? see --user, --cert)",
          file=sys.stderr)
    return 1


async def _apply(args: argparse.Namespace) -> int:
    entries = {k: checked(k, v) for k, v in load_entries(args.filename).items()}  # every document checked first
    async with tool_datastore(args) as (_, ds):
        changed = {k: v for k, v in entries.items() if ds.get(k) != v}
        refused = await _write(ds, changed)
    if refused:
        return _refused("apply", refused)
    for k in entries:
        print(f"{k}: {'configured' if k in changed else 'unchanged'}")
    return 0


def _selected(ds: Datastore, kind: Kind, name: str | None, namespace: str | None) -> dict[str, dict]:
    entries = ds.items(kind.prefix)
    if kind.prefix == "policies" and namespace:
        entries = {k: v for k, v in entries.items() if parse_key(k)[1][0] == namespace}
    if name is not None:
        entries = {k: v for k, v in entries.items() if parse_key(k)[1][-1] == name}
    return dict(sorted(entries.items()))


async def _get(args: argparse.Namespace) -> int:
    kind = kind_of(args.kind)
    async with tool_datastore(args) as (_, ds):
        docs = [document(k, v) for k, v in _selected(ds, kind, args.name, args.namespace).items()]
    if args.name is not None and not docs:
        print(f"tortie get: {kind.name} {args.name} not found", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(docs[0] if args.name and len(docs) == 1 else docs, indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump_all(docs, sort_keys=False), end="")
    else:
        columns = ("metadata.namespace",) * (kind.prefix == "policies") + ("metadata.name",)
        columns += kind.columns if args.output == "wide" else ()
        rows = [[c.rsplit(".", 1)[-1].upper() for c in columns]] + [[field(d, c) for c in columns] for d in docs]
        widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


async def _delete(args: argparse.Namespace) -> int:
    if args.filename:
        if args.kind or args.name:
            raise ConfigError(["tortie delete: give KIND NAME or -f FILE, not both"])
        doomed = list(load_entries(args.filename))
    elif args.kind and args.name:
        doomed = None
    else:
        raise ConfigError(["tortie delete: give KIND NAME or -f FILE"])
    async with tool_datastore(args) as (_, ds):
        if doomed is None:
            doomed = list(_selected(ds, kind_of(args.kind), args.name, args.namespace))
        missing = [k for k in doomed if ds.get(k) is None]
        refused = await _write(ds, {k: None for k in doomed if k not in missing})
    if refused:
        return _refused("delete", refused)
    for k in doomed:
        print(f"{k}: {'not found' if k in missing else 'deleted'}")
    return 1 if missing or not doomed else 0


def node_rows(ds: Datastore, now: float) -> list[dict]:
    """Every registered node: address, AS, the prefixes it owns, liveness and when it was last known alive."""
    owned = owned_prefixes(claims_by_block(ds.items("claims"), lambda n: True))
    rows = []
    for k, record in sorted(ds.items("nodes").items()):
        name = parse_key(k)[1][0]
        alive = ds.alive(name)
        status = ds.get(f"status/{name}") or {}
        expires = status.get("expires")
        if alive:
            seen = now
        elif isinstance(expires, (int, float)):
            seen = min(expires, now)  # a files lease: alive until it ran out
        else:
            seen = None
        rows.append({"name": name, "address": record.get("address"), "address6": record.get("address6"),
                     "asn": record.get("asn"),
                     "blocks": [str(p) for p in owned.get(name, [])], "alive": alive, "last_seen": seen})
    return rows


async def _node_list(args: argparse.Namespace) -> int:
    async with tool_datastore(args) as (_, ds):
        now = time.time()
        rows = node_rows(ds, now)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    fmt = "{:<16} {:<15} {:<10} {:<7} {:<10} {}"
    print(fmt.format("NAME", "ADDRESS", "AS", "ALIVE", "LAST SEEN", "BLOCKS"))
    for r in rows:
        seen = "now" if r["alive"] else "unknown" if r["last_seen"] is None else f"{now - r['last_seen']:.0f} s ago"
        address = ",".join(str(a) for a in (r["address"], r["address6"]) if a is not None) or "-"
        print(fmt.format(r["name"], address, str(r["asn"]), str(r["alive"]).lower(), seen,
                         ",".join(r["blocks"]) or "-"))
    return 0


def release_plan(ds: Datastore, prefix: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[list[str], str | None]:
    """The keys that release a leaked address (/32, /128) or block: its claims, and for an address the endpoint
    entries of down nodes that hold it; or the reason it is still in use. A node whose liveness is unknown
    counts as alive (never release what may be in use)."""
    in_use = lambda node: ds.alive(node) is not False  # noqa: E731
    holders = {n for n in claims_by_block(ds.items("claims"), lambda n: True).get(prefix, {})}
    doomed = [f"claims/{cidr_segment(prefix)}/{n}" for n in sorted(holders)]
    for k, ep in sorted(ds.items("endpoints").items()):
        node = parse_key(k)[1][0]
        ips = [ip for ip in ep.get("ips", []) if _within(ip, prefix)]
        if not ips:
            continue
        if in_use(node):
            return [], f"{ips[0]} is used by {k} of node {node}, which is {'alive' if ds.alive(node) else 'not known down'}"
        if prefix.prefixlen == prefix.max_prefixlen:
            doomed.append(k)
    for node in sorted(holders):
        if in_use(node) and prefix.prefixlen < prefix.max_prefixlen:
            return [], f"node {node}, which claims it, is {'alive' if ds.alive(node) else 'not known down'}"
    return doomed, None


def _within(ip: object, prefix: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    try:
        return ipaddress.ip_address(str(ip)) in prefix
    except ValueError:
        return False


async def _ipam_release(args: argparse.Namespace) -> int:
    try:
        prefix = ipaddress.ip_network(args.prefix)
    except ValueError as e:
        raise ConfigError([f"tortie ipam release: {args.prefix}: {e}"]) from None
    async with tool_datastore(args) as (_, ds):
        doomed, reason = release_plan(ds, prefix)
        refused = [] if reason else await _write(ds, {k: None for k in doomed})
    if reason:
        print(f"tortie ipam release: {prefix} is in use: {reason}", file=sys.stderr)
        return 1
    if refused:
        return _refused("ipam release", refused)
    if not doomed:
        print(f"{prefix}: nothing holds it")
    for k in doomed:
        print(f"{k}: deleted")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    kinds = ", ".join(k.name for k in KINDS)
    p = sub.add_parser("apply", help="create or update cluster resources from YAML files",
                       description=f"Resources: {kinds}. Every document is checked before anything is written.")
    p.add_argument("-f", "--filename", action="append", required=True, help="a YAML file (repeatable)")
    datastore_options(p)
    p.set_defaults(func=run_async(_apply))
    p = sub.add_parser("get", help="show cluster resources", description=f"KIND: {kinds} (or a short name)")
    p.add_argument("kind")
    p.add_argument("name", nargs="?")
    p.add_argument("-n", "--namespace", help="policies of this namespace only")
    p.add_argument("-o", "--output", choices=("table", "wide", "yaml", "json"), default="table")
    datastore_options(p)
    p.set_defaults(func=run_async(_get))
    p = sub.add_parser("delete", help="delete cluster resources: KIND NAME, or those of -f FILE")
    p.add_argument("kind", nargs="?")
    p.add_argument("name", nargs="?")
    p.add_argument("-n", "--namespace", help="the policy's namespace (default: every namespace)")
    p.add_argument("-f", "--filename", action="append", help="a YAML file (repeatable)")
    datastore_options(p)
    p.set_defaults(func=run_async(_delete))


def add_cluster_parsers(ipam: argparse._SubParsersAction, node: argparse._SubParsersAction) -> None:
    """`tortie node list` and `tortie ipam release`, beside the other node and ipam commands."""
    p = node.add_parser("list", help="every node: address, AS, blocks, alive, last seen")
    p.add_argument("--json", action="store_true")
    datastore_options(p)
    p.set_defaults(func=run_async(_node_list))
    p = ipam.add_parser("release", help="free a leaked address or block (refused while in use)")
    p.add_argument("prefix", help="an address (a borrowed or leaked one) or a block of either family, e.g. "
                   "10.244.3.0/26 or fd00:244::40/122")
    datastore_options(p)
    p.set_defaults(func=run_async(_ipam_release))
