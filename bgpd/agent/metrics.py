"""Prometheus metrics of the node daemon, read from its state at scrape time."""
from __future__ import annotations

import platform
import time
from typing import TYPE_CHECKING, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bgpd import __version__

if TYPE_CHECKING:
    from bgpd.agent.daemon import Daemon

SESSION_STATES = ("idle", "connected", "up", "down")


class DaemonCollector(Collector):
    """Per-peer and RIB figures straight from the daemon's state: nothing to keep in step."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    def collect(self) -> Iterable[Metric]:
        d = self.daemon
        now = time.time()
        state = GaugeMetricFamily("tortie_bgp_session_state", "1 for the BGP session's current state",
                                  labels=["peer", "state"])
        up = GaugeMetricFamily("tortie_bgp_session_up", "1 when the BGP session is established", labels=["peer"])
        uptime = GaugeMetricFamily("tortie_bgp_session_uptime_seconds", "seconds since the session was established",
                                   labels=["peer"])
        received = CounterMetricFamily("tortie_bgp_prefixes_received", "prefix announcements received",
                                       labels=["peer"])
        rejected = CounterMetricFamily("tortie_bgp_prefixes_rejected", "prefix announcements refused by the import filter",
                                       labels=["peer", "reason"])
        updates = CounterMetricFamily("tortie_bgp_updates_received", "BGP UPDATE messages received", labels=["peer"])
        accepted = GaugeMetricFamily("tortie_bgp_prefixes_accepted", "prefixes currently accepted from the peer",
                                     labels=["peer"])
        advertised = GaugeMetricFamily("tortie_bgp_prefixes_advertised", "prefixes currently advertised to the peer",
                                       labels=["peer"])
        for addr, ps in d.peers.items():
            rib = d.rib.peers[addr]
            for s in SESSION_STATES:
                state.add_metric([addr, s], 1.0 if ps.state == s else 0.0)
            up.add_metric([addr], 1.0 if ps.state == "up" else 0.0)
            uptime.add_metric([addr], now - ps.since if ps.state == "up" and ps.since else 0.0)
            received.add_metric([addr], rib.received)
            for reason, n in rib.rejected.items():
                rejected.add_metric([addr, reason.value], n)
            updates.add_metric([addr], ps.updates)
            accepted.add_metric([addr], len(rib.routes))
            advertised.add_metric([addr], ps.advertised)
        yield from (state, up, uptime, received, rejected, updates, accepted, advertised)
        owned = GaugeMetricFamily("tortie_kernel_routes", "kernel routes owned by Tortie")
        owned.add_metric([], len(d.kernel.installed))
        yield owned
        refused = GaugeMetricFamily("tortie_kernel_routes_refused",
                                    "desired routes the kernel refused at the last try (retried)")
        refused.add_metric([], len(d.refused))
        yield refused
        info = GaugeMetricFamily("tortie_bgp_peer_info", "1 per configured peer: its name and AS",
                                 labels=["peer", "name", "asn"])
        for addr, ps in d.peers.items():
            info.add_metric([addr, ps.peer.name or addr, str(ps.peer.asn)], 1.0)
        yield info
        restarts = CounterMetricFamily("tortie_exabgp_restarts", "times ExaBGP was restarted after it died")
        restarts.add_metric([], d.supervisor.restarts)
        yield restarts
        if d.cluster is not None:
            connected = GaugeMetricFamily("tortie_datastore_connected", "1 while the datastore is reachable")
            connected.add_metric([], 1.0 if d.cluster.ds.connected else 0.0)
            resyncs = CounterMetricFamily("tortie_datastore_resyncs", "full resynchronisations after a reconnect")
            resyncs.add_metric([], d.cluster.ds.resyncs)
            rejected = CounterMetricFamily("tortie_datastore_rejected_entries",
                                           "entries dropped on arrival: malformed, or over the size or depth limit")
            rejected.add_metric([], d.cluster.ds.rejected)
            ignored = CounterMetricFamily("tortie_datastore_ignored_entries", "other nodes' entries ignored: a claim "
                                          "on a block owned first by another node, a record with a taken address",
                                          labels=["kind"])
            ignored.add_metric(["claims"], d.cluster.ignored_claims.total)
            ignored.add_metric(["nodes"], d.cluster.ignored_records.total)
            yield from (connected, resyncs, rejected, ignored)
        sync = GaugeMetricFamily("tortie_initial_sync_done", "1 once the initial BGP sync finished")
        sync.add_metric([], 1.0 if d.initial_sync.is_set() else 0.0)
        yield sync
        info = GaugeMetricFamily("tortie_build_info", "Tortie build", labels=["version", "python"])
        info.add_metric([__version__, platform.python_version()], 1.0)
        yield info


class DaemonMetrics:
    """The registry, the instruments updated on events, and the HTTP endpoint."""

    def __init__(self, daemon: Daemon):
        self.registry = CollectorRegistry()
        self.registry.register(DaemonCollector(daemon))
        self.programming_latency = Histogram(
            "tortie_route_programming_latency_seconds",
            "time from a BGP change to the kernel acknowledging the route change",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry)
        self.programming_errors = Counter("tortie_route_programming_errors", "route changes the kernel refused",
                                          registry=self.registry)
        self.malformed = Counter("tortie_exabgp_malformed_messages", "ExaBGP messages that could not be parsed",
                                 registry=self.registry)

    def serve(self, address: str, port: int) -> None:
        if port:
            start_http_server(port, addr=address, registry=self.registry)
