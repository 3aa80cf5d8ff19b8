//! A small application for sidecar tests, in process: it speaks the header contract (reads `X-Session` or
//! fetches `X-Session-Ref`, answers `X-Session-Patch` / `X-Session-Delete`) and remembers what it saw, so a
//! test can check what reached it. Paths:
//!
//! | request | answer |
//! |---|---|
//! | `GET /show` | the session and header names it received; no change |
//! | `GET /hold` | waits for a permit from [`TestApp::hold`], then answers like `/show` |
//! | `POST /hold/{item}` | waits for a permit, then adds like `/add/{item}` |
//! | `POST /add/{item}` | appends `item` to `items`; a `Set-Cookie` and an `X-Session-Leak` header of its own |
//! | `POST /slow/{n}` | waits 30 ms, appends `n` to `order` (per-session order and overlap are tracked) |
//! | `POST /bad/array`, `/bad/json`, `/bad/big` | a patch that is not an object, not JSON, or too large |
//! | `POST /bad/both` | both a patch and a delete |
//! | `POST /forget` | `X-Session-Delete: 1` |
//! | `POST /fill/{kb}` | a `blob` of `kb` KiB, to push the session over the header cap |
//! | `GET /download/{kb}` | a body of `kb` KiB in 16 KiB chunks |
//! | `POST /upload` | the body's size, counted as it streams, into `uploaded` |
//! | `GET /ws` (WebSocket) | 101; then answers each text message `m` with `{items}:{m}`, `{items}` the count of `items` in the session at the handshake |

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderMap;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// What the app saw.
#[derive(Default)]
pub struct Seen {
    /// Every request's headers, in arrival order.
    pub headers: Vec<HeaderMap>,
    /// Calls per `/add/{item}` item.
    pub adds: HashMap<String, usize>,
    /// Requests in flight per session id.
    in_flight: HashMap<String, usize>,
    /// Most requests of one session in flight at once.
    pub max_per_session: usize,
    /// Most requests in flight at once, all sessions.
    pub max_total: usize,
    total: usize,
}

/// A running test app; stops when dropped.
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw.
    pub seen: Arc<Mutex<Seen>>,
    /// Permits for `GET /hold`: none at first, so every `/hold` waits until the test adds one.
    pub hold: Arc<tokio::sync::Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestApp {
    /// Starts the app on `addr` in `rt`.
    pub fn start(rt: &tokio::runtime::Runtime, addr: SocketAddr) -> TestApp {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .expect("bind the app's port");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let hold = Arc::new(tokio::sync::Semaphore::new(0));
        let state = (seen.clone(), hold.clone());
        let task = rt.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let (seen, hold) = state.clone();
                        async move { Ok::<_, Infallible>(handle(req, seen, hold).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        TestApp {
            addr,
            seen,
            hold,
            task,
        }
    }

    /// Stops listening and drops every connection (the app is "down").
    pub fn stop(self) {
        self.task.abort();
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r
}

fn patched(patch: &Value, body: &Value) -> Response<Body> {
    let mut r = text(StatusCode::OK, body.to_string());
    r.headers_mut()
        .insert("x-session-patch", patch.to_string().parse().unwrap());
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// The session data the node sent: inline, or fetched from the node by reference.
async fn session_of(h: &HeaderMap) -> Value {
    if let Some(v) = h.get("x-session") {
        return serde_json::from_slice(v.as_bytes()).unwrap_or(Value::Null);
    }
    let Some(url) = h.get("x-session-ref").and_then(|v| v.to_str().ok()) else {
        return Value::Null;
    };
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let Ok(uri) = url.parse() else {
        return Value::Null;
    };
    let Ok(resp) = client.get(uri).await else {
        return Value::Null;
    };
    let body = resp.into_body().collect().await.map(|b| b.to_bytes());
    body.ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .map(|v| v["data"].clone())
        .unwrap_or(Value::Null)
}

/// `Sec-WebSocket-Accept` for a client's key (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(key);
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// The app's side of a WebSocket: each text message `m` is answered with `{items}:{m}`; a close is answered
/// with a close, as RFC 6455 asks.
async fn echo(on: hyper::upgrade::OnUpgrade, items: usize) {
    use node::websocket::{encode, frame, OP_CLOSE, OP_TEXT};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(up) = on.await else { return };
    let mut io = TokioIo::new(up);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = io.read(&mut chunk).await {
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some((h, payload, used)) = frame(&buf) {
            buf.drain(..used);
            let answer = match h.opcode {
                OP_TEXT => encode(
                    OP_TEXT,
                    format!("{items}:{}", String::from_utf8_lossy(&payload)).as_bytes(),
                    None,
                ),
                OP_CLOSE => {
                    let _ = io.write_all(&encode(OP_CLOSE, &payload, None)).await;
                    return;
                }
                _ => continue,
            };
            if io.write_all(&answer).await.is_err() {
                return;
            }
        }
    }
}

fn list(v: &Value, key: &str) -> Vec<Value> {
    v[key].as_array().cloned().unwrap_or_default()
}

async fn handle(
    req: Request<Incoming>,
    seen: Arc<Mutex<Seen>>,
    hold: Arc<tokio::sync::Semaphore>,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let sid = parts
        .headers
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    {
        let mut s = seen.lock().unwrap();
        s.headers.push(parts.headers.clone());
        s.total += 1;
        s.max_total = s.max_total.max(s.total);
        let n = s.in_flight.entry(sid.clone()).or_default();
        *n += 1;
        let n = *n;
        s.max_per_session = s.max_per_session.max(n);
    }
    let session = session_of(&parts.headers).await;
    let path = parts.uri.path().to_string();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if segs.first() == Some(&"hold") {
        if let Ok(p) = hold.acquire().await {
            p.forget();
        }
    }
    let resp = match segs.as_slice() {
        ["show"] | ["hold"] => {
            let names: Vec<&str> = parts.headers.keys().map(|k| k.as_str()).collect();
            let version = parts
                .headers
                .get("x-session-version")
                .and_then(|v| v.to_str().ok());
            text(
                StatusCode::OK,
                json!({"id": sid, "version": version, "session": session, "headers": names})
                    .to_string(),
            )
        }
        ["add", item] | ["hold", item] => {
            *seen
                .lock()
                .unwrap()
                .adds
                .entry(item.to_string())
                .or_default() += 1;
            let mut items = list(&session, "items");
            items.push(json!(item));
            let mut r = patched(&json!({ "items": items }), &json!({ "items": items }));
            r.headers_mut()
                .append("set-cookie", "app-pref=1; Path=/".parse().unwrap());
            r.headers_mut()
                .insert("x-session-leak", "secret".parse().unwrap());
            r.headers_mut().insert("x-app", "yes".parse().unwrap());
            r
        }
        ["slow", n] => {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let mut order = list(&session, "order");
            order.push(json!(n.parse::<u64>().unwrap_or(0)));
            patched(&json!({ "order": order }), &json!({ "order": order }))
        }
        ["bad", kind] => {
            let patch = match *kind {
                "array" => "[1,2]".to_string(),
                "json" => "{oops".to_string(),
                "big" => json!({"blob": "x".repeat(300 * 1024)}).to_string(),
                _ => "{}".to_string(),
            };
            let mut r = text(StatusCode::OK, "the client must never see this");
            r.headers_mut()
                .insert("x-session-patch", patch.parse().unwrap());
            if *kind == "both" {
                r.headers_mut()
                    .insert("x-session-delete", "1".parse().unwrap());
            }
            r
        }
        ["forget"] => {
            let mut r = text(StatusCode::OK, "bye");
            r.headers_mut()
                .insert("x-session-delete", "1".parse().unwrap());
            r
        }
        ["fill", kb] => {
            let kb: usize = kb.parse().unwrap_or(1);
            patched(
                &json!({"blob": "y".repeat(kb * 1024)}),
                &json!({"filled": kb}),
            )
        }
        ["download", kb] => {
            let kb: usize = kb.parse().unwrap_or(1);
            let chunks = (0..kb.div_ceil(16)).map(move |i| {
                let n = (kb - i * 16).min(16) * 1024;
                Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'z'; n])))
            });
            let stream = futures_util::stream::iter(chunks);
            Response::new(StreamBody::new(stream).boxed())
        }
        ["upload"] => {
            let mut body = body;
            let mut n = 0usize;
            while let Some(Ok(f)) = body.frame().await {
                if let Ok(d) = f.into_data() {
                    n += d.len();
                }
            }
            patched(&json!({ "uploaded": n }), &json!({ "bytes": n }))
        }
        ["ws"] => match (upgrade, parts.headers.get("sec-websocket-key")) {
            (Some(on), Some(key)) => {
                let items = list(&session, "items").len();
                tokio::spawn(echo(on, items));
                let mut r = text(StatusCode::SWITCHING_PROTOCOLS, "");
                let h = r.headers_mut();
                h.insert("connection", "upgrade".parse().unwrap());
                h.insert("upgrade", "websocket".parse().unwrap());
                h.insert(
                    "sec-websocket-accept",
                    accept_key(key.as_bytes()).parse().unwrap(),
                );
                r
            }
            _ => text(StatusCode::BAD_REQUEST, "not a WebSocket handshake"),
        },
        _ => text(StatusCode::NOT_FOUND, "no such page"),
    };
    let mut s = seen.lock().unwrap();
    s.total -= 1;
    if let Some(n) = s.in_flight.get_mut(&sid) {
        *n -= 1;
    }
    resp
}
