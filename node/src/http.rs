//! The node's HTTP front (hyper, HTTP/1.1): node-reserved `/_node/` paths, and every other request handed to
//! the session service through the app's parser. Stops accepting on shutdown and lets requests in flight
//! finish. With `[node] trusted` set, a connection from any other source (the balancer and the nodes are always
//! trusted) gets 403 for every request on it ([`Perimeter`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, COOKIE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::app::{error_reply, json_reply, App, ClientRequest, Reply};
use crate::body;
use crate::config::{ClusterConfig, IpNet, NodeConfig, NodeRole};
use crate::ids::SessionId;
use crate::membership::Membership;
use crate::service::{SessionCall, SessionService};
use crate::session::MAX_REQUEST_ID_LEN;
use crate::store::Role;
use crate::tunnel::AppUpgrade;
use crate::{HEALTH_PATH, HOP_HEADER, REQUEST_ID_HEADER, SERVED_BY_HEADER};
use hyper::upgrade::OnUpgrade;

/// How long a client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one warning per this long about refused sources; each refusal is logged at debug level.
const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(10);

/// `[node] trusted`: the sources a node answers. The balancer's and every node's addresses in the cluster file
/// are trusted besides the listed ones (the balancer proxies and probes health, nodes forward to each other, an
/// app beside a node reads `/_node/sessions/{id}`); nodes added by a reload are trusted through [`Membership`].
/// Every path is covered alike, `/_node/health` and `/_node/metrics` too.
pub struct Perimeter {
    /// `None`: anyone may call (no `trusted` in the file).
    trusted: Option<Vec<IpNet>>,
    /// For the refusal warnings.
    since: Instant,
    refused: AtomicU64,
    last_warn_ms: AtomicU64,
}

impl Perimeter {
    /// Open to anyone.
    pub fn open() -> Perimeter {
        Perimeter::new(None)
    }

    /// The perimeter `cfg` asks for: open without `[node] trusted`; else the listed sources plus the
    /// balancer's addresses and every node's (its `http`, `repl` and `upstream` hosts). Unspecified addresses
    /// (`0.0.0.0`) name no source and add nothing.
    pub fn of(cfg: &ClusterConfig) -> Perimeter {
        let Some(listed) = &cfg.node.trusted else {
            return Perimeter::open();
        };
        let mut trusted = listed.clone();
        let hosts = [cfg.lb.listen, cfg.lb.admin]
            .into_iter()
            .chain(cfg.nodes.iter().flat_map(node_addrs));
        for a in hosts {
            add_host(&mut trusted, a.ip());
        }
        Perimeter::new(Some(trusted))
    }

    fn new(trusted: Option<Vec<IpNet>>) -> Perimeter {
        Perimeter {
            trusted,
            since: Instant::now(),
            refused: AtomicU64::new(0),
            last_warn_ms: AtomicU64::new(0),
        }
    }

    /// Whether a connection from `ip` is answered: a listed source, the balancer, or a node of the file as
    /// started or of `members` now.
    pub fn admits(&self, ip: IpAddr, members: &Membership) -> bool {
        let Some(trusted) = &self.trusted else {
            return true;
        };
        let ip = ip.to_canonical();
        if trusted.iter().any(|n| n.contains(ip)) {
            return true;
        }
        if ip.is_unspecified() {
            return false;
        }
        // A node added by a reload since start.
        members.peer_ids().into_iter().any(|id| {
            members
                .peer(id)
                .is_some_and(|p| node_addrs(&p.cfg).any(|a| a.ip().to_canonical() == ip))
        })
    }

    /// Whether `[node] trusted` is set and admits `ip` (without it, only what the balancer lets through).
    pub fn lists(&self, ip: IpAddr, members: &Membership) -> bool {
        self.trusted.is_some() && self.admits(ip, members)
    }

    /// Logs a refused connection: at debug level each, a warning at most every [`REFUSAL_WARN_EVERY`].
    fn log_refusal(&self, from: SocketAddr) {
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(%from, "connection from an untrusted source: 403 ([node] trusted)");
        let now = self.since.elapsed().as_millis() as u64 + 1;
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        let due = last == 0 || now - last >= REFUSAL_WARN_EVERY.as_millis() as u64;
        if due
            && self
                .last_warn_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                %from,
                refused_so_far = refused,
                "refused a connection from a source not in [node] trusted (403); further ones within {}s are logged at debug level",
                REFUSAL_WARN_EVERY.as_secs()
            );
        }
    }
}

/// The addresses a node of the file may call from: its listeners and its app's.
fn node_addrs(n: &NodeConfig) -> impl Iterator<Item = SocketAddr> {
    [n.http, n.repl].into_iter().chain(n.upstream)
}

fn add_host(trusted: &mut Vec<IpNet>, ip: IpAddr) {
    if ip.is_unspecified() {
        return;
    }
    let host = IpNet::host(ip);
    if !trusted.contains(&host) {
        trusted.push(host);
    }
}

/// The answer to every request of a source outside the perimeter; the connection then closes.
fn forbidden() -> Reply {
    let mut r = error_reply(
        StatusCode::FORBIDDEN,
        "this node answers only the balancer, the other nodes and [node] trusted sources",
    );
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The HTTP front of one node.
pub struct HttpFront<A: App> {
    /// This node's name in the cluster file, for logs and `X-Served-By`.
    pub name: String,
    /// `X-Served-By: <name>` for every response when `[node] expose_node` is set (built once, not per
    /// response).
    pub served_by: Option<HeaderValue>,
    /// Longest request body accepted, in bytes; 413 beyond (`[node] max_body_bytes`).
    pub max_body_bytes: usize,
    /// The replication mode as the file spells it, for `/_node/health`.
    pub mode: &'static str,
    /// The node's `role` as the file spells it; a session server (`rss`) serves no session requests.
    pub role: NodeRole,
    /// The session service every non-`/_node/` request goes to.
    pub service: Arc<SessionService<A>>,
    /// Which sources are answered at all (`[node] trusted`).
    pub perimeter: Perimeter,
    /// Whether this node drains, for `/_node/health`.
    pub drain: Arc<crate::drain::Drain>,
    /// `[node] accept_proxy`: connections may begin with a PROXY v2 header naming the client.
    pub accept_proxy: bool,
    /// Turns true when the node begins to stop: open WebSockets are then closed with 1001.
    pub stopping: watch::Receiver<bool>,
    /// The open WebSocket relays: a stopping node waits for them as for requests.
    pub tunnels: crate::tunnel::Relays,
}

impl<A: App> HttpFront<A> {
    /// Serves `listener` until `shutdown` turns true, then stops accepting and returns once every open
    /// connection finished its request in flight.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // Every connection holds a sender; when the last one is gone, `recv` returns None.
        let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
        loop {
            let (stream, from) = tokio::select! {
                a = crate::connection::accept(&listener, "http") => a,
                _ = stopping(&mut shutdown) => break,
            };
            let _ = stream.set_nodelay(true);
            let admitted = self.perimeter.admits(from.ip(), &self.service.members);
            if !admitted {
                self.perimeter.log_refusal(from);
            }
            let me = self.clone();
            let open = open_tx.clone();
            let mut shutdown = shutdown.clone();
            let accept_proxy = self.accept_proxy;
            tokio::spawn(async move {
                let (io, client) = if accept_proxy {
                    match crate::proxied::accept(stream, HEADER_READ_TIMEOUT).await {
                        Ok(found) => found,
                        Err(e) => {
                            tracing::info!(%from, "connection closed before its first request: {e}");
                            return;
                        }
                    }
                } else {
                    (crate::proxied::Prefixed::plain(stream), None)
                };
                // The client a Layer-4 balancer relays: every request span on the connection names it.
                let span = client.map_or_else(tracing::Span::none, |c| {
                    me.service.metrics.proxied.inc();
                    tracing::info_span!("connection", client = %c)
                });
                // A relayed client may use its session, but the node's own paths (a copy by id, metrics) answer
                // it only when `trusted` names it: the Layer-4 balancer cannot filter paths, as the Layer-7 one
                // does for every client.
                let own_paths =
                    client.is_none_or(|c| me.perimeter.lists(c.ip(), &me.service.members));
                let svc = service_fn(move |req| {
                    let me = me.clone();
                    async move {
                        let resp = if !admitted {
                            forbidden()
                        } else if !own_paths && req.uri().path().starts_with("/_node/") {
                            error_reply(StatusCode::NOT_FOUND, "no such path")
                        } else {
                            me.handle(req).await
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(io), svc)
                    .with_upgrades();
                async move {
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = stopping(&mut shutdown) => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                }
                .instrument(span)
                .await;
                drop(open);
            });
        }
        drop(listener);
        drop(open_tx);
        let _ = open_rx.recv().await;
        // WebSocket relays outlive their connection's HTTP part: they close with 1001 on their own now.
        self.tunnels.all_closed().await;
    }

    async fn handle(&self, req: Request<Incoming>) -> Reply {
        let mut resp = match (req.method(), req.uri().path()) {
            (&Method::GET, HEALTH_PATH) => {
                let (draining, left) = (self.drain.is_on(), self.service.metrics.drain_left.get());
                json_reply(
                    StatusCode::OK,
                    &json!({"name": self.name, "sessions": self.service.store.len(), "mode": self.mode,
                        "role": self.role.as_str(), "draining": draining, "sessions_left": left,
                        "drained": draining && left == 0}),
                )
            }
            (&Method::GET, "/_node/metrics") => {
                let mut r = Response::new(body::full(self.service.metrics.render()));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            (&Method::GET, p) if p.starts_with("/_node/sessions/") => {
                let id = p["/_node/sessions/".len()..].to_string();
                self.local_copy(&id).await
            }
            (_, p) if p.starts_with("/_node/") => {
                error_reply(StatusCode::NOT_FOUND, "no such path")
            }
            _ if !self.role.serves() => error_reply(
                StatusCode::NOT_FOUND,
                "this node is a session server (role = \"rss\"): it keeps copies and serves no sessions",
            ),
            _ => self.session_request(req).await,
        };
        if let Some(v) = &self.served_by {
            if !resp.headers().contains_key(SERVED_BY_HEADER) {
                resp.headers_mut().insert(SERVED_BY_HEADER, v.clone());
            }
        }
        resp
    }

    async fn session_request(&self, req: Request<Incoming>) -> Reply {
        let (mut parts, body) = req.into_parts();
        // A WebSocket: the client's side of the connection, handed over by hyper after our 101.
        let client_upgrade = crate::websocket::is_upgrade(&parts.headers)
            .then(|| parts.extensions.remove::<OnUpgrade>())
            .flatten();
        let limit = self.max_body_bytes;
        let too_large = || {
            error_reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("body over {limit} bytes"),
            )
        };
        let app = &self.service.app;
        // An app that takes every body whole reads up to the limit; a body over it is read on and dropped
        // (`body::Capped`), so the client gets its 413 instead of a reset in mid-upload.
        let buffer = app.streams_bodies_over().map_or(limit, |b| b.min(limit));
        let body = match body::request_body(body, buffer, limit).await {
            Ok(b) => b,
            Err(body::BodyError::TooLarge) => return too_large(),
            Err(body::BodyError::BrokeOff) => {
                return error_reply(StatusCode::BAD_REQUEST, "the request body broke off")
            }
        };
        let req = ClientRequest { parts, body };
        let call = match app.parse(&req) {
            Ok(c) => c,
            Err(r) => return r,
        };
        let parts = &req.parts;
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let rid = header(REQUEST_ID_HEADER)
            .filter(|r| {
                !r.is_empty()
                    && r.len() <= MAX_REQUEST_ID_LEN
                    && r.bytes().all(|b| b.is_ascii_graphic())
            })
            .map(str::to_string);
        let hops = header(HOP_HEADER).and_then(|h| h.parse().ok()).unwrap_or(0);
        let codec = self.service.codec();
        // A token in the configured header wins over the cookie: a client that sends it manages its session
        // by hand, and a stale cookie a library keeps sending must not override it.
        // Sending the header at all (empty, to start) asks for the token in the answer's header instead of a
        // cookie; a cookie client never gets it, so a script on the page cannot read what HttpOnly hides.
        let token_sent = self
            .service
            .token_header
            .as_ref()
            .and_then(|h| parts.headers.get(h));
        let by_token = token_sent.is_some();
        let token = token_sent.and_then(|v| codec.find_token(v.as_bytes()));
        let cookie = token
            .or_else(|| codec.find(parts.headers.get_all(COOKIE).iter().map(|v| v.as_bytes())))
            .and_then(|c| self.service.pairs().decode(c.segment).map(|p| (c, p)));
        let label = app.label(&call);
        let span = tracing::info_span!(
            "request",
            node = %self.name,
            op = label,
            session = tracing::field::Empty,
            outcome = tracing::field::Empty
        );
        if let Some((c, _)) = &cookie {
            span.record("session", c.session.log_hash());
        }
        let call = SessionCall {
            call,
            req,
            by_token,
            rid,
            hops,
            cookie,
        };
        let service = self.service.clone();
        let run = async move { service.execute(call).await }.instrument(span.clone());
        let resp = if app.finishes_without_client() {
            // A task of its own: hyper drops this future when the client goes away, the task runs on.
            match tokio::spawn(run).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(parent: &span, error = %e, "session request task failed");
                    error_reply(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
                }
            }
        } else {
            run.await
        };
        let outcome = match resp.status().as_u16() {
            200..=399 => "ok",
            400..=499 => "client_error",
            _ => "error",
        };
        span.record("outcome", outcome);
        self.service
            .metrics
            .requests
            .with_label_values(&[label, outcome])
            .inc();
        let mut resp = resp;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            match (resp.extensions_mut().remove::<AppUpgrade>(), client_upgrade) {
                (Some(app), Some(client)) => self.open_tunnel(client, app, span),
                _ => {
                    tracing::warn!(parent: &span, "the application switched protocols on a request that did not ask to");
                    resp = error_reply(
                        StatusCode::BAD_GATEWAY,
                        "the application switched protocols on a request that did not ask to",
                    );
                }
            }
        }
        resp
    }

    /// Relays a WebSocket between the client and the app until either ends it, its session leaves this
    /// draining node, or the node stops (then the client gets a 1001 close and reconnects to the live owner).
    fn open_tunnel(&self, client: OnUpgrade, app: AppUpgrade, span: tracing::Span) {
        let (store, drain, stopping) = (
            self.service.store.clone(),
            self.drain.clone(),
            self.stopping.clone(),
        );
        let metrics = self.service.metrics.clone();
        let open = self.tunnels.enter();
        let sid = app.session;
        let must_go = move || {
            *stopping.borrow()
                || (drain.is_on()
                    && sid.is_some_and(|sid| !store.get(sid).is_some_and(|e| e.owned_now())))
        };
        metrics.websockets_open.inc();
        tokio::spawn(
            async move {
                let ended = crate::tunnel::relay(client, app.upgrade, must_go, open).await;
                metrics.websockets_open.dec();
                if ended == crate::tunnel::Ended::GoingAway {
                    metrics.websockets_going_away.inc();
                }
                tracing::debug!(?ended, "websocket closed");
            }
            .instrument(span),
        );
    }

    /// `GET /_node/sessions/{id}`: this node's own copy, for operators and tests.
    async fn local_copy(&self, id: &str) -> Reply {
        let Ok(raw) = u128::from_str_radix(id, 16) else {
            return error_reply(StatusCode::BAD_REQUEST, "the id is 32 hex digits");
        };
        if let Some(r) = self.service.app.local_view(SessionId(raw)) {
            return r;
        }
        let Some(entry) = self.service.store.get(SessionId(raw)) else {
            return error_reply(StatusCode::NOT_FOUND, "no copy here");
        };
        let slot = entry.slot.lock().await;
        let Some(s) = slot.session.as_ref() else {
            return error_reply(StatusCode::NOT_FOUND, "no copy here");
        };
        let mut v = s.to_json(|id| self.service.members.name_of(id));
        v["role"] = json!(if slot.role == Role::Primary {
            "primary"
        } else {
            "replica"
        });
        v["epoch"] = json!(s.epoch);
        json_reply(StatusCode::OK, &v)
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: dropped here, before the caller awaits anything else.
    let _ = shutdown.wait_for(|s| *s).await.map(|_| ());
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[cluster]
secret = "0123456789abcdef0123"

[lb]
listen = "10.0.0.1:8080"
admin = "127.0.0.1:8081"

[node]
trusted = ["192.0.2.0/24"]

[[nodes]]
name = "n1"
http = "10.0.0.11:9001"
repl = "10.0.1.11:9101"
upstream = "http://10.0.2.11:3000"

[[nodes]]
name = "n2"
http = "0.0.0.0:9002"
repl = "10.0.1.12:9102"
"#;

    fn members(cfg: &ClusterConfig) -> Membership {
        let traffic =
            prometheus::IntCounterVec::new(prometheus::Opts::new("t", "t"), &["peer", "direction"])
                .unwrap();
        let keys = std::sync::Arc::new(crate::connection::AuthKeys::new("k", None));
        Membership::new(cfg, &cfg.nodes[0], traffic, keys).0
    }

    #[tokio::test]
    async fn without_trusted_every_source_is_answered() {
        let cfg =
            ClusterConfig::from_toml("t.toml", &FILE.replace("trusted = [\"192.0.2.0/24\"]", ""))
                .unwrap();
        let p = Perimeter::of(&cfg);
        let m = members(&cfg);
        assert!(p.admits("203.0.113.9".parse().unwrap(), &m));
        assert!(Perimeter::open().admits("203.0.113.9".parse().unwrap(), &m));
    }

    #[tokio::test]
    async fn the_listed_sources_the_balancer_and_the_nodes_are_answered_and_no_one_else() {
        let cfg = ClusterConfig::from_toml("t.toml", FILE).unwrap();
        let p = Perimeter::of(&cfg);
        let m = members(&cfg);
        let admits = |ip: &str| p.admits(ip.parse().unwrap(), &m);
        for ok in [
            "192.0.2.77",
            "::ffff:192.0.2.1",
            "10.0.0.1",
            "127.0.0.1",
            "10.0.0.11",
            "10.0.1.11",
            "10.0.2.11",
            "10.0.1.12",
        ] {
            assert!(admits(ok), "{ok}");
        }
        for refused in ["10.0.0.2", "192.0.3.1", "0.0.0.0", "127.0.0.2", "::1"] {
            assert!(!admits(refused), "{refused}");
        }
    }

    #[tokio::test]
    async fn a_node_added_by_a_reload_is_answered() {
        let cfg = ClusterConfig::from_toml("t.toml", FILE).unwrap();
        let p = Perimeter::of(&cfg);
        let m = members(&cfg);
        assert!(!p.admits("10.0.0.13".parse().unwrap(), &m));
        let more = format!(
            "{FILE}\n[[nodes]]\nname = \"n3\"\nhttp = \"10.0.0.13:9003\"\nrepl = \"10.0.1.13:9103\"\n"
        );
        m.update(&ClusterConfig::from_toml("t.toml", &more).unwrap());
        assert!(p.admits("10.0.0.13".parse().unwrap(), &m));
    }

    #[test]
    fn a_refusal_is_a_403_that_closes_the_connection() {
        let r = forbidden();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.headers()[CONNECTION], "close");
    }
}
