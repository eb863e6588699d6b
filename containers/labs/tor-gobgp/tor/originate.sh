# Routes the tor originates (gobgpd has no static routes in its file): retried until gobgpd answers.
for i in $(seq 50); do
    timeout 2 gobgp global rib add 10.244.200.0/24 nexthop 10.96.0.254 >/dev/null 2>&1 && break
    sleep 0.2
done
gobgp global rib add 0.0.0.0/0 nexthop 10.96.0.254
gobgp global rib add 198.51.100.0/24 nexthop 10.96.0.254
