//! A WebSocket relayed between the client and the app (sidecar mode): once both sides have switched protocols,
//! bytes go through unchanged. When the WebSocket must go (its session moved off this node while it drains,
//! or the node stops), the client gets a close frame with 1001, "going away", put between two of the app's
//! frames ([`crate::websocket::Frames`]), so that it reconnects; its reconnect is pinned to the session's live
//! node like any request.

use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::websocket::{self, Frames, GOING_AWAY, OP_CLOSE};

/// How often a relay asks whether it must go.
const CHECK_EVERY: Duration = Duration::from_millis(200);
/// How long a relay that must go waits for the app to finish the frame it is sending, and then for the
/// client's answering close frame.
const FINISH_WITHIN: Duration = Duration::from_secs(1);

/// Put on an answer that switched protocols: the far side of the connection (the app's, or the owner node's
/// when the request was forwarded), and the session the WebSocket belongs to when this node owns it.
#[derive(Clone)]
pub struct AppUpgrade {
    /// Resolves to the far side's connection once hyper has read the 101.
    pub upgrade: OnUpgrade,
    /// The session, when its owner (this node) opened the WebSocket to its app; `None` when it was forwarded
    /// to the owner, whose own relay closes it when the session moves.
    pub session: Option<crate::ids::SessionId>,
}

/// The relays open on this node, counted so that a stopping node can wait for them as for requests.
pub struct Relays(watch::Sender<usize>);

impl Default for Relays {
    fn default() -> Self {
        Relays(watch::Sender::new(0))
    }
}

impl Relays {
    /// Counts one relay open until the guard drops.
    pub fn enter(&self) -> RelayGuard {
        self.0.send_modify(|n| *n += 1);
        RelayGuard(self.0.clone())
    }

    /// Resolves once no relay is open.
    pub async fn all_closed(&self) {
        let _ = self.0.subscribe().wait_for(|n| *n == 0).await;
    }
}

/// One open relay, counted in [`Relays`] until dropped.
pub struct RelayGuard(watch::Sender<usize>);

impl Drop for RelayGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// One side closed its connection.
    Closed,
    /// The relay sent the client a 1001 close.
    GoingAway,
    /// A side never switched protocols.
    NotUpgraded,
}

/// Relays between the client's and the app's upgraded connections until either closes or `must_go` says so
/// (it is asked every [`CHECK_EVERY`]); holds `_open` until then, so a stopping node can wait for relays.
pub async fn relay(
    client: OnUpgrade,
    app: OnUpgrade,
    must_go: impl Fn() -> bool,
    _open: RelayGuard,
) -> Ended {
    let (client, app) = match tokio::try_join!(client, app) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!("an upgrade did not complete: {e}");
            return Ended::NotUpgraded;
        }
    };
    let (mut client, mut app) = (TokioIo::new(client), TokioIo::new(app));
    let (mut from_client, mut from_app) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut to_client, mut to_app) = (Frames::default(), Frames::default());
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Once the relay must go: the latest moment for its closes.
    let mut going: Option<Instant> = None;
    loop {
        if let Some(by) = going {
            // Between two frames each way (a close must not land inside a frame), or a side took too long to
            // finish one: the closes go now.
            if (to_client.between() && to_app.between()) || Instant::now() >= by {
                go_away(&mut client, &mut app, &mut from_client).await;
                return Ended::GoingAway;
            }
        }
        tokio::select! {
            n = app.read(&mut from_app) => match n {
                Ok(n) if n > 0 => {
                    to_client.feed(&from_app[..n]);
                    if client.write_all(&from_app[..n]).await.is_err() {
                        break;
                    }
                }
                _ => break,
            },
            // While going, only the rest of a frame the client has begun is passed on: the app gets its close
            // after it.
            n = client.read(&mut from_client), if going.is_none() || !to_app.between() => match n {
                Ok(n) if n > 0 => {
                    to_app.feed(&from_client[..n]);
                    if app.write_all(&from_client[..n]).await.is_err() {
                        break;
                    }
                }
                _ => break,
            },
            _ = tick.tick(), if going.is_none() => {
                if must_go() {
                    going = Some(Instant::now() + FINISH_WITHIN);
                }
            }
            _ = tokio::time::sleep_until(going.unwrap_or_else(Instant::now)), if going.is_some() => {}
        }
    }
    let _ = client.shutdown().await;
    let _ = app.shutdown().await;
    Ended::Closed
}

/// Sends the client a 1001 close and the app one too (masked: the node is the app's client), waits a moment
/// for the client's answering close, then closes both connections.
async fn go_away<C, A>(client: &mut C, app: &mut A, buf: &mut [u8])
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    A: tokio::io::AsyncWrite + Unpin,
{
    let _ = client.write_all(&websocket::close(GOING_AWAY, None)).await;
    let _ = client.flush().await;
    let _ = app
        .write_all(&websocket::close(GOING_AWAY, Some(rand::random())))
        .await;
    let _ = app.shutdown().await;
    // The client's close (or anything else) ends the wait; its bytes go nowhere.
    let mut seen = Vec::new();
    let answered = async {
        loop {
            match client.read(buf).await {
                Ok(n) if n > 0 => {
                    seen.extend_from_slice(&buf[..n]);
                    while let Some((h, _, used)) = websocket::frame(&seen) {
                        if h.opcode == OP_CLOSE {
                            return;
                        }
                        seen.drain(..used);
                    }
                    if seen.len() > 64 * 1024 {
                        // A frame this large is not a close: it no longer needs looking at.
                        return;
                    }
                }
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(FINISH_WITHIN, answered).await;
    let _ = client.shutdown().await;
}
