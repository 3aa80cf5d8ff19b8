//! The cluster file as written: raw `File*` structs that mirror the TOML exactly.
//!
//! Every struct refuses unknown keys (`deny_unknown_fields`) and takes `#[serde(default)]` at struct level, so
//! each default is written once, in that struct's `impl Default`. A key with no default is an `Option` here and
//! `validate` says it is missing: serde would only know the table, not the key, to blame.

use serde::Deserialize;

use super::{
    Algorithm, BankKind, Failover, LogFormat, NodeRole, ReplicationMode, Secret, Topology,
};

/// One body cap for the balancer and the nodes, unless the file sets them apart.
const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileConfig {
    pub cluster: FileCluster,
    pub cookie: FileCookie,
    pub lb: FileLb,
    pub node: FileNodeDefaults,
    pub replication: FileReplication,
    pub session: FileSession,
    pub sidecar: FileSidecar,
    pub nodes: Vec<FileNode>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileCluster {
    /// Required.
    pub secret: Option<Secret>,
    /// During a rotation: the secret being replaced, still accepted from peers.
    pub previous_secret: Option<Secret>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileCookie {
    pub name: String,
    pub host_prefix: bool,
    pub key_id: u8,
    pub previous_keys: Vec<FileCookieKey>,
    /// `None`: sessions travel in the cookie only.
    pub header: Option<String>,
}

impl Default for FileCookie {
    fn default() -> Self {
        FileCookie {
            name: "SRVSESSION".into(),
            host_prefix: false,
            key_id: 1,
            previous_keys: Vec::new(),
            header: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileCookieKey {
    /// Required.
    pub id: Option<u8>,
    /// Required.
    pub secret: Option<Secret>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileLb {
    /// Required.
    pub listen: Option<String>,
    /// Required.
    pub admin: Option<String>,
    pub algorithm: Algorithm,
    pub failover: Failover,
    pub health: FileHealth,
    pub limits: FileLimits,
    pub threads: usize,
    pub grace_period_s: u64,
    /// `None`: the admin listener asks for no token.
    pub admin_token: Option<Secret>,
    /// `[lb.l4]`; `None`: no Layer-4 listener.
    pub l4: Option<FileL4>,
    /// `[lb.tls]`; `None`: the listener speaks plain HTTP.
    pub tls: Option<FileTls>,
}

impl Default for FileLb {
    fn default() -> Self {
        FileLb {
            listen: None,
            admin: None,
            algorithm: Algorithm::LeastConnections,
            failover: Failover::Rebalance,
            health: FileHealth::default(),
            limits: FileLimits::default(),
            threads: 1,
            grace_period_s: 5,
            admin_token: None,
            l4: None,
            tls: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileL4 {
    /// Required.
    pub listen: Option<String>,
    pub connect_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub max_connections: usize,
    pub send_proxy: bool,
}

impl Default for FileL4 {
    fn default() -> Self {
        FileL4 {
            listen: None,
            connect_timeout_ms: 1_000,
            idle_timeout_ms: 300_000,
            max_connections: 10_000,
            send_proxy: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileTls {
    /// Required.
    pub cert: Option<String>,
    /// Required.
    pub key: Option<String>,
    pub h2: bool,
}

impl Default for FileTls {
    fn default() -> Self {
        FileTls {
            cert: None,
            key: None,
            h2: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileHealth {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub fall: u32,
    pub rise: u32,
}

impl Default for FileHealth {
    fn default() -> Self {
        FileHealth {
            interval_ms: 500,
            timeout_ms: 400,
            fall: 2,
            rise: 2,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileLimits {
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub header_timeout_ms: u64,
    pub max_body_bytes: usize,
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
    pub tunnel_idle_timeout_ms: u64,
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits {
            max_headers: 100,
            max_header_bytes: 32 * 1024,
            header_timeout_ms: 10_000,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            connect_timeout_ms: 1_000,
            read_timeout_ms: 60_000,
            tunnel_idle_timeout_ms: 600_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileNodeDefaults {
    pub expose_node: bool,
    pub max_body_bytes: usize,
    pub log_format: LogFormat,
    pub grace_period_s: u64,
    pub drain_rate: u32,
    /// `None`: the built-in session API.
    pub upstream: Option<String>,
    /// `None`: every source may call a node.
    pub trusted: Option<Vec<String>>,
    pub accept_proxy: bool,
}

impl Default for FileNodeDefaults {
    fn default() -> Self {
        FileNodeDefaults {
            expose_node: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            log_format: LogFormat::Text,
            grace_period_s: 10,
            drain_rate: 500,
            upstream: None,
            trusted: None,
            accept_proxy: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileReplication {
    pub mode: ReplicationMode,
    pub topology: Topology,
    pub heartbeat_ms: u64,
    pub peer_timeout_ms: u64,
    pub lease_ms: u64,
    pub copies: usize,
    pub min_copies: usize,
    pub batch: FileBatch,
    pub bank: Option<FileBank>,
}

/// `[replication.bank]`: Redis or Valkey as the bank.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileBank {
    pub redis: Vec<String>,
    pub kind: BankKind,
    pub master: Option<String>,
    pub timeout_ms: u64,
    pub wait_replicas: u32,
}

impl Default for FileBank {
    fn default() -> Self {
        FileBank {
            redis: Vec::new(),
            kind: BankKind::Server,
            master: None,
            timeout_ms: 500,
            wait_replicas: 0,
        }
    }
}

impl Default for FileReplication {
    fn default() -> Self {
        FileReplication {
            mode: ReplicationMode::Sync,
            topology: Topology::Pair,
            heartbeat_ms: 500,
            peer_timeout_ms: 2_000,
            lease_ms: 500,
            copies: 1,
            min_copies: 1,
            batch: FileBatch::default(),
            bank: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileBatch {
    pub max_updates: usize,
    pub max_delay_ms: u64,
}

impl Default for FileBatch {
    fn default() -> Self {
        FileBatch {
            max_updates: 64,
            max_delay_ms: 5,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileSession {
    pub idle_timeout_s: u64,
    pub max_session_bytes: usize,
}

impl Default for FileSession {
    fn default() -> Self {
        FileSession {
            idle_timeout_s: 1800,
            max_session_bytes: 256 * 1024,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileSidecar {
    pub session_header_bytes: usize,
    pub replay_body_bytes: usize,
    pub buffer_body_bytes: usize,
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
}

impl Default for FileSidecar {
    fn default() -> Self {
        FileSidecar {
            session_header_bytes: 8 * 1024,
            replay_body_bytes: 16 * 1024,
            buffer_body_bytes: 64 * 1024,
            connect_timeout_ms: 1_000,
            read_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileNode {
    /// Required.
    pub name: Option<String>,
    /// Required.
    pub http: Option<String>,
    /// Required.
    pub repl: Option<String>,
    /// `None`: the node's name (a machine of its own).
    pub machine: Option<String>,
    pub zone: String,
    /// `None`: derived from the name and the cluster secret.
    pub id: Option<u64>,
    pub weight: u32,
    pub drain: bool,
    pub secondary: Option<String>,
    /// `None`: `[node] upstream`.
    pub upstream: Option<String>,
    pub role: NodeRole,
    /// `None`: the one group of every node (`topology = "broadcast"` only).
    pub group: Option<String>,
}

impl Default for FileNode {
    fn default() -> Self {
        FileNode {
            name: None,
            http: None,
            repl: None,
            machine: None,
            zone: "default".into(),
            id: None,
            weight: 1,
            drain: false,
            secondary: None,
            upstream: None,
            role: NodeRole::Web,
            group: None,
        }
    }
}
