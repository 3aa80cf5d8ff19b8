//! The cluster file: one TOML file describes the whole cluster and every process reads it.
//!
//! Raw `File*` structs mirror the TOML exactly (`deny_unknown_fields`, named defaults); [`ClusterConfig::from_toml`]
//! parses them and `validate()`s them into a [`ClusterConfig`], one check per invariant. Errors name the file, the
//! line and the key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::ids::{NodeId, PairTable};

/// Why a cluster file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Parse {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}:{line}: `{key}`: {message}")]
    Invalid {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
}

// ---------------------------------------------------------------------------------------------------------------
// Raw file structs
// ---------------------------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    cluster: FileCluster,
    #[serde(default)]
    cookie: FileCookie,
    lb: FileLb,
    #[serde(default)]
    node: FileNodeDefaults,
    #[serde(default)]
    replication: FileReplication,
    #[serde(default)]
    session: FileSession,
    #[serde(default)]
    nodes: Vec<FileNode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCluster {
    secret: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCookie {
    #[serde(default = "default_cookie_name")]
    name: String,
    #[serde(default)]
    host_prefix: bool,
    #[serde(default = "default_key_id")]
    key_id: u8,
    #[serde(default)]
    previous_keys: Vec<FileCookieKey>,
}

impl Default for FileCookie {
    fn default() -> Self {
        FileCookie {
            name: default_cookie_name(),
            host_prefix: false,
            key_id: default_key_id(),
            previous_keys: vec![],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCookieKey {
    id: u8,
    secret: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLb {
    listen: String,
    admin: String,
    #[serde(default = "default_algorithm")]
    algorithm: String,
    #[serde(default = "default_failover")]
    failover: String,
    #[serde(default)]
    health: FileHealth,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default = "default_threads")]
    threads: usize,
    #[serde(default = "default_grace_s")]
    grace_period_s: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHealth {
    #[serde(default = "default_health_interval_ms")]
    interval_ms: u64,
    #[serde(default = "default_health_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_fall")]
    fall: u32,
    #[serde(default = "default_rise")]
    rise: u32,
}

impl Default for FileHealth {
    fn default() -> Self {
        FileHealth {
            interval_ms: default_health_interval_ms(),
            timeout_ms: default_health_timeout_ms(),
            fall: default_fall(),
            rise: default_rise(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    #[serde(default = "default_max_headers")]
    max_headers: usize,
    #[serde(default = "default_max_header_bytes")]
    max_header_bytes: usize,
    #[serde(default = "default_header_timeout_ms")]
    header_timeout_ms: u64,
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: usize,
    #[serde(default = "default_connect_timeout_ms")]
    connect_timeout_ms: u64,
    #[serde(default = "default_read_timeout_ms")]
    read_timeout_ms: u64,
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits {
            max_headers: default_max_headers(),
            max_header_bytes: default_max_header_bytes(),
            header_timeout_ms: default_header_timeout_ms(),
            max_body_bytes: default_max_body_bytes(),
            connect_timeout_ms: default_connect_timeout_ms(),
            read_timeout_ms: default_read_timeout_ms(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNodeDefaults {
    #[serde(default)]
    expose_node: bool,
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: usize,
    #[serde(default = "default_log_format")]
    log_format: String,
}

impl Default for FileNodeDefaults {
    fn default() -> Self {
        FileNodeDefaults {
            expose_node: false,
            max_body_bytes: default_max_body_bytes(),
            log_format: default_log_format(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileReplication {
    #[serde(default = "default_mode")]
    mode: String,
    #[serde(default = "default_topology")]
    topology: String,
    #[serde(default = "default_heartbeat_ms")]
    heartbeat_ms: u64,
    #[serde(default = "default_peer_timeout_ms")]
    peer_timeout_ms: u64,
    #[serde(default = "default_lease_ms")]
    lease_ms: u64,
    #[serde(default)]
    batch: FileBatch,
}

impl Default for FileReplication {
    fn default() -> Self {
        FileReplication {
            mode: default_mode(),
            topology: default_topology(),
            heartbeat_ms: default_heartbeat_ms(),
            peer_timeout_ms: default_peer_timeout_ms(),
            lease_ms: default_lease_ms(),
            batch: FileBatch::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBatch {
    #[serde(default = "default_max_updates")]
    max_updates: usize,
    #[serde(default = "default_max_delay_ms")]
    max_delay_ms: u64,
}

impl Default for FileBatch {
    fn default() -> Self {
        FileBatch {
            max_updates: default_max_updates(),
            max_delay_ms: default_max_delay_ms(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSession {
    #[serde(default = "default_idle_timeout_s")]
    idle_timeout_s: u64,
    #[serde(default = "default_max_session_bytes")]
    max_session_bytes: usize,
}

impl Default for FileSession {
    fn default() -> Self {
        FileSession {
            idle_timeout_s: default_idle_timeout_s(),
            max_session_bytes: default_max_session_bytes(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNode {
    name: String,
    http: String,
    repl: String,
    #[serde(default)]
    machine: Option<String>,
    #[serde(default)]
    zone: Option<String>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    drain: bool,
    #[serde(default)]
    secondary: Option<String>,
}

fn default_cookie_name() -> String {
    "SRVSESSION".into()
}
fn default_key_id() -> u8 {
    1
}
fn default_algorithm() -> String {
    "least_connections".into()
}
fn default_failover() -> String {
    "rebalance".into()
}
fn default_threads() -> usize {
    1
}
fn default_grace_s() -> u64 {
    5
}
fn default_health_interval_ms() -> u64 {
    500
}
fn default_health_timeout_ms() -> u64 {
    400
}
fn default_fall() -> u32 {
    2
}
fn default_rise() -> u32 {
    2
}
fn default_max_headers() -> usize {
    100
}
fn default_max_header_bytes() -> usize {
    32 * 1024
}
fn default_header_timeout_ms() -> u64 {
    10_000
}
fn default_max_body_bytes() -> usize {
    1024 * 1024
}
fn default_connect_timeout_ms() -> u64 {
    1_000
}
fn default_read_timeout_ms() -> u64 {
    10_000
}
fn default_log_format() -> String {
    "text".into()
}
fn default_mode() -> String {
    "sync".into()
}
fn default_topology() -> String {
    "pair".into()
}
fn default_heartbeat_ms() -> u64 {
    500
}
fn default_peer_timeout_ms() -> u64 {
    2_000
}
fn default_lease_ms() -> u64 {
    500
}
fn default_max_updates() -> usize {
    64
}
fn default_max_delay_ms() -> u64 {
    5
}
fn default_idle_timeout_s() -> u64 {
    1800
}
fn default_max_session_bytes() -> usize {
    256 * 1024
}
fn default_weight() -> u32 {
    1
}

// ---------------------------------------------------------------------------------------------------------------
// Validated config
// ---------------------------------------------------------------------------------------------------------------

/// How new sessions are spread over nodes by the balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    LeastConnections,
    RoundRobin,
    Random,
}

/// Where the balancer sends a pinned request whose primary is dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failover {
    /// Any healthy node chosen by the algorithm (the failed one excluded).
    Rebalance,
    /// The pair's secondary first (seed 003 Fig. 7).
    Secondary,
}

/// When a write is acknowledged to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationMode {
    /// After the secondary applied it.
    Sync,
    /// At once; copies go out in batches.
    Async,
}

/// One cookie MAC key.
#[derive(Debug, Clone)]
pub struct CookieKey {
    pub id: u8,
    pub secret: String,
}

#[derive(Debug, Clone)]
pub struct CookieConfig {
    /// Cookie name, `__Host-` prefixed when `host_prefix` is set. Default `SRVSESSION`.
    pub name: String,
    /// The key new cookies are signed with.
    pub current: CookieKey,
    /// Keys still accepted during a rotation.
    pub previous: Vec<CookieKey>,
}

#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub interval: Duration,
    pub timeout: Duration,
    pub fall: u32,
    pub rise: u32,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub header_timeout: Duration,
    pub max_body_bytes: usize,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct LbConfig {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub algorithm: Algorithm,
    pub failover: Failover,
    pub health: HealthConfig,
    pub limits: LimitsConfig,
    pub threads: usize,
    pub grace_period: Duration,
}

#[derive(Debug, Clone)]
pub struct NodeDefaults {
    /// Add `X-Served-By: <name>` to every response. Default false.
    pub expose_node: bool,
    pub max_body_bytes: usize,
    /// `text` or `json`.
    pub log_json: bool,
}

#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    pub mode: ReplicationMode,
    pub heartbeat: Duration,
    pub peer_timeout: Duration,
    /// How long a primary may serve reads without hearing from its secondary, and how long a secondary waits
    /// after the last update before it hands the session to a new owner.
    pub lease: Duration,
    pub max_updates: usize,
    pub max_delay: Duration,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub idle_timeout: Duration,
    pub max_session_bytes: usize,
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub name: String,
    pub id: NodeId,
    pub http: SocketAddr,
    pub repl: SocketAddr,
    pub machine: String,
    pub zone: String,
    pub weight: u32,
    pub drain: bool,
    /// Admin pin: this node's sessions use that node as secondary when it is alive.
    pub secondary: Option<String>,
}

/// The validated cluster file.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub secret: String,
    pub cookie: CookieConfig,
    pub lb: LbConfig,
    pub node: NodeDefaults,
    pub replication: ReplicationConfig,
    pub session: SessionConfig,
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
    /// [`ConfigError::Parse`] for TOML or type errors (with the TOML line), [`ConfigError::Invalid`] for a value
    /// that breaks an invariant.
    pub fn from_toml(file: &str, text: &str) -> Result<ClusterConfig, ConfigError> {
        let raw: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            line: e.span().map(|s| line_of(text, s.start)).unwrap_or(0),
            message: e.message().to_string(),
        })?;
        raw.validate().map_err(|v| ConfigError::Invalid {
            file: file.to_string(),
            line: v.locate(text),
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

/// A failed invariant before it is placed in the file.
struct Violation {
    /// Dotted key, with `nodes[i]` for the i-th `[[nodes]]` table.
    key: String,
    message: String,
}

impl Violation {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Violation {
            key: key.into(),
            message: message.into(),
        }
    }

    /// Best-effort line of the key: the table header is found first, then the key inside it.
    fn locate(&self, text: &str) -> usize {
        let (table, field) = match self.key.rsplit_once('.') {
            Some((t, f)) => (t.to_string(), f.to_string()),
            None => (String::new(), self.key.clone()),
        };
        let mut start = 0usize;
        if let Some(rest) = table.strip_prefix("nodes[") {
            let idx: usize = rest.trim_end_matches(']').parse().unwrap_or(0);
            let mut seen = 0;
            for (i, l) in text.lines().enumerate() {
                if l.trim() == "[[nodes]]" {
                    if seen == idx {
                        start = i;
                        break;
                    }
                    seen += 1;
                }
            }
        } else if !table.is_empty() {
            let header = format!("[{table}]");
            if let Some(i) = text.lines().position(|l| l.trim() == header) {
                start = i;
            }
        }
        for (i, l) in text.lines().enumerate().skip(start) {
            let t = l.trim_start();
            if t.starts_with(&field) && t[field.len()..].trim_start().starts_with('=') {
                return i + 1;
            }
            if i > start && t.starts_with('[') {
                break;
            }
        }
        start + 1
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, Violation> {
    value
        .parse()
        .map_err(|_| Violation::new(key, format!("`{value}` is not an ip:port address")))
}

fn ms(key: &str, value: u64) -> Result<Duration, Violation> {
    if value == 0 {
        return Err(Violation::new(key, "must be greater than 0"));
    }
    Ok(Duration::from_millis(value))
}

impl FileConfig {
    fn validate(self) -> Result<ClusterConfig, Violation> {
        if self.cluster.secret.len() < 16 {
            return Err(Violation::new(
                "cluster.secret",
                format!(
                    "must be at least 16 characters, got {}",
                    self.cluster.secret.len()
                ),
            ));
        }
        let cookie = self.cookie.validate(&self.cluster.secret)?;
        let lb = self.lb.validate()?;
        let node = NodeDefaults {
            expose_node: self.node.expose_node,
            max_body_bytes: self.node.max_body_bytes,
            log_json: match self.node.log_format.as_str() {
                "text" => false,
                "json" => true,
                other => {
                    return Err(Violation::new(
                        "node.log_format",
                        format!("`{other}`: expected text or json"),
                    ))
                }
            },
        };
        let replication = self.replication.validate()?;
        if self.session.idle_timeout_s == 0 {
            return Err(Violation::new(
                "session.idle_timeout_s",
                "must be greater than 0",
            ));
        }
        let session = SessionConfig {
            idle_timeout: Duration::from_secs(self.session.idle_timeout_s),
            max_session_bytes: self.session.max_session_bytes,
        };
        let nodes = validate_nodes(&self.cluster.secret, self.nodes)?;
        let pairs = PairTable::build(nodes.iter().map(|n| n.id)).map_err(|(a, b)| {
            Violation::new(
                "nodes",
                format!("two different pairs have the same id sum ({a} and {b}): change one node's `id`"),
            )
        })?;
        Ok(ClusterConfig {
            secret: self.cluster.secret,
            cookie,
            lb,
            node,
            replication,
            session,
            nodes,
            pairs,
        })
    }
}

impl FileCookie {
    fn validate(self, secret: &str) -> Result<CookieConfig, Violation> {
        let valid_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if self.name.is_empty() || !self.name.chars().all(valid_char) {
            return Err(Violation::new(
                "cookie.name",
                format!("`{}`: use letters, digits, `_` and `-` only", self.name),
            ));
        }
        let name = if self.host_prefix {
            format!("__Host-{}", self.name)
        } else {
            self.name
        };
        let mut previous = Vec::new();
        for (i, k) in self.previous_keys.into_iter().enumerate() {
            if k.id == self.key_id {
                return Err(Violation::new(
                    format!("cookie.previous_keys[{i}].id"),
                    format!("{} is also the current key_id", k.id),
                ));
            }
            if k.secret.len() < 16 {
                return Err(Violation::new(
                    format!("cookie.previous_keys[{i}].secret"),
                    "must be at least 16 characters",
                ));
            }
            previous.push(CookieKey {
                id: k.id,
                secret: k.secret,
            });
        }
        Ok(CookieConfig {
            name,
            current: CookieKey {
                id: self.key_id,
                secret: secret.to_string(),
            },
            previous,
        })
    }
}

impl FileLb {
    fn validate(self) -> Result<LbConfig, Violation> {
        let algorithm = match self.algorithm.as_str() {
            "least_connections" => Algorithm::LeastConnections,
            "round_robin" => Algorithm::RoundRobin,
            "random" => Algorithm::Random,
            other => {
                return Err(Violation::new(
                    "lb.algorithm",
                    format!("`{other}`: expected least_connections, round_robin or random"),
                ))
            }
        };
        let failover = match self.failover.as_str() {
            "rebalance" => Failover::Rebalance,
            "secondary" => Failover::Secondary,
            other => {
                return Err(Violation::new(
                    "lb.failover",
                    format!("`{other}`: expected rebalance or secondary"),
                ))
            }
        };
        if self.health.fall == 0 || self.health.rise == 0 {
            return Err(Violation::new(
                "lb.health.fall",
                "fall and rise must be at least 1",
            ));
        }
        if self.threads == 0 {
            return Err(Violation::new("lb.threads", "must be at least 1"));
        }
        let l = self.limits;
        Ok(LbConfig {
            listen: parse_addr("lb.listen", &self.listen)?,
            admin: parse_addr("lb.admin", &self.admin)?,
            algorithm,
            failover,
            health: HealthConfig {
                interval: ms("lb.health.interval_ms", self.health.interval_ms)?,
                timeout: ms("lb.health.timeout_ms", self.health.timeout_ms)?,
                fall: self.health.fall,
                rise: self.health.rise,
            },
            limits: LimitsConfig {
                max_headers: l.max_headers,
                max_header_bytes: l.max_header_bytes,
                header_timeout: ms("lb.limits.header_timeout_ms", l.header_timeout_ms)?,
                max_body_bytes: l.max_body_bytes,
                connect_timeout: ms("lb.limits.connect_timeout_ms", l.connect_timeout_ms)?,
                read_timeout: ms("lb.limits.read_timeout_ms", l.read_timeout_ms)?,
            },
            threads: self.threads,
            grace_period: Duration::from_secs(self.grace_period_s),
        })
    }
}

impl FileReplication {
    fn validate(self) -> Result<ReplicationConfig, Violation> {
        let mode = match self.mode.as_str() {
            "sync" => ReplicationMode::Sync,
            "async" => ReplicationMode::Async,
            other => {
                return Err(Violation::new(
                    "replication.mode",
                    format!("`{other}`: expected sync or async"),
                ))
            }
        };
        if self.topology != "pair" {
            return Err(Violation::new(
                "replication.topology",
                format!(
                    "`{}`: only `pair` is available in this version",
                    self.topology
                ),
            ));
        }
        if self.batch.max_updates == 0 {
            return Err(Violation::new(
                "replication.batch.max_updates",
                "must be at least 1",
            ));
        }
        let heartbeat = ms("replication.heartbeat_ms", self.heartbeat_ms)?;
        let peer_timeout = ms("replication.peer_timeout_ms", self.peer_timeout_ms)?;
        if peer_timeout < heartbeat * 2 {
            return Err(Violation::new(
                "replication.peer_timeout_ms",
                format!(
                    "{} must be at least twice heartbeat_ms ({})",
                    self.peer_timeout_ms, self.heartbeat_ms
                ),
            ));
        }
        Ok(ReplicationConfig {
            mode,
            heartbeat,
            peer_timeout,
            lease: ms("replication.lease_ms", self.lease_ms)?,
            max_updates: self.batch.max_updates,
            max_delay: ms("replication.batch.max_delay_ms", self.batch.max_delay_ms)?,
        })
    }
}

fn validate_nodes(secret: &str, raw: Vec<FileNode>) -> Result<Vec<NodeConfig>, Violation> {
    let mut nodes: Vec<NodeConfig> = Vec::with_capacity(raw.len());
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for (i, n) in raw.iter().enumerate() {
        let key = |f: &str| format!("nodes[{i}].{f}");
        if n.name.is_empty()
            || n.name.len() > 64
            || !n
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Violation::new(
                key("name"),
                format!("`{}`: 1-64 letters, digits, `-` or `_`", n.name),
            ));
        }
        if let Some(j) = by_name.insert(n.name.clone(), i) {
            return Err(Violation::new(
                key("name"),
                format!("`{}` is already the name of nodes[{j}]", n.name),
            ));
        }
        let id = match n.id {
            Some(v) => NodeId::new(v).map_err(|m| Violation::new(key("id"), m))?,
            None => NodeId::derive(&n.name, secret),
        };
        if let Some(other) = nodes.iter().find(|o| o.id == id) {
            return Err(Violation::new(
                key("id"),
                format!("{id} is also the id of `{}`", other.name),
            ));
        }
        let http = parse_addr(&key("http"), &n.http)?;
        let repl = parse_addr(&key("repl"), &n.repl)?;
        for o in &nodes {
            for (k, a) in [("http", http), ("repl", repl)] {
                if a == o.http || a == o.repl {
                    return Err(Violation::new(
                        key(k),
                        format!("{a} is already used by `{}`", o.name),
                    ));
                }
            }
        }
        if http == repl {
            return Err(Violation::new(
                key("repl"),
                format!("{repl} is also this node's http address"),
            ));
        }
        if n.weight == 0 || n.weight > 1000 {
            return Err(Violation::new(
                key("weight"),
                format!("{}: expected 1 to 1000", n.weight),
            ));
        }
        nodes.push(NodeConfig {
            name: n.name.clone(),
            id,
            http,
            repl,
            machine: n.machine.clone().unwrap_or_else(|| n.name.clone()),
            zone: n.zone.clone().unwrap_or_else(|| "default".into()),
            weight: n.weight,
            drain: n.drain,
            secondary: n.secondary.clone(),
        });
    }
    for (i, n) in nodes.iter().enumerate() {
        if let Some(s) = &n.secondary {
            if s == &n.name {
                return Err(Violation::new(
                    format!("nodes[{i}].secondary"),
                    "a node cannot be its own secondary",
                ));
            }
            if !by_name.contains_key(s) {
                return Err(Violation::new(
                    format!("nodes[{i}].secondary"),
                    format!("`{s}` is not a node of this cluster"),
                ));
            }
        }
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn a_minimal_file_gets_the_documented_defaults() {
        let c = ClusterConfig::from_toml("t.toml", GOOD).unwrap();
        assert_eq!(c.cookie.name, "SRVSESSION");
        assert_eq!(c.lb.algorithm, Algorithm::LeastConnections);
        assert_eq!(c.lb.failover, Failover::Rebalance);
        assert_eq!(c.replication.mode, ReplicationMode::Sync);
        assert_eq!(c.nodes.len(), 2);
        assert_ne!(c.nodes[0].id, c.nodes[1].id);
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_line() {
        let text = GOOD.replace("[lb]\n", "[lb]\nlisten_typo = 1\n");
        let err = ClusterConfig::from_toml("t.toml", &text)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("t.toml:6:"), "{err}");
        assert!(err.contains("listen_typo"), "{err}");
    }

    #[test]
    fn a_bad_value_names_file_line_and_key() {
        let text = GOOD.replace("repl = \"127.0.0.1:9102\"", "repl = \"nowhere\"");
        let err = ClusterConfig::from_toml("t.toml", &text)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "t.toml:17: `nodes[1].repl`: `nowhere` is not an ip:port address"
        );
    }

    #[test]
    fn duplicate_addresses_and_names_are_refused() {
        let text = GOOD.replace("http = \"127.0.0.1:9002\"", "http = \"127.0.0.1:9001\"");
        assert!(ClusterConfig::from_toml("t", &text)
            .unwrap_err()
            .to_string()
            .contains("already used"));
        let text = GOOD.replace("name = \"n2\"", "name = \"n1\"");
        assert!(ClusterConfig::from_toml("t", &text)
            .unwrap_err()
            .to_string()
            .contains("already the name"));
    }

    #[test]
    fn colliding_pair_sums_are_refused() {
        // 1+4 == 2+3: the pairs (n1,n4) and (n2,n3) would share a segment.
        let base = 1u64 << 50;
        let mut text = String::from(
            "[cluster]\nsecret = \"0123456789abcdef0123\"\n[lb]\nlisten = \"127.0.0.1:1\"\nadmin = \"127.0.0.1:2\"\n",
        );
        for i in 1..=4u64 {
            text += &format!(
                "[[nodes]]\nname = \"n{i}\"\nhttp = \"127.0.0.1:{}\"\nrepl = \"127.0.0.1:{}\"\nid = {}\n",
                9000 + i,
                9100 + i,
                base + i
            );
        }
        let err = ClusterConfig::from_toml("t", &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("same id sum"), "{err}");
    }
}
