//! Session-hosting node of the session-replicating load balancer, and the pure pieces the balancer shares.
//!
//! # Layout
//! - [`config`]: the cluster TOML file, raw structs validated into a [`config::ClusterConfig`].
//! - [`ids`]: node ids, session ids, and the summed-id routing segment with its lookup table.
//! - [`cookie`]: the signed routing cookie codec (pure; the balancer uses it too).
//! - [`proxy_header`]: the PROXY protocol v2 header the balancer's Layer-4 listener sends (pure; both use it).
//!
//! With the default `server` feature, the node itself, in the order a request's data flows:
//! - `proxied`: a connection's optional PROXY v2 header (`[node] accept_proxy`), read before HTTP.
//! - `http`: the HTTP front: node-reserved `/_node/` paths; everything else to the session service.
//! - `body`: request and answer bodies: read whole or streamed once, idle timeouts.
//! - `app`: the seam to the application that serves requests: parse, run (what changes), answer.
//! - `builtin`: the built-in session API, the first app.
//! - `sidecar`: the second app: a real application beside the node, the session in headers.
//! - `websocket`: WebSocket frames: where they end in a byte stream, and the close frame (pure).
//! - `tunnel`: a WebSocket relayed between client and app; closed with 1001 when its session leaves or the
//!   node stops.
//! - `service`: the session service: locate, lock, run the app, apply and record, queue copies, wait.
//! - `session`: a session's state and the pure operations on it (merge patch, increment, outcomes).
//! - `store`: the sharded in-memory session table; per session a FIFO lock, a slot and copy cursors.
//! - `topology`: where copies go, how many must confirm a write, where to look on takeover (pure).
//! - `replicate`: the replication core (pure: cursors, items, answers, grant and promote) and its replicator
//!   (per-peer queues and tasks, re-homing).
//! - `wire`: replication frames: pure codec, whole-frame check then parse.
//! - `seal`: frame integrity after the handshake: a tag per frame over its sequence number (pure).
//! - `connection`: framed, authenticated replication connections over TCP: protocol preamble, handshake,
//!   then sealed frames.
//! - `peer_server`: the replication port: heartbeats, copies and pulls from peers.
//! - `membership`: peers, heartbeats, liveness and load; secondary choice.
//! - `redis_bank`: a Redis or Valkey server as the bank: versioned compare-and-set writes in Lua scripts,
//!   TTL, timeouts; to the node, one more bank member.
//! - `takeover`: recovering a session this node does not host, and granting one to another node.
//! - `forward`: relaying a request to the session's live owner.
//! - `drain`: migrate-then-drain: a draining node hands every session it owns to another web node.
//! - `metrics`: Prometheus counters and gauges.
//! - `server`: wiring only: builds the parts, starts listeners and tasks, reload, graceful shutdown.

pub mod config;
pub mod cookie;
pub mod ids;
pub mod proxy_header;

#[cfg(feature = "server")]
pub mod app;
#[cfg(feature = "server")]
pub mod body;
#[cfg(feature = "server")]
pub mod builtin;
#[cfg(feature = "server")]
pub mod connection;
#[cfg(feature = "server")]
pub mod drain;
#[cfg(feature = "server")]
pub mod forward;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod membership;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod peer_server;
#[cfg(feature = "server")]
pub mod proxied;
#[cfg(feature = "server")]
pub mod redis_bank;
#[cfg(feature = "server")]
pub mod replicate;
#[cfg(feature = "server")]
pub mod seal;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
pub mod session;
#[cfg(feature = "server")]
pub mod sidecar;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod takeover;
#[cfg(feature = "server")]
pub mod topology;
#[cfg(feature = "server")]
pub mod tunnel;
#[cfg(feature = "server")]
pub mod websocket;
#[cfg(feature = "server")]
pub mod wire;

/// Internal header the balancer stamps on every request (any client copy is stripped); nodes use it to apply a
/// retried request once.
pub const REQUEST_ID_HEADER: &str = "x-lb-request-id";
/// Internal header counting node-to-node forwards of one request, so a stale view cannot loop it; the
/// balancer removes any copy a client sends.
pub const HOP_HEADER: &str = "x-node-hop";
/// Response header naming the node that served, when `expose_node = true`.
pub const SERVED_BY_HEADER: &str = "x-served-by";
/// Response header set when a recovered copy was older than the client's signed cookie.
pub const STALE_HEADER: &str = "x-session-stale";
/// Path of a node's health endpoint.
pub const HEALTH_PATH: &str = "/_node/health";
