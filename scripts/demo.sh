#!/usr/bin/env bash
# Sets up the machine and runs the main job: the three-node mesh lab, its BGP sessions and routes,
# and a pod on node1 reaching a pod on node3 (ICMP and TCP). The lab stays up; the last line says how to remove it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/setup.sh"
VENV=${TORTIE_VENV:-/opt/tortie-venv}
TOPO="$here/containers/labs/mesh3.clab.yml"
tortie() { "$VENV/bin/tortie" "$@"; }
in_node() { local node=$1; shift; tortie lab exec "$TOPO" "$node" -- "$@"; }

tortie lab down "$TOPO" >/dev/null 2>&1 || true
tortie lab up "$TOPO"
for node in node1 node2 node3; do
    echo; echo "=== $node: tortie status"; in_node "$node" tortie status
done
echo; echo "=== node1: tortie routes"; in_node node1 tortie routes
echo; echo "=== node1: kernel routes"; in_node node1 ip route
echo; echo "=== node1: pods"; in_node node1 tortie pod list
dst=$(in_node node3 tortie pod list --json | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)[0]["ip"])')
echo; echo "=== pod default/pod1 on node1 -> pod default/pod1 on node3 ($dst): ICMP"
in_node node1 tortie pod exec default/pod1 -- ping -c 3 -W 2 "$dst"
echo; echo "=== the same over TCP (a server in node3's pod, a client in node1's pod)"
in_node node3 tortie pod exec default/pod1 -- timeout 20 "$VENV/bin/python" -c '
import socket; s = socket.create_server(("0.0.0.0", 8080)); c, a = s.accept()
c.sendall(b"hello from node3 pod to " + a[0].encode() + b"\n")' &
server=$!
in_node node1 tortie pod exec default/pod1 -- "$VENV/bin/python" -c '
import socket, sys, time
for _ in range(50):
    try: c = socket.create_connection((sys.argv[1], 8080), timeout=2); break
    except OSError: time.sleep(0.1)
print(c.recv(100).decode(), end="")' "$dst"
wait "$server"
echo; echo "The lab is up. Explore: $VENV/bin/tortie lab exec $TOPO node1 -- tortie status"
echo "Remove it:      $VENV/bin/tortie lab down $TOPO"
