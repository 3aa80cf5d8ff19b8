//! Prometheus metrics of the balancer, in a registry of its own (served on the admin listener's `/metrics`).
//! Per-node counters are resolved once per node ([`NodeMetrics`]) so the request path does no label lookups.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// How one client request ended, as counted in `lb_requests_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A node answered with a status below 500.
    Ok,
    /// A node answered with a 5xx.
    NodeError,
    /// No healthy node: the balancer answered 503.
    Unavailable,
    /// Every attempt failed mid-way, or a retry was impossible: the balancer answered 502 (or 504).
    Failed,
    /// Refused by a limit (431, 413) or as a bad request.
    Rejected,
    /// The client went away before a response was written.
    Aborted,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::NodeError,
        Outcome::Unavailable,
        Outcome::Failed,
        Outcome::Rejected,
        Outcome::Aborted,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NodeError => "node_error",
            Outcome::Unavailable => "unavailable",
            Outcome::Failed => "failed",
            Outcome::Rejected => "rejected",
            Outcome::Aborted => "aborted",
        }
    }

    /// The outcome of a request that ended with `status` (0 when nothing was written), `proxied` telling
    /// whether a node produced the response.
    pub fn classify(status: u16, proxied: bool) -> Outcome {
        match status {
            0 => Outcome::Aborted,
            503 if !proxied => Outcome::Unavailable,
            400 | 413 | 431 if !proxied => Outcome::Rejected,
            s if s >= 500 && proxied => Outcome::NodeError,
            s if s >= 500 => Outcome::Failed,
            _ => Outcome::Ok,
        }
    }
}

/// Label used for requests that reached no node.
pub const NO_NODE: &str = "none";

/// The balancer's metric families.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    /// Pinned requests sent to a node other than their primary, by the primary that was skipped.
    pub failovers: IntCounterVec,
    /// Extra attempts, by the node that failed and why (`connect`, `mid_request`, `stale_connection`).
    pub retries: IntCounterVec,
    /// 1 while a node passes its health checks.
    pub node_healthy: IntGaugeVec,
    /// Requests in flight per node.
    pub in_flight: IntGaugeVec,
    /// Sessions a draining node still owns (-1 when it does not drain), from its health checks.
    pub drain_left: IntGaugeVec,
    /// Health transitions, by node and new state.
    pub health_changes: IntCounterVec,
    /// Config reloads by result (`ok`, `refused`).
    pub reloads: IntCounterVec,
    /// Time from the request head to the end of logging, seconds.
    pub duration: Histogram,
    /// The Layer-4 listener's families.
    pub l4: L4Metrics,
}

/// The Layer-4 listener's families (`lb_l4_*`).
pub struct L4Metrics {
    /// Connections by node and outcome (`ok`: proxied; `connect_failed`: the node could not be reached).
    pub connections: IntCounterVec,
    /// Connections open now, by node.
    pub open: IntGaugeVec,
    /// Bytes by node and direction (`in`: client to node, `out`: node to client).
    pub bytes: IntCounterVec,
    /// Connections closed by the balancer, by reason (`idle`, `retired`: the node drained or left,
    /// `shutdown`: the grace period of a SIGTERM ran out).
    pub closed: IntCounterVec,
    /// Connections refused at once, by reason (`limit`: `max_connections` reached; `no_node`: none reachable).
    pub refused: IntCounterVec,
}

/// One node's Layer-4 series, resolved once (a connection then counts itself without a label lookup).
#[derive(Clone)]
pub struct L4NodeMetrics {
    /// `lb_l4_connections_total{outcome="ok"}`.
    pub ok: IntCounter,
    /// `lb_l4_connections_total{outcome="connect_failed"}`.
    pub connect_failed: IntCounter,
    /// `lb_l4_open_connections`.
    pub open: IntGauge,
    /// `lb_l4_bytes_total{direction="in"}`: client to node.
    pub bytes_in: IntCounter,
    /// `lb_l4_bytes_total{direction="out"}`: node to client.
    pub bytes_out: IntCounter,
}

/// One node's request counters, resolved once.
#[derive(Clone)]
pub struct NodeMetrics {
    by_outcome: [IntCounter; 6],
}

impl NodeMetrics {
    /// Counts one request.
    pub fn count(&self, outcome: Outcome) {
        self.by_outcome[outcome as usize].inc();
    }
}

impl Metrics {
    /// Registers every family.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let requests = counter(
            "lb_requests_total",
            "Client requests by outcome and serving node.",
            &["node", "outcome"],
        );
        let failovers = counter(
            "lb_failovers_total",
            "Pinned requests sent away from their primary, by primary.",
            &["node"],
        );
        let retries = counter(
            "lb_retries_total",
            "Retried attempts by failed node and reason.",
            &["node", "reason"],
        );
        let node_healthy = gauge(
            "lb_node_healthy",
            "1 while the node passes its health checks.",
            &["node"],
        );
        let in_flight = gauge("lb_in_flight", "Requests in flight per node.", &["node"]);
        let drain_left = gauge(
            "lb_node_drain_sessions_left",
            "Sessions a draining node still owns, from its health checks (-1: not draining).",
            &["node"],
        );
        let health_changes = counter(
            "lb_health_changes_total",
            "Node health transitions by new state.",
            &["node", "state"],
        );
        let reloads = counter("lb_reloads_total", "Config reloads by result.", &["result"]);
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "lb_request_duration_seconds",
                "Request latency through the balancer.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
            ]),
        )
        .expect("valid histogram");
        registry
            .register(Box::new(duration.clone()))
            .expect("unique metric");
        let l4 = L4Metrics {
            connections: counter(
                "lb_l4_connections_total",
                "Layer-4 connections by node and outcome.",
                &["node", "outcome"],
            ),
            open: gauge(
                "lb_l4_open_connections",
                "Layer-4 connections open per node.",
                &["node"],
            ),
            bytes: counter(
                "lb_l4_bytes_total",
                "Layer-4 bytes by node and direction (in: client to node).",
                &["node", "direction"],
            ),
            closed: counter(
                "lb_l4_closed_total",
                "Layer-4 connections the balancer closed, by reason.",
                &["reason"],
            ),
            refused: counter(
                "lb_l4_refused_total",
                "Layer-4 connections refused at once, by reason.",
                &["reason"],
            ),
        };
        Metrics {
            registry,
            requests,
            failovers,
            retries,
            node_healthy,
            in_flight,
            drain_left,
            health_changes,
            reloads,
            duration,
            l4,
        }
    }

    /// The resolved counters of node `name` (or [`NO_NODE`]).
    pub fn for_node(&self, name: &str) -> NodeMetrics {
        NodeMetrics {
            by_outcome: Outcome::ALL.map(|o| self.requests.with_label_values(&[name, o.label()])),
        }
    }

    /// The Layer-4 series of node `name`.
    pub fn l4_for_node(&self, name: &str) -> L4NodeMetrics {
        let l4 = &self.l4;
        L4NodeMetrics {
            ok: l4.connections.with_label_values(&[name, "ok"]),
            connect_failed: l4.connections.with_label_values(&[name, "connect_failed"]),
            open: l4.open.with_label_values(&[name]),
            bytes_in: l4.bytes.with_label_values(&[name, "in"]),
            bytes_out: l4.bytes.with_label_values(&[name, "out"]),
        }
    }

    /// The gauges of node `name`: healthy, in flight, drain sessions left (set to -1: not draining).
    pub fn gauges(&self, name: &str) -> (IntGauge, IntGauge, IntGauge) {
        let left = self.drain_left.with_label_values(&[name]);
        left.set(-1);
        (
            self.node_healthy.with_label_values(&[name]),
            self.in_flight.with_label_values(&[name]),
            left,
        )
    }

    /// Forgets the per-node gauges of a node that left the cluster (its counters stay: they are history).
    pub fn forget_node(&self, name: &str) {
        let _ = self.node_healthy.remove_label_values(&[name]);
        let _ = self.in_flight.remove_label_values(&[name]);
        let _ = self.drain_left.remove_label_values(&[name]);
        let _ = self.l4.open.remove_label_values(&[name]);
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(8 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding to memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_classified_by_status_and_origin() {
        assert_eq!(Outcome::classify(200, true), Outcome::Ok);
        assert_eq!(Outcome::classify(404, true), Outcome::Ok);
        assert_eq!(Outcome::classify(500, true), Outcome::NodeError);
        assert_eq!(Outcome::classify(503, true), Outcome::NodeError);
        assert_eq!(Outcome::classify(503, false), Outcome::Unavailable);
        assert_eq!(Outcome::classify(502, false), Outcome::Failed);
        assert_eq!(Outcome::classify(431, false), Outcome::Rejected);
        assert_eq!(Outcome::classify(0, false), Outcome::Aborted);
    }

    #[test]
    fn the_exposition_names_every_required_family() {
        let m = Metrics::new();
        m.for_node("n1").count(Outcome::Ok);
        m.failovers.with_label_values(&["n1"]).inc();
        m.retries.with_label_values(&["n1", "connect"]).inc();
        let (h, f, _) = m.gauges("n1");
        h.set(1);
        f.set(2);
        m.duration.observe(0.003);
        let text = m.render();
        for want in [
            "lb_requests_total{node=\"n1\",outcome=\"ok\"} 1",
            "lb_failovers_total{node=\"n1\"} 1",
            "lb_retries_total{node=\"n1\",reason=\"connect\"} 1",
            "lb_node_healthy{node=\"n1\"} 1",
            "lb_in_flight{node=\"n1\"} 2",
            "lb_request_duration_seconds_bucket",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        m.forget_node("n1");
        assert!(!m.render().contains("lb_in_flight{node=\"n1\"}"));
    }
}
