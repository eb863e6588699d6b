#!/usr/bin/env bash
# Sets up the machine (scripts/setup.sh) and runs the whole test suite as root.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/setup.sh"
cd "$here"
VENV=${TORTIE_VENV:-/opt/tortie-venv}
# tests/lab/test_lab_docker.py builds the node image (scripts/build-image.sh), starting dockerd if none runs:
# a dockerd the suite started is stopped again at the end.
engine_before=$([ -f /run/tortie-dockerd.pid ] && echo yes || true)
set +e
"$VENV/bin/python" -m pytest -ra -p no:cacheprovider "$@"
rc=$?
set -e
if [ -z "$engine_before" ] && [ -f /run/tortie-dockerd.pid ]; then
    "$here/scripts/build-image.sh" --stop-engine || echo "test.sh: the dockerd the tests started did not stop" >&2
fi
[ "$rc" -eq 5 ] && { echo "no tests collected" >&2; exit 1; }
exit "$rc"
