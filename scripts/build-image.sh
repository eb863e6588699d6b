#!/usr/bin/env bash
# Builds the node image tortie:dev from containers/Containerfile with docker or podman, whichever is present
# (root; installs docker.io when neither is). Run from anywhere:
#
#   scripts/build-image.sh               build (skipped when tortie:dev already holds these sources)
#   scripts/build-image.sh --force       build even so
#   scripts/build-image.sh --stop-engine stop the dockerd this script started, if any
#
# No docker daemon running: starts one that never touches the host's network (--iptables=false
# --bridge=none --ip-forward=false), storage vfs (works on any filesystem), its PID in $PIDFILE,
# and leaves it running for the labs (`tortie lab up --engine docker`).
# The base image (debian:12-slim) cannot be pulled (no registry reachable): built with debootstrap
# from the Debian mirror apt uses here, with this machine's local CA certificates
# (/usr/local/share/ca-certificates, e.g. an HTTPS proxy's), then imported.
# The image carries the label tortie.sources = a hash of the build context (the Containerfile and the
# package's sources); an image with the same label is not rebuilt, so CI builds once per change.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${TORTIE_IMAGE:-tortie:dev}
BASE=debian:12-slim
PIDFILE=/run/tortie-dockerd.pid
LOG=/run/tortie-dockerd.log
say() { echo "build-image: $*" >&2; }
die() { say "$*"; exit 1; }

stop_engine() {
    [ -f "$PIDFILE" ] || { say "no dockerd started by this script"; return 0; }
    pid=$(cat "$PIDFILE")
    if kill -0 "$pid" 2>/dev/null && [ "$(cat /proc/"$pid"/comm)" = dockerd ]; then
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && die "dockerd $pid did not stop"
        say "stopped dockerd $pid"
    fi
    rm -f "$PIDFILE"
}

force=0
case "${1:-}" in
    --stop-engine) stop_engine; exit 0 ;;
    --force) force=1 ;;
    "") ;;
    *) die "unknown option $1 (--force, --stop-engine)" ;;
esac
[ "$(id -u)" = 0 ] || die "run as root"

# The engine: podman if present, else docker (installed and started when needed).
if command -v podman >/dev/null; then
    ENGINE=podman
else
    ENGINE=docker
    if ! command -v dockerd >/dev/null; then
        say "installing docker.io"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
    fi
    if ! docker info >/dev/null 2>&1; then
        say "starting dockerd (vfs, no iptables, no bridge), log $LOG"
        setsid dockerd --storage-driver=vfs --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
            --pidfile "$PIDFILE" >"$LOG" 2>&1 < /dev/null &
        for _ in $(seq 300); do docker info >/dev/null 2>&1 && break; sleep 0.1; done
        docker info >/dev/null 2>&1 || die "dockerd did not come up; see $LOG"
    fi
fi

# The build context: only what the Containerfile copies (a change to tests or docs does not rebuild).
ctx=$(mktemp -d /var/tmp/tortie-context.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
tar -C "$here" --exclude=__pycache__ -c containers/Containerfile containers/rt_protos.d pyproject.toml README.md \
    bgpd config policy .containerignore | tar -C "$ctx" -x
sources=$(tar -C "$ctx" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -c . | sha256sum | cut -c1-16)
if [ "$force" = 0 ] && [ "$($ENGINE image inspect -f '{{ index .Config.Labels "tortie.sources" }}' "$IMAGE" 2>/dev/null)" = "$sources" ]; then
    say "$IMAGE is current (sources $sources)"
    exit 0
fi

if ! $ENGINE image inspect "$BASE" >/dev/null 2>&1 && ! $ENGINE pull -q "docker.io/library/$BASE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    mirror=$(apt-get indextargets --format '$(REPO_URI)' 'Identifier: Packages' 2>/dev/null | grep -m1 '/debian/$' || true)
    mirror=${mirror:-http://deb.debian.org/debian/}
    root=$(mktemp -d /var/tmp/tortie-base.XXXXXX)
    trap 'rm -rf "$ctx" "$root"' EXIT
    say "no $BASE to pull: debootstrap bookworm from $mirror"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$mirror" >/dev/null
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
        chroot "$root" update-ca-certificates >/dev/null
    fi
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
        "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
    tar -C "$root" -c . | $ENGINE import -c 'CMD ["bash"]' - "$BASE" >/dev/null
    rm -rf "$root"
fi

say "building $IMAGE with $ENGINE"
start=$(date +%s)
$ENGINE build --network host --label "tortie.sources=$sources" -t "$IMAGE" -f "$ctx/containers/Containerfile" "$ctx" >&2
$ENGINE image prune --force --filter label=tortie.sources >/dev/null  # the images this one replaced
say "built $IMAGE in $(( $(date +%s) - start )) s, $($ENGINE image inspect -f '{{ .Size }}' "$IMAGE" | awk '{printf "%d MB", $1/1e6}')"
