"""The DNS server's Prometheus instruments, in the daemon's registry."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

# query types with a label of their own; the rest are "other" (a label per possible type would be 65,536 series)
QTYPES = frozenset({"A", "AAAA", "PTR", "SRV", "SOA", "NS", "CNAME", "MX", "TXT", "ANY", "HTTPS", "SVCB"})


class DnsMetrics:
    def __init__(self, registry: CollectorRegistry | None):
        self.queries = Counter("tortie_dns_queries", "DNS queries answered, by type and result "
                               "(noerror, nodata, nxdomain, refused, forwarded, servfail, formerr, notimp)",
                               ["qtype", "result"], registry=registry)
        self.latency = Histogram("tortie_dns_query_duration_seconds", "from a query's arrival to its answer's sending, "
                                 "by who answered (zone, upstream)",
                                 ["by"], buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                      0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=registry)
        self.dropped = Counter("tortie_dns_dropped", "DNS messages dropped unanswered, by reason (malformed, "
                               "rate_limited, source: not a pod or local address, busy: too many forwards or "
                               "connections)", ["reason"], registry=registry)
        self.truncated = Counter("tortie_dns_truncated", "UDP answers truncated (TC set) for not fitting",
                                 registry=registry)
        self.zone_builds = Counter("tortie_dns_zone_builds", "rebuilds of the names from the datastore",
                                   registry=registry)

    def qtype(self, rdtype_text: str) -> str:
        return rdtype_text if rdtype_text in QTYPES else "other"
