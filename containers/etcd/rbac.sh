#!/bin/sh
# rbac.sh ENDPOINT CERT_DIR NODE...                          TLS: users authenticate by certificate
# rbac.sh ENDPOINT --passwords ROOT_PW ADMIN_PW NODE:PW...   plain HTTP, users with passwords (labs only)
# etcd roles for Tortie, as root (CERT_DIR/root.crt from make-certs.sh, or root with ROOT_PW), then auth on:
#   tortie-admin  read and write everything under tortie/v1/ (user admin: the resource CLI)
#   node-NODE     read everything under tortie/v1/; write only NODE's own keys: nodes/NODE, status/NODE,
#                 endpoints/NODE/..., and its claims (stored as claims/NODE/<cidr>, see config/datastore/etcd.py)
# Safe to run again (adds nodes; passwords are kept).
set -eu
[ $# -ge 3 ] || { echo "usage: $0 ENDPOINT CERT_DIR NODE... | $0 ENDPOINT --passwords ROOT_PW ADMIN_PW NODE:PW..." >&2; exit 2; }
endpoint=$1
shift
if [ "$1" = --passwords ]; then
    root_pw=$2 admin_pw=$3
    shift 3
    url=http://$endpoint
else
    certs=$1 root_pw="" admin_pw=""
    shift
    url=https://$endpoint
fi
ctl() {
    if [ -n "$root_pw" ]; then
        ETCDCTL_API=3 etcdctl --endpoints "$url" --user "root:$root_pw" --dial-timeout 3s --command-timeout 5s "$@" \
            >/dev/null 2>&1 || ETCDCTL_API=3 etcdctl --endpoints "$url" --dial-timeout 3s --command-timeout 5s "$@" >/dev/null
    else
        ETCDCTL_API=3 etcdctl --endpoints "$url" --cacert "$certs/ca.crt" --cert "$certs/root.crt" \
            --key "$certs/root.key" --dial-timeout 3s --command-timeout 5s "$@" >/dev/null
    fi
}
user() {  # user NAME ROLE [PASSWORD]: a user with one role (no password: certificate only); existing ones are kept
    ctl user get "$1" 2>/dev/null || if [ -n "${3:-}" ]; then ctl user add "$1" --new-user-password "$3"
                                     else ctl user add "$1" --no-password; fi
    ctl user grant-role "$1" "$2"
}
ctl role get root 2>/dev/null || ctl role add root
user root root "$root_pw"
ctl role get tortie-admin 2>/dev/null || ctl role add tortie-admin
ctl role grant-permission tortie-admin --prefix=true readwrite tortie/v1/
user admin tortie-admin "$admin_pw"
for entry in "$@"; do
    node=${entry%%:*}
    case $entry in *:*) password=${entry#*:} ;; *) password="" ;; esac
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
    user "$node" "$role" "$password"
done
ctl auth enable
