//! From the raw file to a [`ClusterConfig`]: one check per invariant. A failed check is a [`Violation`] naming
//! the dotted key (`nodes[1].repl`) and the values involved; `from_toml` then finds the key's line.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::file::{
    FileBank, FileConfig, FileCookie, FileL4, FileLb, FileNode, FileNodeDefaults, FileReplication,
    FileSession, FileSidecar, FileTls,
};
use super::{
    BankConfig, BankKind, ClusterConfig, CookieConfig, CookieKey, HealthConfig, IpNet, L4Config,
    LbConfig, LimitsConfig, NodeConfig, NodeDefaults, NodeRole, ReplicationConfig, ReplicationMode,
    Secret, SessionConfig, SidecarConfig, TlsConfig, Topology,
};
use crate::ids::{NodeId, PairTable};

/// Shortest secret accepted, in bytes: a cookie MAC or a peer proof is no stronger than its key.
const MIN_SECRET_BYTES: usize = 16;
/// Longest `[node] grace_period_s`: a rolling restart waits this long per node at worst.
const MAX_NODE_GRACE_S: u64 = 300;

/// A failed invariant, before `from_toml` places it in the file.
#[derive(Debug)]
pub(super) struct Violation {
    /// Dotted key, with `nodes[i]` for the i-th `[[nodes]]` table.
    pub key: String,
    pub message: String,
}

impl Violation {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Violation {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// `value`, or a violation saying `key` (described by `what`) is missing.
fn required<T>(key: &str, value: Option<T>, what: &str) -> Result<T, Violation> {
    value.ok_or_else(|| Violation::new(key, format!("missing: {what}")))
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, Violation> {
    value
        .parse()
        .map_err(|_| Violation::new(key, format!("`{value}` is not an ip:port address")))
}

/// A required ip:port key.
fn required_addr(key: &str, value: Option<&str>, what: &str) -> Result<SocketAddr, Violation> {
    parse_addr(key, required(key, value, what)?)
}

/// A duration in milliseconds that must not be zero.
fn ms(key: &str, value: u64) -> Result<Duration, Violation> {
    if value == 0 {
        return Err(Violation::new(key, "must be greater than 0"));
    }
    Ok(Duration::from_millis(value))
}

fn at_least_one<T: PartialOrd + From<u8> + std::fmt::Display>(
    key: &str,
    value: T,
) -> Result<T, Violation> {
    if value < T::from(1) {
        return Err(Violation::new(
            key,
            format!("must be at least 1, got {value}"),
        ));
    }
    Ok(value)
}

/// A required secret of at least [`MIN_SECRET_BYTES`].
fn check_secret(key: &str, value: Option<Secret>) -> Result<Secret, Violation> {
    let s = required(
        key,
        value,
        &format!("a string of at least {MIN_SECRET_BYTES} characters"),
    )?;
    if s.len() < MIN_SECRET_BYTES {
        return Err(Violation::new(
            key,
            format!(
                "must be at least {MIN_SECRET_BYTES} characters, got {}",
                s.len()
            ),
        ));
    }
    Ok(s)
}

impl FileConfig {
    /// The typed config, or the first invariant the file breaks.
    pub(super) fn validate(self) -> Result<ClusterConfig, Violation> {
        let secret = check_secret("cluster.secret", self.cluster.secret)?;
        let previous_secret = self
            .cluster
            .previous_secret
            .map(|p| check_secret("cluster.previous_secret", Some(p)))
            .transpose()?;
        let cookie = self.cookie.validate(&secret)?;
        let lb = self.lb.validate()?;
        let upstream = self
            .node
            .upstream
            .as_deref()
            .map(|u| parse_upstream("node.upstream", u))
            .transpose()?;
        let node = self.node.validate()?;
        if lb.l4.as_ref().is_some_and(|l| l.send_proxy) && !node.accept_proxy {
            return Err(Violation::new(
                "lb.l4.send_proxy",
                "the nodes would refuse every Layer-4 connection: set [node] accept_proxy = true too",
            ));
        }
        let replication = self.replication.validate(&secret)?;
        let session = self.session.validate()?;
        let sidecar = self.sidecar.validate()?;
        check_groups(&replication, &self.nodes)?;
        if let Some(previous) = &previous_secret {
            check_rotation(previous, &secret, &replication, &self.nodes)?;
        }
        let nodes = validate_nodes(&secret, self.nodes, upstream)?;
        check_roles(&replication, &nodes)?;
        if nodes.iter().any(|n| n.upstream.is_some()) {
            check_app_fits_lb_timeout(&sidecar, &replication, &lb)?;
        }
        // A Redis bank stands in cookies where a session server would: its id is a term of segments too.
        let bank_id = replication.bank.as_ref().map(|b| b.id);
        let pairs = PairTable::build(nodes.iter().map(|n| n.id).chain(bank_id)).map_err(|(a, b)| {
            Violation::new(
                "nodes",
                format!("two different pairs have the same id sum ({a} and {b}): change one node's `id`"),
            )
        })?;
        Ok(ClusterConfig {
            secret,
            previous_secret,
            cookie,
            lb,
            node,
            replication,
            session,
            sidecar,
            nodes,
            pairs,
        })
    }
}

impl FileCookie {
    fn validate(self, secret: &Secret) -> Result<CookieConfig, Violation> {
        if self.name.is_empty() || !self.name.chars().all(name_char) {
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
            let key = |f: &str| format!("cookie.previous_keys[{i}].{f}");
            let id = required(
                &key("id"),
                k.id,
                "the key id (0-255) cookies signed with it carry",
            )?;
            if id == self.key_id {
                return Err(Violation::new(
                    key("id"),
                    format!("{id} is also the current key_id"),
                ));
            }
            let secret = check_secret(&key("secret"), k.secret)?;
            previous.push(CookieKey { id, secret });
        }
        let header = self.header.as_deref().map(check_token_header).transpose()?;
        Ok(CookieConfig {
            header,
            name,
            current: CookieKey {
                id: self.key_id,
                secret: secret.clone(),
            },
            previous,
        })
    }
}

impl FileLb {
    fn validate(self) -> Result<LbConfig, Violation> {
        let listen = required_addr(
            "lb.listen",
            self.listen.as_deref(),
            "the ip:port clients connect to",
        )?;
        let admin = required_addr(
            "lb.admin",
            self.admin.as_deref(),
            "the ip:port of /status, /metrics and /reload",
        )?;
        let h = self.health;
        let health = HealthConfig {
            interval: ms("lb.health.interval_ms", h.interval_ms)?,
            timeout: ms("lb.health.timeout_ms", h.timeout_ms)?,
            fall: at_least_one("lb.health.fall", h.fall)?,
            rise: at_least_one("lb.health.rise", h.rise)?,
        };
        let l = self.limits;
        let limits = LimitsConfig {
            max_headers: l.max_headers,
            max_header_bytes: l.max_header_bytes,
            header_timeout: ms("lb.limits.header_timeout_ms", l.header_timeout_ms)?,
            max_body_bytes: l.max_body_bytes,
            connect_timeout: ms("lb.limits.connect_timeout_ms", l.connect_timeout_ms)?,
            read_timeout: ms("lb.limits.read_timeout_ms", l.read_timeout_ms)?,
            tunnel_idle_timeout: ms("lb.limits.tunnel_idle_timeout_ms", l.tunnel_idle_timeout_ms)?,
        };
        Ok(LbConfig {
            listen,
            admin,
            algorithm: self.algorithm,
            failover: self.failover,
            health,
            limits,
            threads: at_least_one("lb.threads", self.threads)?,
            grace_period: Duration::from_secs(self.grace_period_s),
            admin_token: self.admin_token.map(check_admin_token).transpose()?,
            l4: self.l4.map(|l| l.validate(listen)).transpose()?,
            tls: self.tls.map(FileTls::validate).transpose()?,
        })
    }
}

/// Most connections one Layer-4 listener holds open.
const MAX_L4_CONNECTIONS: usize = 1_000_000;

impl FileL4 {
    fn validate(self, http_listen: SocketAddr) -> Result<L4Config, Violation> {
        let listen = required_addr(
            "lb.l4.listen",
            self.listen.as_deref(),
            "the ip:port of raw TCP connections to balance",
        )?;
        if listen == http_listen {
            return Err(Violation::new(
                "lb.l4.listen",
                format!(
                    "{listen} is also lb.listen: give the Layer-4 listener an address of its own"
                ),
            ));
        }
        if !(1..=MAX_L4_CONNECTIONS).contains(&self.max_connections) {
            return Err(Violation::new(
                "lb.l4.max_connections",
                format!(
                    "{}: expected 1 to {MAX_L4_CONNECTIONS}",
                    self.max_connections
                ),
            ));
        }
        Ok(L4Config {
            listen,
            connect_timeout: ms("lb.l4.connect_timeout_ms", self.connect_timeout_ms)?,
            idle_timeout: ms("lb.l4.idle_timeout_ms", self.idle_timeout_ms)?,
            max_connections: self.max_connections,
            send_proxy: self.send_proxy,
        })
    }
}

impl FileTls {
    fn validate(self) -> Result<TlsConfig, Violation> {
        let cert = required("lb.tls.cert", self.cert, "the certificate chain's PEM file")?;
        let key = required("lb.tls.key", self.key, "the private key's PEM file")?;
        Ok(TlsConfig {
            cert: cert.into(),
            key: key.into(),
            h2: self.h2,
        })
    }
}

/// A character of a bearer token (RFC 6750 `b64token`, without the trailing `=` padding it allows).
fn token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

/// `[lb] admin_token`: long enough not to be guessed, and sendable as `Authorization: Bearer <token>`.
fn check_admin_token(token: Secret) -> Result<Secret, Violation> {
    if token.len() < MIN_SECRET_BYTES {
        return Err(Violation::new(
            "lb.admin_token",
            format!(
                "must be at least {MIN_SECRET_BYTES} characters, got {}",
                token.len()
            ),
        ));
    }
    // The message names no character of the token: it is a secret.
    if !token.expose().bytes().all(token_char) {
        return Err(Violation::new(
            "lb.admin_token",
            "use letters, digits and `-._~+/` only (it travels as `Authorization: Bearer <token>`)",
        ));
    }
    Ok(token)
}

/// `[node] trusted`: each entry an address or a CIDR network.
fn check_trusted(entries: Vec<String>) -> Result<Vec<IpNet>, Violation> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            e.parse()
                .map_err(|err| Violation::new(format!("node.trusted[{i}]"), format!("{err}")))
        })
        .collect()
}

/// Fastest drain allowed: each handover is a pull round trip on the heir.
const MAX_DRAIN_RATE: u32 = 100_000;

impl FileNodeDefaults {
    fn validate(self) -> Result<NodeDefaults, Violation> {
        if self.grace_period_s == 0 || self.grace_period_s > MAX_NODE_GRACE_S {
            return Err(Violation::new(
                "node.grace_period_s",
                format!(
                    "{}: expected 1 to {MAX_NODE_GRACE_S} seconds",
                    self.grace_period_s
                ),
            ));
        }
        if !(1..=MAX_DRAIN_RATE).contains(&self.drain_rate) {
            return Err(Violation::new(
                "node.drain_rate",
                format!(
                    "{}: expected 1 to {MAX_DRAIN_RATE} sessions per second",
                    self.drain_rate
                ),
            ));
        }
        Ok(NodeDefaults {
            expose_node: self.expose_node,
            drain_rate: self.drain_rate,
            max_body_bytes: self.max_body_bytes,
            log_format: self.log_format,
            grace_period: Duration::from_secs(self.grace_period_s),
            trusted: self.trusted.map(check_trusted).transpose()?,
            accept_proxy: self.accept_proxy,
        })
    }
}

impl FileReplication {
    /// The typed `[replication]`; `secret` derives a Redis bank's id.
    fn validate(mut self, secret: &Secret) -> Result<ReplicationConfig, Violation> {
        if !(1..=2).contains(&self.copies) {
            return Err(Violation::new(
                "replication.copies",
                format!("{}: expected 1 or 2", self.copies),
            ));
        }
        let bank = self
            .bank
            .take()
            .map(|b| b.validate(&self, secret))
            .transpose()?;
        if !(1..=2).contains(&self.min_copies) {
            return Err(Violation::new(
                "replication.min_copies",
                format!(
                    "{}: expected 1 or 2 (the owner's, and one more)",
                    self.min_copies
                ),
            ));
        }
        if self.min_copies == 2 && self.mode == ReplicationMode::Async {
            return Err(Violation::new(
                "replication.min_copies",
                "2 needs `mode = \"sync\"`: in async mode a write is answered before any copy holds it",
            ));
        }
        if self.copies == 2 && self.topology != Topology::Rss {
            return Err(Violation::new(
                "replication.copies",
                "2 copies per session need `topology = \"rss\"` (a pair has one copy, on the secondary)",
            ));
        }
        let heartbeat = ms("replication.heartbeat_ms", self.heartbeat_ms)?;
        let peer_timeout = ms("replication.peer_timeout_ms", self.peer_timeout_ms)?;
        // One late heartbeat must not make a live peer look dead.
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
            mode: self.mode,
            topology: self.topology,
            copies: self.copies,
            strict: self.min_copies == 2,
            heartbeat,
            peer_timeout,
            lease: ms("replication.lease_ms", self.lease_ms)?,
            max_updates: at_least_one("replication.batch.max_updates", self.batch.max_updates)?,
            max_delay: ms("replication.batch.max_delay_ms", self.batch.max_delay_ms)?,
            bank,
        })
    }
}

impl FileBank {
    /// The bank's settings; its id is set once the secret is known.
    /// The bank's settings, its id derived from `secret`.
    fn validate(self, r: &FileReplication, secret: &Secret) -> Result<BankConfig, Violation> {
        let (topology, copies) = (r.topology, r.copies);
        if topology != Topology::Rss {
            return Err(Violation::new(
                "replication.bank",
                format!("a bank needs `topology = \"rss\"` (this file's is `{topology}`)"),
            ));
        }
        if copies != 1 {
            return Err(Violation::new(
                "replication.copies",
                format!("{copies}: a Redis bank takes one copy per session (the store keeps its own replicas)"),
            ));
        }
        if self.redis.is_empty() {
            return Err(Violation::new(
                "replication.bank.redis",
                "missing: at least one `redis://HOST:PORT` URL",
            ));
        }
        if let Some(bad) = self
            .redis
            .iter()
            .find(|u| !u.starts_with("redis://") || u.len() == "redis://".len())
        {
            return Err(Violation::new(
                "replication.bank.redis",
                format!(
                    "{bad:?}: expected `redis://HOST:PORT` (TLS to the store is not supported yet)"
                ),
            ));
        }
        if self.kind == BankKind::Server && self.redis.len() > 1 {
            return Err(Violation::new(
                "replication.bank.redis",
                format!("{} URLs for `kind = \"server\"`: one server has one URL (several: `kind = \"cluster\"` or `\"sentinel\"`)", self.redis.len()),
            ));
        }
        match (self.kind, &self.master) {
            (BankKind::Sentinel, None) => {
                return Err(Violation::new(
                    "replication.bank.master",
                    "missing: the service name Sentinel monitors (`kind = \"sentinel\"`)",
                ));
            }
            (BankKind::Server | BankKind::Cluster, Some(_)) => {
                return Err(Violation::new(
                    "replication.bank.master",
                    format!(
                        "only with `kind = \"sentinel\"` (this bank's is `{}`)",
                        self.kind
                    ),
                ));
            }
            _ => {}
        }
        if let Some(bad) = self.redis.iter().find(|u| {
            let rest = &u["redis://".len()..];
            match self.kind {
                BankKind::Server => false,
                BankKind::Cluster => rest.contains('/'),
                BankKind::Sentinel => rest.contains('/') || rest.contains('@'),
            }
        }) {
            return Err(Violation::new(
                "replication.bank.redis",
                format!(
                    "{bad:?}: with `kind = \"{}\"` a URL is `redis://HOST:PORT` (credentials or a database for the \
                     store behind the sentinels are not supported yet; a cluster has one database)",
                    self.kind
                ),
            ));
        }
        if self.wait_replicas > 0 && r.mode != ReplicationMode::Sync {
            return Err(Violation::new(
                "replication.bank.wait_replicas",
                "only with `mode = \"sync\"`: in async mode no write waits for its copy",
            ));
        }
        // A write waits for its copy at most three peer timeouts: a store that takes longer per command turns
        // a paused store into failed requests instead of unprotected sessions.
        if self.timeout_ms >= r.peer_timeout_ms {
            return Err(Violation::new(
                "replication.bank.timeout_ms",
                format!(
                    "{} must be under replication.peer_timeout_ms ({})",
                    self.timeout_ms, r.peer_timeout_ms
                ),
            ));
        }
        if self.kind == BankKind::Cluster && self.wait_replicas > 0 {
            return Err(Violation::new(
                "replication.bank.wait_replicas",
                "not with `kind = \"cluster\"`: WAIT covers one connection's writes, and a cluster spreads them",
            ));
        }
        Ok(BankConfig {
            urls: self.redis,
            kind: self.kind,
            master: self.master,
            timeout: ms("replication.bank.timeout_ms", self.timeout_ms)?,
            wait_replicas: self.wait_replicas,
            id: BankConfig::derive_id(secret.expose()),
        })
    }
}

impl FileSidecar {
    fn validate(self) -> Result<SidecarConfig, Violation> {
        // A header line over 64 KiB is refused by most HTTP servers the app could run on.
        if self.session_header_bytes > 64 * 1024 {
            return Err(Violation::new(
                "sidecar.session_header_bytes",
                format!("{}: at most 65536", self.session_header_bytes),
            ));
        }
        Ok(SidecarConfig {
            session_header_bytes: self.session_header_bytes,
            replay_body_bytes: self.replay_body_bytes,
            buffer_body_bytes: self.buffer_body_bytes,
            connect_timeout: ms("sidecar.connect_timeout_ms", self.connect_timeout_ms)?,
            read_timeout: ms("sidecar.read_timeout_ms", self.read_timeout_ms)?,
        })
    }
}

impl FileSession {
    fn validate(self) -> Result<SessionConfig, Violation> {
        if self.idle_timeout_s == 0 {
            return Err(Violation::new(
                "session.idle_timeout_s",
                "must be greater than 0",
            ));
        }
        Ok(SessionConfig {
            idle_timeout: Duration::from_secs(self.idle_timeout_s),
            max_session_bytes: self.max_session_bytes,
        })
    }
}

/// Headers the node and balancer own: a session token header may not reuse one of them.
const RESERVED_HEADERS: [&str; 12] = [
    "cookie",
    "set-cookie",
    crate::REQUEST_ID_HEADER,
    "x-node-hop",
    "x-served-by",
    "x-session",
    "x-session-id",
    "x-session-version",
    "x-session-ref",
    "x-session-patch",
    "x-session-delete",
    crate::STALE_HEADER,
];

/// `[cookie] header`: a lowercase header name that is not one of ours.
fn check_token_header(name: &str) -> Result<String, Violation> {
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    if name.is_empty() || name.len() > 64 || !name.chars().all(valid) {
        return Err(Violation::new(
            "cookie.header",
            format!("`{name}`: a header name of 1-64 lowercase letters, digits, `-` or `_`"),
        ));
    }
    if RESERVED_HEADERS.contains(&name) {
        return Err(Violation::new(
            "cookie.header",
            format!("`{name}` is a header the cluster uses for itself; pick another name"),
        ));
    }
    Ok(name.to_string())
}

/// A character allowed in names (nodes, groups, the cookie): ASCII letters and digits, `-` and `_`.
fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// Groups are for the `broadcast` topology, and are names.
fn check_groups(replication: &ReplicationConfig, nodes: &[FileNode]) -> Result<(), Violation> {
    for (i, n) in nodes.iter().enumerate() {
        let Some(g) = &n.group else { continue };
        if replication.topology != Topology::Broadcast {
            return Err(Violation::new(
                format!("nodes[{i}].group"),
                format!(
                    "groups need `[replication] topology = \"broadcast\"` (this file's is `{}`)",
                    replication.topology
                ),
            ));
        }
        if g.is_empty() || !g.chars().all(name_char) {
            return Err(Violation::new(
                format!("nodes[{i}].group"),
                format!("{g:?}: letters, digits, `-` and `_` only"),
            ));
        }
    }
    Ok(())
}

/// A secret rotation keeps what the secret derives: node ids must be written out (derived ones would change
/// with the secret, and with them every cookie's segment), and a Redis bank (whose id is derived) must wait.
fn check_rotation(
    previous: &Secret,
    secret: &Secret,
    replication: &ReplicationConfig,
    nodes: &[FileNode],
) -> Result<(), Violation> {
    if previous.expose() == secret.expose() {
        return Err(Violation::new(
            "cluster.previous_secret",
            "is the same as `secret`: a rotation needs a new secret",
        ));
    }
    if let Some(i) = nodes.iter().position(|n| n.id.is_none()) {
        let name = nodes[i].name.clone().unwrap_or_default();
        return Err(Violation::new(
            format!("nodes[{i}].id"),
            format!(
                "a rotation (`cluster.previous_secret`) needs every node's `id` written out: derived ids change \
                 with the secret; for `{name}` write `id = {}` (its id so far)",
                NodeId::derive(&name, previous.expose())
            ),
        ));
    }
    if replication.bank.is_some() {
        return Err(Violation::new(
            "cluster.previous_secret",
            "a Redis bank's id is derived from the secret: rotating it with a Redis bank is not supported yet",
        ));
    }
    Ok(())
}

/// Roles fit the topology: only web nodes in a pair; a bank has session servers (at least `copies` of them) and
/// a web node to serve.
fn check_roles(replication: &ReplicationConfig, nodes: &[NodeConfig]) -> Result<(), Violation> {
    let count = |r: NodeRole| nodes.iter().filter(|n| n.role == r).count();
    if replication.topology != Topology::Rss {
        if let Some(i) = nodes.iter().position(|n| n.role != NodeRole::Web) {
            return Err(Violation::new(
                format!("nodes[{i}].role"),
                format!(
                    "`{}` needs `[replication] topology = \"rss\"` (this file's is `{}`)",
                    nodes[i].role, replication.topology
                ),
            ));
        }
        if replication.strict && nodes.len() < 2 {
            return Err(Violation::new(
                "replication.min_copies",
                "2 needs a second node to hold the copy; the file has one",
            ));
        }
        // In a broadcast topology copies stay within a group: a group of one could never make one.
        let alone = nodes
            .iter()
            .position(|n| nodes.iter().filter(|o| o.group == n.group).count() < 2);
        if let Some(i) =
            alone.filter(|_| replication.strict && replication.topology == Topology::Broadcast)
        {
            return Err(Violation::new(
                format!("nodes[{i}].group"),
                format!(
                    "`min_copies = 2` needs a second member in group {:?} to hold the copy",
                    nodes[i].group
                ),
            ));
        }
        return Ok(());
    }
    let bank = count(NodeRole::Rss);
    if replication.bank.is_some() {
        if let Some(i) = nodes.iter().position(|n| n.role == NodeRole::Rss) {
            return Err(Violation::new(
                format!("nodes[{i}].role"),
                "`rss` nodes and `[replication.bank] redis` at once: the bank is the Redis store, pick one",
            ));
        }
    } else if bank < replication.copies {
        return Err(Violation::new(
            "replication.copies",
            format!(
                "{} copies per session need at least {} nodes with role = \"rss\" (or a Redis bank, \
                 `[replication.bank] redis`); the file has {bank}",
                replication.copies, replication.copies
            ),
        ));
    }
    if count(NodeRole::Web) == 0 {
        return Err(Violation::new(
            "nodes",
            "the rss topology needs at least one node with role = \"web\" to serve sessions",
        ));
    }
    Ok(())
}

/// A node in sidecar mode may take its app's read timeout plus its copy wait (3 × peer timeout) to answer; the
/// balancer must wait longer than that, or it gives up on a live node and sends the request again while the
/// app still runs.
fn check_app_fits_lb_timeout(
    sidecar: &SidecarConfig,
    replication: &ReplicationConfig,
    lb: &LbConfig,
) -> Result<(), Violation> {
    let node_may_take = sidecar.read_timeout + replication.peer_timeout * 3;
    if node_may_take >= lb.limits.read_timeout {
        return Err(Violation::new(
            "sidecar.read_timeout_ms",
            format!(
                "{} ms plus the copy wait (3 x replication.peer_timeout_ms = {} ms) must stay under \
                 lb.limits.read_timeout_ms ({} ms): the balancer would give up on a node whose app is still running",
                sidecar.read_timeout.as_millis(),
                (replication.peer_timeout * 3).as_millis(),
                lb.limits.read_timeout.as_millis()
            ),
        ));
    }
    Ok(())
}

/// `upstream = "http://IP:PORT"`: the app beside the node, reached over plain HTTP.
fn parse_upstream(key: &str, value: &str) -> Result<SocketAddr, Violation> {
    let rest = value.strip_prefix("http://").ok_or_else(|| {
        Violation::new(
            key,
            format!("`{value}`: expected http://IP:PORT (the app runs beside the node, over plain HTTP)"),
        )
    })?;
    parse_addr(key, rest.trim_end_matches('/'))
}

fn validate_nodes(
    secret: &Secret,
    raw: Vec<FileNode>,
    default_upstream: Option<SocketAddr>,
) -> Result<Vec<NodeConfig>, Violation> {
    let mut nodes: Vec<NodeConfig> = Vec::with_capacity(raw.len());
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for (i, n) in raw.into_iter().enumerate() {
        let key = |f: &str| format!("nodes[{i}].{f}");
        let name = required(&key("name"), n.name, "1-64 letters, digits, `-` or `_`")?;
        if name.is_empty() || name.len() > 64 || !name.chars().all(name_char) {
            return Err(Violation::new(
                key("name"),
                format!("`{name}`: 1-64 letters, digits, `-` or `_`"),
            ));
        }
        if let Some(j) = by_name.insert(name.clone(), i) {
            return Err(Violation::new(
                key("name"),
                format!("`{name}` is already the name of nodes[{j}]"),
            ));
        }
        let id = match n.id {
            Some(v) => NodeId::new(v).map_err(|m| Violation::new(key("id"), m))?,
            None => NodeId::derive(&name, secret.expose()),
        };
        if let Some(other) = nodes.iter().find(|o| o.id == id) {
            return Err(Violation::new(
                key("id"),
                format!("{id} is also the id of `{}`", other.name),
            ));
        }
        let http = required_addr(&key("http"), n.http.as_deref(), "the node's HTTP ip:port")?;
        let repl = required_addr(
            &key("repl"),
            n.repl.as_deref(),
            "the node's replication ip:port",
        )?;
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
        let upstream = match n.upstream.as_deref() {
            Some(u) => Some(parse_upstream(&key("upstream"), u)?),
            None => default_upstream,
        };
        if let Some(u) = upstream {
            if u == http || u == repl {
                return Err(Violation::new(
                    key("upstream"),
                    format!("{u} is the node's own address; the app needs a port of its own"),
                ));
            }
        }
        if n.role == NodeRole::Rss && n.upstream.is_some() {
            return Err(Violation::new(
                key("upstream"),
                "a session server (role = \"rss\") serves no requests, so it has no app",
            ));
        }
        nodes.push(NodeConfig {
            role: n.role,
            upstream: if n.role == NodeRole::Rss {
                None
            } else {
                upstream
            },
            machine: n.machine.unwrap_or_else(|| name.clone()),
            name,
            id,
            http,
            repl,
            zone: n.zone,
            weight: n.weight,
            drain: n.drain,
            secondary: n.secondary,
            group: n
                .group
                .unwrap_or_else(|| NodeConfig::DEFAULT_GROUP.to_string()),
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
