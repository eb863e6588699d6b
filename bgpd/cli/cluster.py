"""`tortie ipam show` and `tortie node remove`: the cluster as the datastore holds it."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import AsyncIterator

from pydantic import ValidationError
from ipaddress import ip_address

from bgpd.cli.node import DEFAULT_CONFIG, load_node
from bgpd.ipam.claims import claims_by_block, owner
from bgpd.ipam.holdings import is_host
from config.datastore import Datastore, DatastoreError, TlsSettings, open_datastore, parse_key
from config.load import ConfigError, validation_errors
from config.node import NodeConfig


@contextlib.asynccontextmanager
async def tool_datastore(args: argparse.Namespace) -> AsyncIterator[tuple[NodeConfig, Datastore]]:
    """The node configuration and a started datastore client for a tool, stopped afterwards."""
    node, ds = _open(args)
    await ds.start()
    try:
        yield node, ds
    finally:
        await ds.stop()


def _open(args: argparse.Namespace) -> tuple[NodeConfig, Datastore]:
    """The node configuration and a datastore client for a tool (not started), with the credentials of
    datastore_options() if given."""
    node = load_node(args.config)
    if node.datastore is None:
        raise ConfigError([f"{args.config}: datastore: not configured"])
    settings = node.datastore
    client = settings.mqtt or settings.etcd
    if client is not None:
        update: dict = {}
        if settings.mqtt is not None or args.user:  # MQTT: a user always (the ACL names it); etcd: or a certificate
            update["username"] = args.user or client.username or node.name
        if args.password_file:
            update.update(password_file=Path(args.password_file), password=None)
        if args.cert or args.key:  # a client certificate of its own (etcd: its common name is the user)
            tls = client.tls.model_dump() if client.tls else {}
            try:
                update["tls"] = TlsSettings.model_validate({**tls, "cert": args.cert, "key": args.key})
            except ValidationError as e:
                raise ConfigError(validation_errors("--cert/--key", e)) from None
        client = client.model_copy(update=update)
        settings = settings.model_copy(update={settings.type: client})
    # an observer (no liveness, no Last Will) with a client id of its own: never takes over the node's session
    return node, open_datastore(settings, f"{args.user or node.name}-cli", observer=True)


def ipam_table(node: NodeConfig, ds: Datastore) -> list[dict]:
    """A row per claimed block of the node's pools, of either IP version; `size`: the addresses pods get from it
    (IPv4: not the network and broadcast addresses; IPv6: not the subnet-router anycast address)."""
    by_block = claims_by_block(ds.items("claims"), lambda n: True)
    used: dict[str, int] = {}
    for k, ep in ds.items("endpoints").items():
        for ip in ep.get("ips", []):
            used[ip] = used.get(ip, 0) + 1
    addresses = []
    for ip in used:
        with contextlib.suppress(ValueError):  # an endpoint record is not ours to judge here
            addresses.append(ip_address(ip))
    rows = []
    for pool in node.pools:
        # the claimed blocks, not every block of the pool: an IPv6 /48 holds 2^74 blocks of /122
        for block in sorted(b for b in by_block if b.version == pool.cidr.version
                            and b.prefixlen == pool.block_size and b.subnet_of(pool.cidr)):
            claims = by_block[block]
            n = sum(1 for ip in addresses if ip.version == block.version and ip in block)
            rows.append({"pool": str(pool.cidr), "block": str(block), "owner": owner(claims),
                         "claims": sorted(claims), "alive": ds.alive(owner(claims)) if owner(claims) else None,
                         "used": n, "size": block.num_addresses - (2 if block.version == 4 else 1)})
    return rows


def borrowed_counts(node: NodeConfig, ds: Datastore) -> dict[str, int]:
    """Pool -> how many of its addresses nodes borrowed (owned /32 or /128 claims)."""
    hosts = [b for b, claims in claims_by_block(ds.items("claims"), lambda n: True).items()
             if is_host(b) and owner(claims) is not None]
    return {str(p.cidr): sum(1 for b in hosts if b.version == p.cidr.version and b.subnet_of(p.cidr))
            for p in node.pools}


async def _ipam_show(args: argparse.Namespace) -> int:
    async with tool_datastore(args) as (node, ds):
        rows, borrowed = ipam_table(node, ds), borrowed_counts(node, ds)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for pool in node.pools:
        total = 2 ** (pool.block_size - pool.cidr.prefixlen)
        mine = [r for r in rows if r["pool"] == str(pool.cidr)]
        print(f"pool {pool.cidr}  blocks /{pool.block_size}: {len(mine)} of {total} claimed, "
              f"{borrowed[str(pool.cidr)]} addresses borrowed")
    fmt = "  {:<28} {:<14} {:<8} {:>9}  {}"
    print(fmt.format("block", "owner", "alive", "used", "claims"))
    for r in rows:
        print(fmt.format(r["block"], r["owner"] or "(pending)", str(r["alive"]).lower(), f"{r['used']}/{r['size']}",
                         ",".join(r["claims"])))
    return 0


async def _node_remove(args: argparse.Namespace) -> int:
    """Deletes a node's registration, liveness, claims and endpoints (admin credentials needed on MQTT)."""
    async with tool_datastore(args) as (_, ds):
        doomed = [k for kind in ("nodes", "status", "claims", "endpoints") for k in ds.items(kind)
                  if parse_key(k)[1][-1 if kind == "claims" else 0] == args.name]
        for k in doomed:
            await ds.delete(k)
        flushed = await ds.flush(10)
    if not flushed or any(ds.get(k) is not None for k in doomed):
        print(f"tortie node remove: the datastore kept some of {args.name}'s keys (credentials?)", file=sys.stderr)
        return 1
    print(f"removed {args.name}: {len(doomed)} keys")
    return 0


def run_async(coro_fn):
    def run(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(coro_fn(args))
        except ConfigError as e:
            print("\n".join(e.errors), file=sys.stderr)
            return 2
        except DatastoreError as e:
            print(f"tortie: datastore: {e}", file=sys.stderr)
            return 1
    return run


def datastore_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    p.add_argument("--user", help="datastore user (MQTT, etcd), e.g. admin")
    p.add_argument("--password-file", help="file holding that user's password")
    p.add_argument("--cert", help="TLS client certificate (PEM) to use instead of the node's, e.g. admin.crt")
    p.add_argument("--key", help="its private key (PEM)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from bgpd.cli import resource_commands

    ipam = sub.add_parser("ipam").add_subparsers(dest="ipam_command", required=True)
    p = ipam.add_parser("show", help="pools, blocks, owners and usage")
    p.add_argument("--json", action="store_true")
    datastore_options(p)
    p.set_defaults(func=run_async(_ipam_show))
    node = sub.add_parser("node").add_subparsers(dest="node_command", required=True)
    p = node.add_parser("remove", help="remove a node from the cluster: its routes go, its blocks are freed")
    p.add_argument("name")
    datastore_options(p)
    p.set_defaults(func=run_async(_node_remove))
    resource_commands.add_cluster_parsers(ipam, node)
