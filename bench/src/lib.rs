//! Synthetic session traffic that proves, under faults, that no acknowledged update is lost (DESIGN §2, issue 4).
//!
//! # Layout
//! - [`verify`]: pure: a virtual user's model of one session and what each (request, response) reveals.
//! - [`spec`]: the load's parameters and their command-line forms (mix, durations, loopback targets).
//! - [`client`]: one keep-alive HTTP/1.1 connection per virtual user, cookie jar, answers into verify's terms.
//! - [`load`]: the virtual users: closed-loop requests, bounded by count and time.
//! - [`live`]: lock-free per-second counters and served-by tallies while a run goes.
//! - [`faults`]: the fault schedule (`kill:n1@10s`, `stop:primary@5s+3s`, ...) and carrying it out.
//! - [`rolling`]: `rolling@10s`, every node drained, stopped and started again in turn, the cluster file put back.
//! - [`procs`]: child processes by key: logs, signals, kill by pid (shared with the integration tests).
//! - [`cluster`]: launching the real `lb` and `node` binaries, health waits, signals.
//! - [`runner`]: one run: load, progress and faults side by side.
//! - [`report`]: progress line, summary table, `--json`.
//! - [`plot`]: the `--plot` SVG timeline.
//! - [`cpu`]: the generator's own CPU (getrusage) and a child's (/proc).
//! - [`compare`]: direct vs `lb` vs minimal Pingora vs HAProxy, as ratios.
//! - [`edge`]: `bench edge`, Layer 4, TLS handshakes and pinned HTTPS GETs through lb and HAProxy (issue 13).
//! - [`minimal_proxy`]: the minimal Pingora proxy `compare` measures against.
//! - [`nodeperf`]: `bench node`, one node's increments/s unreplicated, sync and async, and memory per session.
//! - [`shop`]: `bench shop`, the cart example app alone against lb + sidecar nodes, as ratios (issue 9).
//! - [`up`]: `bench up`, the local cluster in the foreground for `make run`.
//! - [`cli`]: subcommands and flags.

pub mod cli;
pub mod client;
pub mod cluster;
pub mod compare;
pub mod cpu;
pub mod edge;
pub mod faults;
pub mod live;
pub mod load;
pub mod minimal_proxy;
pub mod nodeperf;
pub mod plot;
pub mod procs;
pub mod report;
pub mod rolling;
pub mod runner;
pub mod shop;
pub mod spec;
pub mod up;
pub mod verify;
