//! Active health checks: `GET /_node/health` on every node, every `[lb.health] interval_ms`, all nodes in
//! parallel. A node goes down after `fall` failures in a row and comes back after `rise` successes in a row;
//! a failed connection on the request path marks it down at once ([`HealthTracker::force_down`]), so it also
//! needs `rise` successes before it takes traffic again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::membership::Membership;

/// The health state machine of one node. Pure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthTracker {
    healthy: bool,
    /// Consecutive results that disagree with `healthy`.
    streak: u32,
}

impl HealthTracker {
    /// A node starts healthy: the first checks run at once, and a dead node is also caught by its first
    /// refused connection.
    pub fn new() -> HealthTracker {
        HealthTracker {
            healthy: true,
            streak: 0,
        }
    }

    /// The state the checks so far lead to.
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Records one check; returns the new state when it changed.
    pub fn observe(&mut self, ok: bool, fall: u32, rise: u32) -> Option<bool> {
        if ok == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.healthy { fall } else { rise };
        if self.streak >= needed.max(1) {
            self.healthy = ok;
            self.streak = 0;
            return Some(ok);
        }
        None
    }

    /// Marks the node down now (a request could not connect); returns whether that is a change.
    pub fn force_down(&mut self) -> bool {
        self.streak = 0;
        std::mem::replace(&mut self.healthy, false)
    }
}

impl Default for HealthTracker {
    fn default() -> Self {
        HealthTracker::new()
    }
}

// The path is node::HEALTH_PATH (a test keeps the two together): a literal, so it is built at compile time.
const PROBE: &[u8] = b"GET /_node/health HTTP/1.1\r\nHost: lb-health\r\nConnection: close\r\n\r\n";
const MAX_PROBE_RESPONSE: usize = 16 * 1024;

/// Whether a response head starts with a 200 status line.
fn is_ok_status(head: &[u8]) -> bool {
    let rest = match head
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| head.strip_prefix(b"HTTP/1.0 "))
    {
        Some(r) => r,
        None => return false,
    };
    rest.starts_with(b"200") && rest.get(3).is_none_or(|&c| c == b' ' || c == b'\r')
}

/// What one health check found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Probed {
    /// The node answered 200.
    pub ok: bool,
    /// While the node drains: the sessions it still owns (its answer's `sessions_left`).
    pub sessions_left: Option<u64>,
}

/// The sessions a draining node still owns, from its `/_node/health` answer (head and body); `None` when it
/// does not drain or the body says nothing readable.
fn sessions_left(answer: &[u8]) -> Option<u64> {
    let start = answer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let body: serde_json::Value = serde_json::from_slice(&answer[start..]).ok()?;
    if body.get("draining")?.as_bool()? {
        body.get("sessions_left")?.as_u64()
    } else {
        None
    }
}

/// One check of one node: connect, ask, read the answer to its end; not ok on any error or after `timeout`.
pub async fn probe(addr: SocketAddr, timeout: Duration) -> Probed {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(PROBE).await?;
        let mut buf = Vec::with_capacity(512);
        // Read to the end (the node closes after answering) so the node never writes into a reset socket.
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 || buf.len() + n > MAX_PROBE_RESPONSE {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<Probed, std::io::Error>(Probed {
            ok: is_ok_status(&buf),
            sessions_left: sessions_left(&buf),
        })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(p)) => p,
        _ => Probed::default(),
    }
}

/// Checks every node of the current topology every interval until `shutdown` turns true. Each round's probes
/// run as their own tasks, so a hanging node (SIGSTOP) delays neither the others nor the next round.
pub async fn run(membership: Arc<Membership>, mut shutdown: watch::Receiver<bool>) {
    let mut period = membership.topology().cfg.lb.health.interval;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let topology = membership.topology();
        let h = topology.cfg.lb.health.clone();
        for node in topology.nodes.iter().cloned() {
            let (timeout, fall, rise) = (h.timeout, h.fall, h.rise);
            tokio::spawn(async move {
                let p = probe(node.addr, timeout).await;
                node.observe(p.ok, fall, rise);
                if p.ok {
                    node.set_sessions_left(p.sessions_left);
                }
                node.conns.prune();
            });
        }
        if h.interval != period {
            period = h.interval;
            ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_asks_the_nodes_health_path() {
        assert!(PROBE.starts_with(format!("GET {} HTTP/1.1\r\n", node::HEALTH_PATH).as_bytes()));
    }

    #[test]
    fn a_node_falls_after_fall_failures_in_a_row_and_rises_after_rise_successes() {
        let mut t = HealthTracker::new();
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(true, 2, 3), None, "a success resets the streak");
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), Some(false));
        assert!(!t.healthy());
        assert_eq!(t.observe(true, 2, 3), None);
        assert_eq!(t.observe(true, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), None, "a failure resets the rise");
        for _ in 0..2 {
            assert_eq!(t.observe(true, 2, 3), None);
        }
        assert_eq!(t.observe(true, 2, 3), Some(true));
    }

    #[test]
    fn a_forced_down_node_still_needs_rise_successes() {
        let mut t = HealthTracker::new();
        assert!(t.force_down());
        assert!(!t.force_down(), "already down");
        assert_eq!(t.observe(true, 2, 2), None);
        assert_eq!(t.observe(true, 2, 2), Some(true));
    }

    #[test]
    fn only_a_200_status_line_passes() {
        assert!(is_ok_status(b"HTTP/1.1 200 OK\r\n"));
        assert!(is_ok_status(b"HTTP/1.0 200\r\n"));
        assert!(!is_ok_status(b"HTTP/1.1 2000 OK\r\n"));
        assert!(!is_ok_status(b"HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(!is_ok_status(b""));
        assert!(!is_ok_status(b"SSH-2.0"));
    }

    #[tokio::test]
    async fn a_probe_of_a_closed_port_fails_quickly() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        assert!(!probe(addr, Duration::from_secs(2)).await.ok);
    }

    #[test]
    fn a_draining_nodes_answer_gives_the_sessions_it_still_owns() {
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n";
        let answer = |body: &str| format!("{head}{body}").into_bytes();
        let draining =
            answer(r#"{"name":"n1","draining":true,"sessions_left":12,"drained":false}"#);
        assert_eq!(sessions_left(&draining), Some(12));
        assert_eq!(
            sessions_left(&answer(r#"{"draining":false,"sessions_left":0}"#)),
            None
        );
        assert_eq!(
            sessions_left(&answer(r#"{"name":"n1"}"#)),
            None,
            "an older node"
        );
        assert_eq!(sessions_left(&answer("not json")), None);
        assert_eq!(sessions_left(b"HTTP/1.1 200 OK\r\n"), None, "no body");
    }

    #[tokio::test]
    async fn a_probe_passes_on_200_and_times_out_on_silence() {
        let ok = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ok_addr = ok.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = ok.accept().await.unwrap();
            let mut b = [0u8; 256];
            let _ = s.read(&mut b).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                .await
                .unwrap();
        });
        assert!(probe(ok_addr, Duration::from_secs(2)).await.ok);
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let (_s, _) = silent.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        assert!(!probe(silent_addr, Duration::from_millis(100)).await.ok);
        hold.abort();
    }
}
