//! The built-in session API (DESIGN §6) and the node-reserved `/_node/` paths, over HTTP/1.1 (hyper).
//!
//! Every session request goes through [`execute`]: find the session (here as primary; as a copy to promote;
//! at its live owner to forward to; in the pair named by the cookie to take over), then apply the operation
//! under the session's FIFO lock, queue the copy, release the lock, and in `sync` mode answer only once the
//! secondary holds the update.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, COOKIE, RETRY_AFTER, SET_COOKIE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tracing::{warn, Instrument};

use crate::cookie::RoutingCookie;
use crate::forward::{Outbound, HOP_HEADER};
use crate::ids::{NodeId, Pair, SessionId};
use crate::server::Node;
use crate::session::{Outcome, Session, SessionError, MAX_REQUEST_ID_LEN};
use crate::store::{Entry, Role, Slot};
use crate::takeover::{self, Recovered};
use crate::{HEALTH_PATH, REQUEST_ID_HEADER, SERVED_BY_HEADER, STALE_HEADER};

const MAX_HOPS: u8 = 2;
/// Rounds of locating a session before the request is answered 503.
const ATTEMPTS: usize = 5;

type Resp = Response<Full<Bytes>>;

/// What the client asked of its session.
#[derive(Debug, Clone)]
enum Op {
    Get,
    Patch(Value),
    Incr(String),
    Delete,
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Patch(_) => "patch",
            Op::Incr(_) => "incr",
            Op::Delete => "delete",
        }
    }
}

/// One session request, as received (kept whole so it can be forwarded).
struct Call {
    op: Op,
    method: Method,
    path: String,
    cookie_header: Option<HeaderValue>,
    body: Bytes,
    /// The balancer's request id, or one stamped here before a forward so a retry stays exactly-once.
    rid: Option<String>,
    hops: u8,
    cookie: Option<(RoutingCookie, Pair)>,
}

/// Serves HTTP on `listener` until the process ends.
pub async fn serve_http(node: Arc<Node>, listener: TcpListener) {
    loop {
        let (stream, _) = crate::server::accept(&listener, "http").await;
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let node = node.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(node, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(node: Arc<Node>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let mut resp = match (req.method().clone(), path.as_str()) {
        (Method::GET, HEALTH_PATH) => json_response(
            StatusCode::OK,
            &json!({"name": node.me.name, "sessions": node.store.len(), "mode": node.cfg.replication.mode.as_str()}),
        ),
        (Method::GET, "/_node/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(node.metrics.render())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (Method::GET, p) if p.starts_with("/_node/sessions/") => {
            local_copy(&node, &p["/_node/sessions/".len()..]).await
        }
        (_, "/session") | (_, "/session/") => match *req.method() {
            Method::GET => session_request(&node, req, Op::Get).await,
            Method::PATCH => session_request(&node, req, Op::Patch(Value::Null)).await,
            Method::DELETE => session_request(&node, req, Op::Delete).await,
            _ => method_not_allowed("GET, PATCH, DELETE"),
        },
        (m, p) if p.starts_with("/session/incr/") => {
            let key = &p["/session/incr/".len()..];
            if m != Method::POST {
                method_not_allowed("POST")
            } else if key.is_empty() || key.len() > 256 || key.contains('/') {
                error_response(
                    StatusCode::BAD_REQUEST,
                    "the key must be 1 to 256 characters without `/`",
                )
            } else {
                let key = key.to_string();
                session_request(&node, req, Op::Incr(key)).await
            }
        }
        _ => error_response(StatusCode::NOT_FOUND, "no such path"),
    };
    if node.cfg.node.expose_node && !resp.headers().contains_key(SERVED_BY_HEADER) {
        if let Ok(v) = HeaderValue::from_str(&node.me.name) {
            resp.headers_mut().insert(SERVED_BY_HEADER, v);
        }
    }
    resp
}

async fn session_request(node: &Arc<Node>, req: Request<Incoming>, op: Op) -> Resp {
    let (parts, body) = req.into_parts();
    let limit = node.cfg.node.max_body_bytes;
    let Some(body) = read_body(body, limit).await else {
        return error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body over {limit} bytes"),
        );
    };
    let op = match op {
        Op::Patch(_) => match serde_json::from_slice::<Value>(&body) {
            Ok(v @ Value::Object(_)) => Op::Patch(v),
            Ok(_) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "a merge patch must be a JSON object",
                )
            }
            Err(e) => {
                return error_response(StatusCode::BAD_REQUEST, &format!("body is not JSON: {e}"))
            }
        },
        other => other,
    };
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let rid = header(REQUEST_ID_HEADER)
        .filter(|r| {
            !r.is_empty()
                && r.len() <= MAX_REQUEST_ID_LEN
                && r.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_string);
    let hops = header(HOP_HEADER).and_then(|h| h.parse().ok()).unwrap_or(0);
    let cookie = node
        .codec
        .find(parts.headers.get_all(COOKIE).iter().map(|v| v.as_bytes()))
        .and_then(|c| node.pairs().decode(c.segment).map(|p| (c, p)));
    let cookie_header = parts.headers.get(COOKIE).cloned();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let call = Call {
        op,
        method: parts.method,
        path,
        cookie_header,
        body,
        rid,
        hops,
        cookie,
    };
    let span = tracing::info_span!(
        "request",
        node = %node.me.name,
        op = call.op.name(),
        session = tracing::field::Empty,
        outcome = tracing::field::Empty
    );
    if let Some((c, _)) = &call.cookie {
        span.record("session", c.session.log_hash());
    }
    let op_name = call.op.name();
    let resp = execute(node, call).instrument(span.clone()).await;
    let outcome = match resp.status().as_u16() {
        200..=399 => "ok",
        400..=499 => "client_error",
        _ => "error",
    };
    span.record("outcome", outcome);
    node.metrics
        .requests
        .with_label_values(&[op_name, outcome])
        .inc();
    resp
}

/// The body, or `None` when it is over `limit`. An oversize body is still read (up to 8× the limit) and
/// dropped, so the client gets its 413 instead of a reset in mid-upload.
async fn read_body(mut body: Incoming, limit: usize) -> Option<Bytes> {
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return None };
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > limit.saturating_mul(8) {
                return None;
            }
            if seen <= limit {
                buf.extend_from_slice(&data);
            }
        }
    }
    (seen <= limit).then(|| buf.freeze())
}

/// Finds the session and runs the operation; see the module docs.
async fn execute(node: &Arc<Node>, mut call: Call) -> Resp {
    let mut unreachable: Vec<NodeId> = Vec::new();
    for _ in 0..ATTEMPTS {
        let Some((cookie, pair)) = call.cookie else {
            return fresh(node, &call).await;
        };
        let (entry, _) = node.store.get_or_insert(cookie.session);
        let mut slot = entry.slot.lock().await;
        let mut stale = false;
        // Where to send the request when a live owner elsewhere should serve it.
        let mut owner_elsewhere = None;
        match (slot.session.as_ref(), slot.role) {
            (Some(_), Role::Primary) => {}
            (Some(s), Role::Replica) => {
                let owner = s.primary;
                if call.hops < MAX_HOPS
                    && !unreachable.contains(&owner)
                    && responsive(node, owner).await
                {
                    owner_elsewhere = Some(owner);
                } else {
                    stale = takeover::promote(node, &entry, &mut slot, cookie.version).await;
                }
            }
            (None, _) => {
                let owner = pair.primary;
                let ended = node.store.has_ended(cookie.session);
                let forwardable = call.hops < MAX_HOPS && !unreachable.contains(&owner);
                let found = if ended {
                    Recovered::Ended
                } else if forwardable && responsive(node, owner).await {
                    Recovered::Forward(owner)
                } else {
                    let owner_unreachable = !unreachable.is_empty();
                    takeover::recover(node, &entry, &mut slot, &cookie, pair, owner_unreachable)
                        .await
                };
                match found {
                    Recovered::Installed { stale: s } => stale = s,
                    Recovered::Forward(owner) => owner_elsewhere = Some(owner),
                    Recovered::Ended | Recovered::Lost => {
                        drop(slot);
                        drop_if_empty(node, &entry).await;
                        if matches!(found, Recovered::Lost) && !matches!(call.op, Op::Delete) {
                            node.metrics.lost.inc();
                            warn!(session = %cookie.session.log_hash(), version = cookie.version, "session lost: every copy is gone; starting a fresh one");
                        }
                        return fresh(node, &call).await;
                    }
                }
            }
        }
        if let Some(owner) = owner_elsewhere {
            drop(slot);
            drop_if_empty(node, &entry).await;
            if call.hops < MAX_HOPS && !unreachable.contains(&owner) {
                match forward(node, &mut call, owner).await {
                    Ok(r) => return r,
                    Err(()) => unreachable.push(owner),
                }
            }
            continue;
        }
        if stale {
            node.metrics.stale.inc();
        }
        match run_op(node, &entry, slot, &call, Some(cookie), stale).await {
            Some(resp) => return resp,
            None => continue, // fenced while waiting: the session has a newer owner; find it again
        }
    }
    let mut r = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "the session could not be located; retry",
    );
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// No session to serve (no valid cookie, or it ended or was lost): a DELETE has nothing to do, anything else
/// starts a fresh session.
async fn fresh(node: &Arc<Node>, call: &Call) -> Resp {
    if matches!(call.op, Op::Delete) {
        deleted(node)
    } else {
        create(node, call).await
    }
}

/// Whether `owner` is worth forwarding to: alive and answering heartbeats, or answering a probe right now.
async fn responsive(node: &Arc<Node>, owner: NodeId) -> bool {
    if owner == node.id() || !node.members.is_alive(owner) {
        return false;
    }
    node.members.answered_lately(owner) || node.members.probe(owner, node.store.len() as u64).await
}

async fn drop_if_empty(node: &Node, entry: &Arc<Entry>) {
    if let Ok(slot) = entry.slot.try_lock() {
        if slot.session.is_none() && slot.removed.is_none() {
            node.store.remove(entry);
        }
    }
}

/// Starts a new session here and runs the operation on it.
async fn create(node: &Arc<Node>, call: &Call) -> Resp {
    let sid = SessionId::random();
    let mut secondary = node.members.choose_secondary(sid, &[]);
    if secondary.is_none() {
        // Heartbeat on request: peers may have come up since the last beat.
        node.members.probe_all(node.store.len() as u64).await;
        secondary = node.members.choose_secondary(sid, &[]);
    }
    let (entry, _) = node.store.get_or_insert(sid);
    let mut slot = entry.slot.lock().await;
    slot.session = Some(Session::new(sid, node.id(), secondary));
    slot.role = Role::Primary;
    node.metrics.created.inc();
    match secondary {
        Some(peer) => {
            slot.needs_full = true;
            entry.reset_mark(0, Instant::now());
            node.enqueue(peer, &entry);
        }
        // No copy to wait for; reads never need a lease without a secondary.
        None => entry.reset_mark(1, Instant::now()),
    }
    match run_op(node, &entry, slot, call, None, false).await {
        Some(r) => r,
        None => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "new session lost its ownership; retry",
        ),
    }
}

/// Applies `call.op` to the primary session in `slot`; `None` when ownership was lost while waiting for the copy.
async fn run_op(
    node: &Arc<Node>,
    entry: &Arc<Entry>,
    mut slot: tokio::sync::MutexGuard<'_, Slot>,
    call: &Call,
    cookie: Option<RoutingCookie>,
    stale: bool,
) -> Option<Resp> {
    slot.last_access = Instant::now();
    let limit = node.cfg.session.max_session_bytes;
    let s = slot.session.as_mut().expect("primary slot holds a session");
    if let Some(o) = call.rid.as_deref().and_then(|r| s.outcome_of(r)) {
        node.metrics.dedup_hits.inc();
        let body = render(node, s, o);
        let (sid, version, pair) = (s.id, s.version, pair_of(s));
        let secondary = s.secondary;
        drop(slot);
        if node.sync() && secondary.is_some() {
            wait_copied(node, entry, version).await?;
        }
        return Some(session_response(
            node, body, sid, cookie, pair, version, stale,
        ));
    }
    let (body, delta) = match &call.op {
        Op::Get => (render(node, s, Outcome::Patched), None),
        Op::Patch(p) => match s.patch(p, limit) {
            Ok(d) => (
                render(node, s, Outcome::Patched),
                Some((d, Outcome::Patched)),
            ),
            Err(e) => return Some(session_error(e)),
        },
        Op::Incr(key) => match s.incr(key) {
            Ok((value, d)) => {
                let o = Outcome::Incremented {
                    value,
                    version: s.version,
                };
                (render(node, s, o), Some((d, o)))
            }
            Err(e) => return Some(session_error(e)),
        },
        Op::Delete => {
            let copied_elsewhere = s.secondary.is_some();
            let seq = entry.mark().lease_seq;
            remove_session(node, entry, &mut slot);
            drop(slot);
            if node.sync() && copied_elsewhere {
                entry
                    .wait_mark(wait_limit(node), |m| m.lease_seq > seq)
                    .await;
            }
            return Some(deleted(node));
        }
    };
    let (sid, version, pair) = (s.id, s.version, pair_of(s));
    let has_secondary = s.secondary.is_some();
    if let Some((mut d, outcome)) = delta {
        if let Some(rid) = &call.rid {
            s.record(&mut d, rid, outcome);
        }
        slot.pending.push(d);
        if let Some(peer) = pair.secondary {
            node.enqueue(peer, entry);
        } else {
            entry.update_mark(|m| m.copied = m.copied.max(version + 1));
        }
        drop(slot);
        if node.sync() && has_secondary {
            wait_copied(node, entry, version).await?;
        }
    } else {
        // A read: served only while this node certainly still owns the session (lease), and in sync mode only
        // once the copy holds what is shown.
        let m = entry.mark();
        let need_copy = node.sync() && !m.covers(version);
        let need_lease = has_secondary && m.lease_until <= Instant::now();
        if need_copy || need_lease {
            if need_lease {
                slot.validate = true;
                if let Some(peer) = pair.secondary {
                    node.enqueue(peer, entry);
                }
            }
            drop(slot);
            let ok = entry
                .wait_mark(wait_limit(node), |x| {
                    (!need_copy || x.covers(version)) && (!need_lease || x.lease_seq > m.lease_seq)
                })
                .await;
            if !ok {
                return None;
            }
        }
    }
    Some(session_response(
        node, body, sid, cookie, pair, version, stale,
    ))
}

/// The answer body for an outcome: an increment's value and version, else the whole session as it is now.
fn render(node: &Node, s: &Session, o: Outcome) -> String {
    match o {
        Outcome::Incremented { value, version } => {
            json!({"value": value, "version": version}).to_string()
        }
        Outcome::Patched => s.to_json(|id| node.members.name_of(id)).to_string(),
    }
}

/// Waits until the secondary holds `version`; `None` when ownership was lost (or no copy in time).
async fn wait_copied(node: &Node, entry: &Entry, version: u64) -> Option<()> {
    entry
        .wait_mark(wait_limit(node), |m| m.covers(version))
        .await
        .then_some(())
}

/// How long a request waits for its copy before answering 503 (the write stays applied; a retry with the
/// same request id returns its outcome).
fn wait_limit(node: &Node) -> Duration {
    node.cfg.replication.peer_timeout * 3
}

/// Ends the primary session in `slot` here and queues the removal of its copy.
pub fn remove_session(node: &Node, entry: &Arc<Entry>, slot: &mut Slot) {
    let Some(s) = slot.session.take() else { return };
    slot.pending.clear();
    slot.needs_full = false;
    slot.validate = false;
    node.store.mark_ended(s.id);
    match s.secondary {
        Some(peer) => {
            slot.removed = Some((s.id, s.epoch, peer));
            node.enqueue(peer, entry);
        }
        None => node.store.remove(entry),
    }
}

fn pair_of(s: &Session) -> Pair {
    Pair {
        primary: s.primary,
        secondary: s.secondary,
    }
}

/// The 200 answer to a session operation, with a fresh cookie when the client's is missing or out of date.
fn session_response(
    node: &Node,
    body: String,
    sid: SessionId,
    cookie: Option<RoutingCookie>,
    pair: Pair,
    version: u64,
    stale: bool,
) -> Resp {
    let mut r = json_text_response(StatusCode::OK, body);
    let current = RoutingCookie {
        session: sid,
        segment: pair.segment(),
        version,
    };
    if cookie != Some(current) {
        set_header(&mut r, SET_COOKIE, &node.codec.set_cookie(&current, false));
    }
    if stale {
        r.headers_mut()
            .insert(STALE_HEADER, HeaderValue::from_static("1"));
    }
    r
}

fn set_header(r: &mut Resp, name: hyper::header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().append(name, v);
    }
}

fn session_error(e: SessionError) -> Resp {
    let status = match e {
        SessionError::PatchNotObject => StatusCode::BAD_REQUEST,
        SessionError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        SessionError::NotAnInteger { .. } | SessionError::Overflow { .. } => StatusCode::CONFLICT,
        SessionError::VersionGap { .. } | SessionError::CorruptPatch => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    error_response(status, &e.to_string())
}

/// 204 with the routing cookie cleared: the answer to every DELETE, whether a session existed or not.
fn deleted(node: &Node) -> Resp {
    let mut r = Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Full::new(Bytes::new()))
        .expect("valid");
    set_header(&mut r, SET_COOKIE, &node.codec.clear_cookie(false));
    r
}

fn json_response(status: StatusCode, v: &Value) -> Resp {
    json_text_response(status, v.to_string())
}

fn json_text_response(status: StatusCode, body: String) -> Resp {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

fn error_response(status: StatusCode, message: &str) -> Resp {
    json_response(status, &json!({ "error": message }))
}

fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here");
    r.headers_mut()
        .insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// `GET /_node/sessions/{id}`: this node's own copy, for operators and tests.
async fn local_copy(node: &Node, id: &str) -> Resp {
    let Ok(raw) = u128::from_str_radix(id, 16) else {
        return error_response(StatusCode::BAD_REQUEST, "the id is 32 hex digits");
    };
    let Some(entry) = node.store.get(SessionId(raw)) else {
        return error_response(StatusCode::NOT_FOUND, "no copy here");
    };
    let slot = entry.slot.lock().await;
    let Some(s) = slot.session.as_ref() else {
        return error_response(StatusCode::NOT_FOUND, "no copy here");
    };
    let mut v = s.to_json(|id| node.members.name_of(id));
    v["role"] = json!(if slot.role == Role::Primary {
        "primary"
    } else {
        "replica"
    });
    v["epoch"] = json!(s.epoch);
    json_response(StatusCode::OK, &v)
}

/// Forwards the request to `owner`, stamping a request id first when it has none, so that a retry elsewhere
/// after a failed forward stays exactly-once. `Err` when the owner could not answer.
async fn forward(node: &Arc<Node>, call: &mut Call, owner: NodeId) -> Result<Resp, ()> {
    let rid = call
        .rid
        .get_or_insert_with(|| format!("fw-{:032x}", SessionId::random().0))
        .clone();
    let out = Outbound {
        method: &call.method,
        path: &call.path,
        cookie: call.cookie_header.as_ref(),
        body: &call.body,
        rid: &rid,
        hops: call.hops,
    };
    node.forwarder.send(node, owner, out).await
}
