//! The admin listener (`[lb] admin`): `GET /metrics` (Prometheus text), `GET /status` (JSON), `POST /reload`.
//! Keep it off public interfaces: it can reload the config.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Serialize;

use crate::membership::{Membership, Topology};

/// One node in `/status`.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    /// The node's name in the cluster file.
    pub name: String,
    /// Its HTTP address (`ip:port`), where requests are proxied.
    pub addr: String,
    /// Whether it currently takes requests (health checks and passive failures).
    pub healthy: bool,
    /// Its relative share of new sessions, 1 to 1000.
    pub weight: u32,
    /// Requests this balancer is proxying to it right now.
    pub in_flight: usize,
    /// `drain = true`: it takes no new sessions.
    pub drain: bool,
}

/// The `/status` document.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Config generation: 1 for the file read at start, +1 per accepted reload.
    pub generation: u64,
    /// `[lb] algorithm` as the file spells it, e.g. `least_connections`.
    pub algorithm: String,
    /// `[lb] failover` as the file spells it, e.g. `rebalance`.
    pub failover: String,
    /// Every node, in file order.
    pub nodes: Vec<NodeStatus>,
}

impl Status {
    /// The status of `t` right now.
    pub fn of(t: &Topology) -> Status {
        Status {
            generation: t.generation,
            algorithm: t.cfg.lb.algorithm.to_string(),
            failover: t.cfg.lb.failover.to_string(),
            nodes: t
                .nodes
                .iter()
                .map(|n| NodeStatus {
                    name: n.name.clone(),
                    addr: n.addr.to_string(),
                    healthy: n.healthy(),
                    weight: n.weight(),
                    in_flight: n.in_flight(),
                    drain: n.drain(),
                })
                .collect(),
        }
    }
}

/// The admin HTTP app.
pub struct Admin {
    membership: Arc<Membership>,
}

impl Admin {
    /// The admin app over the balancer's live membership.
    pub fn new(membership: Arc<Membership>) -> Admin {
        Admin { membership }
    }

    fn metrics(&self) -> Response<Vec<u8>> {
        for n in &self.membership.topology().nodes {
            n.publish();
        }
        reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            self.membership.metrics().render().into_bytes(),
        )
    }

    fn status(&self) -> Response<Vec<u8>> {
        json(StatusCode::OK, &Status::of(&self.membership.topology()))
    }

    fn reload(&self) -> Response<Vec<u8>> {
        // Reading and validating a small file: fine to do inline on the admin runtime.
        match self.membership.reload() {
            Ok(r) => json(
                StatusCode::OK,
                &serde_json::json!({
                    "ok": true, "generation": r.generation, "added": r.added, "removed": r.removed,
                    "changed": r.changed, "needs_restart": r.ignored,
                }),
            ),
            Err(e) => json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"ok": false, "error": e.to_string()}),
            ),
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        match (&req.method, req.uri.path()) {
            (&Method::GET, "/metrics") => self.metrics(),
            (&Method::GET, "/status") => self.status(),
            (&Method::POST, "/reload") => {
                // The body is ignored; drain it so the connection stays usable.
                let _ = session.drain_request_body().await;
                self.reload()
            }
            (_, "/metrics" | "/status" | "/reload") => reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                b"method not allowed\n".to_vec(),
            ),
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                b"not found: try /metrics, /status, POST /reload\n".to_vec(),
            ),
        }
    }
}

fn json(status: StatusCode, v: &impl Serialize) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec(v).expect("plain data serialises");
    body.push(b'\n');
    reply(status, "application/json", body)
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .expect("static parts form a valid response")
}
