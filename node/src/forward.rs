//! Forwarding a session request to the node that owns the session, when that owner is alive: the cheap
//! alternative to taking the session over (seed 003 allows either; the issue asks only that nothing is lost or
//! applied twice).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE, COOKIE, RETRY_AFTER, SET_COOKIE};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioExecutor;
use tracing::warn;

use crate::ids::NodeId;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::{REQUEST_ID_HEADER, SERVED_BY_HEADER, STALE_HEADER};

/// Internal header counting node-to-node forwards of one request, so a stale view cannot loop it.
pub const HOP_HEADER: &str = "x-node-hop";

/// The request as received, to be sent on.
pub struct Outbound<'a> {
    /// The client's method.
    pub method: &'a Method,
    /// Path and query, as received.
    pub path: &'a str,
    /// The client's `Cookie` header, so the owner sees the same routing cookie.
    pub cookie: Option<&'a HeaderValue>,
    /// The request body, already read in full.
    pub body: &'a Bytes,
    /// Request id sent as `x-lb-request-id`, so the owner applies a retried write once; `None` for a read.
    pub rid: Option<&'a str>,
    /// Forwards it went through so far.
    pub hops: u8,
}

/// Whether an error comes from a refused connection (the process is not running).
pub fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// HTTP client for forwarding a request to the session's live owner.
pub struct Forwarder {
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    timeout: Duration,
    heartbeat: Duration,
    members: Arc<Membership>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
}

impl Forwarder {
    /// A forwarder giving up on an owner after `3 × peer_timeout`, or as soon as it misses heartbeats.
    pub fn new(
        peer_timeout: Duration,
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
            timeout: peer_timeout * 3,
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
    pub async fn send(
        &self,
        owner: NodeId,
        out: Outbound<'_>,
    ) -> Result<Response<Full<Bytes>>, ()> {
        let Some(peer) = self.members.peer(owner) else {
            return Err(());
        };
        let mut req = Request::builder()
            .method(out.method.clone())
            .uri(format!("http://{}{}", peer.cfg.http, out.path))
            .header(HOP_HEADER, (out.hops + 1).to_string())
            .header(CONTENT_TYPE, "application/json");
        if let Some(rid) = out.rid {
            req = req.header(REQUEST_ID_HEADER, rid);
        }
        if let Some(c) = out.cookie {
            req = req.header(COOKIE, c.clone());
        }
        let req = req.body(Full::new(out.body.clone())).map_err(|_| ())?;
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
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|_| ())?.to_bytes();
        let mut out = Response::builder()
            .status(parts.status)
            .body(Full::new(body))
            .expect("valid");
        for (k, v) in parts.headers.iter() {
            if k == CONTENT_TYPE
                || k == SET_COOKIE
                || k == SERVED_BY_HEADER
                || k == STALE_HEADER
                || k == RETRY_AFTER
                || k == hyper::header::ALLOW
            {
                out.headers_mut().append(k.clone(), v.clone());
            }
        }
        Ok(out)
    }
}
