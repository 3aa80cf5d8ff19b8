//! The replication port's server side: authenticated connections from peers, each request answered on its
//! own task (heartbeats, copies, pulls). It needs no HTTP API, so a session-server process can run it alone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::warn;

use crate::connection::{server_handshake, LinkError};
use crate::ids::NodeId;
use crate::metrics::Metrics;
use crate::replicate;
use crate::store::{now, Store};
use crate::takeover::Takeover;
use crate::wire::{Body, Envelope, FrameError, Item, ItemResult};

/// Answers peers on the replication port.
pub struct PeerServer {
    /// The replication keys peers must prove one of (the cluster secret's, and a previous one's).
    pub keys: Arc<crate::connection::AuthKeys>,
    /// `[replication] lease_ms`: how long an applied copy promises the primary no takeover.
    pub lease: Duration,
    /// Where received copies are kept.
    pub store: Arc<Store>,
    /// Counts refused connections and bad frames.
    pub metrics: Arc<Metrics>,
    /// Answers pulls.
    pub takeover: Arc<Takeover>,
    /// This process's random incarnation, sent with every heartbeat answer.
    pub incarnation: u64,
}

impl PeerServer {
    /// Accepts peers on `listener` until the task is dropped: a stopping node keeps answering its peers
    /// while it flushes its own copies.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, addr) = crate::connection::accept(&listener, "replication").await;
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.connection(stream, addr).await {
                    me.log_error(addr, &e);
                }
            });
        }
    }

    fn log_error(&self, addr: SocketAddr, e: &LinkError) {
        match e {
            LinkError::Auth { .. } | LinkError::Version { .. } => {
                self.metrics.auth_failures.inc();
                warn!(%addr, error = %e, "replication connection refused");
            }
            LinkError::Frame(FrameError::Forged) => {
                self.metrics.frame_errors.inc();
                warn!(%addr, error = %e, "replication frame failed authentication: connection closed");
            }
            LinkError::Frame(_) => {
                self.metrics.frame_errors.inc();
                warn!(%addr, error = %e, "malformed replication frame: connection closed");
            }
            _ => tracing::debug!(%addr, error = %e, "replication connection ended"),
        }
    }

    async fn connection(
        self: &Arc<Self>,
        stream: TcpStream,
        addr: SocketAddr,
    ) -> Result<(), LinkError> {
        let (mut reader, mut writer, peer) = server_handshake(stream, &self.keys.get()).await?;
        tracing::debug!(%addr, %peer, "replication peer connected");
        let (tx, mut rx) = mpsc::unbounded_channel::<Envelope>();
        let write_task = tokio::spawn(async move {
            while let Some(env) = rx.recv().await {
                if writer.write(&env).await.is_err() {
                    break;
                }
            }
        });
        let result = loop {
            match reader.next().await {
                Ok(Some(env)) => {
                    // Each request runs on its own: a pull waiting on a busy session must not hold up heartbeats.
                    let me = self.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let body = me.answer(env.body).await;
                        let _ = tx.send(Envelope { id: env.id, body });
                    });
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        drop(tx);
        let _ = write_task.await;
        result
    }

    /// The answer to one request frame.
    async fn answer(&self, body: Body) -> Body {
        match body {
            Body::Ping { .. } => Body::Pong {
                sessions: self.store.len() as u64,
                incarnation: self.incarnation,
            },
            Body::Batch { from, items } => {
                let mut results = Vec::with_capacity(items.len());
                for item in items {
                    results.push(self.receive(from, item).await);
                }
                Body::BatchReply { results }
            }
            Body::Pull {
                sid,
                requester,
                owner_unreachable,
                min_version,
            } => Body::PullReply {
                result: self
                    .takeover
                    .serve_pull(sid, requester, owner_unreachable, min_version)
                    .await,
            },
            Body::Adopt { sid, from } => Body::Adopted {
                taken: self.takeover.adopt(sid, from).await,
            },
            _ => Body::Error {
                message: "not a request".into(),
            },
        }
    }

    /// Takes one item from primary `from` and carries out what the core decided.
    async fn receive(&self, from: NodeId, item: Item) -> ItemResult {
        let (entry, _) = self.store.get_or_insert(item.sid());
        let mut slot = entry.slot.lock().await;
        let ended = self.store.refuses_through(entry.id);
        let r = replicate::incoming(&mut slot, from, item, now(), self.lease, ended);
        if r.fence {
            entry.update_mark(|m| m.fenced = true);
        }
        if let Some(epoch) = r.ended {
            self.store.mark_ended(entry.id, epoch, true);
        }
        if r.forget {
            self.store.remove(&entry);
        }
        r.result
    }
}
