//! Sidecar mode (DESIGN §6): the node in front of a real application in any language, as an [`App`]. Each
//! request goes to the app under its session's lock with the session in headers (`X-Session-Id`,
//! `X-Session-Version`, `X-Session` or `X-Session-Ref`); the app's answer says what changes
//! (`X-Session-Patch`, `X-Session-Delete: 1`) and is held until the change is applied and copied. A write's
//! answer is recorded in the session, so a retry of it is answered again without reaching the app.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ahash::AHashMap;
use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, DATE};
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tracing::warn;

use std::fmt::Write as _;

use crate::app::{
    error_reply, json_reply, retry_later, App, Applied, Change, ClientRequest, Reply,
};
use crate::body::{self, full, IdleTimeout, Read, ReplyBody};
use crate::config::SidecarConfig;
use crate::forward::{any_cause, copy_headers, refused};
use crate::ids::SessionId;
use crate::session::{Outcome, RecordedReply, Session, SessionError};
use crate::tunnel::AppUpgrade;
use crate::websocket::{self, keep_upgrade};
use crate::{HOP_HEADER, REQUEST_ID_HEADER};

/// To the app: the session id, 32 hex digits.
pub const SESSION_ID: &str = "x-session-id";
/// To the app: the session's version.
pub const SESSION_VERSION: &str = "x-session-version";
/// To the app: the session data as a JSON object (ASCII, non-ASCII escaped), when it fits the cap.
pub const SESSION: &str = "x-session";
/// To the app, instead of `X-Session` above the cap: the URL of the node-local copy.
pub const SESSION_REF: &str = "x-session-ref";
/// From the app: a JSON merge patch of the session data.
pub const SESSION_PATCH: &str = "x-session-patch";
/// From the app: `1` ends the session.
pub const SESSION_DELETE: &str = "x-session-delete";
/// To the client, on an answer replayed from a recorded outcome: `1`, or `head-only` when the body was over
/// `[sidecar] replay_body_bytes` and was not kept.
pub const REPLAYED: &str = "x-node-replayed";

/// Whether a header is one of the sidecar's own (`X-Session*`): never taken from a client, never shown to one.
fn sidecar_header(name: &HeaderName) -> bool {
    name.as_str()
        .starts_with(crate::config::SIDECAR_HEADER_PREFIX)
}

/// The node's own headers, which the app never sees.
fn internal_header(name: &HeaderName) -> bool {
    sidecar_header(name) || name == REQUEST_ID_HEADER || name == HOP_HEADER
}

/// The application beside the node.
pub struct Sidecar {
    upstream: SocketAddr,
    /// This node's HTTP address, for `X-Session-Ref`.
    node_http: SocketAddr,
    settings: SidecarConfig,
    client: Client<HttpConnector, ReplyBody>,
    /// Sessions too large for a header, as shown to the app while its call is in flight (the session's lock
    /// is held then, so `/_node/sessions/{id}` reads them here).
    lent: LentMap,
}

type LentMap = Arc<Mutex<AHashMap<SessionId, Bytes>>>;

fn lock(map: &LentMap) -> std::sync::MutexGuard<'_, AHashMap<SessionId, Bytes>> {
    map.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sidecar {
    /// A sidecar in front of the app at `upstream`, on the node serving HTTP at `node_http`.
    pub fn new(upstream: SocketAddr, node_http: SocketAddr, settings: SidecarConfig) -> Sidecar {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Sidecar {
            upstream,
            node_http,
            settings,
            client,
            lent: LentMap::default(),
        }
    }

    /// The request to the app: the client's, without hop-by-hop and internal headers, with the session's; and
    /// the lent copy of a session too large for a header, which lasts as long as the call.
    fn request(&self, req: &ClientRequest, s: &Session, body: ReplyBody) -> Outgoing {
        let parts = &req.parts;
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut out = Request::new(body);
        *out.method_mut() = parts.method.clone();
        *out.uri_mut() = format!("http://{}{}", self.upstream, path)
            .parse()
            .unwrap_or_else(|_| hyper::Uri::from_static("/"));
        let h = out.headers_mut();
        copy_headers(&parts.headers, h, internal_header);
        keep_upgrade(&parts.headers, h);
        let id = format!("{:032x}", s.id.0);
        h.insert(SESSION_VERSION, s.version.into());
        let data = ascii_json(&s.data);
        let inline = (data.len() <= self.settings.session_header_bytes)
            .then(|| HeaderValue::from_str(&data).ok())
            .flatten();
        let mut lent = None;
        match inline {
            Some(v) => {
                h.insert(SESSION, v);
            }
            None => {
                let url = format!("http://{}/_node/sessions/{id}", self.node_http);
                if let Ok(v) = HeaderValue::from_str(&url) {
                    h.insert(SESSION_REF, v);
                }
                lock(&self.lent).insert(s.id, Bytes::from(data));
                lent = Some(Lent(self.lent.clone(), s.id));
            }
        }
        if let Ok(v) = HeaderValue::from_str(&id) {
            h.insert(SESSION_ID, v);
        }
        Outgoing {
            req: out,
            sid: s.id,
            _lent: lent,
        }
    }

    /// Sends the request and waits for the answer's head, within the read timeout.
    async fn call_app(
        &self,
        req: Request<ReplyBody>,
    ) -> Result<Response<hyper::body::Incoming>, Reply> {
        match tokio::time::timeout(self.settings.read_timeout, self.client.request(req)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) if any_cause(&e, |x| x.is::<body::OverLimit>()) => {
                // The client's upload passed `[node] max_body_bytes` while it streamed: its mistake.
                Err(error_reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the request body is over the size limit; nothing was changed",
                ))
            }
            Ok(Err(e)) => {
                let why = if refused(&e) {
                    "refused the connection"
                } else {
                    "failed"
                };
                warn!(upstream = %self.upstream, error = %e, "application {why}");
                Err(retry_later(
                    StatusCode::BAD_GATEWAY,
                    &format!("the application {why}; nothing was changed"),
                ))
            }
            Err(_) => {
                warn!(upstream = %self.upstream, timeout = ?self.settings.read_timeout, "application did not answer in time");
                Err(retry_later(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the application did not answer in time; nothing was changed",
                ))
            }
        }
    }
}

/// Removes a session from the lent copies when the call that lent it ends, however it ends.
pub struct Lent(LentMap, SessionId);

impl Drop for Lent {
    fn drop(&mut self) {
        lock(&self.0).remove(&self.1);
    }
}

/// The request for the app, built while the session was locked.
pub struct Outgoing {
    req: Request<ReplyBody>,
    sid: SessionId,
    _lent: Option<Lent>,
}

/// The app's answer, held until its change is applied and copied.
pub struct Held {
    status: StatusCode,
    headers: HeaderMap,
    body: ReplyBody,
    /// For a write: what a retry of it is answered with.
    recorded: Option<RecordedReply>,
    /// The app switched protocols (a WebSocket): its side of the connection, once hyper hands it over.
    upgrade: Option<OnUpgrade>,
    sid: SessionId,
}

/// The call: whether the method is safe (RFC 9110 §9.2.1). The request itself travels in [`ClientRequest`].
pub struct SidecarCall {
    safe: bool,
}

impl App for Sidecar {
    type Call = SidecarCall;
    type Pending = Held;
    type Prepared = Outgoing;

    fn streams_bodies_over(&self) -> Option<usize> {
        Some(self.settings.buffer_body_bytes)
    }

    // Once the app has run, its change must land (and be recorded) even if the client left meanwhile.
    fn finishes_without_client(&self) -> bool {
        true
    }

    fn parse(&self, req: &ClientRequest) -> Result<SidecarCall, Reply> {
        let safe = matches!(
            req.parts.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
        Ok(SidecarCall { safe })
    }

    fn label(&self, call: &SidecarCall) -> &'static str {
        if call.safe {
            "app_read"
        } else {
            "app_write"
        }
    }

    // A safe method may still answer with a patch: it then runs as a write, but without a request id of its
    // own a retry of it may run again, as HTTP allows for a safe method.
    fn may_write(&self, call: &SidecarCall) -> bool {
        !call.safe
    }

    fn prepare(
        &self,
        _call: &SidecarCall,
        req: &ClientRequest,
        s: &Session,
    ) -> Result<Outgoing, Reply> {
        let Some(body) = req.body.take() else {
            return Err(retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                "the request body was already sent once; retry the request",
            ));
        };
        Ok(self.request(req, s, body))
    }

    async fn run(
        &self,
        _call: &SidecarCall,
        _req: &ClientRequest,
        out: Outgoing,
    ) -> Result<(Change, Held), Reply> {
        let Outgoing { req, sid, _lent } = out;
        let (mut parts, incoming) = self.call_app(req).await?.into_parts();
        let change = change_of(&parts.headers).map_err(|why| {
            warn!(session = %sid.log_hash(), %why, "application answered a bad session change; nothing applied");
            error_reply(StatusCode::BAD_GATEWAY, &why)
        })?;
        let mut headers = HeaderMap::new();
        copy_headers(&parts.headers, &mut headers, sidecar_header);
        let upgrade = websocket::switched(&mut parts, &mut headers);
        let idle = self.settings.read_timeout;
        let (body, recorded) = if change == Change::Nothing {
            (body::boxed(IdleTimeout::new(incoming, idle)), None)
        } else {
            // A write's answer is kept for a replay: read it up to the size kept, within the read timeout as
            // a whole (an app trickling its answer must not hold the session's turn for ever).
            let kept = self.settings.replay_body_bytes;
            let read = body::read_up_to(IdleTimeout::new(incoming, idle), kept);
            let read = tokio::time::timeout(idle, read)
                .await
                .unwrap_or_else(|_| Read::Failed(Box::new(body::Stalled(idle))));
            match read {
                Read::Whole(b) => {
                    let rec = record(parts.status, &headers, Some(b.to_vec()));
                    (full(b), Some(rec))
                }
                Read::Over(rest) => (rest, Some(record(parts.status, &headers, None))),
                Read::Failed(_) => {
                    warn!(session = %sid.log_hash(), "application's answer broke off; nothing applied");
                    return Err(retry_later(
                        StatusCode::BAD_GATEWAY,
                        "the application's answer broke off; nothing was changed",
                    ));
                }
            }
        };
        Ok((
            change,
            Held {
                status: parts.status,
                headers,
                body,
                recorded,
                upgrade,
                sid,
            },
        ))
    }

    fn outcome(&self, held: &Held) -> Option<Outcome> {
        held.recorded.clone().map(|r| Outcome::Replied(Box::new(r)))
    }

    fn answer(
        &self,
        _call: &SidecarCall,
        held: Option<Held>,
        _session: Option<&Session>,
        applied: Applied,
    ) -> Reply {
        if let Some(h) = held {
            let mut r = Response::new(h.body);
            *r.status_mut() = h.status;
            *r.headers_mut() = h.headers;
            if let Some(upgrade) = h.upgrade {
                r.extensions_mut().insert(AppUpgrade {
                    upgrade,
                    session: Some(h.sid),
                });
            }
            return r;
        }
        match applied {
            Applied::Write(Outcome::Replied(rec)) => replay(&rec),
            // Nothing recorded to show (a deletion without an answer of the app's): say it was done.
            _ => crate::app::empty(StatusCode::NO_CONTENT),
        }
    }

    fn refused(&self, _call: &SidecarCall, e: SessionError) -> Reply {
        warn!(error = %e, "application's session patch refused; nothing applied");
        error_reply(
            StatusCode::BAD_GATEWAY,
            &format!("the application's session patch was not applied: {e}"),
        )
    }

    fn local_view(&self, id: SessionId) -> Option<Reply> {
        let data = lock(&self.lent).get(&id).cloned()?;
        let data: Value = serde_json::from_slice(&data).ok()?;
        Some(json_reply(
            StatusCode::OK,
            &json!({"id": format!("{:032x}", id.0), "data": data}),
        ))
    }
}

/// What the app's answer headers ask of the session. `Err` names what is wrong with them.
fn change_of(h: &HeaderMap) -> Result<Change, String> {
    let delete = h.get(SESSION_DELETE).map(|v| v.as_bytes());
    let patch = h.get(SESSION_PATCH);
    match (delete, patch) {
        (Some(_), Some(_)) => {
            Err("the application sent both X-Session-Patch and X-Session-Delete".into())
        }
        (Some(b"1"), None) => Ok(Change::Delete),
        (Some(other), None) => Err(format!(
            "X-Session-Delete must be `1`, not `{}`",
            String::from_utf8_lossy(other)
        )),
        (None, Some(p)) => match serde_json::from_slice::<Value>(p.as_bytes()) {
            Ok(v @ Value::Object(_)) => Ok(Change::Patch(v)),
            Ok(_) => Err("X-Session-Patch must be a JSON object (a merge patch)".into()),
            Err(e) => Err(format!("X-Session-Patch is not JSON: {e}")),
        },
        (None, None) => Ok(Change::Nothing),
    }
}

/// A write's answer as kept for a replay: the headers without those a replay recomputes.
fn record(status: StatusCode, headers: &HeaderMap, body: Option<Vec<u8>>) -> RecordedReply {
    let kept = headers
        .iter()
        .filter(|(k, _)| **k != DATE && (body.is_some() || **k != CONTENT_LENGTH))
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    RecordedReply {
        status: status.as_u16(),
        headers: kept,
        body,
    }
}

/// The answer of a retried write, from its record.
fn replay(rec: &RecordedReply) -> Reply {
    let (body, marker) = match &rec.body {
        Some(b) => (full(b.clone()), "1"),
        None => (full(""), "head-only"),
    };
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(rec.status).unwrap_or(StatusCode::OK);
    for (k, v) in &rec.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            r.headers_mut().append(k, v);
        }
    }
    r.headers_mut()
        .insert(REPLAYED, HeaderValue::from_static(marker));
    r
}

/// JSON text with every non-ASCII character escaped (`\uXXXX`, surrogate pairs above the BMP), so it is a
/// valid header value; control characters are escaped by the serializer already.
pub fn ascii_json(v: &impl serde::Serialize) -> String {
    // Maps and values of serde_json always serialize.
    let text = serde_json::to_string(v).unwrap_or_default();
    if text.bytes().all(|b| b.is_ascii() && b != 0x7f) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        // DEL is ASCII but not a valid header byte; the serializer leaves it as it is.
        if c.is_ascii() && c != '\x7f' {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{u:04x}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn an_answer_without_session_headers_changes_nothing() {
        assert_eq!(
            change_of(&headers(&[("content-type", "text/html")])),
            Ok(Change::Nothing)
        );
    }

    #[test]
    fn a_patch_header_with_an_object_is_a_patch() {
        let c = change_of(&headers(&[(SESSION_PATCH, r#"{"cart":{"apple":2}}"#)])).unwrap();
        assert_eq!(c, Change::Patch(json!({"cart": {"apple": 2}})));
    }

    #[test]
    fn a_patch_that_is_not_an_object_or_not_json_is_refused_with_a_reason() {
        let e = change_of(&headers(&[(SESSION_PATCH, "[1,2]")])).unwrap_err();
        assert!(e.contains("JSON object"), "{e}");
        let e = change_of(&headers(&[(SESSION_PATCH, "{oops")])).unwrap_err();
        assert!(e.contains("not JSON"), "{e}");
    }

    #[test]
    fn delete_must_be_one_and_cannot_come_with_a_patch() {
        assert_eq!(
            change_of(&headers(&[(SESSION_DELETE, "1")])),
            Ok(Change::Delete)
        );
        assert!(change_of(&headers(&[(SESSION_DELETE, "yes")])).is_err());
        assert!(change_of(&headers(&[(SESSION_DELETE, "1"), (SESSION_PATCH, "{}")])).is_err());
    }

    #[test]
    fn non_ascii_session_data_is_escaped_into_a_valid_header_value() {
        let v = json!({"name": "Zoë 🍎\u{7f}", "n": 1});
        let text = ascii_json(&v);
        assert!(text.is_ascii());
        assert!(HeaderValue::from_str(&text).is_ok());
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
    }

    #[test]
    fn a_replay_carries_the_recorded_status_headers_and_body() {
        let h = headers(&[
            ("location", "/cart"),
            ("date", "x"),
            ("content-length", "2"),
        ]);
        let rec = record(StatusCode::SEE_OTHER, &h, Some(b"ok".to_vec()));
        assert!(rec.headers.iter().all(|(k, _)| k != "date"));
        let r = replay(&rec);
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(r.headers()["location"], "/cart");
        assert_eq!(r.headers()[REPLAYED], "1");
    }

    #[test]
    fn a_replay_of_an_answer_over_the_kept_size_has_its_head_only() {
        let h = headers(&[("content-type", "text/html"), ("content-length", "99999")]);
        let rec = record(StatusCode::OK, &h, None);
        assert!(rec.headers.iter().all(|(k, _)| k != "content-length"));
        let r = replay(&rec);
        assert_eq!(r.headers()[REPLAYED], "head-only");
    }

    #[test]
    fn every_sidecar_header_has_the_prefix_the_balancer_strips() {
        for h in [
            SESSION_ID,
            SESSION_VERSION,
            SESSION,
            SESSION_REF,
            SESSION_PATCH,
            SESSION_DELETE,
        ] {
            assert!(h.starts_with(crate::config::SIDECAR_HEADER_PREFIX), "{h}");
        }
    }

    #[test]
    fn client_copies_of_sidecar_and_internal_headers_are_recognised() {
        for h in [
            "x-session",
            "x-session-patch",
            "x-session-id",
            "x-session-anything",
            "x-lb-request-id",
            "x-node-hop",
        ] {
            assert!(internal_header(&HeaderName::from_static(h)), "{h}");
        }
        assert!(!internal_header(&HeaderName::from_static("cookie")));
    }
}
