#!/usr/bin/env bash
# Sets up the machine (scripts/setup.sh) and runs the whole test suite as root.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/setup.sh"
cd "$here"
VENV=${TORTIE_VENV:-/opt/tortie-venv}
set +e
"$VENV/bin/python" -m pytest -ra -p no:cacheprovider "$@"
rc=$?
set -e
[ "$rc" -eq 5 ] && { echo "no tests collected" >&2; exit 1; }
exit "$rc"
