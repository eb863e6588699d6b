#!/usr/bin/env bash
# Installs Tortie as a system service: the virtualenv (scripts/setup.sh), the systemd unit, an example
# configuration (kept if one exists) and the README. `--root DIR` installs the files under DIR instead of /
# (the virtualenv still goes to $TORTIE_VENV).  Then: systemctl enable --now tortie
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=/
[ "${1:-}" = "--root" ] && root=${2:?--root needs a directory}
VENV=${TORTIE_VENV:-/opt/tortie-venv}
"$here/scripts/setup.sh"
install -d "$root/etc/systemd/system" "$root/etc/tortie" "$root/usr/share/doc/tortie"
sed "s|/opt/tortie-venv|$VENV|g" "$here/containers/systemd/tortie.service" > "$root/etc/systemd/system/tortie.service"
chmod 0644 "$root/etc/systemd/system/tortie.service"
[ -e "$root/etc/tortie/tortie.yaml" ] || install -m 0600 "$here/containers/systemd/tortie.yaml.example" "$root/etc/tortie/tortie.yaml"
install -m 0644 "$here/README.md" "$root/usr/share/doc/tortie/README.md"
if [ "$root" = / ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
echo "install: unit $root/etc/systemd/system/tortie.service, configuration $root/etc/tortie/tortie.yaml"
echo "install: edit the configuration, then: systemctl enable --now tortie"
