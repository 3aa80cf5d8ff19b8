//! The Pingora proxy: [`Lb`] implements `ProxyHttp` (limits, cookie pinning, balancing, failover, request ids,
//! metrics and one tracing span per request); [`LbApp`] wraps the proxy to put a total deadline on reading a
//! request head, which Pingora does not have.
//!
//! The request path is kept within a few percent of a bare Pingora proxy (`lb/perf/`): the tracing span is only
//! built when an event is actually logged, request ids go only on requests that may change a session and are
//! rendered without `format!`, and the head deadline is a coarse per-thread one ([`crate::deadline`]), armed
//! only while a head is still awaited.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, HttpProxy, ProxyHttp, Session};
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use tracing::field::Empty;

use crate::balance::{self, Attempt, Draw, Policy, Target};
use crate::deadline::{self, UntilHead};
use crate::limits;
use crate::membership::{InFlight, Membership, Topology};
use crate::metrics::{Metrics, NodeMetrics, Outcome, NO_NODE};
use crate::routing::Route;

/// Pingora keeps an idle client connection this long between requests; a reused connection's head deadline
/// adds it, so that only the head itself, not the idle wait, is held to `header_timeout`.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const FORWARDED_PROTO: &str = "x-forwarded-proto";
const FORWARDED_FOR: &str = "x-forwarded-for";
/// The request id header, parsed once.
static REQUEST_ID: HeaderName = HeaderName::from_static(node::REQUEST_ID_HEADER);
static HOP: HeaderName = HeaderName::from_static(node::HOP_HEADER);
/// Seconds a client is told to wait when no node is up.
const RETRY_AFTER_S: &str = "1";

/// The balancer's request logic.
pub struct Lb {
    membership: Arc<Membership>,
    metrics: Arc<Metrics>,
    unrouted: NodeMetrics,
    /// Random per process, so request ids of two balancers (or of a restarted one) never meet.
    id_prefix: u64,
    next_id: AtomicU64,
    in_flight: &'static AtomicUsize,
    /// The listener terminates TLS: nodes are told so (`X-Forwarded-Proto: https`, and the client's address).
    tls: bool,
}

impl Lb {
    /// A proxy over `membership`; `in_flight` counts every client request of the process (for graceful exit);
    /// `tls` when the listener terminates TLS.
    pub fn new(membership: Arc<Membership>, in_flight: &'static AtomicUsize, tls: bool) -> Lb {
        let metrics = membership.metrics().clone();
        Lb {
            unrouted: metrics.for_node(NO_NODE),
            metrics,
            membership,
            id_prefix: rand::random(),
            next_id: AtomicU64::new(0),
            in_flight,
            tls,
        }
    }

    /// A fresh request number; [`request_id`] renders it.
    fn next_request(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// The request id header value: the process prefix as 16 hex digits, then `n` in hex without leading zeros
/// (what `format!("{prefix:016x}{n:x}")` gives, without the formatting machinery and its extra allocation).
fn request_id(prefix: u64, n: u64) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (i, b) in buf[..16].iter_mut().enumerate() {
        *b = HEX[(prefix >> (60 - 4 * i)) as usize & 15];
    }
    let digits = (16 - (n.leading_zeros() as usize) / 4).max(1);
    for (i, b) in buf[16..16 + digits].iter_mut().enumerate() {
        *b = HEX[(n >> (4 * (digits - 1 - i))) as usize & 15];
    }
    HeaderValue::from_bytes(&buf[..16 + digits]).expect("hex is a valid header value")
}

/// Whether a request gets a request id: only one that may change a session needs it, so that a retry after a
/// node died mid-request is applied once. A safe method (RFC 9110 §9.2.1) is simply sent again, which spares
/// most requests the cost of a header (name parse, allocations, two header maps; see `bench/PERFORMANCE.md`).
fn needs_request_id(method: &http::Method) -> bool {
    use http::Method;
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Whether `name` is a sidecar header (`X-Session*`) a client must not send on, `token` (`[cookie] header`)
/// excepted.
fn sidecar_header(name: &HeaderName, token: Option<&str>) -> bool {
    name.as_str()
        .starts_with(node::config::SIDECAR_HEADER_PREFIX)
        && Some(name.as_str()) != token
}

/// Removes every sidecar header but `token`. Looks before it allocates: almost no request has one.
fn strip_sidecar_headers(req: &mut RequestHeader, token: Option<&str>) {
    if !req.headers.keys().any(|k| sidecar_header(k, token)) {
        return;
    }
    let names: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|k| sidecar_header(k, token))
        .cloned()
        .collect();
    for n in names {
        req.remove_header(&n);
    }
}

/// The request's tracing span, built only when something is about to be logged in it: creating a span per
/// request costs as much as a tenth of the whole proxying when the level is enabled. It carries what was known
/// at that point (the session's log hash, the node last chosen, the outcome), as a span recorded along the way
/// would.
fn span(ctx: &Ctx, outcome: Option<Outcome>) -> tracing::Span {
    let span = tracing::info_span!("request", session = Empty, node = Empty, outcome = Empty);
    if !span.is_disabled() {
        if let Some(s) = ctx.route.session {
            span.record("session", s.log_hash());
        }
        if let (Some(i), Some(t)) = (ctx.span_node, ctx.topology.as_ref()) {
            span.record("node", t.nodes[i].name.as_str());
        }
        if let Some(o) = outcome {
            span.record("outcome", o.label());
        }
    }
    span
}

/// Counts one unit of work in flight (a client request, a Layer-4 connection) for the whole of its life: the
/// graceful exit waits for the count to reach zero.
pub(crate) struct RequestGuard(&'static AtomicUsize);

impl RequestGuard {
    /// Counts one more in `counter` until the guard drops.
    pub(crate) fn enter(counter: &'static AtomicUsize) -> RequestGuard {
        counter.fetch_add(1, Ordering::Relaxed);
        RequestGuard(counter)
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-request state, kept across retries.
pub struct Ctx {
    started: Instant,
    topology: Option<Arc<Topology>>,
    route: Route,
    /// Same on every attempt, so the node that gets a retry can recognise it: the number [`request_id`]
    /// renders, drawn on the first attempt.
    request_id: Option<u64>,
    /// Nodes that failed this request.
    tried: Vec<usize>,
    current: Option<(usize, InFlight)>,
    /// One retry on the same node is allowed when a pooled connection turns out to be closed.
    stale_retry_used: bool,
    proxied: bool,
    body_bytes: usize,
    /// The request asks to switch protocols (a WebSocket): once it has, idle waits are held to
    /// `tunnel_idle_timeout`, not `read_timeout`.
    tunnel: bool,
    /// The node last chosen, as an index into `topology`'s nodes (for the span; it outlives `current`).
    span_node: Option<usize>,
    _request: RequestGuard,
}

impl Ctx {
    fn node_name(&self) -> &str {
        self.current
            .as_ref()
            .map_or(NO_NODE, |(_, g)| g.node().name.as_str())
    }
}

#[async_trait]
impl ProxyHttp for Lb {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            topology: None,
            route: Route::FRESH,
            request_id: None,
            tried: Vec::new(),
            current: None,
            stale_retry_used: false,
            proxied: false,
            body_bytes: 0,
            tunnel: false,
            span_node: None,
            _request: RequestGuard::enter(self.in_flight),
        }
    }

    // No compression module: the nodes' JSON is small and compressing it would only cost CPU here.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn early_request_filter(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        // The head is in: LbApp's deadline no longer applies.
        deadline::head_read();
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let topology = self.membership.topology();
        let req = session.req_header();
        if let Err(r) =
            limits::check_head(req.raw_path().len(), &req.headers, &topology.cfg.lb.limits)
        {
            span(ctx, None)
                .in_scope(|| tracing::info!(status = r.status(), "request refused: {r}"));
            session.respond_error(r.status()).await?;
            return Ok(true);
        }
        // Node-reserved paths (health, metrics, a session's copy by id) are for the cluster, not for clients
        // (DESIGN §6): the session id is readable in any cookie, and a copy holds what the app keeps private.
        if req.uri.path().starts_with("/_node/") {
            session.respond_error(404).await?;
            return Ok(true);
        }
        ctx.route = topology.route_token(&req.headers).unwrap_or_else(|| {
            topology.route(
                req.headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .map(|v| v.as_bytes()),
            )
        });
        let limits = &topology.cfg.lb.limits;
        ctx.tunnel = session.is_upgrade_req();
        session.set_read_timeout(Some(if ctx.tunnel {
            limits.tunnel_idle_timeout
        } else {
            limits.read_timeout
        }));
        ctx.topology = Some(topology);
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(b), Some(t)) = (body.as_ref(), ctx.topology.as_ref()) {
            ctx.body_bytes += b.len();
            if let Err(r) = limits::check_body(ctx.body_bytes, &t.cfg.lb.limits) {
                return Error::e_explain(ErrorType::HTTPStatus(r.status()), r.to_string());
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(topology) = ctx.topology.as_ref() else {
            return Error::e_explain(ErrorType::InternalError, "no topology for this request");
        };
        // The common case, a pinned request to a healthy primary, needs no view of the other nodes.
        let healthy = |i: usize| topology.nodes.get(i).is_some_and(|n| n.healthy());
        let attempt = Attempt {
            pinned: ctx.route.pinned,
            tried: &ctx.tried,
        };
        let pick = balance::pinned_primary(attempt, healthy).or_else(|| {
            let lb = &topology.cfg.lb;
            let policy = Policy {
                algorithm: lb.algorithm,
                failover: lb.failover,
            };
            let draw = Draw {
                ticket: self.membership.next_ticket(),
                random: rand::random(),
            };
            balance::choose(policy, &topology.views(), attempt, draw)
        });
        let Some((i, target)) = pick else {
            let mut e = Error::explain(ErrorType::HTTPStatus(503), "no healthy node");
            e.set_retry(false);
            return Err(e);
        };
        if let (Some(p), Target::Secondary | Target::Balanced) = (ctx.route.pinned, target) {
            let primary = &topology.nodes[p.primary];
            self.metrics
                .failovers
                .with_label_values(&[&primary.name])
                .inc();
            span(ctx, None).in_scope(|| tracing::info!(from = %primary.name, to = %topology.nodes[i].name, ?target, "failover"));
        }
        let mut peer = topology.peer(i);
        if ctx.tunnel {
            let idle = Some(topology.cfg.lb.limits.tunnel_idle_timeout);
            (peer.options.read_timeout, peer.options.write_timeout) = (idle, idle);
        }
        ctx.current = Some((i, topology.nodes[i].enter()));
        ctx.span_node = Some(i);
        ctx.body_bytes = 0;
        Ok(peer)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if self.tls {
            // The node marks the cookie `Secure` for https; the client's own claim is replaced, not trusted.
            upstream_request.insert_header(FORWARDED_PROTO, "https")?;
            if let Some(ip) = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip())
            {
                forwarded_for(upstream_request, ip)?;
            }
        } else if upstream_request.headers.contains_key(FORWARDED_PROTO) {
            // A plain-HTTP client's claim of https would get it a cookie its connection cannot protect.
            upstream_request.remove_header(FORWARDED_PROTO);
        }
        // Node-to-node forwards count their hops in this header; a client's copy could stop a node from
        // forwarding to the session's live owner and make it take the session over instead.
        if upstream_request.headers.contains_key(&HOP) {
            upstream_request.remove_header(&HOP);
        }
        // The sidecar headers are what a node tells its app about the session (and the app the node): a
        // client's copy could pass as the node's. The session token header may share the prefix: it is the
        // client's own.
        let token = ctx
            .topology
            .as_ref()
            .and_then(|t| t.cfg.cookie.header.as_deref());
        strip_sidecar_headers(upstream_request, token);
        // Only the balancer names requests: a copy the client sent never reaches a node.
        if !needs_request_id(&upstream_request.method) {
            if upstream_request.headers.contains_key(&REQUEST_ID) {
                upstream_request.remove_header(&REQUEST_ID);
            }
            return Ok(());
        }
        let n = *ctx.request_id.get_or_insert_with(|| self.next_request());
        // insert_header replaces any copy the client sent.
        upstream_request.insert_header(node::REQUEST_ID_HEADER, request_id(self.id_prefix, n))?;
        Ok(())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        fd: std::os::fd::RawFd,
        digest: Option<&Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Tracked once per connection: a marked-down node's connections are shut (see `conns`).
        if reused {
            return Ok(());
        }
        let addrs = digest
            .and_then(|d| d.socket_digest.as_ref())
            .and_then(|s| Some((*s.local_addr()?.as_inet()?, *s.peer_addr()?.as_inet()?)));
        if let (Some((local, peer)), Some((_, g))) = (addrs, ctx.current.as_ref()) {
            g.node().conns.track(fd, local, peer);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.proxied = true;
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing reached the node: any method may go elsewhere.
        if let Some((i, guard)) = ctx.current.take() {
            let node = guard.node();
            node.force_down(&format!(
                "a request could not connect: {}",
                e.etype().as_str()
            ));
            self.metrics
                .retries
                .with_label_values(&[&node.name, "connect"])
                .inc();
            ctx.tried.push(i);
        }
        e.set_retry(true);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("node {} at {peer}", ctx.node_name()));
        // Once the client has part of a response, or the body could not be kept whole, or the client itself
        // failed (or a limit of ours refused it), a retry could only corrupt or lose the request. Otherwise retry ANY method: the node that
        // gets it applies it once or returns the outcome the dead node already replicated (same request id).
        let retry = session.response_written().is_none()
            && !session.as_ref().retry_buffer_truncated()
            && *e.esource() == ErrorSource::Upstream
            && !matches!(e.etype(), ErrorType::HTTPStatus(_));
        if retry {
            let reason = if client_reused && !ctx.stale_retry_used {
                // A pooled connection the node had closed: the node itself is most likely fine.
                ctx.stale_retry_used = true;
                "stale_connection"
            } else {
                if let Some((i, _)) = ctx.current {
                    ctx.tried.push(i);
                }
                "mid_request"
            };
            self.metrics
                .retries
                .with_label_values(&[ctx.node_name(), reason])
                .inc();
        }
        e.set_retry(retry);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut Ctx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        let written = if code == 503 {
            unavailable(session).await
        } else if code > 0 {
            session.respond_error(code).await
        } else {
            Ok(())
        };
        if let Err(we) = written {
            tracing::debug!("could not send the error response: {we}");
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let outcome = Outcome::classify(status, ctx.proxied);
        match &ctx.current {
            Some((_, g)) => g.node().metrics.count(outcome),
            None => self.unrouted.count(outcome),
        }
        let elapsed = ctx.started.elapsed();
        self.metrics.duration.observe(elapsed.as_secs_f64());
        if outcome == Outcome::Ok && !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        let ms = elapsed.as_secs_f64() * 1000.0;
        let method = session.req_header().method.as_str();
        let span = span(ctx, Some(outcome));
        match (outcome, e) {
            (Outcome::Ok, _) => span.in_scope(|| tracing::debug!(status, ms, method, "done")),
            (_, Some(e)) => span.in_scope(|| tracing::warn!(status, ms, method, "failed: {e}")),
            (_, None) => span.in_scope(|| tracing::info!(status, ms, method, "done")),
        }
    }

    // Marks a kept-alive connection, so the next head on it gets the idle allowance (see LbApp).
    fn persist_connection_context(
        &self,
        _session: &Session,
        _ctx: &Ctx,
    ) -> Option<Box<dyn Any + Send + Sync>> {
        Some(Box::new(KeptAlive))
    }
}

/// `X-Forwarded-For`: the client's address after whatever proxies before us listed (one header, as RFC 7239's
/// predecessor has it).
fn forwarded_for(req: &mut RequestHeader, client: std::net::IpAddr) -> Result<()> {
    let listed: Vec<&str> = req
        .headers
        .get_all(FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let value = if listed.is_empty() {
        client.to_string()
    } else {
        format!("{}, {client}", listed.join(", "))
    };
    req.insert_header(FORWARDED_FOR, value)?;
    Ok(())
}

/// Marker carried by a kept-alive client connection between requests.
struct KeptAlive;

async fn unavailable(session: &mut Session) -> Result<()> {
    let body = Bytes::from_static(b"no healthy node\n");
    let mut resp = ResponseHeader::build(503, Some(4))?;
    resp.insert_header(http::header::RETRY_AFTER, RETRY_AFTER_S)?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    session.write_error_response(resp, body).await
}

/// The proxy with a total deadline on reading each request head (slowloris): Pingora only times single
/// reads, so a client trickling one byte at a time would hold a connection forever.
pub struct LbApp {
    proxy: Arc<HttpProxy<Lb>>,
    membership: Arc<Membership>,
}

impl LbApp {
    /// Wraps the Pingora proxy built from [`Lb`]; `membership` gives the head deadline of the current file.
    pub fn new(proxy: HttpProxy<Lb>, membership: Arc<Membership>) -> LbApp {
        LbApp {
            proxy: Arc::new(proxy),
            membership,
        }
    }
}

#[async_trait]
impl HttpServerApp for LbApp {
    // Written out rather than `async fn`: the deadline is set up before the proxy's future exists, so the
    // request is not moved into a second boxed state machine (one allocation and one copy less per request).
    fn process_new_http<'a, 'b, 'r>(
        self: &'a Arc<Self>,
        mut session: ServerSession,
        shutdown: &'b ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'r>>
    where
        'a: 'r,
        'b: 'r,
        Self: 'r,
    {
        let mut deadline = self
            .membership
            .with_topology(|t| t.cfg.lb.limits.header_timeout);
        if let Some(marker) = session.take_connection_user_context() {
            deadline += KEEPALIVE_IDLE;
            session.set_connection_user_context(Some(marker));
        }
        Box::pin(UntilHead::new(
            self.proxy.process_new_http(session, shutdown),
            deadline,
        ))
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.proxy.server_options()
    }

    async fn http_cleanup(&self) {
        self.proxy.http_cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_methods_that_may_change_a_session_get_a_request_id() {
        use http::Method;
        for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE] {
            assert!(!needs_request_id(&m), "{m}");
        }
        for m in [
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::CONNECT,
        ] {
            assert!(needs_request_id(&m), "{m}");
        }
        assert!(needs_request_id(&Method::from_bytes(b"PURGE").unwrap()));
    }

    #[test]
    fn every_sidecar_header_of_a_client_is_stripped_but_the_session_token_header() {
        let mut req = RequestHeader::build("GET", b"/cart", None).unwrap();
        for (k, v) in [
            ("X-Session", "{\"admin\":true}"),
            ("x-session-id", "0000"),
            ("X-Session-Version", "9"),
            ("x-session-patch", "{}"),
            ("x-session-whatever", "1"),
            ("x-session-token", "tok"),
            ("x-sessions", "not ours either"),
            ("cookie", "a=b"),
            ("accept", "*/*"),
        ] {
            req.append_header(k, v).unwrap();
        }
        let names = |req: &RequestHeader| {
            let mut n: Vec<String> = req.headers.keys().map(|k| k.to_string()).collect();
            n.sort();
            n
        };
        strip_sidecar_headers(&mut req, Some("x-session-token"));
        assert_eq!(names(&req), ["accept", "cookie", "x-session-token"]);
        strip_sidecar_headers(&mut req, None);
        assert_eq!(names(&req), ["accept", "cookie"]);
    }

    #[test]
    fn request_ids_render_as_the_prefix_then_the_number_in_hex() {
        for prefix in [0, 1, 0xdead_beef, u64::MAX, 0x0123_4567_89ab_cdef] {
            for n in [
                0,
                1,
                9,
                10,
                15,
                16,
                255,
                256,
                0xabc_def0,
                u64::MAX >> 4,
                u64::MAX,
            ] {
                assert_eq!(
                    request_id(prefix, n).to_str().unwrap(),
                    format!("{prefix:016x}{n:x}")
                );
            }
        }
    }
}
