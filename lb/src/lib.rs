//! The balancer: a Pingora proxy that pins each request to its session's primary by the routing cookie's
//! summed-id segment, balances new sessions, and fails over without the client noticing (DESIGN §§3, 4, 7).
//!
//! # Layout
//! - [`routing`]: cookie headers → verified cookie → pair → node indices (pure).
//! - [`balance`]: the pinned primary, the failover target, or a balanced pick for a new session (pure).
//! - [`director`]: the Layer-4 local director's node order for a client address (pure rendezvous hashing).
//! - [`limits`]: header count and size, body size caps (pure).
//! - [`conns`]: the open connections to a node, shut when it is marked down.
//! - [`health`]: fall/rise health state (pure) and the active `/_node/health` checker.
//! - [`membership`]: the live node table: per-node state, immutable topology snapshots, reload.
//! - [`diff`]: `lb check --diff`: what a reload between two files changes, what needs a restart (pure).
//! - [`metrics`]: Prometheus families, per-node counters resolved once.
//! - [`deadline`]: coarse per-thread deadlines for reading request heads.
//! - [`tls`]: `[lb.tls]`: certificate loading and checks, the resolver a reload swaps, ALPN for HTTP/2.
//! - [`proxy`]: the Pingora `ProxyHttp` implementation and the head-deadline wrapper.
//! - [`l4`]: the Layer-4 listener: raw TCP relayed to the director's node, idle and grace closes.
//! - [`admin`]: `/metrics`, `/status`, `POST /reload`.
//! - [`server`]: wiring the services into a Pingora server; SIGHUP and graceful exit.

pub mod admin;
pub mod balance;
pub mod conns;
pub mod deadline;
pub mod diff;
pub mod director;
pub mod health;
pub mod l4;
pub mod limits;
pub mod membership;
pub mod metrics;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod tls;
