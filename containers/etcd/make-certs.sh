#!/bin/sh
# make-certs.sh DIR SERVER_ADDRESSES USER...
# A lab CA in DIR (ca.crt, ca.key: made once, kept), a server certificate (server.crt/.key) valid for every
# address in the comma-separated SERVER_ADDRESSES (IPs or DNS names: every etcd member's client address),
# and for each USER a client certificate USER.crt/.key whose common name is the user: with
# --client-cert-auth, etcd authenticates the client as that user (roles: containers/etcd/rbac.sh).
# Give "root" (etcd's superuser, for rbac.sh) and "admin" (the resource CLI) besides the nodes.
set -eu
[ $# -ge 3 ] || { echo "usage: $0 DIR SERVER_ADDRESSES USER..." >&2; exit 2; }
dir=$1 addresses=$2
shift 2
mkdir -p "$dir"
cd "$dir"
umask 077
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
[ -f ca.key ] || openssl req -x509 $ec -subj "/CN=tortie-etcd-ca" -days 825 -keyout ca.key -out ca.crt 2>/dev/null
san=""
for a in $(echo "$addresses" | tr ',' ' '); do
    case $a in *[!0-9.]*) san="$san,DNS:$a" ;; *) san="$san,IP:$a" ;; esac
done
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "${san#,}" > server.ext
openssl req $ec -subj "/CN=etcd" -keyout server.key -out server.csr 2>/dev/null
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 -extfile server.ext \
    -out server.crt 2>/dev/null
printf 'extendedKeyUsage=clientAuth\n' > client.ext
for user in "$@"; do
    case $user in
        ''|*[!A-Za-z0-9_.-]*) echo "$0: invalid user name '$user' (letters, digits, _ . - only)" >&2; exit 2 ;;
    esac
    openssl req $ec -subj "/CN=$user" -keyout "$user.key" -out "$user.csr" 2>/dev/null
    openssl x509 -req -in "$user.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 -extfile client.ext \
        -out "$user.crt" 2>/dev/null
done
rm -f ./*.csr server.ext client.ext
chmod 0644 ./*.crt
