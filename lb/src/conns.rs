//! The open connections to one node, so that marking the node down can end the attempts waiting on it
//! (as HAProxy's `on-marked-down shutdown-sessions`): a request sent to a node that then hangs (SIGSTOP, a full
//! pause) would otherwise wait for the whole read timeout. Shutting the socket makes Pingora's read fail at
//! once, and the proxy's retry carries the request, under the same request id, to another node.
//!
//! Pingora gives us a connection's file descriptor when it is made but does not say when it closes it, and a
//! closed descriptor's number is soon reused. So each connection is kept with its two addresses, and a
//! descriptor is only shut when it still names that very connection; entries that no longer do are dropped.
//! Connections are tracked once, when made, not per request: pooled reuse costs nothing here.

use std::mem::ManuallyDrop;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Mutex;

/// One connection to the node, as it was when made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Conn {
    fd: RawFd,
    local: SocketAddr,
    peer: SocketAddr,
}

/// The connections to one node that may still be open.
#[derive(Default)]
pub struct ConnSet {
    conns: Mutex<Vec<Conn>>,
}

impl ConnSet {
    /// Remembers a new connection (`fd` with its local and peer addresses).
    pub fn track(&self, fd: RawFd, local: SocketAddr, peer: SocketAddr) {
        let mut c = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        // A descriptor number is one connection at a time: a new one replaces what was closed under it.
        c.retain(|x| x.fd != fd);
        c.push(Conn { fd, local, peer });
    }

    /// Drops the entries whose descriptor no longer names their connection; returns how many are left.
    pub fn prune(&self) -> usize {
        let mut c = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        c.retain(still_open);
        c.len()
    }

    /// Shuts every connection that is still open (reads and writes on it fail at once) and forgets them all;
    /// returns how many were shut.
    pub fn shut_all(&self) -> usize {
        let taken = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|p| p.into_inner()));
        let mut shut = 0;
        for c in taken.iter().filter(|c| still_open(c)) {
            // SAFETY: shutdown takes no memory; on a descriptor that was closed and reused since the check
            // above, it could only end another connection, and the check just ran.
            if unsafe { libc::shutdown(c.fd, libc::SHUT_RDWR) } == 0 {
                shut += 1;
            }
        }
        shut
    }
}

/// Whether `c.fd` is still the TCP connection between `c.local` and `c.peer`.
fn still_open(c: &Conn) -> bool {
    // SAFETY: the stream is never dropped (ManuallyDrop), so the descriptor is not closed here; it is only
    // asked for its addresses, which fails cleanly (EBADF, ENOTSOCK) if it is closed or not a socket now.
    let s = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(c.fd) });
    matches!((s.local_addr(), s.peer_addr()), (Ok(l), Ok(p)) if l == c.local && p == c.peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    fn track(set: &ConnSet, s: &TcpStream) {
        set.track(
            s.as_raw_fd(),
            s.local_addr().unwrap(),
            s.peer_addr().unwrap(),
        );
    }

    #[test]
    fn shutting_a_node_ends_a_read_waiting_on_its_connection() {
        let (client, mut server_side) = pair();
        let set = ConnSet::default();
        track(&set, &client);
        assert_eq!(set.shut_all(), 1);
        // The node's side sees the end of the stream; the client's own reads fail or end too.
        let mut b = [0u8; 8];
        assert_eq!(server_side.read(&mut b).unwrap(), 0);
        let mut c = &client;
        assert_eq!(c.read(&mut b).unwrap_or(0), 0);
        assert_eq!(set.prune(), 0, "shut_all forgets what it shut");
    }

    #[test]
    fn a_closed_connection_is_pruned_and_never_shut() {
        let (client, _server_side) = pair();
        let set = ConnSet::default();
        track(&set, &client);
        assert_eq!(set.prune(), 1);
        drop(client);
        assert_eq!(set.prune(), 0);
        assert_eq!(set.shut_all(), 0);
    }

    #[test]
    fn a_reused_descriptor_naming_another_connection_is_left_alone() {
        let (client, _server_side) = pair();
        let (other, mut other_server) = pair();
        let set = ConnSet::default();
        // The entry names `client`'s addresses but `other`'s descriptor, as after a close and a reuse.
        set.track(
            other.as_raw_fd(),
            client.local_addr().unwrap(),
            client.peer_addr().unwrap(),
        );
        assert_eq!(set.shut_all(), 0);
        other_server.set_nonblocking(true).unwrap();
        let mut b = [0u8; 8];
        let still_open = matches!(other_server.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        assert!(still_open, "the other connection must not have been shut");
        drop(other);
    }
}
