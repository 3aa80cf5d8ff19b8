//! Forwarding a session request to the node that owns the session, when that owner is alive: the cheap
//! alternative to taking the session over (seed 003 allows either; the issue asks only that nothing is lost or
//! applied twice).

use std::sync::Arc;
use std::time::Duration;

use hyper::header::{HeaderMap, HeaderName, CONNECTION, TRANSFER_ENCODING, UPGRADE};
use hyper::http::request::Parts;
use hyper::{Request, Response};
use hyper_util::rt::TokioExecutor;
use tracing::warn;

use crate::body::{boxed, ReplyBody, RequestBody};
use crate::ids::NodeId;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tunnel::AppUpgrade;
use crate::websocket;
use crate::{HOP_HEADER, REQUEST_ID_HEADER};

/// The request as received, to be sent on.
pub struct Outbound<'a> {
    /// The client's method, path and headers (the owner sees the same routing cookie or token).
    pub parts: &'a Parts,
    /// The request body: taken (a stream, once) only when the request is really sent.
    pub body: &'a RequestBody,
    /// Request id sent as `x-lb-request-id`, so the owner applies a retried write once; `None` for a read.
    pub rid: Option<&'a str>,
    /// Forwards it went through so far.
    pub hops: u8,
}

/// Whether a header belongs to one connection only (RFC 9110 §7.6.1) and is not relayed.
pub fn hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || matches!(
            name.as_str(),
            "keep-alive"
                | "proxy-connection"
                | "te"
                | "trailer"
                | "proxy-authorization"
                | "proxy-authenticate"
        )
}

/// Copies the end-to-end headers of `from` into `to`, leaving out those `skip` names, the hop-by-hop ones and
/// any that `Connection` names for this hop only.
pub fn copy_headers(from: &HeaderMap, to: &mut HeaderMap, skip: impl Fn(&HeaderName) -> bool) {
    // The names `Connection` lists, read once (usually none).
    let named: Vec<&str> = from
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for (k, v) in from {
        let one_hop = hop_by_hop(k) || named.iter().any(|t| t.eq_ignore_ascii_case(k.as_str()));
        if !one_hop && !skip(k) {
            to.append(k.clone(), v.clone());
        }
    }
}

/// Whether an error comes from a refused connection (the process is not running).
pub fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    any_cause(e, |err| {
        err.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}

/// Whether `pred` holds for `e` or any error behind it (its `source()` chain).
pub fn any_cause(
    e: &(dyn std::error::Error + 'static),
    pred: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if pred(err) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// HTTP client for forwarding a request to the session's live owner.
pub struct Forwarder {
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        ReplyBody,
    >,
    timeout: Duration,
    heartbeat: Duration,
    members: Arc<Membership>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
}

impl Forwarder {
    /// A forwarder giving up on an owner after `timeout` (the longest the owner may take to answer: its copy
    /// wait, plus its app's read timeout in sidecar mode), or as soon as it misses heartbeats.
    pub fn new(
        peer_timeout: Duration,
        timeout: Duration,
        heartbeat: Duration,
        members: Arc<Membership>,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
    ) -> Forwarder {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(peer_timeout));
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Forwarder {
            client,
            timeout,
            heartbeat,
            members,
            store,
            metrics,
        }
    }
}

impl Forwarder {
    /// Sends `out` to `owner`'s HTTP port and relays its answer. `Err` when the owner could not answer: the caller
    /// then treats it as unreachable (a refused connection also marks it gone).
    pub async fn send(&self, owner: NodeId, out: Outbound<'_>) -> Result<Response<ReplyBody>, ()> {
        let Some(peer) = self.members.peer(owner) else {
            return Err(());
        };
        let Some(body) = out.body.take() else {
            return Err(());
        };
        let path = out.parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req = Request::builder()
            .method(out.parts.method.clone())
            .uri(format!("http://{}{}", peer.cfg.http, path))
            .body(body)
            .map_err(|_| ())?;
        let h = req.headers_mut();
        // The client's `Host` goes on: an app behind the owner builds its links from it.
        copy_headers(&out.parts.headers, h, |k| {
            k == HOP_HEADER || k == REQUEST_ID_HEADER
        });
        h.insert(HOP_HEADER, u16::from(out.hops + 1).into());
        websocket::keep_upgrade(&out.parts.headers, h);
        if let Some(rid) = out.rid.and_then(|r| r.parse().ok()) {
            h.insert(REQUEST_ID_HEADER, rid);
        }
        self.metrics.forwards.inc();
        // A paused owner keeps the connection open and never answers: give up as soon as it also stops answering
        // heartbeats, rather than after the whole timeout. A slow but live owner is waited for.
        let watchdog = async {
            loop {
                tokio::time::sleep(self.heartbeat).await;
                if !self.members.answered_lately(owner)
                    && !self.members.probe(owner, self.store.len() as u64).await
                {
                    return;
                }
            }
        };
        let res = tokio::select! {
            r = tokio::time::timeout(self.timeout, self.client.request(req)) => r,
            _ = watchdog => {
                warn!(to = %peer.cfg.name, "owner stopped answering during a forward");
                return Err(());
            }
        };
        let resp = match res {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                if refused(&e) {
                    self.members.mark_gone(owner);
                } else if e.is_connect() {
                    self.members.mark_dead(owner);
                }
                warn!(to = %peer.cfg.name, error = %e, "forward failed");
                return Err(());
            }
            Err(_) => {
                warn!(to = %peer.cfg.name, "forward timed out");
                return Err(());
            }
        };
        let (mut parts, body) = resp.into_parts();
        let mut out = Response::new(boxed(body));
        *out.status_mut() = parts.status;
        copy_headers(&parts.headers, out.headers_mut(), |_| false);
        // The owner switched protocols: the client's WebSocket is relayed to the owner's.
        if let Some(far) = websocket::switched(&mut parts, out.headers_mut()) {
            out.extensions_mut().insert(AppUpgrade {
                upgrade: far,
                session: None,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_for_one_hop_are_not_copied_on_including_those_connection_names() {
        let mut from = HeaderMap::new();
        for (k, v) in [
            ("connection", "close, x-trace-hop"),
            ("x-trace-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("accept", "text/html"),
            ("x-skip-me", "1"),
        ] {
            from.append(HeaderName::from_static(k), v.parse().unwrap());
        }
        let mut to = HeaderMap::new();
        copy_headers(&from, &mut to, |k| k == "x-skip-me");
        let names: Vec<&str> = to.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["accept"]);
    }
}
