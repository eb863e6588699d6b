"""UDP probe: one datagram per flow every --interval to TARGET:7007, for --duration seconds.

Each flow is one source port (so the ECMP hash puts it on one path). Prints JSON: per flow the number sent and
answered and every gap between two answers longer than 5 intervals, as [wall time before, wall time after].
"""
import argparse
import json
import select
import socket
import struct
import time

ap = argparse.ArgumentParser()
ap.add_argument("target")
ap.add_argument("--source", required=True, help="our address (the ECMP hash includes it)")
ap.add_argument("--sport", type=int, action="append", required=True)
ap.add_argument("--interval", type=float, default=0.01)
ap.add_argument("--duration", type=float, required=True)
args = ap.parse_args()

socks = {}
for port in args.sport:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((args.source, port))  # not connected: answers come from the host's own address, not the service's
    s.setblocking(False)
    socks[s] = port
flows = {port: {"sent": 0, "answered": 0, "gaps": [], "last": None} for port in args.sport}
start = time.time()
end, due, seq = start + args.duration, start, 0
while (now := time.time()) < end:
    if now >= due:
        for s, port in socks.items():
            try:
                s.sendto(struct.pack("!Id", seq, now), (args.target, 7007))
            except OSError:  # no route for a moment
                pass
            flows[port]["sent"] += 1
        seq, due = seq + 1, due + args.interval
    readable, _, _ = select.select(list(socks), [], [], max(0.0, due - time.time()))
    for s in readable:
        try:
            s.recv(64)
        except OSError:  # ICMP unreachable queued on the socket
            continue
        f, t = flows[socks[s]], time.time()
        if f["last"] is not None and t - f["last"] > 5 * args.interval:
            f["gaps"].append([f["last"], t])
        f["last"], f["answered"] = t, f["answered"] + 1
for f in flows.values():  # not answered again before the end
    if f["last"] is None or end - f["last"] > 5 * args.interval:
        f["gaps"].append([f["last"], None])
print(json.dumps({"start": start, "flows": {p: {k: v for k, v in f.items() if k != "last"} for p, f in flows.items()}}))
