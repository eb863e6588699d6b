"""`python -m bgpd.bfd.runner`: BFD sessions without BGP, for interop tests and the jitter benchmark.

Prints one JSON line when it listens, one per state change, and its counters at the end; SIGTERM or SIGINT ends
the sessions with AdminDown.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from ipaddress import ip_address

from bgpd.bfd.session import Timers, Transition
from bgpd.bfd.transport import Address, Endpoint


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bgpd.bfd.runner")
    ap.add_argument("--listen", type=ip_address, required=True, help="IPv4 or IPv6: the peers' family")
    ap.add_argument("--peer", type=ip_address, action="append", required=True)
    ap.add_argument("--min-rx", type=int, default=300, help="milliseconds")
    ap.add_argument("--min-tx", type=int, default=300, help="milliseconds")
    ap.add_argument("--multiplier", type=int, default=3)
    args = ap.parse_args(argv)
    return asyncio.run(run(args))


async def run(args: argparse.Namespace) -> int:
    def changed(peer: Address, t: Transition) -> None:
        print(json.dumps({"time": time.time(), "peer": str(peer), "old": t.old.name, "new": t.new.name,
                          "diag": t.diag.name, "remote": t.remote_state.name}), flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        timers = Timers(args.min_tx * 1000, args.min_rx * 1000, args.multiplier)
    except ValueError as e:
        print(f"bfd: {e}", file=sys.stderr)
        return 2
    if other := [str(p) for p in args.peer if p.version != args.listen.version]:
        print(f"bfd: peers {', '.join(other)} are not of the family of --listen {args.listen}", file=sys.stderr)
        return 2
    endpoint = Endpoint(args.listen, changed)
    try:
        await endpoint.start()
    except OSError as e:
        print(f"bfd: cannot listen on {args.listen}: {e.strerror}", file=sys.stderr)
        return 2
    print(json.dumps({"listening": str(args.listen)}), flush=True)
    for peer in args.peer:
        endpoint.add(peer, timers)
    await stop.wait()
    endpoint.close()
    print(json.dumps({"stats": dict(endpoint.stats)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
