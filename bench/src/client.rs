//! One virtual user's HTTP/1.1 keep-alive connection ([`Http1`], shared with `bench shop`), its cookie jar, and
//! the translation of API answers into [`verify::Reply`]s. A user owns one connection, as a browser tab would, so
//! connection reuse is exactly what a proxy sees from real clients.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::http::response::Parts;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::verify::{Body, ErrorKind, Op, Reply};

/// The cookies one session's client holds: the routing cookie, and whatever a foreign balancer adds.
#[derive(Clone, Debug, Default)]
pub struct Jar {
    cookies: Vec<(String, String)>,
}

impl Jar {
    /// The `Cookie` header to send, if any.
    pub fn header(&self) -> Option<String> {
        if self.cookies.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        Some(parts.join("; "))
    }

    /// Applies one `Set-Cookie` value: a new value replaces, an empty one (a removal) deletes.
    pub fn set(&mut self, set_cookie: &str) {
        let pair = set_cookie.split(';').next().unwrap_or("").trim();
        let Some((name, value)) = pair.split_once('=') else {
            return;
        };
        let removal = value.is_empty() || set_cookie.to_ascii_lowercase().contains("max-age=0");
        self.cookies.retain(|(k, _)| k != name);
        if !removal {
            self.cookies.push((name.to_string(), value.to_string()));
        }
    }

    /// The value of cookie `name`, if the jar holds it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.cookies
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Forgets every cookie: the next request starts a new session.
    pub fn clear(&mut self) {
        self.cookies.clear();
    }
}

/// A keep-alive HTTP/1.1 connection to one target: opened on first use, re-opened once it breaks or the server
/// closes it, one request at a time. Both the session API's [`Conn`] and `bench shop`'s cart users talk through it.
pub struct Http1 {
    target: SocketAddr,
    host: String,
    timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// A kept connection that closes while a request waits for it is replaced rather than a `Connect` failure.
    opened: u64,
}

impl Http1 {
    /// A connection to `target`, opened on first use; `timeout` bounds connecting and each exchange.
    pub fn new(target: SocketAddr, timeout: Duration) -> Http1 {
        Http1 {
            target,
            host: target.to_string(),
            timeout,
            sender: None,
            opened: 0,
        }
    }

    /// The `Host` header for this target.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Connections opened so far.
    pub fn opened(&self) -> u64 {
        self.opened
    }

    async fn open(&mut self) -> Result<(), ErrorKind> {
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(self.target))
            .await
            .map_err(|_| ErrorKind::Timeout)?
            .map_err(|_| ErrorKind::Connect)?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|_| ErrorKind::Connect)?;
        // The driver ends by itself once the sender is dropped or the peer closes.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.sender = Some(sender);
        self.opened += 1;
        Ok(())
    }

    /// A sender ready for a request: the kept one unless the server has closed it, else a new connection.
    async fn ready(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, ErrorKind> {
        // A kept connection the server closed, or closes while this request waits for it (as a server that
        // closes after each answer does), is replaced: nothing was sent on it, so no request goes twice.
        if let Some(s) = self.sender.as_mut() {
            if !s.is_closed() && s.ready().await.is_ok() {
                return Ok(self.sender.as_mut().expect("kept"));
            }
        }
        self.open().await?;
        let s = self.sender.as_mut().expect("just opened");
        s.ready().await.map_err(|_| ErrorKind::Connect)?;
        Ok(s)
    }

    /// Sends `req` and reads the whole answer within the timeout, and keeps any cookies it sets in `jar`. On an
    /// error the connection is dropped, to be re-opened by the next exchange.
    pub async fn exchange(
        &mut self,
        req: Request<Full<Bytes>>,
        jar: &mut Jar,
    ) -> Result<(Parts, Bytes), ErrorKind> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let result = tokio::time::timeout_at(deadline, async {
            let sender = self.ready().await?;
            let resp = sender.send_request(req).await.map_err(|_| ErrorKind::Io)?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|_| ErrorKind::Io)?.to_bytes();
            Ok::<_, ErrorKind>((parts, body))
        })
        .await;
        let (parts, body) = match result {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                self.sender = None;
                return Err(e);
            }
            Err(_) => {
                // Whatever is still in flight on this connection would be misread as the next answer.
                self.sender = None;
                return Err(ErrorKind::Timeout);
            }
        };
        for sc in parts.headers.get_all("set-cookie") {
            if let Ok(s) = sc.to_str() {
                jar.set(s);
            }
        }
        Ok((parts, body))
    }
}

/// One virtual user's connection to the session API.
pub struct Conn {
    http: Http1,
}

/// A raw answer before verification.
pub struct Raw {
    /// The HTTP status.
    pub status: StatusCode,
    /// `X-Served-By`: the node that served, when the cluster exposes it.
    pub served_by: Option<String>,
    /// `X-Session-Stale: 1`: the node recovered a copy older than the cookie.
    pub stale_flag: bool,
    /// The whole body.
    pub body: Bytes,
}

impl Conn {
    /// A connection to `target`, opened on first use; `timeout` bounds connecting and each request.
    pub fn new(target: SocketAddr, timeout: Duration) -> Conn {
        Conn {
            http: Http1::new(target, timeout),
        }
    }

    /// Sends `op` for the session whose cookies are in `jar`, keeps any cookies the answer sets.
    pub async fn send(&mut self, op: &Op, jar: &mut Jar) -> Result<Raw, ErrorKind> {
        let (method, path, body) = match op {
            Op::Get => (Method::GET, "/session".to_string(), Bytes::new()),
            Op::Incr { key } => (Method::POST, format!("/session/incr/{key}"), Bytes::new()),
            Op::Patch { key, value } => {
                let b =
                    serde_json::to_vec(&serde_json::json!({ key: value })).expect("a string map");
                (Method::PATCH, "/session".to_string(), Bytes::from(b))
            }
            Op::Delete => (Method::DELETE, "/session".to_string(), Bytes::new()),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.http.host());
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        if let Some(c) = jar.header() {
            req = req.header("cookie", c);
        }
        let req = req.body(Full::new(body)).expect("well-formed request");
        let (parts, body) = self.http.exchange(req, jar).await?;
        let header = |k: &str| {
            parts
                .headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Ok(Raw {
            status: parts.status,
            served_by: header(node::SERVED_BY_HEADER),
            stale_flag: header(node::STALE_HEADER).as_deref() == Some("1"),
            body,
        })
    }
}

/// The body of `GET path` at `target` as text (a node's metrics, say), within 5 s.
///
/// # Errors
/// The failed exchange, or `Status` when the answer is not a success.
pub async fn get_text(target: SocketAddr, path: &str) -> Result<String, ErrorKind> {
    let mut http = Http1::new(target, Duration::from_secs(5));
    let req = Request::builder()
        .uri(path)
        .header("host", http.host())
        .body(Full::new(Bytes::new()))
        .expect("well-formed request");
    let (parts, body) = http.exchange(req, &mut Jar::default()).await?;
    if !parts.status.is_success() {
        return Err(ErrorKind::Status(parts.status.as_u16()));
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Interprets a raw answer to `op`; `cookie_id` is the session id the routing cookie names, when decodable.
pub fn interpret(op: &Op, raw: &Raw, cookie_id: Option<String>) -> Result<Reply, ErrorKind> {
    if !raw.status.is_success() {
        return Err(ErrorKind::Status(raw.status.as_u16()));
    }
    let mut reply = Reply {
        served_by: raw.served_by.clone(),
        stale_flag: raw.stale_flag,
        session_id: cookie_id,
        body: Body::Empty,
    };
    if matches!(op, Op::Delete) {
        return Ok(reply);
    }
    let v: Value = serde_json::from_slice(&raw.body).map_err(|_| ErrorKind::BadBody)?;
    let version = v
        .get("version")
        .and_then(Value::as_u64)
        .ok_or(ErrorKind::BadBody)?;
    reply.body = match op {
        Op::Incr { .. } => Body::Incr {
            value: v
                .get("value")
                .and_then(Value::as_i64)
                .ok_or(ErrorKind::BadBody)?,
            version,
        },
        _ => {
            let id = v
                .get("id")
                .and_then(Value::as_str)
                .ok_or(ErrorKind::BadBody)?;
            reply.session_id = Some(id.to_string());
            let data = v
                .get("data")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            Body::Session { version, data }
        }
    };
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jar_keeps_latest_and_forgets_removed() {
        let mut j = Jar::default();
        j.set("SRVSESSION=abc; HttpOnly; Path=/; SameSite=Lax");
        j.set("SRVID=n1; path=/");
        j.set("SRVSESSION=def; HttpOnly; Path=/");
        assert_eq!(j.header().as_deref(), Some("SRVID=n1; SRVSESSION=def"));
        j.set("SRVSESSION=; Path=/; Max-Age=0");
        assert_eq!(j.get("SRVSESSION"), None);
        assert_eq!(j.header().as_deref(), Some("SRVID=n1"));
    }

    #[test]
    fn interprets_answers() {
        let raw = |status: u16, body: &str| Raw {
            status: StatusCode::from_u16(status).unwrap(),
            served_by: Some("n1".into()),
            stale_flag: false,
            body: Bytes::from(body.to_string()),
        };
        let incr = Op::Incr { key: "c".into() };
        let r = interpret(&incr, &raw(200, r#"{"value":3,"version":7}"#), None).unwrap();
        assert_eq!(
            r.body,
            Body::Incr {
                value: 3,
                version: 7
            }
        );
        let r = interpret(
            &Op::Get,
            &raw(
                200,
                r#"{"id":"ab","version":1,"data":{"c":1},"primary":"n1"}"#,
            ),
            None,
        )
        .unwrap();
        assert_eq!(r.session_id.as_deref(), Some("ab"));
        assert_eq!(
            interpret(&Op::Get, &raw(503, ""), None),
            Err(ErrorKind::Status(503))
        );
        assert_eq!(
            interpret(&Op::Get, &raw(200, "nope"), None),
            Err(ErrorKind::BadBody)
        );
        assert!(interpret(&Op::Delete, &raw(204, ""), None).is_ok());
    }
}
