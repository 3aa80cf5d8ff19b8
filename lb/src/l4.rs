//! The Layer-4 listener (`[lb.l4]`, seed 004's local director): raw TCP connections relayed to the nodes'
//! `http` addresses, each client address kept on one node by [`crate::director`]. The nodes see plain HTTP
//! from the balancer's address (or, with `send_proxy`, the client's in a PROXY v2 header) and recover a moved
//! session from its cookie themselves, exactly as behind any balancer that knows nothing of them.
//!
//! A connection is relayed until either side ends it, it stays idle for `idle_timeout`, or it must go: its
//! node drains or leaves in a reload, or the balancer stops (SIGTERM). Those last two close it at the end of
//! `[lb] grace_period_s`, so a client that is between requests anyway reconnects to a live node.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use node::config::L4Config;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Instrument;

use crate::director;
use crate::membership::{Membership, NodeState};
use crate::metrics::L4Metrics;
use crate::proxy::RequestGuard;

/// Bytes buffered each way per connection: HAProxy's default `tune.bufsize`, twice tokio's default.
const BUFFER: usize = 16 * 1024;

/// The Layer-4 application Pingora runs on `[lb.l4] listen`.
pub struct L4App {
    membership: Arc<Membership>,
    cfg: L4Config,
    /// Connections open on this listener, against `max_connections`.
    open: AtomicUsize,
    /// The process's count of work in flight: the graceful exit waits for open connections too.
    in_flight: &'static AtomicUsize,
}

impl L4App {
    /// The listener's application for `cfg` (fixed until a restart); `in_flight` is shared with the HTTP
    /// proxy so that SIGTERM waits for both.
    pub fn new(
        membership: Arc<Membership>,
        cfg: L4Config,
        in_flight: &'static AtomicUsize,
    ) -> L4App {
        L4App {
            membership,
            cfg,
            open: AtomicUsize::new(0),
            in_flight,
        }
    }

    fn metrics(&self) -> &L4Metrics {
        &self.membership.metrics().l4
    }
}

/// Counts one open connection against `max_connections` until dropped.
struct Open<'a>(&'a AtomicUsize);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl ServerApp for L4App {
    async fn process_new(
        self: &Arc<Self>,
        client: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let digest = client.get_socket_digest();
        let addrs = digest
            .as_ref()
            .and_then(|d| Some((*d.peer_addr()?.as_inet()?, *d.local_addr()?.as_inet()?)));
        let Some((from, to)) = addrs else {
            // A listener of ours is always TCP; a socket without addresses has already gone.
            return None;
        };
        let at_limit = self.open.fetch_add(1, Ordering::Relaxed) >= self.cfg.max_connections;
        let _open = Open(&self.open);
        if at_limit {
            self.metrics().refused.with_label_values(&["limit"]).inc();
            tracing::debug!(%from, max = self.cfg.max_connections, "Layer-4 connection refused: limit reached");
            return None;
        }
        let _working = RequestGuard::enter(self.in_flight);
        let span = tracing::info_span!("l4", client = %from, node = tracing::field::Empty);
        self.relay(client, from, to, shutdown.clone())
            .instrument(span)
            .await;
        None
    }
}

/// Why the balancer ended a relayed connection (the label of `lb_l4_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    Idle,
    Retired,
    Shutdown,
}

impl L4App {
    async fn relay(
        &self,
        mut client: Stream,
        from: SocketAddr,
        to: SocketAddr,
        shutdown: ShutdownWatch,
    ) {
        let Some((node, mut upstream)) = self.connect(from).await else {
            self.metrics().refused.with_label_values(&["no_node"]).inc();
            tracing::warn!("Layer-4 connection refused: no node could be reached");
            return;
        };
        tracing::Span::current().record("node", node.name.as_str());
        if self.cfg.send_proxy {
            let header = node::proxy_header::encode(from, to);
            if let Err(e) = upstream.write_all(&header).await {
                tracing::info!("Layer-4 connection ended writing its PROXY header: {e}");
                return;
            }
        }
        let m = &node.l4;
        m.open.inc();
        let activity = Activity::new();
        let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
        let ended = {
            let mut c = Counted::new(&mut client, &up, &activity);
            let mut u = Counted::new(&mut upstream, &down, &activity);
            tokio::select! {
                r = tokio::io::copy_bidirectional_with_sizes(&mut c, &mut u, BUFFER, BUFFER) => {
                    if let Err(e) = r {
                        tracing::debug!("Layer-4 connection ended: {e}");
                    }
                    None
                }
                why = self.watch(&node, &activity, shutdown) => Some(why),
            }
        };
        m.open.dec();
        let (up, down) = (up.into_inner(), down.into_inner());
        m.bytes_in.inc_by(up);
        m.bytes_out.inc_by(down);
        if let Some(why) = ended {
            let reason = match why {
                Close::Idle => "idle",
                Close::Retired => "retired",
                Close::Shutdown => "shutdown",
            };
            self.metrics().closed.with_label_values(&[reason]).inc();
            tracing::debug!(
                reason,
                up,
                down,
                "Layer-4 connection closed by the balancer"
            );
            // Both ends learn at once (a FIN each), rather than whenever the streams drop.
            let _ = client.shutdown().await;
            let _ = upstream.shutdown().await;
        }
    }

    /// Connects to the client's node, or to the next in its order when one cannot be reached (that node is
    /// marked down, as a failed Layer-7 connect does).
    async fn connect(&self, from: SocketAddr) -> Option<(Arc<NodeState>, TcpStream)> {
        let topology = self.membership.topology();
        let views: Vec<_> = topology
            .nodes
            .iter()
            .map(|n| (n.view(), n.id.get()))
            .collect();
        for i in director::order(from.ip(), &views) {
            let node = &topology.nodes[i];
            let attempt =
                tokio::time::timeout(self.cfg.connect_timeout, TcpStream::connect(node.addr));
            let failure = match attempt.await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    if let (Ok(local), Ok(peer)) = (s.local_addr(), s.peer_addr()) {
                        // A node marked down shuts its connections: a client stuck on a paused node reconnects.
                        node.conns.track(s.as_raw_fd(), local, peer);
                    }
                    node.l4.ok.inc();
                    return Some((node.clone(), s));
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {:?}", self.cfg.connect_timeout),
            };
            node.l4.connect_failed.inc();
            node.force_down(&format!(
                "a Layer-4 connection could not connect: {failure}"
            ));
        }
        None
    }

    /// Returns when the connection must be closed: idle too long, or past the grace period after its node
    /// was retired or the balancer began to stop. Checks a few times a second, never per byte.
    async fn watch(
        &self,
        node: &Arc<NodeState>,
        activity: &Activity,
        shutdown: ShutdownWatch,
    ) -> Close {
        let idle = self.cfg.idle_timeout;
        let tick = (idle / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
        let mut leaving: Option<(Close, Instant)> = None;
        loop {
            tokio::time::sleep(tick).await;
            if activity.idle_for() >= idle {
                return Close::Idle;
            }
            if leaving.is_none() {
                let why = if *shutdown.borrow() {
                    Some(Close::Shutdown)
                } else if self.retired(node) {
                    Some(Close::Retired)
                } else {
                    None
                };
                leaving = why.map(|why| {
                    let grace = self.membership.with_topology(|t| t.cfg.lb.grace_period);
                    // The process exits at the end of the grace period counted from the signal, which this
                    // check sees up to a tick late: close a little before, so the FINs and the count go out.
                    let grace = match why {
                        Close::Shutdown => grace.saturating_sub(tick * 2),
                        _ => grace,
                    };
                    (why, Instant::now() + grace)
                });
            }
            if let Some((why, at)) = leaving {
                if Instant::now() >= at {
                    return why;
                }
            }
        }
    }

    /// Whether `node` drains or has left the cluster file.
    fn retired(&self, node: &Arc<NodeState>) -> bool {
        node.drain()
            || self
                .membership
                .with_topology(|t| !t.nodes.iter().any(|n| Arc::ptr_eq(n, node)))
    }
}

/// When a relayed connection last moved a byte, either way.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// One side of a relayed connection, counting the bytes read from it and noting the activity.
struct Counted<'a, S> {
    inner: &'a mut S,
    read: &'a AtomicU64,
    activity: &'a Activity,
}

impl<'a, S> Counted<'a, S> {
    fn new(inner: &'a mut S, read: &'a AtomicU64, activity: &'a Activity) -> Self {
        Counted {
            inner,
            read,
            activity,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_counted_side_counts_what_is_read_and_marks_the_time() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let (read, activity) = (AtomicU64::new(0), Activity::new());
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(activity.idle_for(), Duration::from_secs(30));
        b.write_all(b"hello").await.unwrap();
        let mut c = Counted::new(&mut a, &read, &activity);
        let mut buf = [0u8; 16];
        let n = tokio::io::AsyncReadExt::read(&mut c, &mut buf)
            .await
            .unwrap();
        assert_eq!(n, 5);
        assert_eq!(read.load(Ordering::Relaxed), 5);
        assert_eq!(activity.idle_for(), Duration::ZERO);
    }
}
