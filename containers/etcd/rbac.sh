#!/bin/sh
# rbac.sh ENDPOINT CERT_DIR NODE...
# etcd roles for Tortie, as root (CERT_DIR/root.crt from make-certs.sh), then authentication on:
#   tortie-admin  read and write everything under tortie/v1/ (user admin: the resource CLI)
#   node-NODE     read everything under tortie/v1/; write only NODE's own keys: nodes/NODE, status/NODE,
#                 endpoints/NODE/..., and its claims (stored as claims/NODE/<cidr>, see config/datastore/etcd.py)
# Users authenticate by their client certificate's common name (no passwords). Safe to run again (adds nodes).
set -eu
[ $# -ge 2 ] || { echo "usage: $0 ENDPOINT CERT_DIR NODE..." >&2; exit 2; }
endpoint=$1 certs=$2
shift 2
ctl() {
    ETCDCTL_API=3 etcdctl --endpoints "https://$endpoint" --cacert "$certs/ca.crt" --cert "$certs/root.crt" \
        --key "$certs/root.key" --dial-timeout 3s --command-timeout 5s "$@" >/dev/null
}
user() {  # a user (no password: certificate only) with one role; existing ones are kept
    ctl user get "$1" 2>/dev/null || ctl user add "$1" --no-password
    ctl user grant-role "$1" "$2"
}
ctl user get root 2>/dev/null || ctl user add root --no-password
ctl role get root 2>/dev/null || ctl role add root
ctl user grant-role root root
ctl role get tortie-admin 2>/dev/null || ctl role add tortie-admin
ctl role grant-permission tortie-admin --prefix=true readwrite tortie/v1/
user admin tortie-admin
for node in "$@"; do
    case $node in
        ''|*[!A-Za-z0-9_.-]*) echo "$0: invalid node name '$node'" >&2; exit 2 ;;
    esac
    role=node-$node
    ctl role get "$role" 2>/dev/null || ctl role add "$role"
    ctl role grant-permission "$role" --prefix=true read tortie/v1/
    ctl role grant-permission "$role" readwrite "tortie/v1/nodes/$node"
    ctl role grant-permission "$role" readwrite "tortie/v1/status/$node"
    ctl role grant-permission "$role" --prefix=true readwrite "tortie/v1/endpoints/$node/"
    ctl role grant-permission "$role" --prefix=true readwrite "tortie/v1/claims/$node/"
    user "$node" "$role"
done
ctl auth enable 2>/dev/null || true
