//! The cluster file: one TOML file describes the whole cluster and every process reads it.
//!
//! # Layout
//! - `file`: raw `File*` structs that mirror the TOML (unknown keys refused, each default written once).
//! - `validate`: one check per invariant, from the raw structs to the typed [`ClusterConfig`] below.
//! - `spans`: the line of a key, from the spans `toml` reports, for errors that name file, line and key.
//! - [`choices`]: the settings that take one word (`algorithm`, `mode`, ...) as enums printing the file's word.
//! - [`secret`]: [`Secret`], whose `Debug` redacts.
//! - [`net`]: [`IpNet`], an address or CIDR prefix (`[node] trusted`).
//! - [`builder`]: [`ClusterFile`], a typed cluster file that renders TOML, for tests, benchmarks and tools.

pub mod builder;
pub mod choices;
mod file;
pub mod net;
pub mod secret;
mod spans;
mod validate;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub use builder::ClusterFile;
pub use choices::{
    Algorithm, BankKind, Failover, LogFormat, NodeRole, ReplicationMode, Topology, UnknownChoice,
};
pub use net::IpNet;
pub use secret::Secret;

use crate::ids::{NodeId, PairTable};

/// Every header of the sidecar contract starts with this (`X-Session-Id`, `X-Session`, `X-Session-Patch`, ...;
/// `node::sidecar` has them all). They are the node's to send its app and the app's to answer the node, so a
/// client's copy never counts: the balancer strips every request header with this prefix (but the
/// `[cookie] header` token, which may share it), and a node in sidecar mode strips them again before adding its
/// own. Here, in the part of the crate the balancer builds, so both read the one definition.
pub const SIDECAR_HEADER_PREFIX: &str = "x-session";

/// Why a cluster file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The path as given.
        file: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or a key or value of the wrong shape: an unknown key, a wrong type, a word that is none of a
    /// setting's values. `key` is the dotted key when the error's line holds one.
    #[error("{file}:{line}: {}{message}", key_prefix(.key.as_deref()))]
    Parse {
        /// The path as given.
        file: String,
        /// 1-based line of the problem; 0 when the parser names no place.
        line: usize,
        /// Dotted key on that line, e.g. `lb.health.fall`, when there is one.
        key: Option<String>,
        /// The parser's message, e.g. `unknown field \`listen_typo\``.
        message: String,
    },
    /// A value that breaks an invariant, or a required key left out.
    #[error("{file}:{line}: `{key}`: {message}")]
    Invalid {
        /// The path as given.
        file: String,
        /// 1-based line of the key, or of the table it belongs in when the key is missing.
        line: usize,
        /// Dotted key, e.g. `nodes[1].repl`.
        key: String,
        /// What is wrong and what is accepted.
        message: String,
    },
}

fn key_prefix(key: Option<&str>) -> String {
    key.map(|k| format!("`{k}`: ")).unwrap_or_default()
}

/// One cookie MAC key.
#[derive(Debug, Clone)]
pub struct CookieKey {
    /// Key id carried in every cookie signed with this key, so a verifier knows which secret to use.
    pub id: u8,
    /// HMAC-SHA256 secret, at least 16 bytes.
    pub secret: Secret,
}

/// `[cookie]`: the routing cookie.
#[derive(Debug, Clone)]
pub struct CookieConfig {
    /// Cookie name, `__Host-` prefixed when `host_prefix` is set. Default `SRVSESSION`.
    pub name: String,
    /// The key new cookies are signed with: `key_id` (default 1) and the cluster secret.
    pub current: CookieKey,
    /// Keys still accepted during a rotation (`[[cookie.previous_keys]]`).
    pub previous: Vec<CookieKey>,
    /// `header = "x-session-token"`: a request header (lowercase) that may carry the routing token instead of
    /// the cookie, for clients without cookies; the node answers with the new token in the same header.
    /// Default: none.
    pub header: Option<String>,
}

/// `[lb.health]`: the balancer's probes of `/_node/health`.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Between rounds; default 500 ms.
    pub interval: Duration,
    /// Per probe; default 400 ms.
    pub timeout: Duration,
    /// Failures in a row that mark a node down; default 2.
    pub fall: u32,
    /// Passes in a row that mark it up again; default 2.
    pub rise: u32,
}

/// `[lb.limits]`: what the balancer accepts from clients and waits for from nodes.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Default 100 (431 beyond).
    pub max_headers: usize,
    /// Default 32 KiB (431 beyond).
    pub max_header_bytes: usize,
    /// Whole request head; default 10 s.
    pub header_timeout: Duration,
    /// Default 1 MiB (413 beyond).
    pub max_body_bytes: usize,
    /// Towards a node; default 1 s.
    pub connect_timeout: Duration,
    /// Towards a node (and for a client's body); default 60 s. In sidecar mode it must exceed
    /// `[sidecar] read_timeout_ms` plus 3 × `[replication] peer_timeout_ms`.
    pub read_timeout: Duration,
    /// `tunnel_idle_timeout_ms`: a request that asks to upgrade (a WebSocket) is held to this instead of
    /// `read_timeout`, each way, once it has switched protocols; default 10 minutes.
    pub tunnel_idle_timeout: Duration,
}

/// `[lb]`: the balancer.
#[derive(Debug, Clone)]
pub struct LbConfig {
    /// Required.
    pub listen: SocketAddr,
    /// Required: `/status`, `/metrics`, `/reload`.
    pub admin: SocketAddr,
    /// Default `least_connections`.
    pub algorithm: Algorithm,
    /// Default `rebalance`.
    pub failover: Failover,
    /// `[lb.health]`: how nodes are probed and marked down or up.
    pub health: HealthConfig,
    /// `[lb.limits]`: client request limits and timeouts towards nodes.
    pub limits: LimitsConfig,
    /// Worker threads; default 1.
    pub threads: usize,
    /// `grace_period_s`: how long SIGTERM waits for in-flight requests; default 5 s.
    pub grace_period: Duration,
    /// `admin_token`: when set, every admin request needs `Authorization: Bearer <token>` (else 401). At least
    /// 16 characters of `A-Z a-z 0-9 - . _ ~ + /`. Default none. A reload takes a new one at once.
    pub admin_token: Option<Secret>,
    /// `[lb.l4]`: a Layer-4 listener beside the HTTP one. Default none.
    pub l4: Option<L4Config>,
    /// `[lb.tls]`: TLS on the HTTP listener. Default none (plain HTTP).
    pub tls: Option<TlsConfig>,
}

/// `[lb.l4]`: the Layer-4 local director (seed 004): raw TCP connections balanced to the nodes' `http`
/// addresses with client-address affinity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L4Config {
    /// Required; not the HTTP listener's address.
    pub listen: SocketAddr,
    /// Towards a node, before the next one is tried; default 1 s.
    pub connect_timeout: Duration,
    /// A connection with no byte either way for this long is closed; default 300 s.
    pub idle_timeout: Duration,
    /// Open connections at most; more are closed at once. Default 10 000.
    pub max_connections: usize,
    /// Start each connection to a node with a PROXY protocol v2 header naming the client (the nodes need
    /// `[node] accept_proxy`). Default false.
    pub send_proxy: bool,
}

/// `[lb.tls]`: certificate and key (PEM files) of the HTTP listener. Relative paths are relative to the
/// cluster file's directory. A reload reads both files again; a pair that does not load is refused and the
/// old one keeps serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
    /// Offer HTTP/2 by ALPN besides HTTP/1.1; default true.
    pub h2: bool,
}

/// `[node]`: settings every node shares.
#[derive(Debug, Clone)]
pub struct NodeDefaults {
    /// Add `X-Served-By: <name>` to every response. Default false.
    pub expose_node: bool,
    /// Default 1 MiB.
    pub max_body_bytes: usize,
    /// Default `text`.
    pub log_format: LogFormat,
    /// `grace_period_s`: how long a node stopping on SIGTERM may take to hand its work over; 1 to 300 s,
    /// default 10 s.
    pub grace_period: Duration,
    /// `drain_rate`: sessions a draining node hands over per second at most; 1 to 100 000, default 500.
    pub drain_rate: u32,
    /// `trusted = ["10.0.0.0/8", "192.0.2.7"]`: the sources, besides the balancer and the nodes themselves
    /// (their addresses in this file), a node answers at all; others get 403. `None` (the default): anyone.
    /// `Some` of an empty list: only the balancer and the nodes.
    pub trusted: Option<Vec<IpNet>>,
    /// `accept_proxy`: a connection may begin with a PROXY protocol v2 header (from `[lb.l4] send_proxy`),
    /// whose client address the node then logs. Anyone who can reach the node could claim any address in one,
    /// so set it only where `trusted` (or the network) keeps clients from reaching nodes directly. Default
    /// false: a connection that begins with one is closed.
    pub accept_proxy: bool,
}

/// `[replication]`: how sessions are copied between nodes.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// Default `sync`.
    pub mode: ReplicationMode,
    /// `pair` (default) or `rss`.
    pub topology: Topology,
    /// `copies`: bank members holding each session in the `rss` topology, 1 (default) or 2; 1 in a pair.
    pub copies: usize,
    /// `min_copies = 2`: a `sync` write is acknowledged only once a copy holds it besides the owner; one that
    /// has no copy to go to is refused (503, `Retry-After`) instead. Default `false` (`min_copies = 1`): with no
    /// live peer, writes are acknowledged from the owner's memory alone.
    pub strict: bool,
    /// Default 500 ms.
    pub heartbeat: Duration,
    /// A peer silent this long is dead; at least twice `heartbeat`, default 2 s.
    pub peer_timeout: Duration,
    /// How long a primary may serve reads without hearing from its secondary, and how long a secondary waits
    /// after the last update before it hands the session to a new owner. Default 500 ms.
    pub lease: Duration,
    /// `[replication.batch] max_updates`: default 64.
    pub max_updates: usize,
    /// `[replication.batch] max_delay_ms`: default 5 ms.
    pub max_delay: Duration,
    /// `[replication.bank]`: Redis or Valkey as the bank instead of `rss` nodes. Default none.
    pub bank: Option<BankConfig>,
}

/// `[replication.bank]`: a Redis-protocol store (Redis 7, Valkey) as the session bank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BankConfig {
    /// `redis`: `redis://HOST:PORT[/DB]` URLs: the server, the cluster's seed nodes, or the sentinels.
    pub urls: Vec<String>,
    /// `kind`: `server` (default), `cluster` or `sentinel`.
    pub kind: BankKind,
    /// `master`: the service name Sentinel knows the primary by; required with `kind = "sentinel"` only.
    pub master: Option<String>,
    /// `timeout_ms`: each command to the store gives up after this; default 500 ms.
    pub timeout: Duration,
    /// `wait_replicas`: a `sync` write also waits (`WAIT`, within `timeout`) for this many of the store's own
    /// replicas; default 0. Not with `kind = "cluster"`.
    pub wait_replicas: u32,
    /// The bank's id in cookies: it stands where a session server's id would, derived from the cluster secret.
    pub id: NodeId,
}

impl BankConfig {
    /// The name the bank goes by in logs and metrics.
    pub const NAME: &'static str = "redis-bank";

    /// The bank's id: derived like a node's, from a name no node can have (`:` is not allowed in names).
    pub fn derive_id(secret: &str) -> NodeId {
        NodeId::derive("bank:redis", secret)
    }
}

/// `[session]`.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Default 1800 s.
    pub idle_timeout: Duration,
    /// Default 256 KiB.
    pub max_session_bytes: usize,
}

/// `[sidecar]`: how a node talks to the application behind it (when it has an `upstream`).
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// Largest session data sent inline in `X-Session`, in bytes; above it the app gets `X-Session-Ref` and
    /// reads `/_node/sessions/{id}`. Default 8 KiB, at most 64 KiB.
    pub session_header_bytes: usize,
    /// Largest answer body kept for a replayed write, in bytes; above it a replay carries the status and
    /// headers with an empty body. Default 16 KiB.
    pub replay_body_bytes: usize,
    /// Request bodies up to this size are read before the app is called, so a retry can send them again;
    /// larger ones stream to the app once. Default 64 KiB.
    pub buffer_body_bytes: usize,
    /// To the app; default 1 s.
    pub connect_timeout: Duration,
    /// For the app's answer head, then between body chunks; default 30 s.
    pub read_timeout: Duration,
}

/// One `[[nodes]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Unique name: `node --name` picks its entry, logs and `X-Served-By` show it. Required.
    pub name: String,
    /// From `id`, else derived from the name and the cluster secret.
    pub id: NodeId,
    /// Where the node serves HTTP (the balancer proxies here). Required.
    pub http: SocketAddr,
    /// Where the node listens for replication from its peers. Required.
    pub repl: SocketAddr,
    /// Default: the node's name.
    pub machine: String,
    /// Default `default`.
    pub zone: String,
    /// 1 to 1000, default 1.
    pub weight: u32,
    /// Takes no new sessions and hands its sessions over, so it can stop losing nothing. Default false.
    pub drain: bool,
    /// Admin pin: this node's sessions use that node as secondary when it is alive.
    pub secondary: Option<String>,
    /// `role`: `web` (default), `rss` or `standby`; only `web` in the `pair` topology.
    pub role: NodeRole,
    /// Sidecar mode: the application every non-`/_node/` request goes to (`upstream = "http://IP:PORT"`, in
    /// the entry or in `[node]`). Default: none, the built-in session API.
    pub upstream: Option<SocketAddr>,
    /// `group`: the broadcast group whose every member holds every session of it (`topology = "broadcast"`).
    /// Default [`NodeConfig::DEFAULT_GROUP`]: one group of every node.
    pub group: String,
}

impl NodeConfig {
    /// The group of a node whose entry names none.
    pub const DEFAULT_GROUP: &'static str = "default";
}

/// The validated cluster file.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `[cluster] secret`: signs cookies (as the current cookie key) and authenticates replication.
    pub secret: Secret,
    /// `[cluster] previous_secret`: during a rotation, the secret being replaced; peers that still prove it
    /// are accepted, and this node proves it to peers that know no other. Default none.
    pub previous_secret: Option<Secret>,
    /// `[cookie]`: the routing cookie's name and MAC keys.
    pub cookie: CookieConfig,
    /// `[lb]`: the balancer.
    pub lb: LbConfig,
    /// `[node]`: settings every node shares.
    pub node: NodeDefaults,
    /// `[replication]`: how sessions are copied between nodes.
    pub replication: ReplicationConfig,
    /// `[session]`: session expiry and size cap.
    pub session: SessionConfig,
    /// `[sidecar]`: limits and timeouts towards the application.
    pub sidecar: SidecarConfig,
    /// `[[nodes]]`, in file order; names, ids and addresses are unique.
    pub nodes: Vec<NodeConfig>,
    /// Every pair (and lone node) by its summed segment.
    pub pairs: PairTable,
}

impl ClusterConfig {
    /// Reads and validates a cluster file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, line and key of the first problem.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::from_toml(&file, &text)
    }

    /// Parses and validates cluster TOML; `file` only names the source in errors.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] for TOML or type errors, [`ConfigError::Invalid`] for a value that breaks an
    /// invariant or a required key left out; both with the line and, where there is one, the key.
    pub fn from_toml(file: &str, text: &str) -> Result<ClusterConfig, ConfigError> {
        let raw: file::FileConfig = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start);
            ConfigError::Parse {
                file: file.to_string(),
                line: offset.map_or(0, |o| spans::line_of(text, o)),
                key: offset.and_then(|o| spans::key_at(text, o)),
                message: e.message().trim_end().to_string(),
            }
        })?;
        raw.validate().map_err(|v| ConfigError::Invalid {
            file: file.to_string(),
            line: spans::line_of_key(text, &v.key),
            key: v.key,
            message: v.message,
        })
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The node with id `id`.
    pub fn node_by_id(&self, id: NodeId) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::builder::NodeEntry;
    use super::*;

    const GOOD: &str = r#"
[cluster]
secret = "0123456789abcdef0123"

[lb]
listen = "127.0.0.1:8080"
admin = "127.0.0.1:8081"

[[nodes]]
name = "n1"
http = "127.0.0.1:9001"
repl = "127.0.0.1:9101"

[[nodes]]
name = "n2"
http = "127.0.0.1:9002"
repl = "127.0.0.1:9102"
"#;

    fn error(text: &str) -> String {
        ClusterConfig::from_toml("t.toml", text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_minimal_file_gets_the_documented_defaults() {
        let c = ClusterConfig::from_toml("t.toml", GOOD).unwrap();
        assert_eq!(c.cookie.name, "SRVSESSION");
        assert_eq!(c.cookie.current.id, 1);
        assert_eq!(c.lb.algorithm, Algorithm::LeastConnections);
        assert_eq!(c.lb.failover, Failover::Rebalance);
        assert_eq!(c.lb.threads, 1);
        assert_eq!(c.lb.grace_period, Duration::from_secs(5));
        assert_eq!(c.lb.health.interval, Duration::from_millis(500));
        assert_eq!(c.lb.limits.max_body_bytes, 1024 * 1024);
        assert_eq!(c.node.max_body_bytes, 1024 * 1024);
        assert_eq!(c.node.log_format, LogFormat::Text);
        assert_eq!(c.node.grace_period, Duration::from_secs(10));
        assert_eq!(c.replication.mode, ReplicationMode::Sync);
        assert_eq!(c.replication.topology, Topology::Pair);
        assert_eq!(c.replication.max_updates, 64);
        assert_eq!(c.session.idle_timeout, Duration::from_secs(1800));
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(
            (c.nodes[0].machine.as_str(), c.nodes[0].zone.as_str()),
            ("n1", "default")
        );
        assert_eq!(c.nodes[0].weight, 1);
        assert_ne!(c.nodes[0].id, c.nodes[1].id);
    }

    #[test]
    fn an_upstream_in_node_applies_to_every_node_and_an_entry_may_override_it() {
        let text = GOOD
            .replace(
                "[lb]\n",
                "[node]\nupstream = \"http://127.0.0.1:3000\"\n\n[lb]\n",
            )
            .replace(
                "repl = \"127.0.0.1:9102\"",
                "repl = \"127.0.0.1:9102\"\nupstream = \"http://127.0.0.1:3002/\"",
            );
        let c = ClusterConfig::from_toml("t.toml", &text).unwrap();
        assert_eq!(c.nodes[0].upstream, Some("127.0.0.1:3000".parse().unwrap()));
        assert_eq!(c.nodes[1].upstream, Some("127.0.0.1:3002".parse().unwrap()));
        assert_eq!(c.sidecar.session_header_bytes, 8 * 1024);
        assert_eq!(c.sidecar.replay_body_bytes, 16 * 1024);
        assert_eq!(c.sidecar.read_timeout, Duration::from_secs(30));
    }

    #[test]
    fn an_upstream_that_is_not_plain_http_to_an_address_is_refused() {
        let with = |u: &str| {
            GOOD.replace(
                "repl = \"127.0.0.1:9101\"",
                &format!("repl = \"127.0.0.1:9101\"\nupstream = \"{u}\""),
            )
        };
        let err = error(&with("https://127.0.0.1:3000"));
        assert!(err.starts_with("t.toml:13: `nodes[0].upstream`: "), "{err}");
        assert!(err.contains("expected http://IP:PORT"), "{err}");
        let err = error(&with("http://127.0.0.1:9001"));
        assert!(err.contains("the node's own address"), "{err}");
    }

    #[test]
    fn in_sidecar_mode_the_lb_must_wait_longer_than_the_app_and_the_copy_together() {
        let text = GOOD.replace(
            "[lb]\n",
            "[node]\nupstream = \"http://127.0.0.1:3000\"\n\n[sidecar]\nread_timeout_ms = 55000\n\n[lb]\n",
        );
        let err = error(&text);
        assert!(
            err.contains("`sidecar.read_timeout_ms`: 55000 ms plus the copy wait"),
            "{err}"
        );
        assert!(
            err.contains("lb.limits.read_timeout_ms (60000 ms)"),
            "{err}"
        );
        // The defaults fit: 30 s for the app, 6 s for the copy, 60 s at the lb.
        let fits = GOOD.replace(
            "[lb]\n",
            "[node]\nupstream = \"http://127.0.0.1:3000\"\n\n[lb]\n",
        );
        assert!(ClusterConfig::from_toml("t.toml", &fits).is_ok());
    }

    #[test]
    fn a_session_token_header_must_be_a_lowercase_name_that_is_not_ours() {
        let with =
            |h: &str| GOOD.replace("[lb]\n", &format!("[cookie]\nheader = \"{h}\"\n\n[lb]\n"));
        let c = ClusterConfig::from_toml("t.toml", &with("x-session-token")).unwrap();
        assert_eq!(c.cookie.header.as_deref(), Some("x-session-token"));
        assert!(error(&with("X-Token")).contains("lowercase"));
        assert!(error(&with("x-session-patch")).contains("uses for itself"));
        assert!(error(&with("cookie")).contains("uses for itself"));
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_line() {
        let err = error(&GOOD.replace("[lb]\n", "[lb]\nlisten_typo = 1\n"));
        assert!(err.starts_with("t.toml:6: `lb.listen_typo`:"), "{err}");
        assert!(err.contains("unknown field `listen_typo`"), "{err}");
    }

    #[test]
    fn a_bad_value_names_file_line_and_key() {
        let err = error(&GOOD.replace("repl = \"127.0.0.1:9102\"", "repl = \"nowhere\""));
        assert_eq!(
            err,
            "t.toml:17: `nodes[1].repl`: `nowhere` is not an ip:port address"
        );
    }

    #[test]
    fn an_unknown_word_names_its_key_and_the_accepted_words() {
        let err = error(&GOOD.replace("[lb]\n", "[lb]\nalgorithm = \"fastest\"\n"));
        assert!(
            err.starts_with("t.toml:6: `lb.algorithm`: unknown variant `fastest`"),
            "{err}"
        );
        assert!(err.contains("least_connections"), "{err}");
    }

    #[test]
    fn a_wrong_type_names_its_key() {
        let err = error(&GOOD.replace("[lb]\n", "[lb]\nthreads = \"two\"\n"));
        assert!(
            err.starts_with("t.toml:6: `lb.threads`: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_key_in_an_inline_table_names_its_own_line() {
        let text = GOOD.replace("[lb]\n", "[lb]\nhealth = { interval_ms = 100, fall = 0 }\n");
        assert_eq!(
            error(&text),
            "t.toml:6: `lb.health.fall`: must be at least 1, got 0"
        );
    }

    #[test]
    fn a_bad_dotted_key_names_its_own_line() {
        let text = r#"lb.listen = "127.0.0.1:8080"
lb.admin = "127.0.0.1:8081"
lb.health.rise = 0

[cluster]
secret = "0123456789abcdef0123"
"#;
        assert_eq!(
            error(text),
            "t.toml:3: `lb.health.rise`: must be at least 1, got 0"
        );
    }

    #[test]
    fn a_bad_key_in_the_second_previous_cookie_key_names_its_own_line() {
        let text = GOOD.replace(
            "\n[lb]",
            "\n[[cookie.previous_keys]]\nid = 7\nsecret = \"an-old-secret-long-enough\"\n\n\
             [[cookie.previous_keys]]\nid = 8\nsecret = \"short\"\n\n[lb]",
        );
        assert_eq!(
            error(&text),
            "t.toml:11: `cookie.previous_keys[1].secret`: must be at least 16 characters, got 5"
        );
    }

    #[test]
    fn a_missing_required_key_names_the_table_it_belongs_in() {
        let err = error(&GOOD.replace("admin = \"127.0.0.1:8081\"\n", ""));
        assert_eq!(
            err,
            "t.toml:5: `lb.admin`: missing: the ip:port of /status, /metrics and /reload"
        );
        let err = error(&GOOD.replace("http = \"127.0.0.1:9002\"\n", ""));
        assert_eq!(
            err,
            "t.toml:15: `nodes[1].http`: missing: the node's HTTP ip:port"
        );
    }

    #[test]
    fn broadcast_groups_are_named_and_only_for_the_broadcast_topology() {
        let text = format!("{GOOD}\n[replication]\ntopology = \"broadcast\"\n");
        let c = ClusterConfig::from_toml("t.toml", &text).unwrap();
        assert!(c.nodes.iter().all(|n| n.group == NodeConfig::DEFAULT_GROUP));
        let grouped = text.replace(
            "repl = \"127.0.0.1:9102\"",
            "repl = \"127.0.0.1:9102\"\ngroup = \"eu-1\"",
        );
        let c = ClusterConfig::from_toml("t.toml", &grouped).unwrap();
        assert_eq!(c.nodes[1].group, "eu-1");
        let bad = grouped.replace("eu-1", "eu 1");
        assert!(
            error(&bad).starts_with("t.toml:18: `nodes[1].group`: \"eu 1\""),
            "{}",
            error(&bad)
        );
        let in_a_pair = GOOD.replace(
            "repl = \"127.0.0.1:9102\"",
            "repl = \"127.0.0.1:9102\"\ngroup = \"eu-1\"",
        );
        assert!(error(&in_a_pair).contains("groups need `[replication] topology = \"broadcast\"`"));
        let text = format!("{GOOD}\n[replication]\ntopology = \"ring\"\n");
        assert!(error(&text).contains("unknown variant `ring`"));
        let strict = grouped.replace(
            "topology = \"broadcast\"",
            "topology = \"broadcast\"\nmin_copies = 2",
        );
        let err = error(&strict);
        assert!(err.contains("needs a second member in group"), "{err}");
    }

    #[test]
    fn every_cluster_file_shipped_in_config_is_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                ClusterConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
                checked += 1;
            }
        }
        assert!(
            checked >= 4,
            "local, sidecar, rss and redis at least: {checked}"
        );
    }

    #[test]
    fn roles_must_fit_the_topology() {
        let rss = |text: &str| format!("{text}\n[replication]\ntopology = \"rss\"\n");
        let err = error(&rss(GOOD));
        assert!(err.contains("`replication.copies`: 1 copies per session need at least 1 nodes with role = \"rss\" (or a Redis bank, `[replication.bank] redis`); the file has 0"), "{err}");
        let bank = GOOD.replace(
            "repl = \"127.0.0.1:9102\"",
            "repl = \"127.0.0.1:9102\"\nrole = \"rss\"",
        );
        let c = ClusterConfig::from_toml("t.toml", &rss(&bank)).unwrap();
        assert_eq!(
            (c.nodes[0].role, c.nodes[1].role),
            (NodeRole::Web, NodeRole::Rss)
        );
        let err = error(&bank);
        assert!(
            err.starts_with("t.toml:18: `nodes[1].role`: `rss` needs"),
            "{err}"
        );
        let all_bank = bank.replace(
            "repl = \"127.0.0.1:9101\"",
            "repl = \"127.0.0.1:9101\"\nrole = \"rss\"",
        );
        assert!(error(&rss(&all_bank)).contains("at least one node with role = \"web\""));
        let two = format!("{bank}\n[replication]\ntopology = \"rss\"\ncopies = 2\n");
        assert!(
            error(&two).contains("2 copies per session need at least 2 nodes with role = \"rss\"")
        );
        let pair_two = format!("{GOOD}\n[replication]\ncopies = 2\n");
        assert!(error(&pair_two).contains("need `topology = \"rss\"`"));
    }

    #[test]
    fn a_secret_rotation_needs_a_new_secret_and_every_node_id_written_out() {
        let rotating = GOOD.replace(
            "secret = \"0123456789abcdef0123\"",
            "secret = \"a-new-secret-0123456789\"\nprevious_secret = \"0123456789abcdef0123\"",
        );
        let err = error(&rotating);
        let n1 = NodeId::derive("n1", "0123456789abcdef0123");
        assert!(err.contains("`nodes[0].id`: a rotation"), "{err}");
        assert!(
            err.contains(&format!("for `n1` write `id = {n1}`")),
            "{err}"
        );
        let n2 = NodeId::derive("n2", "0123456789abcdef0123");
        let pinned = rotating
            .replace("name = \"n1\"", &format!("name = \"n1\"\nid = {n1}"))
            .replace("name = \"n2\"", &format!("name = \"n2\"\nid = {n2}"));
        let c = ClusterConfig::from_toml("t.toml", &pinned).unwrap();
        assert_eq!(
            (c.nodes[0].id, c.nodes[1].id),
            (n1, n2),
            "the ids in use stay"
        );
        assert!(c.previous_secret.is_some());
        let same = pinned.replace("a-new-secret-0123456789", "0123456789abcdef0123");
        assert!(error(&same).contains("is the same as `secret`"));
    }

    #[test]
    fn a_layer_4_listener_needs_its_own_address_and_send_proxy_needs_nodes_that_accept_it() {
        let l4 = |extra: &str| {
            GOOD.replace(
                "admin = \"127.0.0.1:8081\"\n",
                &format!("admin = \"127.0.0.1:8081\"\n\n[lb.l4]\n{extra}\n"),
            )
        };
        let ok = ClusterConfig::from_toml("t.toml", &l4("listen = \"127.0.0.1:8090\"")).unwrap();
        let got = ok.lb.l4.unwrap();
        assert_eq!(got.idle_timeout, Duration::from_secs(300));
        assert!(!got.send_proxy);
        assert!(error(&l4("")).contains("`lb.l4.listen`: missing"));
        assert!(error(&l4("listen = \"127.0.0.1:8080\"")).contains("is also lb.listen"));
        let proxy = l4("listen = \"127.0.0.1:8090\"\nsend_proxy = true");
        assert!(
            error(&proxy).contains("`lb.l4.send_proxy`"),
            "{}",
            error(&proxy)
        );
        let accepted = proxy.replace("[lb]", "[node]\naccept_proxy = true\n\n[lb]");
        assert!(
            ClusterConfig::from_toml("t.toml", &accepted)
                .unwrap()
                .node
                .accept_proxy
        );
    }

    #[test]
    fn drain_rate_defaults_to_500_and_0_is_refused() {
        assert_eq!(
            ClusterConfig::from_toml("t.toml", GOOD)
                .unwrap()
                .node
                .drain_rate,
            500
        );
        let zero = GOOD.replace("[lb]", "[node]\ndrain_rate = 0\n\n[lb]");
        let err = error(&zero);
        assert!(
            err.contains("`node.drain_rate`: 0: expected 1 to 100000"),
            "{err}"
        );
    }

    #[test]
    fn min_copies_is_1_or_2_and_2_needs_sync_mode_and_a_second_node() {
        let with = |extra: &str| format!("{GOOD}\n[replication]\n{extra}\n");
        assert!(
            !ClusterConfig::from_toml("t.toml", GOOD)
                .unwrap()
                .replication
                .strict
        );
        let strict = ClusterConfig::from_toml("t.toml", &with("min_copies = 2")).unwrap();
        assert!(strict.replication.strict);
        assert!(
            error(&with("min_copies = 3")).contains("`replication.min_copies`: 3: expected 1 or 2")
        );
        assert!(
            error(&with("min_copies = 2\nmode = \"async\"")).contains("needs `mode = \"sync\"`")
        );
        let alone = GOOD
            .split("[[nodes]]")
            .take(2)
            .collect::<Vec<_>>()
            .join("[[nodes]]");
        let err = error(&format!("{alone}\n[replication]\nmin_copies = 2\n"));
        assert!(
            err.contains("needs a second node to hold the copy"),
            "{err}"
        );
    }

    #[test]
    fn a_redis_bank_replaces_the_session_servers_and_names_a_pair_with_every_web_node() {
        let redis = |bank: &str| {
            format!("{GOOD}\n[replication]\ntopology = \"rss\"\n\n[replication.bank]\n{bank}\n")
        };
        let c = ClusterConfig::from_toml("t.toml", &redis("redis = [\"redis://127.0.0.1:6379\"]"))
            .unwrap();
        let bank = c.replication.bank.clone().unwrap();
        assert_eq!(
            (bank.kind, bank.timeout, bank.wait_replicas),
            (BankKind::Server, Duration::from_millis(500), 0)
        );
        assert_eq!(bank.id, BankConfig::derive_id("0123456789abcdef0123"));
        assert!(c.nodes.iter().all(|n| n.id != bank.id));
        let pair = crate::ids::Pair {
            primary: c.nodes[0].id,
            secondary: Some(bank.id),
        };
        assert_eq!(
            c.pairs.decode(pair.segment()),
            Some(pair),
            "cookies name the bank"
        );
        let cases = [
            ("redis = []", 23, "`replication.bank.redis`: missing"),
            (
                "redis = [\"http://x:1\"]",
                23,
                "expected `redis://HOST:PORT`",
            ),
            (
                "redis = [\"redis://a:1\", \"redis://b:1\"]",
                23,
                "one server has one URL",
            ),
            (
                "redis = [\"redis://a:1\"]\nkind = \"sentinel\"",
                22,
                "`replication.bank.master`: missing",
            ),
            (
                "redis = [\"redis://a:1\"]\nmaster = \"m\"",
                24,
                "only with `kind = \"sentinel\"`",
            ),
            (
                "redis = [\"redis://a:1\"]\nkind = \"cluster\"\nwait_replicas = 1",
                25,
                "`replication.bank.wait_replicas`",
            ),
            (
                "redis = [\"redis://a:1\"]\ntimeout_ms = 0",
                24,
                "`replication.bank.timeout_ms`: must be greater than 0",
            ),
            (
                "redis = [\"redis://a:1\"]\nkind = \"ring\"",
                24,
                "unknown variant `ring`",
            ),
        ];
        for (bank, line, want) in cases {
            let err = error(&redis(bank));
            assert!(err.contains(want), "{bank}: {err}");
            assert!(err.starts_with(&format!("t.toml:{line}:")), "{bank}: {err}");
        }
        let pair = format!("{GOOD}\n[replication.bank]\nredis = [\"redis://a:1\"]\n");
        assert!(error(&pair).contains("`replication.bank`: a bank needs `topology = \"rss\"`"));
        let two = redis("redis = [\"redis://a:1\"]")
            .replace("topology = \"rss\"", "topology = \"rss\"\ncopies = 2");
        assert!(
            error(&two).contains("one copy per session"),
            "{}",
            error(&two)
        );
        let with_rss = redis("redis = [\"redis://a:1\"]").replace(
            "repl = \"127.0.0.1:9102\"",
            "repl = \"127.0.0.1:9102\"\nrole = \"rss\"",
        );
        assert!(error(&with_rss)
            .contains("`nodes[1].role`: `rss` nodes and `[replication.bank] redis` at once"));
    }

    #[test]
    fn the_node_grace_period_is_one_to_three_hundred_seconds() {
        for (value, ok) in [(0, false), (1, true), (300, true), (301, false)] {
            let text = format!("{GOOD}\n[node]\ngrace_period_s = {value}\n");
            let result = ClusterConfig::from_toml("t.toml", &text);
            assert_eq!(result.is_ok(), ok, "{value}: {result:?}");
            if let Err(e) = result {
                assert!(
                    e.to_string()
                        .starts_with("t.toml:20: `node.grace_period_s`"),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn a_debug_print_of_the_config_shows_no_secret() {
        let text = GOOD.replace(
            "\n[lb]",
            "\n[[cookie.previous_keys]]\nid = 7\nsecret = \"an-old-secret-long-enough\"\n\n[lb]",
        );
        let printed = format!("{:?}", ClusterConfig::from_toml("t.toml", &text).unwrap());
        assert!(!printed.contains("0123456789abcdef"), "{printed}");
        assert!(!printed.contains("an-old-secret"), "{printed}");
        assert!(printed.contains("Secret(<redacted>)"), "{printed}");
    }

    #[test]
    fn duplicate_addresses_and_names_are_refused() {
        let err = error(&GOOD.replace("http = \"127.0.0.1:9002\"", "http = \"127.0.0.1:9001\""));
        assert!(err.contains("already used"), "{err}");
        let err = error(&GOOD.replace("name = \"n2\"", "name = \"n1\""));
        assert!(err.contains("already the name"), "{err}");
    }

    #[test]
    fn colliding_pair_sums_are_refused() {
        // 1+4 == 2+3: the pairs (n1,n4) and (n2,n3) would share a segment.
        let base = 1u64 << 50;
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let mut file = ClusterFile::new("0123456789abcdef0123", addr(1), addr(2));
        for i in 1..=4u16 {
            let mut n = NodeEntry::new(format!("n{i}"), addr(9000 + i), addr(9100 + i));
            n.id = Some(base + u64::from(i));
            file.nodes.push(n);
        }
        let err = error(&file.render());
        assert!(
            err.contains("`nodes`: two different pairs have the same id sum"),
            "{err}"
        );
    }
    fn with_admin_token(token: &str) -> String {
        GOOD.replace(
            "admin = \"127.0.0.1:8081\"\n",
            &format!("admin = \"127.0.0.1:8081\"\nadmin_token = {token:?}\n"),
        )
    }

    #[test]
    fn an_admin_token_is_optional_and_never_printed() {
        let c = ClusterConfig::from_toml("t.toml", GOOD).unwrap();
        assert!(c.lb.admin_token.is_none());
        let token = "s3cr3t-admin-token_0123456789";
        let c = ClusterConfig::from_toml("t.toml", &with_admin_token(token)).unwrap();
        assert!(c.lb.admin_token.as_ref().unwrap().matches(token.as_bytes()));
        assert!(!format!("{c:?}").contains(token));
    }

    #[test]
    fn an_admin_token_that_is_short_or_not_a_bearer_token_is_refused_without_showing_it() {
        assert_eq!(
            error(&with_admin_token("hunter2")),
            "t.toml:8: `lb.admin_token`: must be at least 16 characters, got 7"
        );
        let e = error(&with_admin_token("a token with spaces in it"));
        assert!(
            e.starts_with("t.toml:8: `lb.admin_token`: use letters, digits"),
            "{e}"
        );
        assert!(!e.contains("spaces"), "{e}");
    }

    fn with_trusted(list: &str) -> String {
        format!("{GOOD}\n[node]\ntrusted = {list}\n")
    }

    #[test]
    fn trusted_sources_are_addresses_or_networks_and_absent_means_anyone() {
        let c = ClusterConfig::from_toml("t.toml", GOOD).unwrap();
        assert!(c.node.trusted.is_none());
        let c = ClusterConfig::from_toml(
            "t.toml",
            &with_trusted(r#"["127.0.0.1", "10.0.0.0/8", "fd00::/8"]"#),
        )
        .unwrap();
        let nets: Vec<String> = c
            .node
            .trusted
            .unwrap()
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, ["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"]);
        let c = ClusterConfig::from_toml("t.toml", &with_trusted("[]")).unwrap();
        assert_eq!(c.node.trusted, Some(Vec::new()), "only the cluster itself");
    }

    #[test]
    fn a_trusted_entry_that_is_no_address_or_network_names_its_index_and_line() {
        assert_eq!(
            error(&with_trusted(r#"["127.0.0.1", "10.0.0/8"]"#)),
            "t.toml:20: `node.trusted[1]`: `10.0.0/8` is not an IP address or ADDRESS/PREFIX"
        );
        assert_eq!(
            error(&with_trusted(r#"["10.0.0.0/40"]"#)),
            "t.toml:20: `node.trusted[0]`: `/40`: the prefix of an IPv4 network is 0 to 32"
        );
        assert_eq!(
            error(&with_trusted(r#"["10.1.2.3/8"]"#)),
            "t.toml:20: `node.trusted[0]`: `10.1.2.3/8` has bits set beyond its prefix: the network is `10.0.0.0/8`"
        );
        assert!(error(&with_trusted(r#""10.0.0.0/8""#)).contains("`node.trusted`"));
    }
}
