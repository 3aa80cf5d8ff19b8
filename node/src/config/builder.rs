//! [`ClusterFile`]: a cluster file as typed values that renders TOML text, for the tests, benchmarks and tools
//! that write throwaway clusters.
//!
//! A setting left `None` is left out of the text, so the file's own default applies and no default is repeated
//! here. Durations are written in the unit the key names (`_ms`, `_s`), truncated to it. Every section has an
//! `extra` escape hatch: raw TOML written after the section's keys and before its sub-tables; it may open a
//! sub-table of its own (`[lb.limits]`), but must not repeat a key or table the builder writes.

use std::fmt::{Display, Write as _};
use std::net::SocketAddr;
use std::time::Duration;

use super::{Algorithm, Failover, LogFormat, ReplicationMode, Secret};

/// A whole cluster file. Start from [`ClusterFile::new`], set fields, push [`NodeEntry`]s, then
/// [`ClusterFile::render`].
#[derive(Debug, Clone)]
pub struct ClusterFile {
    /// `[cluster] secret`.
    pub secret: Secret,
    /// `[cookie]`.
    pub cookie: CookieSection,
    /// `[lb]` and `[lb.health]`.
    pub lb: LbSection,
    /// `[node]`.
    pub node: NodeSection,
    /// `[replication]` and `[replication.batch]`.
    pub replication: ReplicationSection,
    /// `[session]`.
    pub session: SessionSection,
    /// `[sidecar]`.
    pub sidecar: SidecarSection,
    /// `[[nodes]]`, in order.
    pub nodes: Vec<NodeEntry>,
}

/// `[cookie]`.
#[derive(Debug, Clone, Default)]
pub struct CookieSection {
    /// `name`; `None` leaves the default `SRVSESSION`.
    pub name: Option<String>,
    /// `key_id` of the current key; `None` leaves the default 1.
    pub key_id: Option<u8>,
    /// `header`: the request header that may carry the routing token; `None` for cookies only.
    pub header: Option<String>,
    /// Raw TOML after the keys, e.g. `host_prefix = true`.
    pub extra: String,
}

/// `[lb]` and `[lb.health]`.
#[derive(Debug, Clone)]
pub struct LbSection {
    /// `listen`: the balancer's client-facing address.
    pub listen: SocketAddr,
    /// `admin`: the address of `/status`, `/metrics` and `/reload`.
    pub admin: SocketAddr,
    /// `algorithm`; `None` leaves the default `least_connections`.
    pub algorithm: Option<Algorithm>,
    /// `failover`; `None` leaves the default `rebalance`.
    pub failover: Option<Failover>,
    /// `threads`: worker threads; `None` leaves the default 1.
    pub threads: Option<usize>,
    /// `grace_period_s`.
    pub grace_period: Option<Duration>,
    /// `[lb.health]`.
    pub health: HealthSection,
    /// Raw TOML after the keys of `[lb]`, e.g. `"[lb.limits]\nread_timeout_ms = 1000"`.
    pub extra: String,
}

/// `[lb.health]`.
#[derive(Debug, Clone, Default)]
pub struct HealthSection {
    /// `interval_ms`.
    pub interval: Option<Duration>,
    /// `timeout_ms`.
    pub timeout: Option<Duration>,
    /// `fall`: failed probes in a row that mark a node down; `None` leaves the default 2.
    pub fall: Option<u32>,
    /// `rise`: passed probes in a row that mark it up again; `None` leaves the default 2.
    pub rise: Option<u32>,
}

/// `[node]`.
#[derive(Debug, Clone, Default)]
pub struct NodeSection {
    /// `expose_node`: add `X-Served-By`; `None` leaves the default false.
    pub expose_node: Option<bool>,
    /// `log_format`; `None` leaves the default `text`.
    pub log_format: Option<LogFormat>,
    /// `grace_period_s`.
    pub grace_period: Option<Duration>,
    /// `upstream`: every node's app, `http://IP:PORT`; `None` for the built-in API.
    pub upstream: Option<String>,
    /// Raw TOML after the keys.
    pub extra: String,
}

/// `[sidecar]`.
#[derive(Debug, Clone, Default)]
pub struct SidecarSection {
    /// `session_header_bytes`; `None` leaves the default 8 KiB.
    pub session_header_bytes: Option<usize>,
    /// `replay_body_bytes`; `None` leaves the default 16 KiB.
    pub replay_body_bytes: Option<usize>,
    /// `read_timeout_ms`.
    pub read_timeout: Option<Duration>,
    /// Raw TOML after the keys.
    pub extra: String,
}

/// `[replication]` and `[replication.batch]`.
#[derive(Debug, Clone, Default)]
pub struct ReplicationSection {
    /// `mode`; `None` leaves the default `sync`.
    pub mode: Option<ReplicationMode>,
    /// `heartbeat_ms`.
    pub heartbeat: Option<Duration>,
    /// `peer_timeout_ms`.
    pub peer_timeout: Option<Duration>,
    /// `lease_ms`.
    pub lease: Option<Duration>,
    /// `[replication.batch] max_updates`.
    pub max_updates: Option<usize>,
    /// `[replication.batch] max_delay_ms`.
    pub max_delay: Option<Duration>,
    /// Raw TOML after the keys of `[replication]`.
    pub extra: String,
}

/// `[session]`.
#[derive(Debug, Clone, Default)]
pub struct SessionSection {
    /// `idle_timeout_s`.
    pub idle_timeout: Option<Duration>,
    /// `max_session_bytes`; `None` leaves the default 256 KiB.
    pub max_session_bytes: Option<usize>,
    /// Raw TOML after the keys.
    pub extra: String,
}

/// One `[[nodes]]` entry.
#[derive(Debug, Clone)]
pub struct NodeEntry {
    /// `name`: unique in the file.
    pub name: String,
    /// `http`: the node's HTTP address.
    pub http: SocketAddr,
    /// `repl`: the node's replication address.
    pub repl: SocketAddr,
    /// `machine`; `None` leaves the default, the node's name.
    pub machine: Option<String>,
    /// `zone`; `None` leaves the default `default`.
    pub zone: Option<String>,
    /// `id`; `None` derives it from the name and the cluster secret.
    pub id: Option<u64>,
    /// `weight`, 1 to 1000; `None` leaves the default 1.
    pub weight: Option<u32>,
    /// `drain`; `None` leaves the default false.
    pub drain: Option<bool>,
    /// `secondary`: the admin pin, another node's name; `None` lets the node choose.
    pub secondary: Option<String>,
    /// `upstream`: this node's app, `http://IP:PORT`; `None` leaves `[node] upstream`.
    pub upstream: Option<String>,
    /// Raw TOML after the entry's keys.
    pub extra: String,
}

impl NodeEntry {
    /// A node with only its name and addresses set.
    pub fn new(name: impl Into<String>, http: SocketAddr, repl: SocketAddr) -> NodeEntry {
        NodeEntry {
            name: name.into(),
            http,
            repl,
            machine: None,
            zone: None,
            id: None,
            weight: None,
            drain: None,
            secondary: None,
            upstream: None,
            extra: String::new(),
        }
    }
}

impl ClusterFile {
    /// A file with the required keys only, and no nodes yet.
    pub fn new(secret: impl Into<Secret>, listen: SocketAddr, admin: SocketAddr) -> ClusterFile {
        ClusterFile {
            secret: secret.into(),
            cookie: CookieSection::default(),
            lb: LbSection {
                listen,
                admin,
                algorithm: None,
                failover: None,
                threads: None,
                grace_period: None,
                health: HealthSection::default(),
                extra: String::new(),
            },
            node: NodeSection::default(),
            replication: ReplicationSection::default(),
            session: SessionSection::default(),
            sidecar: SidecarSection::default(),
            nodes: Vec::new(),
        }
    }

    /// The TOML text. A section with nothing set is left out.
    pub fn render(&self) -> String {
        let mut out = Toml::default();
        out.table("[cluster]", |t| {
            t.string("secret", Some(self.secret.expose()))
        });

        let c = &self.cookie;
        out.table("[cookie]", |t| {
            t.string("name", c.name.as_deref());
            t.value("key_id", c.key_id);
            t.string("header", c.header.as_deref());
            t.raw(&c.extra);
        });

        let lb = &self.lb;
        out.table("[lb]", |t| {
            t.string("listen", Some(&lb.listen.to_string()));
            t.string("admin", Some(&lb.admin.to_string()));
            t.string("algorithm", lb.algorithm.map(Algorithm::as_str));
            t.string("failover", lb.failover.map(Failover::as_str));
            t.value("threads", lb.threads);
            t.secs("grace_period_s", lb.grace_period);
            t.raw(&lb.extra);
        });
        let h = &lb.health;
        out.table("[lb.health]", |t| {
            t.millis("interval_ms", h.interval);
            t.millis("timeout_ms", h.timeout);
            t.value("fall", h.fall);
            t.value("rise", h.rise);
        });

        let n = &self.node;
        out.table("[node]", |t| {
            t.value("expose_node", n.expose_node);
            t.string("log_format", n.log_format.map(LogFormat::as_str));
            t.secs("grace_period_s", n.grace_period);
            t.string("upstream", n.upstream.as_deref());
            t.raw(&n.extra);
        });

        let r = &self.replication;
        out.table("[replication]", |t| {
            t.string("mode", r.mode.map(ReplicationMode::as_str));
            t.millis("heartbeat_ms", r.heartbeat);
            t.millis("peer_timeout_ms", r.peer_timeout);
            t.millis("lease_ms", r.lease);
            t.raw(&r.extra);
        });
        out.table("[replication.batch]", |t| {
            t.value("max_updates", r.max_updates);
            t.millis("max_delay_ms", r.max_delay);
        });

        let s = &self.session;
        out.table("[session]", |t| {
            t.secs("idle_timeout_s", s.idle_timeout);
            t.value("max_session_bytes", s.max_session_bytes);
            t.raw(&s.extra);
        });

        let sc = &self.sidecar;
        out.table("[sidecar]", |t| {
            t.value("session_header_bytes", sc.session_header_bytes);
            t.value("replay_body_bytes", sc.replay_body_bytes);
            t.millis("read_timeout_ms", sc.read_timeout);
            t.raw(&sc.extra);
        });

        for e in &self.nodes {
            // An entry is written even when empty: its position is what makes it `nodes[i]`.
            out.header("[[nodes]]");
            out.string("name", Some(&e.name));
            out.string("http", Some(&e.http.to_string()));
            out.string("repl", Some(&e.repl.to_string()));
            out.string("machine", e.machine.as_deref());
            out.string("zone", e.zone.as_deref());
            out.value("id", e.id);
            out.value("weight", e.weight);
            out.value("drain", e.drain);
            out.string("secondary", e.secondary.as_deref());
            out.string("upstream", e.upstream.as_deref());
            out.raw(&e.extra);
        }
        out.0
    }
}

/// TOML text being written.
#[derive(Default)]
struct Toml(String);

impl Toml {
    /// `header` and what `body` writes, or nothing when `body` writes nothing.
    fn table(&mut self, header: &str, body: impl FnOnce(&mut Toml)) {
        let mut t = Toml::default();
        body(&mut t);
        if !t.0.is_empty() {
            self.header(header);
            self.0.push_str(&t.0);
        }
    }

    fn header(&mut self, header: &str) {
        if !self.0.is_empty() {
            self.0.push('\n');
        }
        self.0.push_str(header);
        self.0.push('\n');
    }

    /// A quoted string, escaped as TOML wants.
    fn string(&mut self, key: &str, value: Option<&str>) {
        if let Some(v) = value {
            let _ = writeln!(self.0, "{key} = {}", toml::Value::String(v.to_string()));
        }
    }

    /// A number or a boolean, whose `Display` is already TOML.
    fn value(&mut self, key: &str, value: Option<impl Display>) {
        if let Some(v) = value {
            let _ = writeln!(self.0, "{key} = {v}");
        }
    }

    fn millis(&mut self, key: &str, value: Option<Duration>) {
        self.value(key, value.map(|d| d.as_millis()));
    }

    fn secs(&mut self, key: &str, value: Option<Duration>) {
        self.value(key, value.map(|d| d.as_secs()));
    }

    fn raw(&mut self, text: &str) {
        if text.trim().is_empty() {
            return;
        }
        self.0.push_str(text);
        if !text.ends_with('\n') {
            self.0.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClusterConfig, Topology};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn two_nodes() -> ClusterFile {
        let mut f = ClusterFile::new("builder-test-secret-0123", addr(8080), addr(8081));
        f.nodes.push(NodeEntry::new("n1", addr(9001), addr(9101)));
        f.nodes.push(NodeEntry::new("n2", addr(9002), addr(9102)));
        f
    }

    #[test]
    fn the_required_keys_alone_load_with_the_file_defaults() {
        let text = two_nodes().render();
        let c = ClusterConfig::from_toml("built.toml", &text).unwrap();
        assert_eq!(c.secret.expose(), "builder-test-secret-0123");
        assert_eq!(c.lb.listen, addr(8080));
        assert_eq!(c.replication.mode, ReplicationMode::Sync);
        assert_eq!(c.nodes.len(), 2);
        assert!(
            !text.contains("[node]"),
            "an empty section is left out:\n{text}"
        );
    }

    #[test]
    fn every_typed_setting_reads_back_as_set() {
        let mut f = two_nodes();
        f.cookie.name = Some("SID".into());
        f.cookie.key_id = Some(3);
        f.lb.algorithm = Some(Algorithm::RoundRobin);
        f.lb.failover = Some(Failover::Secondary);
        f.lb.threads = Some(2);
        f.lb.grace_period = Some(Duration::from_secs(7));
        f.lb.health = HealthSection {
            interval: Some(Duration::from_millis(200)),
            timeout: Some(Duration::from_millis(300)),
            fall: Some(3),
            rise: Some(4),
        };
        f.node.expose_node = Some(true);
        f.node.log_format = Some(LogFormat::Json);
        f.node.grace_period = Some(Duration::from_secs(30));
        f.replication = ReplicationSection {
            mode: Some(ReplicationMode::Async),
            heartbeat: Some(Duration::from_millis(200)),
            peer_timeout: Some(Duration::from_millis(1000)),
            lease: Some(Duration::from_millis(300)),
            max_updates: Some(16),
            max_delay: Some(Duration::from_millis(40)),
            extra: String::new(),
        };
        f.session.idle_timeout = Some(Duration::from_secs(600));
        f.session.max_session_bytes = Some(4096);
        let n = &mut f.nodes[1];
        n.machine = Some("rack \"7\"".into());
        n.zone = Some("z2".into());
        n.id = Some(1 << 50);
        n.weight = Some(5);
        n.drain = Some(true);
        n.secondary = Some("n1".into());

        let c = ClusterConfig::from_toml("built.toml", &f.render()).unwrap();
        assert_eq!((c.cookie.name.as_str(), c.cookie.current.id), ("SID", 3));
        assert_eq!(c.lb.algorithm, Algorithm::RoundRobin);
        assert_eq!(c.lb.failover, Failover::Secondary);
        assert_eq!(c.lb.threads, 2);
        assert_eq!(c.lb.grace_period, Duration::from_secs(7));
        assert_eq!(c.lb.health.interval, Duration::from_millis(200));
        assert_eq!(c.lb.health.timeout, Duration::from_millis(300));
        assert_eq!((c.lb.health.fall, c.lb.health.rise), (3, 4));
        assert!(c.node.expose_node);
        assert_eq!(c.node.log_format, LogFormat::Json);
        assert_eq!(c.node.grace_period, Duration::from_secs(30));
        assert_eq!(c.replication.mode, ReplicationMode::Async);
        assert_eq!(c.replication.topology, Topology::Pair);
        assert_eq!(c.replication.heartbeat, Duration::from_millis(200));
        assert_eq!(c.replication.peer_timeout, Duration::from_millis(1000));
        assert_eq!(c.replication.lease, Duration::from_millis(300));
        assert_eq!(c.replication.max_updates, 16);
        assert_eq!(c.replication.max_delay, Duration::from_millis(40));
        assert_eq!(c.session.idle_timeout, Duration::from_secs(600));
        assert_eq!(c.session.max_session_bytes, 4096);
        let n2 = c.node("n2").unwrap();
        assert_eq!(n2.machine, "rack \"7\"");
        assert_eq!(n2.zone, "z2");
        assert_eq!(n2.id.get(), 1 << 50);
        assert_eq!((n2.weight, n2.drain), (5, true));
        assert_eq!(n2.secondary.as_deref(), Some("n1"));
        assert_eq!(c.node("n1").unwrap().weight, 1);
    }

    #[test]
    fn extra_toml_lands_in_its_own_section() {
        let mut f = two_nodes();
        f.lb.extra = "\n[lb.limits]\nread_timeout_ms = 120000\n".into();
        f.lb.health.fall = Some(1);
        f.replication.extra = "lease_ms = 250".into();
        f.replication.max_updates = Some(8);
        f.session.extra = "max_session_bytes = 2048".into();
        f.cookie.extra = "host_prefix = true".into();
        f.node.extra = "max_body_bytes = 1000".into();
        f.nodes[0].extra = "weight = 9".into();
        let c = ClusterConfig::from_toml("built.toml", &f.render()).unwrap();
        assert_eq!(c.lb.limits.read_timeout, Duration::from_secs(120));
        assert_eq!(c.lb.health.fall, 1);
        assert_eq!(c.replication.lease, Duration::from_millis(250));
        assert_eq!(c.replication.max_updates, 8);
        assert_eq!(c.session.max_session_bytes, 2048);
        assert_eq!(c.cookie.name, "__Host-SRVSESSION");
        assert_eq!(c.node.max_body_bytes, 1000);
        assert_eq!(c.nodes[0].weight, 9);
    }

    #[test]
    fn a_secret_with_quotes_and_backslashes_reads_back_unchanged_and_debug_hides_it() {
        let secret = "a \"quoted\" \\ secret!";
        let f = ClusterFile::new(secret, addr(1), addr(2));
        let c = ClusterConfig::from_toml("built.toml", &f.render()).unwrap();
        assert_eq!(c.secret.expose(), secret);
        assert!(!format!("{f:?}").contains("quoted"));
    }
}
