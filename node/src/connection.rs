//! Replication connections: frames over TCP, authenticated both ways with the cluster secret at start.
//!
//! First both sides send a preamble, [`MAGIC`] and [`PROTOCOL_VERSION`]: peers of another version (a rolling
//! upgrade) are refused by name before any frame is read, never misread. Then the handshake (each side proves
//! it knows the secret without sending it): client `Hello{name, nc}` -> server `Challenge{ns, HMAC(k,
//! "server"|nc|ns)}` -> client checks it and sends `Proof{HMAC(k, "client"|ns|nc)}` -> server checks it and
//! sends `Welcome`. Anything else closes the connection. Every frame after `Welcome` is sealed (`seal`): a
//! tag per frame under keys of this connection, so nobody without the secret can inject, alter or replay one.
//!
//! [`PeerLink`] is the client side towards one peer: request/response calls multiplexed by correlation id over
//! one connection, re-established on the next call after a failure.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::seal::{Direction, Seal};
use crate::wire::{self, Body, Envelope, FrameError};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// The first bytes either side sends: not an HTTP request, not a frame length any peer would accept.
pub const MAGIC: [u8; 8] = *b"SRVREPL\0";
/// The replication protocol this build speaks: 2 added the preamble and sealed frames.
pub const PROTOCOL_VERSION: u16 = 2;
const PREAMBLE: usize = MAGIC.len() + 2;

fn preamble() -> [u8; PREAMBLE] {
    let mut p = [0u8; PREAMBLE];
    p[..MAGIC.len()].copy_from_slice(&MAGIC);
    p[MAGIC.len()..].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    p
}

/// The version a received preamble announces; `None` when it is not one of ours at all.
fn announced(p: &[u8; PREAMBLE]) -> Option<u16> {
    (p[..MAGIC.len()] == MAGIC).then(|| u16::from_be_bytes([p[MAGIC.len()], p[MAGIC.len() + 1]]))
}

/// Why a replication connection or call failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The TCP connection could not be made (refused, unreachable, or over the connect timeout).
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The peer's replication address.
        addr: SocketAddr,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The handshake failed: the peer did not prove the cluster secret, or refused ours.
    #[error("peer {addr} refused authentication: {reason}")]
    Auth {
        /// The peer's replication address.
        addr: SocketAddr,
        /// Why, as the peer or our check put it.
        reason: String,
    },
    /// No answer within the call's timeout (the duration given).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The peer closed the connection before answering, or in the middle of a frame.
    #[error("connection closed")]
    Closed,
    /// Reading or writing the socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent a malformed frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The peer speaks another replication protocol version (`theirs`), or none of ours (`None`: an older
    /// release without a preamble, or not a replication peer at all).
    #[error("peer {addr} speaks replication protocol {}, this node {PROTOCOL_VERSION}: run one release on every node, or upgrade them in turn as the release notes say", theirs.map_or("of no version of ours (an older release, or not a replication peer)".to_string(), |v| format!("version {v}")))]
    Version {
        /// The peer's replication address.
        addr: SocketAddr,
        /// The version it announced, if any.
        theirs: Option<u16>,
    },
    /// A well-formed message that does not fit where it came (e.g. a copy where the handshake's answer belongs).
    #[error("unexpected message: {0}")]
    Unexpected(String),
    /// The Redis bank failed (it stands where a session server's link would).
    #[error(transparent)]
    Bank(#[from] crate::redis_bank::BankError),
}

impl LinkError {
    /// Whether the peer answered but cannot be a peer of this node: another secret, or another protocol
    /// version (a configuration or rollout mistake, worth a warning rather than a retry in silence).
    pub fn is_mismatch(&self) -> bool {
        matches!(self, LinkError::Auth { .. } | LinkError::Version { .. })
    }

    /// Whether the peer process is certainly not listening (refused or reset at connect): dead at once.
    pub fn is_refused(&self) -> bool {
        match self {
            LinkError::Connect { source, .. } => {
                source.kind() == std::io::ErrorKind::ConnectionRefused
            }
            LinkError::Bank(e) => e.is_refused(),
            _ => false,
        }
    }
}

/// The replication keys a node proves and accepts: the current secret's, then during a rotation the previous
/// secret's. Shared by the node's links and its replication port; a reload swaps them.
#[derive(Default)]
pub struct AuthKeys(std::sync::RwLock<Vec<[u8; 32]>>);

impl AuthKeys {
    /// The keys of `secret` and, during a rotation, `previous`.
    pub fn new(secret: &str, previous: Option<&str>) -> AuthKeys {
        let keys = AuthKeys::default();
        keys.set(secret, previous);
        keys
    }

    /// Takes the secrets of a reloaded file; connections made since keep theirs.
    pub fn set(&self, secret: &str, previous: Option<&str>) {
        let keys = std::iter::once(secret)
            .chain(previous)
            .map(auth_key)
            .collect();
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = keys;
    }

    /// The keys now, current first.
    pub fn get(&self) -> Vec<[u8; 32]> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The key replication authentication uses, derived so it never equals the cookie key.
pub fn auth_key(secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"srv-repl-auth-v1\0");
    h.update(secret.as_bytes());
    h.finalize().into()
}

fn proof(key: &[u8; 32], role: &[u8], first: &[u8; 32], second: &[u8; 32]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    m.update(role);
    m.update(first);
    m.update(second);
    m.finalize().into_bytes().into()
}

fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    getrandom::getrandom(&mut n).expect("the OS random source works");
    n
}

/// Reads whole frames from a stream; once sealed, checks each frame's tag.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    read: u64,
    seal: Option<Seal>,
    /// Largest frame accepted now: small until the peer proved the secret, so that an unauthenticated
    /// connection cannot make the node buffer megabytes.
    limit: usize,
}

/// Largest handshake frame: a name and two 32-byte values.
const HANDSHAKE_FRAME: usize = 1024;

impl<R: AsyncReadExt + Unpin> FrameReader<R> {
    /// A reader with an empty 8 KiB buffer over `inner`.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(8 * 1024),
            read: 0,
            seal: None,
            limit: HANDSHAKE_FRAME,
        }
    }

    /// From now on every frame must carry the tag of `seal`.
    fn seal_with(&mut self, seal: Seal) {
        self.seal = Some(seal);
        self.limit = wire::MAX_FRAME;
    }

    /// The peer's preamble: the first bytes of the stream.
    async fn preamble(&mut self) -> Result<[u8; PREAMBLE], LinkError> {
        while self.buf.len() < PREAMBLE {
            self.fill().await?;
        }
        let p = self.buf.split_to(PREAMBLE);
        Ok(p[..].try_into().expect("PREAMBLE bytes"))
    }

    /// Reads more bytes; `Closed` at the end of the stream.
    async fn fill(&mut self) -> Result<(), LinkError> {
        let n = self.inner.read_buf(&mut self.buf).await?;
        self.read += n as u64;
        if n == 0 {
            return Err(LinkError::Closed);
        }
        Ok(())
    }

    /// Bytes read from the stream so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// The next frame; `Ok(None)` on a clean end of stream. Cancel-safe: bytes read stay in the buffer.
    pub async fn next(&mut self) -> Result<Option<Envelope>, LinkError> {
        loop {
            if let Some(len) = wire::payload_len(&self.buf).filter(|l| *l > self.limit) {
                return Err(FrameError::TooLarge { len }.into());
            }
            let frame = match self.seal.as_mut() {
                Some(seal) => seal.open(&mut self.buf)?,
                None => wire::parse(&mut self.buf)?,
            };
            if let Some(env) = frame {
                return Ok(Some(env));
            }
            let n = self.inner.read_buf(&mut self.buf).await?;
            self.read += n as u64;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(LinkError::Closed)
                };
            }
        }
    }
}

/// Writes frames to a stream; once sealed, each with its tag.
pub struct FrameWriter<W> {
    inner: W,
    seal: Option<Seal>,
}

impl<W: AsyncWriteExt + Unpin> FrameWriter<W> {
    /// Writes `env` as the next frame; returns its length in bytes.
    ///
    /// # Errors
    /// The socket's.
    pub async fn write(&mut self, env: &Envelope) -> Result<usize, LinkError> {
        let Some(seal) = self.seal.as_mut() else {
            return write_frame(&mut self.inner, env).await;
        };
        let mut out = BytesMut::new();
        seal.seal(env, &mut out);
        self.inner.write_all(&out).await?;
        Ok(out.len())
    }

    /// The stream itself, for tests that write raw bytes after the handshake.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

/// Writes one unsealed frame (the handshake's); returns its length in bytes.
pub async fn write_frame<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    env: &Envelope,
) -> Result<usize, LinkError> {
    let mut out = BytesMut::new();
    wire::encode(env, &mut out);
    w.write_all(&out).await?;
    Ok(out.len())
}

async fn expect(r: &mut FrameReader<OwnedReadHalf>) -> Result<Body, LinkError> {
    match r.next().await? {
        Some(env) => Ok(env.body),
        None => Err(LinkError::Closed),
    }
}

/// A connection's two halves once the handshake is done: every frame from here on sealed.
pub type Halves = (FrameReader<OwnedReadHalf>, FrameWriter<OwnedWriteHalf>);

/// Client side of the preamble and handshake; returns the authenticated halves.
///
/// # Errors
/// [`LinkError::Version`] when the server speaks another protocol version; [`LinkError::Auth`] when it does
/// not prove the secret or refuses ours.
pub async fn client_handshake(
    stream: TcpStream,
    me: &str,
    keys: &[[u8; 32]],
) -> Result<Halves, LinkError> {
    let addr = stream.peer_addr()?;
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut r = FrameReader::new(r);
    let nc = nonce();
    let step = async {
        w.write_all(&preamble()).await?;
        write_frame(
            &mut w,
            &Envelope {
                id: 0,
                body: Body::Hello {
                    node: me.to_string(),
                    nonce: nc,
                },
            },
        )
        .await?;
        // A server of a release before the preamble reads ours as an oversize frame and closes.
        let theirs = match r.preamble().await {
            Ok(p) => announced(&p),
            Err(LinkError::Closed) => None,
            Err(e) => return Err(e),
        };
        if theirs != Some(PROTOCOL_VERSION) {
            return Err(LinkError::Version { addr, theirs });
        }
        let Body::Challenge { nonce: ns, proofs } = expect(&mut r).await? else {
            return Err(LinkError::Auth {
                addr,
                reason: "no challenge".into(),
            });
        };
        // The first of our keys the server proved (during a rotation one side may know only one).
        let shared = keys.iter().find(|k| {
            let mine = proof(k, b"server", &nc, &ns);
            proofs.iter().any(|p| bool::from(mine.ct_eq(p)))
        });
        let Some(key) = shared else {
            return Err(LinkError::Auth {
                addr,
                reason: "server does not know the cluster secret".into(),
            });
        };
        write_frame(
            &mut w,
            &Envelope {
                id: 0,
                body: Body::Proof {
                    proof: proof(key, b"client", &ns, &nc),
                },
            },
        )
        .await?;
        match expect(&mut r).await? {
            Body::Welcome => Ok((ns, *key)),
            Body::Refused { reason } => Err(LinkError::Auth { addr, reason }),
            other => Err(LinkError::Unexpected(format!("{other:?}"))),
        }
    };
    let (ns, key) = tokio::time::timeout(HANDSHAKE_TIMEOUT, step)
        .await
        .map_err(|_| LinkError::Timeout(HANDSHAKE_TIMEOUT))??;
    r.seal_with(Seal::new(&key, Direction::ToClient, &nc, &ns));
    let w = FrameWriter {
        inner: w,
        seal: Some(Seal::new(&key, Direction::ToServer, &nc, &ns)),
    };
    Ok((r, w))
}

/// Server side of the preamble and handshake; returns the halves and the name the client gave.
///
/// # Errors
/// [`LinkError::Version`] when the client speaks another protocol version (it is sent ours first, so it
/// can say so too); [`LinkError::Auth`] when it does not prove the secret (it is told so before the close).
pub async fn server_handshake(
    stream: TcpStream,
    keys: &[[u8; 32]],
) -> Result<
    (
        FrameReader<OwnedReadHalf>,
        FrameWriter<OwnedWriteHalf>,
        String,
    ),
    LinkError,
> {
    let addr = stream.peer_addr()?;
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut r = FrameReader::new(r);
    let step = async {
        let theirs = announced(&r.preamble().await?);
        if theirs.is_some() {
            // Ours goes out even to a client of another version, so that it can name the mismatch too.
            w.write_all(&preamble()).await?;
        }
        if theirs != Some(PROTOCOL_VERSION) {
            return Err(LinkError::Version { addr, theirs });
        }
        let Body::Hello { node, nonce: nc } = expect(&mut r).await? else {
            return Err(LinkError::Auth {
                addr,
                reason: "no hello".into(),
            });
        };
        let ns = nonce();
        let challenge = Body::Challenge {
            nonce: ns,
            proofs: keys.iter().map(|k| proof(k, b"server", &nc, &ns)).collect(),
        };
        write_frame(
            &mut w,
            &Envelope {
                id: 0,
                body: challenge,
            },
        )
        .await?;
        // A client that leaves here found our proof wrong: it does not share the cluster secret.
        let Ok(Body::Proof { proof: p }) = expect(&mut r).await else {
            return Err(LinkError::Auth {
                addr,
                reason: "peer left the handshake: it does not share the cluster secret".into(),
            });
        };
        let shared = keys
            .iter()
            .find(|k| bool::from(proof(k, b"client", &ns, &nc).ct_eq(&p)));
        let Some(key) = shared else {
            let reason = "client does not know the cluster secret".to_string();
            let _ = write_frame(
                &mut w,
                &Envelope {
                    id: 0,
                    body: Body::Refused {
                        reason: reason.clone(),
                    },
                },
            )
            .await;
            return Err(LinkError::Auth { addr, reason });
        };
        write_frame(
            &mut w,
            &Envelope {
                id: 0,
                body: Body::Welcome,
            },
        )
        .await?;
        Ok((node, nc, ns, *key))
    };
    let (node, nc, ns, key) = tokio::time::timeout(HANDSHAKE_TIMEOUT, step)
        .await
        .map_err(|_| LinkError::Timeout(HANDSHAKE_TIMEOUT))??;
    r.seal_with(Seal::new(&key, Direction::ToServer, &nc, &ns));
    let w = FrameWriter {
        inner: w,
        seal: Some(Seal::new(&key, Direction::ToClient, &nc, &ns)),
    };
    Ok((r, w, node))
}

type Waiter = oneshot::Sender<Result<Body, LinkError>>;

/// Counters of a link's bytes, both ways.
#[derive(Clone)]
pub struct Traffic {
    /// Bytes of every frame written (requests).
    pub sent: prometheus::IntCounter,
    /// Bytes read (answers).
    pub received: prometheus::IntCounter,
}

impl Default for Traffic {
    /// Counters in no registry: for a link whose bytes nobody reads.
    fn default() -> Self {
        let counter = |name| prometheus::IntCounter::new(name, "link bytes").expect("valid name");
        Traffic {
            sent: counter("sent_bytes"),
            received: counter("received_bytes"),
        }
    }
}

/// The client side of replication towards one peer.
pub struct PeerLink {
    addr: SocketAddr,
    traffic: Traffic,
    me: String,
    keys: std::sync::Arc<AuthKeys>,
    connect_timeout: Duration,
    conn: tokio::sync::Mutex<Option<mpsc::UnboundedSender<(Envelope, Waiter)>>>,
    next_id: AtomicU64,
}

impl PeerLink {
    /// A link to the peer at `addr` that introduces itself as `me` and proves one of `keys` (as they are at
    /// each connect) and counts its frames' bytes in `traffic`. It connects on the first call, giving up after
    /// `connect_timeout`.
    pub fn new(
        addr: SocketAddr,
        me: &str,
        keys: std::sync::Arc<AuthKeys>,
        connect_timeout: Duration,
        traffic: Traffic,
    ) -> PeerLink {
        PeerLink {
            addr,
            traffic,
            me: me.to_string(),
            keys,
            connect_timeout,
            conn: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
        }
    }

    /// The peer's replication address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends `body` and waits up to `timeout` for the answer. A connection found broken is re-made once.
    ///
    /// # Errors
    /// [`LinkError`]; `is_refused()` tells that the peer is not running.
    pub async fn call(&self, body: Body, timeout: Duration) -> Result<Body, LinkError> {
        let fut = async {
            let mut last = LinkError::Closed;
            for _ in 0..2 {
                let (tx, fresh) = self.sender().await?;
                let (wtx, wrx) = oneshot::channel();
                let env = Envelope {
                    id: self.next_id.fetch_add(1, Ordering::Relaxed),
                    body: body.clone(),
                };
                if tx.send((env, wtx)).is_err() {
                    self.reset(&tx).await;
                    continue;
                }
                match wrx.await.unwrap_or(Err(LinkError::Closed)) {
                    Ok(b) => return Ok(b),
                    Err(e) => {
                        self.reset(&tx).await;
                        if fresh {
                            return Err(e);
                        }
                        last = e;
                    }
                }
            }
            Err(last)
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| LinkError::Timeout(timeout))?
    }

    async fn reset(&self, tx: &mpsc::UnboundedSender<(Envelope, Waiter)>) {
        let mut g = self.conn.lock().await;
        if g.as_ref().is_some_and(|c| c.same_channel(tx)) {
            *g = None;
        }
    }

    async fn sender(&self) -> Result<(mpsc::UnboundedSender<(Envelope, Waiter)>, bool), LinkError> {
        let mut g = self.conn.lock().await;
        if let Some(tx) = g.as_ref() {
            if !tx.is_closed() {
                return Ok((tx.clone(), false));
            }
        }
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| LinkError::Timeout(self.connect_timeout))?
            .map_err(|source| LinkError::Connect {
                addr: self.addr,
                source,
            })?;
        let (r, w) = client_handshake(stream, &self.me, &self.keys.get()).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_link(r, w, rx, self.traffic.clone()));
        *g = Some(tx.clone());
        Ok((tx, true))
    }
}

async fn run_link(
    mut r: FrameReader<OwnedReadHalf>,
    mut w: FrameWriter<OwnedWriteHalf>,
    mut rx: mpsc::UnboundedReceiver<(Envelope, Waiter)>,
    traffic: Traffic,
) {
    let mut pending: HashMap<u64, Waiter> = HashMap::new();
    let mut counted = r.bytes_read();
    let err = loop {
        tokio::select! {
            req = rx.recv() => {
                let Some((env, waiter)) = req else { break LinkError::Closed };
                pending.insert(env.id, waiter);
                match w.write(&env).await {
                    Ok(n) => traffic.sent.inc_by(n as u64),
                    Err(e) => break e,
                }
            }
            frame = r.next() => match frame {
                Ok(Some(env)) => {
                    traffic.received.inc_by(r.bytes_read() - counted);
                    counted = r.bytes_read();
                    if let Some(waiter) = pending.remove(&env.id) {
                        let _ = waiter.send(Ok(env.body));
                    }
                }
                Ok(None) => break LinkError::Closed,
                Err(e) => break e,
            }
        }
    };
    tracing::debug!(error = %err, "replication link closed");
    rx.close();
    for (_, waiter) in pending.drain() {
        let _ = waiter.send(Err(LinkError::Closed));
    }
}

/// The next connection on `listener`. Accept errors (out of file descriptors, aborted handshakes) are logged and
/// retried after a short pause instead of ending the listener.
pub async fn accept(listener: &tokio::net::TcpListener, what: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(x) => return x,
            Err(e) => {
                tracing::warn!(error = %e, listener = what, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handshake over loopback between a client holding `client` keys and a server holding `server` keys;
    /// returns whether both sides completed it.
    async fn handshake(client: &[&str], server: &[&str]) -> bool {
        let keys = |s: &[&str]| s.iter().map(|s| auth_key(s)).collect::<Vec<_>>();
        let (ck, sk) = (keys(client), keys(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            server_handshake(stream, &sk).await.is_ok()
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let client_ok = client_handshake(stream, "c", &ck).await.is_ok();
        client_ok && serving.await.unwrap()
    }

    #[tokio::test]
    async fn during_a_rotation_peers_that_share_either_secret_connect_and_others_do_not() {
        let (old, new) = ("old-secret-0123456789", "new-secret-0123456789");
        assert!(
            handshake(&[new, old], &[old]).await,
            "reloaded client, old server"
        );
        assert!(
            handshake(&[old], &[new, old]).await,
            "old client, reloaded server"
        );
        assert!(handshake(&[new, old], &[new, old]).await, "both reloaded");
        assert!(handshake(&[new], &[new]).await, "both done");
        assert!(
            !handshake(&[old], &[new]).await,
            "the old secret once dropped"
        );
        assert!(!handshake(&[new], &[old]).await, "a new secret alone");
    }

    #[tokio::test]
    async fn sealed_frames_flow_both_ways_after_a_handshake_on_the_previous_secret() {
        let (old, new) = (
            auth_key("old-secret-0123456789"),
            auth_key("new-secret-0123456789"),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (mut r, mut w, _) = server_handshake(stream, &[old]).await.unwrap();
            let env = r.next().await.unwrap().unwrap();
            w.write(&env).await.unwrap();
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut r, mut w) = client_handshake(stream, "c", &[new, old]).await.unwrap();
        let ping = Envelope {
            id: 7,
            body: Body::Ping { sessions: 3 },
        };
        w.write(&ping).await.unwrap();
        assert_eq!(
            r.next().await.unwrap(),
            Some(ping),
            "echoed under the shared key"
        );
        serving.await.unwrap();
    }
}
