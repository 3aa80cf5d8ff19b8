//! The admin listener (`[lb] admin`): `GET /metrics` (Prometheus text), `GET /status` (JSON), `POST /reload`.
//! Keep it off public interfaces: it can reload the config. With `[lb] admin_token` set, every request needs
//! `Authorization: Bearer <token>` (401 otherwise); the token is read from the live config, so a reload rotates it.

use std::sync::Arc;

use async_trait::async_trait;
use http::{HeaderMap, Method, Response, StatusCode};
use node::config::Secret;
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
    /// While it drains, the sessions it still owns (from its health checks); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions_left: Option<u64>,
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
                    sessions_left: n.sessions_left(),
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

/// Whether `headers` carry `Authorization: Bearer <token>` (the scheme in any case, RFC 9110 §11.1), compared in
/// constant time.
fn authorized(headers: &HeaderMap, token: &Secret) -> bool {
    headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .any(|v| {
            let v = v.as_bytes();
            let scheme = b"bearer ";
            v.len() > scheme.len()
                && v[..scheme.len()].eq_ignore_ascii_case(scheme)
                && token.matches(v[scheme.len()..].trim_ascii())
        })
}

/// 401 with the challenge RFC 6750 asks for.
fn unauthorized() -> Response<Vec<u8>> {
    let mut r = reply(
        StatusCode::UNAUTHORIZED,
        "text/plain",
        b"authorization required: Authorization: Bearer <[lb] admin_token>\n".to_vec(),
    );
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"lb admin\""),
    );
    r
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let refused = self.membership.with_topology(|t| {
            t.cfg
                .lb
                .admin_token
                .as_ref()
                .is_some_and(|token| !authorized(&req.headers, token))
        });
        if refused {
            // Debug level: a scan of the listener must not flood the log.
            tracing::debug!(
                path = req.uri.path(),
                "admin request without a valid token: 401"
            );
            return unauthorized();
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::header::AUTHORIZATION, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_the_bearer_token_itself_is_authorized() {
        let token = Secret::new("0123456789abcdef-admin");
        assert!(authorized(
            &headers(&["Bearer 0123456789abcdef-admin"]),
            &token
        ));
        assert!(authorized(
            &headers(&["bearer 0123456789abcdef-admin"]),
            &token
        ));
        assert!(authorized(
            &headers(&["Basic eDp5", "Bearer 0123456789abcdef-admin"]),
            &token
        ));
        for bad in [
            "Bearer 0123456789abcdef-admiN",
            "Bearer 0123456789abcdef",
            "Bearer ",
            "Bearer",
            "0123456789abcdef-admin",
            "Basic 0123456789abcdef-admin",
        ] {
            assert!(!authorized(&headers(&[bad]), &token), "{bad}");
        }
        assert!(!authorized(&HeaderMap::new(), &token));
    }

    #[test]
    fn a_refusal_asks_for_a_bearer_token() {
        let r = unauthorized();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers()[http::header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
    }
}
