#!/bin/sh
# etcd.sh N: runs member etcdN of the mesh3-etcd lab (data in the node's /var/lib/tortie, its PID in /run/etcd.pid).
# The first start of member 1 also sets up the roles (containers/etcd/rbac.sh, passwords: a lab has no PKI).
set -eu
n=$1
cluster=etcd1=http://10.93.0.251:2380,etcd2=http://10.93.0.252:2380,etcd3=http://10.93.0.253:2380
echo $$ > /run/etcd.pid
if [ "$n" = 1 ] && [ ! -f /var/lib/tortie/rbac-done ]; then
    (until ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:2379 --dial-timeout 1s endpoint health >/dev/null 2>&1; do
         sleep 0.2
     done
     /etc/tortie-etcd/rbac.sh 127.0.0.1:2379 --passwords root-secret admin-secret \
         node1:node1-secret node2:node2-secret node3:node3-secret && touch /var/lib/tortie/rbac-done) &
fi
exec etcd --name "etcd$n" --data-dir /var/lib/tortie/etcd \
    --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls "http://10.93.0.25$n:2379" \
    --listen-peer-urls http://0.0.0.0:2380 --initial-advertise-peer-urls "http://10.93.0.25$n:2380" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token mesh3-etcd \
    --heartbeat-interval 100 --election-timeout 1000 --logger zap --log-outputs stderr
