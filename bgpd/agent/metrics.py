"""Prometheus metrics of the node daemon, read from its state at scrape time."""
from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bgpd import __version__

if TYPE_CHECKING:
    from bgpd.agent.daemon import Daemon
    from bgpd.agent.views import BfdStatus, OverlayStatus, WireguardStatus

SESSION_STATES = ("idle", "connected", "up", "down")


class DaemonCollector(Collector):
    """Per-peer and RIB figures from the daemon's status view at scrape time: nothing to keep in step."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    def collect(self) -> Iterable[Metric]:
        s = self.daemon.status()
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
        info = GaugeMetricFamily("tortie_bgp_peer_info", "1 per configured peer: its name and AS",
                                 labels=["peer", "name", "asn"])
        for p in s.peers:
            for st in SESSION_STATES:
                state.add_metric([p.address, st], 1.0 if p.state == st else 0.0)
            up.add_metric([p.address], 1.0 if p.state == "up" else 0.0)
            uptime.add_metric([p.address], p.uptime)
            received.add_metric([p.address], p.received)
            for reason, n in p.rejected_by_reason.items():
                rejected.add_metric([p.address, reason], n)
            updates.add_metric([p.address], p.updates)
            accepted.add_metric([p.address], p.accepted)
            advertised.add_metric([p.address], p.advertised)
            info.add_metric([p.address, p.name, str(p.asn)], 1.0)
        yield from (state, up, uptime, received, rejected, updates, accepted, advertised)
        yield from bfd_metrics([(p.address, p.bfd) for p in s.peers if p.bfd is not None])
        owned = GaugeMetricFamily("tortie_kernel_routes", "kernel routes owned by Tortie", labels=["family"])
        refused = GaugeMetricFamily("tortie_kernel_routes_refused",
                                    "desired routes the kernel refused at the last try (retried)", labels=["family"])
        for family, (routes, refusals) in {"ipv4": (s.kernel_routes - s.kernel_routes_ipv6,
                                                    s.refused_total - s.refused_ipv6),
                                           "ipv6": (s.kernel_routes_ipv6, s.refused_ipv6)}.items():
            owned.add_metric([family], routes)
            refused.add_metric([family], refusals)
        yield from (owned, refused)
        repairs = CounterMetricFamily("tortie_kernel_route_repairs",
                                      "kernel routes found deleted or changed by others, and programmed again")
        repairs.add_metric([], s.kernel_repairs)
        yield repairs
        yield info
        restarts = CounterMetricFamily("tortie_exabgp_restarts", "times ExaBGP was restarted after it died")
        restarts.add_metric([], s.exabgp_restarts)
        yield restarts
        malformed = CounterMetricFamily("tortie_exabgp_malformed_messages", "ExaBGP messages that could not be parsed")
        malformed.add_metric([], s.malformed_messages)
        yield malformed
        if s.datastore is not None:
            connected = GaugeMetricFamily("tortie_datastore_connected", "1 while the datastore is reachable")
            connected.add_metric([], 1.0 if s.datastore.connected else 0.0)
            resyncs = CounterMetricFamily("tortie_datastore_resyncs", "full resynchronisations after a reconnect")
            resyncs.add_metric([], s.datastore.resyncs)
            contested = GaugeMetricFamily("tortie_ipam_contested_blocks", "blocks another node owned first that "
                                          "pods of this node still use (our claim stays until they are gone)")
            contested.add_metric([], len(self.daemon.cluster.contested))
            yield from (connected, resyncs, contested)
        yield from overlay_metrics(s.overlay)
        if s.wireguard is not None:
            yield from wireguard_metrics(s.wireguard)
        sync = GaugeMetricFamily("tortie_initial_sync_done", "1 once the initial BGP sync finished")
        sync.add_metric([], 1.0 if s.initial_sync_done else 0.0)
        yield sync
        build = GaugeMetricFamily("tortie_build_info", "Tortie build", labels=["version", "python"])
        build.add_metric([__version__, platform.python_version()], 1.0)
        yield build


def overlay_metrics(o: OverlayStatus | None) -> Iterable[Metric]:
    """The VTEP's families, without samples while no pool uses VXLAN."""
    vteps = GaugeMetricFamily("tortie_vxlan_remote_vteps", "remote VTEPs programmed (neighbour + FDB entry each)")
    routes = GaugeMetricFamily("tortie_vxlan_encapsulated_routes", "kernel routes of ours through the VTEP")
    repairs = CounterMetricFamily("tortie_vxlan_repairs", "VTEP device or entries found changed by others, set again")
    up = GaugeMetricFamily("tortie_vxlan_device_up", "1 while the VTEP device is set up as configured")
    if o is not None:
        vteps.add_metric([], o.remote_vteps)
        routes.add_metric([], o.encapsulated_routes)
        repairs.add_metric([], o.repairs)
        up.add_metric([], 0.0 if o.error or not o.mtu else 1.0)
    yield from (vteps, routes, repairs, up)


def wireguard_metrics(w: WireguardStatus) -> Iterable[Metric]:
    age = GaugeMetricFamily("tortie_wireguard_handshake_age_seconds", "seconds since the peer's latest "
                            "handshake (absent: none yet)", labels=["peer"])
    rx = CounterMetricFamily("tortie_wireguard_received_bytes", "bytes received from the peer", labels=["peer"])
    tx = CounterMetricFamily("tortie_wireguard_sent_bytes", "bytes sent to the peer", labels=["peer"])
    for p in w.peers:
        if p.handshake_age is not None:
            age.add_metric([p.node], p.handshake_age)
        rx.add_metric([p.node], p.rx_bytes)
        tx.add_metric([p.node], p.tx_bytes)
    keyless = GaugeMetricFamily("tortie_wireguard_peers_without_key", "other nodes without a WireGuard key "
                                "(reached unencrypted, or not at all with wireguard.required)")
    keyless.add_metric([], len(w.nodes_without_key))
    up = GaugeMetricFamily("tortie_wireguard_device_up", "1 while the WireGuard device is set up as configured",
                           labels=["implementation"])
    up.add_metric([w.implementation], 0.0 if w.error or not w.implementation else 1.0)
    restarts = CounterMetricFamily("tortie_wireguard_restarts", "wireguard-go found dead and started again")
    restarts.add_metric([], w.restarts)
    yield from (age, rx, tx, keyless, up, restarts)


def bfd_metrics(sessions: list[tuple[str, BfdStatus]]) -> Iterable[Metric]:
    up = GaugeMetricFamily("tortie_bfd_session_up", "1 while the BFD session with the peer is Up", labels=["peer"])
    detect = GaugeMetricFamily("tortie_bfd_detection_time_seconds", "negotiated detection time while Up",
                               labels=["peer"])
    dampened = GaugeMetricFamily("tortie_bfd_dampened", "1 while the peer's BFD failures are ignored (flapping)",
                                 labels=["peer"])
    changes = CounterMetricFamily("tortie_bfd_state_changes", "BFD state changes, by new state",
                                  labels=["peer", "state"])
    detections = CounterMetricFamily("tortie_bfd_detections", "the peer fell silent for a detection time",
                                     labels=["peer"])
    failures = CounterMetricFamily("tortie_bfd_failures", "BFD failures acted on (routes out, BGP torn down) or "
                                   "ignored (within the hold-down, or dampened)", labels=["peer", "action"])
    for peer, b in sessions:
        up.add_metric([peer], 1.0 if b.state == "up" else 0.0)
        detect.add_metric([peer], (b.detection_time_ms or 0) / 1000)
        dampened.add_metric([peer], 1.0 if b.dampened else 0.0)
        for state, n in b.changes.items():
            changes.add_metric([peer, state], n)
        detections.add_metric([peer], b.detections)
        failures.add_metric([peer, "acted"], b.failures)
        failures.add_metric([peer, "ignored"], b.ignored_failures)
    return up, detect, dampened, changes, detections, failures


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

    def serve(self, address: str, port: int) -> None:
        if port:
            start_http_server(port, addr=address, registry=self.registry)
