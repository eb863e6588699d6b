# Routes GoBGP originates (gobgpd has no static routes in its file): retried until gobgpd answers.
for i in $(seq 50); do
    timeout 2 gobgp global rib -a ipv6 add fd00:244:0:f2::/122 nexthop fd97::12 >/dev/null 2>&1 && break
    sleep 0.2
done
gobgp global rib -a ipv6 add ::/0 nexthop fd97::12
gobgp global rib -a ipv6 add 2001:db8:f2::/48 nexthop fd97::12
