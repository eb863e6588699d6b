#!/usr/bin/env bash
# Installs everything Tortie needs on a fresh Debian 12 machine (as root): Debian packages and a virtualenv.
# Idempotent: a second run only checks.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
VENV=${TORTIE_VENV:-/opt/tortie-venv}
APT_PACKAGES=(iproute2 bird2 gobgpd frr nftables iptables ipset conntrack mosquitto mosquitto-clients
              prometheus iputils-ping netcat-openbsd procps util-linux socat python3 python3-venv python3-dev systemd
              bind9-dnsutils dnsmasq-base dnsperf etcd-server etcd-client tcpdump iperf3 ethtool
              wireguard-go wireguard-tools  # WireGuard without the kernel module (docs/wireguard.md)
              docker.io debootstrap)  # the node image, `tortie lab up --engine docker` (scripts/build-image.sh)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d keeps packaged daemons (bird, frr, mosquitto, prometheus) from starting on the host.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
fi

PY=${PYTHON:-}
if [ -z "$PY" ]; then
    for c in python3.13 python3.12 python3.11 python3; do
        if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then PY=$c; break; fi
    done
fi
[ -n "$PY" ] || { echo "setup: need Python >= 3.11" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -e "$here[test]"
mkdir -p /etc/iproute2/rt_protos.d
install -m 0644 "$here/containers/rt_protos.d/tortie.conf" /etc/iproute2/rt_protos.d/tortie.conf
echo "setup: ok ($("$VENV/bin/tortie" --version))"
