//! The node's Prometheus metrics, served on `GET /_node/metrics`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric a node exports. Names are part of the contract where DESIGN.md fixes them
/// (`sessions_lost_total`).
pub struct Metrics {
    registry: Registry,
    /// Session API requests by operation and outcome (`ok`, `client_error`, `error`).
    pub requests: IntCounterVec,
    /// `node_sessions{role}`: sessions held here, as primary and as secondary; `unprotected`: primaries with no
    /// copy anywhere.
    pub sessions: IntGaugeVec,
    /// `node_sessions_created_total`: new sessions started here.
    pub created: IntCounter,
    /// `node_takeovers_total`: sessions pulled from another node and now owned here.
    pub takeovers: IntCounter,
    /// `node_takeover_polls_total`: pull requests sent while looking for a session (the bank polled).
    pub polls: IntCounter,
    /// `node_promotions_total`: copies promoted to primary here after their primary died.
    pub promotions: IntCounter,
    /// `node_pulls_granted_total`: sessions handed to another node on its request.
    pub pulls_granted: IntCounter,
    /// `node_sessions_adopted_total`: sessions taken over from a draining node at its request.
    pub adopted: IntCounter,
    /// `node_drain_sessions_left`: sessions this node still owns while it drains (0 when not draining).
    pub drain_left: IntGauge,
    /// `node_forwards_total`: requests forwarded to the session's live owner.
    pub forwards: IntCounter,
    /// `node_proxied_connections_total`: connections that began with a PROXY header naming a client.
    pub proxied: IntCounter,
    /// `node_websockets_open`: WebSockets relayed to the app now.
    pub websockets_open: IntGauge,
    /// `node_websockets_going_away_total`: WebSockets this node closed with 1001 (drain or stop).
    pub websockets_going_away: IntCounter,
    /// `sessions_lost_total`: sessions whose every copy was gone, replaced by a fresh session.
    pub lost: IntCounter,
    /// `sessions_stale_total`: recovered copies older than the client's signed cookie.
    pub stale: IntCounter,
    /// `node_duplicate_requests_total`: retried request ids answered from the record, not applied again.
    pub dedup_hits: IntCounter,
    /// Writes answered 503 because their copies were not confirmed in time (applied here all the same).
    pub unconfirmed: IntCounter,
    /// `node_secondary_changes_total`: sessions given a new secondary.
    pub rehomed: IntCounter,
    /// `node_fenced_total`: sessions dropped here because a newer owner exists.
    pub fenced: IntCounter,
    /// `node_sessions_expired_total`: sessions removed after their idle timeout.
    pub expired: IntCounter,
    /// `node_replication_full_copies_total`: whole-session copies sent (instead of deltas).
    pub full_copies: IntCounter,
    /// `node_replication_items_total`: session items sent to secondaries.
    pub repl_items: IntCounter,
    /// `node_replication_errors_total`: replication batches that failed.
    pub repl_errors: IntCounter,
    /// `node_replication_queue_depth`: sessions waiting to be copied.
    pub repl_queue: IntGauge,
    /// `node_replication_batch_seconds{peer}`: round trip of one replication batch to a peer (a Redis bank's
    /// is its command latency), in seconds.
    pub repl_rtt: HistogramVec,
    /// `node_replication_bytes_total{peer, direction}`: bytes of the requests this node sent on its link to a
    /// peer (`sent`: copies, pulls, heartbeats) and of their answers (`received`). Requests peers send to this
    /// node are counted at those peers; the Redis bank's traffic is not counted.
    pub repl_bytes: IntCounterVec,
    /// `node_copies{peer}`: sessions owned here with a copy on that peer (per bank member, or the Redis bank).
    pub copies: IntGaugeVec,
    /// `node_replication_auth_failures_total`: replication connections refused.
    pub auth_failures: IntCounter,
    /// `node_replication_frame_errors_total`: malformed replication frames received.
    pub frame_errors: IntCounter,
    /// Cluster files taken on SIGHUP (a refused one is not counted).
    pub reloads: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered in a registry of its own (so in-process test nodes do not collide).
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let requests = IntCounterVec::new(
            Opts::new("node_requests_total", "Session API requests"),
            &["op", "outcome"],
        )
        .expect("valid");
        registry
            .register(Box::new(requests.clone()))
            .expect("unique");
        let sessions = IntGaugeVec::new(
            Opts::new("node_sessions", "Sessions held here, by role"),
            &["role"],
        )
        .expect("valid");
        registry
            .register(Box::new(sessions.clone()))
            .expect("unique");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let drain_left = gauge(
            "node_drain_sessions_left",
            "Sessions this node still owns while it drains (0 when not draining)",
        );
        let repl_queue = gauge(
            "node_replication_queue_depth",
            "Sessions waiting to be copied",
        );
        let copies = IntGaugeVec::new(
            Opts::new("node_copies", "Sessions owned here with a copy on the peer"),
            &["peer"],
        )
        .expect("valid");
        registry.register(Box::new(copies.clone())).expect("unique");
        let repl_bytes = IntCounterVec::new(
            Opts::new(
                "node_replication_bytes_total",
                "Bytes of the requests this node sent to the peer (sent) and of their answers (received)",
            ),
            &["peer", "direction"],
        )
        .expect("valid");
        registry
            .register(Box::new(repl_bytes.clone()))
            .expect("unique");
        let repl_rtt = HistogramVec::new(
            HistogramOpts::new(
                "node_replication_batch_seconds",
                "Round trip of one replication batch",
            )
            .buckets(vec![
                0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["peer"],
        )
        .expect("valid");
        registry
            .register(Box::new(repl_rtt.clone()))
            .expect("unique");
        Metrics {
            requests,
            sessions,
            repl_queue,
            repl_rtt,
            repl_bytes,
            copies,
            created: counter("node_sessions_created_total", "Sessions created here"),
            reloads: counter(
                "node_reloads_total",
                "Cluster files taken on SIGHUP (refused ones are not counted)",
            ),
            takeovers: counter(
                "node_takeovers_total",
                "Sessions pulled from another node and now owned here",
            ),
            polls: counter(
                "node_takeover_polls_total",
                "Pull requests sent while looking for a session this node does not host",
            ),
            promotions: counter(
                "node_promotions_total",
                "Copies promoted to primary here after the primary died",
            ),
            pulls_granted: counter(
                "node_pulls_granted_total",
                "Sessions handed to another node on its request",
            ),
            adopted: counter(
                "node_sessions_adopted_total",
                "Sessions taken over from a draining node at its request",
            ),
            drain_left,
            websockets_open: gauge(
                "node_websockets_open",
                "WebSockets relayed between clients and the app now",
            ),
            websockets_going_away: counter(
                "node_websockets_going_away_total",
                "WebSockets closed with 1001 because their session left this draining node or it stopped",
            ),
            proxied: counter(
                "node_proxied_connections_total",
                "Connections that began with a PROXY protocol header naming a client",
            ),
            forwards: counter(
                "node_forwards_total",
                "Requests forwarded to the session's live owner",
            ),
            lost: counter(
                "sessions_lost_total",
                "Sessions whose every copy was gone: replaced by a fresh session",
            ),
            stale: counter(
                "sessions_stale_total",
                "Recovered copies older than the client's signed cookie",
            ),
            dedup_hits: counter(
                "node_duplicate_requests_total",
                "Retried request ids answered from the record",
            ),
            unconfirmed: counter(
                "node_unconfirmed_writes_total",
                "Writes answered 503 because their copies were not confirmed in time",
            ),
            rehomed: counter(
                "node_secondary_changes_total",
                "Sessions given a new secondary",
            ),
            fenced: counter(
                "node_fenced_total",
                "Sessions dropped here because a newer owner exists",
            ),
            expired: counter(
                "node_sessions_expired_total",
                "Sessions removed after their idle timeout",
            ),
            full_copies: counter(
                "node_replication_full_copies_total",
                "Whole-session copies sent",
            ),
            repl_items: counter(
                "node_replication_items_total",
                "Session items sent to secondaries",
            ),
            repl_errors: counter(
                "node_replication_errors_total",
                "Replication batches that failed",
            ),
            auth_failures: counter(
                "node_replication_auth_failures_total",
                "Replication connections refused",
            ),
            frame_errors: counter(
                "node_replication_frame_errors_total",
                "Malformed replication frames received",
            ),
            registry,
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}
