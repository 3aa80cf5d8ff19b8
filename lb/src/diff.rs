//! What a reload from one validated cluster file to another would change, and which of those changes only a
//! restart applies (`lb check --diff OLD NEW`). Pure: two [`ClusterConfig`]s in, a list of [`Change`]s out.
//!
//! The classification follows what the processes really re-read on a reload:
//! - the lb (`membership::Topology::build`) takes the whole file but `[lb] listen`, `admin`, `threads` and
//!   `grace_period_s`: nodes, ids, addresses, weights, drain, roles, the cookie codec and header, the algorithm,
//!   failover, health and limits, the admin token;
//! - a node (`node::server::Running::reload`) takes the node list (peers added, removed, moved, re-weighted,
//!   their roles and groups), its own `drain`, the pair table, the cookie codec (`[cookie]` keys and name) and
//!   the peers' keys (`[cluster] secret` and `previous_secret`), and nothing else. It refuses the whole reload
//!   when its own entry is gone or its id or addresses changed, and when the topology, the copies, the Redis
//!   bank or a node's role changed (`Shape`).
//!
//! A change "needs a restart" of the processes that do not apply it on reload. Settings no rule here names are
//! still caught: a section whose `Debug` output differs while no named change explains it is reported as
//! "other settings changed", needing a restart of every process. Secrets are compared, never printed.

use std::collections::BTreeMap;
use std::fmt::{self, Debug};
use std::net::SocketAddr;
use std::time::Duration;

use node::config::{ClusterConfig, CookieKey, L4Config, NodeConfig, NodeRole, Secret, TlsConfig};

/// Which processes must restart for a change to take effect.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Restart {
    /// Every node.
    Nodes,
    /// The lb.
    Lb,
    /// Every node and the lb.
    All,
    /// One node, by name (the others and the lb take the change on reload).
    Node(String),
}

impl fmt::Display for Restart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Restart::Nodes => f.write_str("every node"),
            Restart::Lb => f.write_str("the lb"),
            Restart::All => f.write_str("every node and the lb"),
            Restart::Node(name) => write!(f, "node {name}"),
        }
    }
}

/// How a change takes effect.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Applied {
    /// A reload applies it: SIGHUP (or `POST /reload`) to the lb, SIGHUP to every node.
    Reload,
    /// A reload leaves these processes on the old value: only restarting them applies it.
    Restart(Restart),
}

/// What changed between the two files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// A `[[nodes]]` entry new in the file (by name).
    NodeAdded {
        /// Its name.
        name: String,
        /// Its HTTP address.
        http: SocketAddr,
    },
    /// A `[[nodes]]` entry no longer in the file (by name).
    NodeRemoved {
        /// Its name.
        name: String,
    },
    /// A node kept by name whose id (explicit or derived), `http` or `repl` changed.
    NodeMoved {
        /// Its name.
        name: String,
        /// `id`, `http` or `repl`.
        key: &'static str,
        /// The old value.
        from: String,
        /// The new value.
        to: String,
    },
    /// `drain` turned on (`true`) or off.
    Drain {
        /// The node's name.
        name: String,
        /// The new value.
        on: bool,
    },
    /// `weight` changed.
    Weight {
        /// The node's name.
        name: String,
        /// The old weight.
        from: u32,
        /// The new weight.
        to: u32,
    },
    /// `role` changed.
    Role {
        /// The node's name.
        name: String,
        /// The old role.
        from: NodeRole,
        /// The new role.
        to: NodeRole,
    },
    /// Another key of a kept node's entry: `group`, `machine`, `zone`, `secondary`, `upstream`.
    NodeSetting {
        /// The node's name.
        name: String,
        /// The key in its entry.
        key: &'static str,
        /// The old value.
        from: String,
        /// The new value.
        to: String,
    },
    /// `[cluster] secret` changed (it is also the current cookie key's secret and the peers' key).
    ClusterSecret {
        /// The nodes whose derived id changes with it (those without an explicit `id`).
        derived_ids: Vec<String>,
        /// Whether the new file keeps the old secret as `previous_secret`, so that nodes that have reloaded and
        /// nodes that have not yet keep replicating.
        old_kept: bool,
    },
    /// `[cookie] key_id`: the id of the key new cookies are signed with.
    CookieKeyId {
        /// The old id.
        from: u8,
        /// The new id.
        to: u8,
    },
    /// A `[[cookie.previous_keys]]` id new in the file.
    PreviousKeyAdded(u8),
    /// A `[[cookie.previous_keys]]` id no longer in the file.
    PreviousKeyRemoved(u8),
    /// A `[[cookie.previous_keys]]` id kept with another secret.
    PreviousKeyChanged(u8),
    /// A setting of a section, by its dotted key in the file.
    Setting {
        /// Dotted key, e.g. `lb.algorithm`.
        key: &'static str,
        /// The old value, as the file would spell it (`none` when absent).
        from: String,
        /// The new value.
        to: String,
    },
    /// A secret setting (`lb.admin_token`, `cluster.previous_secret`) set, removed or changed; its value is never
    /// shown.
    SecretSetting {
        /// Dotted key.
        key: &'static str,
        /// `set`, `removed` or `changed`.
        how: &'static str,
    },
    /// A section differs in a way no rule above names (a setting newer than this diff).
    Other {
        /// The section, e.g. `[lb]` or `[[nodes]] n2`.
        section: String,
    },
}

impl fmt::Display for What {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            What::NodeAdded { name, http } => {
                write!(f, "node {name} added (http {http}): start it")
            }
            What::NodeRemoved { name } => {
                write!(f, "node {name} removed: stop it (it refuses the reload)")
            }
            What::NodeMoved {
                name,
                key,
                from,
                to,
            } => write!(f, "node {name} moved: {key} {from} -> {to}"),
            What::Drain { name, on: true } => write!(f, "node {name} drained"),
            What::Drain { name, on: false } => write!(f, "node {name} no longer drained"),
            What::Weight { name, from, to } => write!(f, "node {name} weight {from} -> {to}"),
            What::Role { name, from, to } => write!(f, "node {name} role {from} -> {to}"),
            What::NodeSetting {
                name,
                key,
                from,
                to,
            } => write!(f, "node {name} {key} {from} -> {to}"),
            What::ClusterSecret {
                derived_ids,
                old_kept,
            } => {
                f.write_str(
                    "[cluster] secret changed (the current cookie key's secret and the peers' key)",
                )?;
                if !old_kept {
                    f.write_str(
                        "; without the old one as `previous_secret`, nodes that reloaded cannot replicate with \
                         those that did not yet",
                    )?;
                }
                if derived_ids.is_empty() {
                    f.write_str("; every node id is explicit, none changes")
                } else {
                    write!(
                        f,
                        "; node ids derived from it change too: {} (write `id` in an entry to keep it)",
                        derived_ids.join(", ")
                    )
                }
            }
            What::CookieKeyId { from, to } => write!(f, "[cookie] key_id {from} -> {to}"),
            What::PreviousKeyAdded(id) => write!(f, "[[cookie.previous_keys]] id {id} added"),
            What::PreviousKeyRemoved(id) => write!(f, "[[cookie.previous_keys]] id {id} removed"),
            What::PreviousKeyChanged(id) => {
                write!(f, "[[cookie.previous_keys]] id {id}: secret changed")
            }
            What::Setting { key, from, to } => write!(f, "{key} {from} -> {to}"),
            What::SecretSetting { key, how } => write!(f, "{key} {how}"),
            What::Other { section } => write!(f, "{section}: other settings changed"),
        }
    }
}

/// One difference and how it takes effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// What changed.
    pub what: What,
    /// Whether a reload applies it, or a restart of which processes.
    pub applied: Applied,
}

impl Change {
    /// Whether every node refuses a whole reload while this differs (the topology, copies, bank or a kept node's
    /// role: `Shape` in `node::server`), so no other change reaches the nodes before they restart either.
    pub fn nodes_refuse_reload(&self) -> bool {
        match &self.what {
            What::Role { .. } => true,
            What::Setting { key, .. } => {
                matches!(*key, "replication.topology" | "replication.copies")
                    || key.starts_with("replication.bank")
            }
            _ => false,
        }
    }
}

/// Every difference a reload from `old` to `new` would meet, nodes first (in file order), then the sections in
/// file order.
pub fn diff(old: &ClusterConfig, new: &ClusterConfig) -> Vec<Change> {
    let mut d = Diff::default();
    nodes(&mut d, old, new);
    cluster_and_cookie(&mut d, old, new);
    lb(&mut d, old, new);
    node_defaults(&mut d, old, new);
    replication(&mut d, old, new);
    session_and_sidecar(&mut d, old, new);
    d.0
}

/// The lines `lb check --diff` prints: `no change`, or the changes a reload applies, then those needing a
/// restart grouped by the processes to restart, then notes.
pub fn render(changes: &[Change]) -> String {
    if changes.is_empty() {
        return "no change\n".to_string();
    }
    // When every node restarts anyway, a change one node needs restarted for goes with theirs.
    let every_node = changes
        .iter()
        .any(|c| matches!(c.applied, Applied::Restart(Restart::Nodes | Restart::All)));
    let mut groups: BTreeMap<Applied, Vec<&What>> = BTreeMap::new();
    for c in changes {
        let applied = match &c.applied {
            Applied::Restart(Restart::Node(_)) if every_node => Applied::Restart(Restart::Nodes),
            a => a.clone(),
        };
        groups.entry(applied).or_default().push(&c.what);
    }
    let mut out = String::new();
    for (applied, whats) in &groups {
        match applied {
            Applied::Reload => out.push_str(
                "applied by reload (SIGHUP or POST /reload to the lb, SIGHUP to every node):\n",
            ),
            Applied::Restart(who) => out.push_str(&format!("needs a restart ({who}):\n")),
        }
        for w in whats {
            out.push_str(&format!("  {w}\n"));
        }
    }
    let refusing: Vec<String> = changes
        .iter()
        .filter(|c| c.nodes_refuse_reload())
        .map(|c| c.what.to_string())
        .collect();
    if !refusing.is_empty() {
        out.push_str(&format!(
            "note: every node refuses a reload while this differs ({}): the changes above reach the nodes only \
             when they restart; the lb takes its part on reload\n",
            refusing.join("; ")
        ));
    }
    out
}

#[derive(Default)]
struct Diff(Vec<Change>);

impl Diff {
    fn push(&mut self, what: What, applied: Applied) {
        self.0.push(Change { what, applied });
    }

    fn restart(&mut self, what: What, who: Restart) {
        self.push(what, Applied::Restart(who));
    }

    /// A setting `key` from `a` to `b`, when they differ.
    fn setting<T: PartialEq + fmt::Display>(
        &mut self,
        key: &'static str,
        a: T,
        b: T,
        applied: Applied,
    ) {
        if a != b {
            self.push(
                What::Setting {
                    key,
                    from: a.to_string(),
                    to: b.to_string(),
                },
                applied,
            );
        }
    }

    /// `Other { section }` needing a restart of `who`, when the two `Debug` outputs differ but no change pushed
    /// since `since` (an index into the list) explains it.
    fn unexplained<T: Debug>(&mut self, section: &str, a: T, b: T, since: usize, who: Restart) {
        if self.0.len() == since && format!("{a:?}") != format!("{b:?}") {
            self.restart(
                What::Other {
                    section: section.to_string(),
                },
                who,
            );
        }
    }
}

/// Milliseconds, as `*_ms` keys spell a duration.
fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Seconds, as `*_s` keys spell a duration.
fn secs(d: Duration) -> u64 {
    d.as_secs()
}

/// An optional value as the file would show it; `none` when absent.
fn opt<T: fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "none".to_string(), |v| v.to_string())
}

fn same_secret(a: &Secret, b: &Secret) -> bool {
    a.expose() == b.expose()
}

fn nodes(d: &mut Diff, old: &ClusterConfig, new: &ClusterConfig) {
    for n in &new.nodes {
        let Some(o) = old.node(&n.name) else {
            d.push(
                What::NodeAdded {
                    name: n.name.clone(),
                    http: n.http,
                },
                Applied::Reload,
            );
            continue;
        };
        kept_node(d, o, n);
    }
    for o in &old.nodes {
        if new.node(&o.name).is_none() {
            d.push(
                What::NodeRemoved {
                    name: o.name.clone(),
                },
                Applied::Reload,
            );
        }
    }
}

/// A node in both files. The lb takes every key of an entry on reload, the other nodes too (their peer list); the
/// node itself keeps the entry it started with but `drain`, and refuses a reload that moves it.
fn kept_node(d: &mut Diff, o: &NodeConfig, n: &NodeConfig) {
    let since = d.0.len();
    let name = || n.name.clone();
    let itself = || Restart::Node(n.name.clone());
    let moved = [
        ("id", o.id.to_string(), n.id.to_string()),
        ("http", o.http.to_string(), n.http.to_string()),
        ("repl", o.repl.to_string(), n.repl.to_string()),
    ];
    for (key, from, to) in moved {
        if from != to {
            d.restart(
                What::NodeMoved {
                    name: name(),
                    key,
                    from,
                    to,
                },
                itself(),
            );
        }
    }
    if o.drain != n.drain {
        d.push(
            What::Drain {
                name: name(),
                on: n.drain,
            },
            Applied::Reload,
        );
    }
    if o.weight != n.weight {
        d.push(
            What::Weight {
                name: name(),
                from: o.weight,
                to: n.weight,
            },
            Applied::Reload,
        );
    }
    if o.role != n.role {
        d.restart(
            What::Role {
                name: name(),
                from: o.role,
                to: n.role,
            },
            Restart::Nodes,
        );
    }
    let entry = [
        ("group", o.group.clone(), n.group.clone()),
        ("machine", o.machine.clone(), n.machine.clone()),
        ("zone", o.zone.clone(), n.zone.clone()),
        (
            "secondary",
            opt(o.secondary.as_ref()),
            opt(n.secondary.as_ref()),
        ),
        ("upstream", opt(o.upstream), opt(n.upstream)),
    ];
    for (key, from, to) in entry {
        if from != to {
            d.restart(
                What::NodeSetting {
                    name: name(),
                    key,
                    from,
                    to,
                },
                itself(),
            );
        }
    }
    d.unexplained(&format!("[[nodes]] {}", n.name), o, n, since, itself());
}

/// How a change of the cookie's keys or name takes effect: the lb and every node build a new codec on reload.
fn cookie_codec() -> Applied {
    Applied::Reload
}

/// `set`, `removed` or `changed` when two optional secrets differ.
fn secret_change(a: Option<&Secret>, b: Option<&Secret>) -> Option<&'static str> {
    match (a, b) {
        (None, Some(_)) => Some("set"),
        (Some(_), None) => Some("removed"),
        (Some(s), Some(t)) if !same_secret(s, t) => Some("changed"),
        _ => None,
    }
}

fn cluster_and_cookie(d: &mut Diff, old: &ClusterConfig, new: &ClusterConfig) {
    let since = d.0.len();
    if !same_secret(&old.secret, &new.secret) {
        let derived_ids = new
            .nodes
            .iter()
            .filter(|n| old.node(&n.name).is_some_and(|o| o.id != n.id))
            .map(|n| n.name.clone())
            .collect();
        let old_kept = new
            .previous_secret
            .as_ref()
            .is_some_and(|p| same_secret(p, &old.secret));
        // Nodes swap their peer keys and cookie codec on reload, the lb its codec; a node whose id changes with
        // the secret is moved, listed on its own.
        d.push(
            What::ClusterSecret {
                derived_ids,
                old_kept,
            },
            Applied::Reload,
        );
    }
    if let Some(how) = secret_change(old.previous_secret.as_ref(), new.previous_secret.as_ref()) {
        d.push(
            What::SecretSetting {
                key: "cluster.previous_secret",
                how,
            },
            Applied::Reload,
        );
    }
    d.unexplained(
        "[cluster]",
        residual(old),
        residual(new),
        since,
        Restart::All,
    );
    let since = d.0.len();
    let (a, b) = (&old.cookie, &new.cookie);
    if a.current.id != b.current.id {
        d.push(
            What::CookieKeyId {
                from: a.current.id,
                to: b.current.id,
            },
            cookie_codec(),
        );
    }
    let find = |keys: &[CookieKey], id: u8| keys.iter().find(|k| k.id == id).cloned();
    for k in &b.previous {
        match find(&a.previous, k.id) {
            None => d.push(What::PreviousKeyAdded(k.id), cookie_codec()),
            Some(o) if !same_secret(&o.secret, &k.secret) => {
                d.push(What::PreviousKeyChanged(k.id), cookie_codec())
            }
            Some(_) => {}
        }
    }
    for k in &a.previous {
        if find(&b.previous, k.id).is_none() {
            d.push(What::PreviousKeyRemoved(k.id), cookie_codec());
        }
    }
    d.setting("cookie.name", &a.name, &b.name, cookie_codec());
    // The lb reads the header per generation; a node once, at start.
    d.setting(
        "cookie.header",
        opt(a.header.as_ref()),
        opt(b.header.as_ref()),
        Applied::Restart(Restart::Nodes),
    );
    d.unexplained("[cookie]", a, b, since, Restart::All);
}

fn lb(d: &mut Diff, old: &ClusterConfig, new: &ClusterConfig) {
    let since = d.0.len();
    let (a, b) = (&old.lb, &new.lb);
    // With `[node] trusted`, nodes let the lb's addresses in, as read at start.
    let addresses = if old.node.trusted.is_some() || new.node.trusted.is_some() {
        Restart::All
    } else {
        Restart::Lb
    };
    let lb_restart = || Applied::Restart(Restart::Lb);
    d.setting(
        "lb.listen",
        a.listen,
        b.listen,
        Applied::Restart(addresses.clone()),
    );
    d.setting("lb.admin", a.admin, b.admin, Applied::Restart(addresses));
    d.setting("lb.threads", a.threads, b.threads, lb_restart());
    d.setting(
        "lb.grace_period_s",
        secs(a.grace_period),
        secs(b.grace_period),
        lb_restart(),
    );
    d.setting("lb.algorithm", a.algorithm, b.algorithm, Applied::Reload);
    d.setting("lb.failover", a.failover, b.failover, Applied::Reload);
    let (h, i) = (&a.health, &b.health);
    d.setting(
        "lb.health.interval_ms",
        ms(h.interval),
        ms(i.interval),
        Applied::Reload,
    );
    d.setting(
        "lb.health.timeout_ms",
        ms(h.timeout),
        ms(i.timeout),
        Applied::Reload,
    );
    d.setting("lb.health.fall", h.fall, i.fall, Applied::Reload);
    d.setting("lb.health.rise", h.rise, i.rise, Applied::Reload);
    let (l, m) = (&a.limits, &b.limits);
    d.setting(
        "lb.limits.max_headers",
        l.max_headers,
        m.max_headers,
        Applied::Reload,
    );
    d.setting(
        "lb.limits.max_header_bytes",
        l.max_header_bytes,
        m.max_header_bytes,
        Applied::Reload,
    );
    d.setting(
        "lb.limits.header_timeout_ms",
        ms(l.header_timeout),
        ms(m.header_timeout),
        Applied::Reload,
    );
    d.setting(
        "lb.limits.max_body_bytes",
        l.max_body_bytes,
        m.max_body_bytes,
        Applied::Reload,
    );
    d.setting(
        "lb.limits.connect_timeout_ms",
        ms(l.connect_timeout),
        ms(m.connect_timeout),
        Applied::Reload,
    );
    d.setting(
        "lb.limits.read_timeout_ms",
        ms(l.read_timeout),
        ms(m.read_timeout),
        Applied::Reload,
    );
    d.setting(
        "lb.limits.tunnel_idle_timeout_ms",
        ms(l.tunnel_idle_timeout),
        ms(m.tunnel_idle_timeout),
        Applied::Reload,
    );
    if let Some(how) = secret_change(a.admin_token.as_ref(), b.admin_token.as_ref()) {
        d.push(
            What::SecretSetting {
                key: "lb.admin_token",
                how,
            },
            Applied::Reload,
        );
    }
    l4(d, a.l4.as_ref(), b.l4.as_ref());
    tls(d, a.tls.as_ref(), b.tls.as_ref());
    d.unexplained("[lb]", a, b, since, Restart::All);
}

/// `[lb.l4]`: its listener and its settings are fixed when the lb starts.
fn l4(d: &mut Diff, a: Option<&L4Config>, b: Option<&L4Config>) {
    let lb_restart = || Applied::Restart(Restart::Lb);
    let field = |c: Option<&L4Config>, f: fn(&L4Config) -> String| opt(c.map(f));
    d.setting(
        "lb.l4.listen",
        field(a, |c| c.listen.to_string()),
        field(b, |c| c.listen.to_string()),
        lb_restart(),
    );
    if a.is_none() || b.is_none() {
        return;
    }
    d.setting(
        "lb.l4.connect_timeout_ms",
        field(a, |c| ms(c.connect_timeout).to_string()),
        field(b, |c| ms(c.connect_timeout).to_string()),
        lb_restart(),
    );
    d.setting(
        "lb.l4.idle_timeout_ms",
        field(a, |c| ms(c.idle_timeout).to_string()),
        field(b, |c| ms(c.idle_timeout).to_string()),
        lb_restart(),
    );
    d.setting(
        "lb.l4.max_connections",
        field(a, |c| c.max_connections.to_string()),
        field(b, |c| c.max_connections.to_string()),
        lb_restart(),
    );
    d.setting(
        "lb.l4.send_proxy",
        field(a, |c| c.send_proxy.to_string()),
        field(b, |c| c.send_proxy.to_string()),
        lb_restart(),
    );
}

/// `[lb.tls]`: turning TLS on or off, or HTTP/2 with it, needs a restart; new certificate and key files (or
/// new contents in the same files) are read by a reload.
fn tls(d: &mut Diff, a: Option<&TlsConfig>, b: Option<&TlsConfig>) {
    let field = |c: Option<&TlsConfig>, f: fn(&TlsConfig) -> String| opt(c.map(f));
    let on = |c: Option<&TlsConfig>| c.is_some();
    d.setting("lb.tls", on(a), on(b), Applied::Restart(Restart::Lb));
    if a.is_none() || b.is_none() {
        return;
    }
    d.setting(
        "lb.tls.cert",
        field(a, |c| c.cert.display().to_string()),
        field(b, |c| c.cert.display().to_string()),
        Applied::Reload,
    );
    d.setting(
        "lb.tls.key",
        field(a, |c| c.key.display().to_string()),
        field(b, |c| c.key.display().to_string()),
        Applied::Reload,
    );
    d.setting(
        "lb.tls.h2",
        field(a, |c| c.h2.to_string()),
        field(b, |c| c.h2.to_string()),
        Applied::Restart(Restart::Lb),
    );
}

fn node_defaults(d: &mut Diff, old: &ClusterConfig, new: &ClusterConfig) {
    let since = d.0.len();
    let (a, b) = (&old.node, &new.node);
    let nodes = || Applied::Restart(Restart::Nodes);
    d.setting("node.expose_node", a.expose_node, b.expose_node, nodes());
    d.setting(
        "node.max_body_bytes",
        a.max_body_bytes,
        b.max_body_bytes,
        nodes(),
    );
    // The lb takes its log format from `[node]` too, at start.
    d.setting(
        "node.log_format",
        a.log_format,
        b.log_format,
        Applied::Restart(Restart::All),
    );
    d.setting(
        "node.grace_period_s",
        secs(a.grace_period),
        secs(b.grace_period),
        nodes(),
    );
    d.setting("node.drain_rate", a.drain_rate, b.drain_rate, nodes());
    let list = |t: &Option<Vec<node::config::IpNet>>| {
        t.as_ref().map_or_else(
            || "none".to_string(),
            |v| {
                let v: Vec<String> = v.iter().map(|n| n.to_string()).collect();
                format!("[{}]", v.join(", "))
            },
        )
    };
    d.setting("node.trusted", list(&a.trusted), list(&b.trusted), nodes());
    d.setting("node.accept_proxy", a.accept_proxy, b.accept_proxy, nodes());
    d.unexplained("[node]", a, b, since, Restart::All);
}

fn replication(d: &mut Diff, old: &ClusterConfig, new: &ClusterConfig) {
    let since = d.0.len();
    let (a, b) = (&old.replication, &new.replication);
    let nodes = || Applied::Restart(Restart::Nodes);
    d.setting("replication.mode", a.mode, b.mode, nodes());
    d.setting("replication.topology", a.topology, b.topology, nodes());
    d.setting("replication.copies", a.copies, b.copies, nodes());
    let min_copies = |strict: bool| if strict { 2 } else { 1 };
    d.setting(
        "replication.min_copies",
        min_copies(a.strict),
        min_copies(b.strict),
        nodes(),
    );
    d.setting(
        "replication.heartbeat_ms",
        ms(a.heartbeat),
        ms(b.heartbeat),
        nodes(),
    );
    d.setting(
        "replication.peer_timeout_ms",
        ms(a.peer_timeout),
        ms(b.peer_timeout),
        nodes(),
    );
    d.setting("replication.lease_ms", ms(a.lease), ms(b.lease), nodes());
    d.setting(
        "replication.batch.max_updates",
        a.max_updates,
        b.max_updates,
        nodes(),
    );
    d.setting(
        "replication.batch.max_delay_ms",
        ms(a.max_delay),
        ms(b.max_delay),
        nodes(),
    );
    match (&a.bank, &b.bank) {
        (Some(x), Some(y)) => {
            d.setting(
                "replication.bank.redis",
                x.urls.join(", "),
                y.urls.join(", "),
                nodes(),
            );
            d.setting("replication.bank.kind", x.kind, y.kind, nodes());
            d.setting(
                "replication.bank.master",
                opt(x.master.as_ref()),
                opt(y.master.as_ref()),
                nodes(),
            );
            d.setting(
                "replication.bank.timeout_ms",
                ms(x.timeout),
                ms(y.timeout),
                nodes(),
            );
            d.setting(
                "replication.bank.wait_replicas",
                x.wait_replicas,
                y.wait_replicas,
                nodes(),
            );
        }
        (x, y) => {
            let urls = |b: Option<&node::config::BankConfig>| {
                b.map_or_else(|| "none".to_string(), |b| b.urls.join(", "))
            };
            d.setting(
                "replication.bank",
                urls(x.as_ref()),
                urls(y.as_ref()),
                nodes(),
            );
        }
    }
    // The bank's id is derived from the cluster secret: a secret change explains it.
    let bank_id_follows_secret = !same_secret(&old.secret, &new.secret);
    let without_id = |c: &node::config::ReplicationConfig| {
        let mut c = c.clone();
        if bank_id_follows_secret {
            if let Some(b) = c.bank.as_mut() {
                b.id = node::config::BankConfig::derive_id("");
            }
        }
        c
    };
    d.unexplained(
        "[replication]",
        without_id(a),
        without_id(b),
        since,
        Restart::All,
    );
}

fn session_and_sidecar(d: &mut Diff, old: &ClusterConfig, new: &ClusterConfig) {
    let nodes = || Applied::Restart(Restart::Nodes);
    let since = d.0.len();
    let (a, b) = (&old.session, &new.session);
    d.setting(
        "session.idle_timeout_s",
        secs(a.idle_timeout),
        secs(b.idle_timeout),
        nodes(),
    );
    d.setting(
        "session.max_session_bytes",
        a.max_session_bytes,
        b.max_session_bytes,
        nodes(),
    );
    d.unexplained("[session]", a, b, since, Restart::All);
    let since = d.0.len();
    let (a, b) = (&old.sidecar, &new.sidecar);
    d.setting(
        "sidecar.session_header_bytes",
        a.session_header_bytes,
        b.session_header_bytes,
        nodes(),
    );
    d.setting(
        "sidecar.replay_body_bytes",
        a.replay_body_bytes,
        b.replay_body_bytes,
        nodes(),
    );
    d.setting(
        "sidecar.buffer_body_bytes",
        a.buffer_body_bytes,
        b.buffer_body_bytes,
        nodes(),
    );
    d.setting(
        "sidecar.connect_timeout_ms",
        ms(a.connect_timeout),
        ms(b.connect_timeout),
        nodes(),
    );
    d.setting(
        "sidecar.read_timeout_ms",
        ms(a.read_timeout),
        ms(b.read_timeout),
        nodes(),
    );
    d.unexplained("[sidecar]", a, b, since, Restart::All);
}

/// The `Debug` output of `cfg` without the sections compared one by one, nor the pair table they derive: what
/// is left are settings outside every section above (and redacted secrets, compared on their own).
fn residual(cfg: &ClusterConfig) -> String {
    let mut text = format!("{cfg:?}");
    let sections = [
        format!("{:?}", cfg.cookie),
        format!("{:?}", cfg.lb),
        format!("{:?}", cfg.node),
        format!("{:?}", cfg.replication),
        format!("{:?}", cfg.session),
        format!("{:?}", cfg.sidecar),
        format!("{:?}", cfg.nodes),
        format!("{:?}", cfg.pairs),
    ];
    for s in sections {
        text = text.replacen(&s, "", 1);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
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

[[nodes]]
name = "n3"
http = "127.0.0.1:9003"
repl = "127.0.0.1:9103"
"#;

    fn cfg(text: &str) -> ClusterConfig {
        ClusterConfig::from_toml("t.toml", text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The changes from `old` to `new`, each as its printed line and how it is applied.
    fn between(old: &str, new: &str) -> Vec<(String, Applied)> {
        diff(&cfg(old), &cfg(new))
            .into_iter()
            .map(|c| (c.what.to_string(), c.applied))
            .collect()
    }

    /// `BASE` with `extra` appended (a section of its own).
    fn with(extra: &str) -> String {
        format!("{BASE}\n{extra}\n")
    }

    fn restart(who: Restart) -> Applied {
        Applied::Restart(who)
    }

    fn node(name: &str) -> Applied {
        restart(Restart::Node(name.to_string()))
    }

    #[test]
    fn the_same_file_changes_nothing() {
        assert_eq!(between(BASE, BASE), []);
        assert_eq!(render(&diff(&cfg(BASE), &cfg(BASE))), "no change\n");
    }

    #[test]
    fn a_node_added_or_removed_is_applied_by_a_reload() {
        let added = format!(
            "{BASE}\n[[nodes]]\nname = \"n4\"\nhttp = \"127.0.0.1:9004\"\nrepl = \"127.0.0.1:9104\"\n"
        );
        assert_eq!(
            between(BASE, &added),
            [(
                "node n4 added (http 127.0.0.1:9004): start it".to_string(),
                Applied::Reload
            )]
        );
        assert_eq!(
            between(&added, BASE),
            [(
                "node n4 removed: stop it (it refuses the reload)".to_string(),
                Applied::Reload
            )]
        );
    }

    #[test]
    fn a_node_whose_address_or_id_changed_needs_that_node_restarted() {
        let moved = BASE.replace("http = \"127.0.0.1:9002\"", "http = \"127.0.0.1:9012\"");
        assert_eq!(
            between(BASE, &moved),
            [(
                "node n2 moved: http 127.0.0.1:9002 -> 127.0.0.1:9012".to_string(),
                node("n2")
            )]
        );
        let repl = BASE.replace("repl = \"127.0.0.1:9103\"", "repl = \"127.0.0.1:9113\"");
        assert_eq!(between(BASE, &repl)[0].1, node("n3"));
        let id = BASE.replace(
            "name = \"n1\"\n",
            &format!("name = \"n1\"\nid = {}\n", 1u64 << 50),
        );
        let changes = between(BASE, &id);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(
            changes[0].0.starts_with("node n1 moved: id 0x"),
            "{changes:?}"
        );
        assert!(changes[0].0.ends_with(" -> 0x4000000000000"), "{changes:?}");
        assert_eq!(changes[0].1, node("n1"));
    }

    #[test]
    fn drain_on_and_off_and_a_new_weight_are_applied_by_a_reload() {
        let drained = BASE.replace(
            "repl = \"127.0.0.1:9102\"",
            "repl = \"127.0.0.1:9102\"\ndrain = true\nweight = 5",
        );
        assert_eq!(
            between(BASE, &drained),
            [
                ("node n2 drained".to_string(), Applied::Reload),
                ("node n2 weight 1 -> 5".to_string(), Applied::Reload),
            ]
        );
        assert_eq!(
            between(&drained, BASE)[0],
            ("node n2 no longer drained".to_string(), Applied::Reload)
        );
    }

    #[test]
    fn a_role_change_needs_every_node_restarted_for_they_refuse_the_whole_reload() {
        let rss = BASE.replace(
            "repl = \"127.0.0.1:9103\"",
            "repl = \"127.0.0.1:9103\"\nrole = \"rss\"",
        );
        let old = format!("{rss}\n[replication]\ntopology = \"rss\"\n");
        let new = old.replace(
            "repl = \"127.0.0.1:9102\"",
            "repl = \"127.0.0.1:9102\"\nrole = \"standby\"",
        );
        let changes = diff(&cfg(&old), &cfg(&new));
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].what.to_string(), "node n2 role web -> standby");
        assert_eq!(changes[0].applied, restart(Restart::Nodes));
        assert!(changes[0].nodes_refuse_reload());
        let printed = render(&changes);
        assert!(
            printed.contains("note: every node refuses a reload while this differs (node n2 role"),
            "{printed}"
        );
    }

    #[test]
    fn a_group_machine_zone_or_pin_change_needs_only_that_node_restarted() {
        let old = with("[replication]\ntopology = \"broadcast\"");
        let new = old.replace(
            "repl = \"127.0.0.1:9101\"",
            "repl = \"127.0.0.1:9101\"\ngroup = \"eu\"\nzone = \"z9\"\nmachine = \"m9\"\nsecondary = \"n2\"",
        );
        assert_eq!(
            between(&old, &new),
            [
                ("node n1 group default -> eu".to_string(), node("n1")),
                ("node n1 machine n1 -> m9".to_string(), node("n1")),
                ("node n1 zone default -> z9".to_string(), node("n1")),
                ("node n1 secondary none -> n2".to_string(), node("n1")),
            ]
        );
        assert!(!diff(&cfg(&old), &cfg(&new))[0].nodes_refuse_reload());
    }

    #[test]
    fn a_new_cookie_key_id_and_previous_keys_are_reloaded_named_by_id_their_secrets_never_shown() {
        let old = with(
            "[cookie]\nkey_id = 2\n\n[[cookie.previous_keys]]\nid = 1\nsecret = \"old-secret-number-one\"\n\n\
             [[cookie.previous_keys]]\nid = 7\nsecret = \"old-secret-number-seven\"",
        );
        let new = with(
            "[cookie]\nkey_id = 3\n\n[[cookie.previous_keys]]\nid = 2\nsecret = \"old-secret-number-two\"\n\n\
             [[cookie.previous_keys]]\nid = 7\nsecret = \"old-secret-number-seven-bis\"",
        );
        let codec = Applied::Reload;
        let changes = diff(&cfg(&old), &cfg(&new));
        let lines: Vec<(String, Applied)> = changes
            .iter()
            .map(|c| (c.what.to_string(), c.applied.clone()))
            .collect();
        assert_eq!(
            lines,
            [
                ("[cookie] key_id 2 -> 3".to_string(), codec.clone()),
                (
                    "[[cookie.previous_keys]] id 2 added".to_string(),
                    codec.clone()
                ),
                (
                    "[[cookie.previous_keys]] id 7: secret changed".to_string(),
                    codec.clone()
                ),
                ("[[cookie.previous_keys]] id 1 removed".to_string(), codec),
            ]
        );
        let printed = format!("{}{changes:?}", render(&changes));
        assert!(!printed.contains("old-secret"), "{printed}");
    }

    #[test]
    fn a_new_cluster_secret_is_reloaded_but_the_nodes_whose_derived_ids_change_with_it_need_a_restart(
    ) {
        let new = BASE.replace("0123456789abcdef0123", "a-new-secret-0123456789");
        let changes = diff(&cfg(BASE), &cfg(&new));
        let secret = changes
            .iter()
            .find(|c| matches!(c.what, What::ClusterSecret { .. }))
            .expect("the secret change is listed");
        assert_eq!(
            secret.what,
            What::ClusterSecret {
                derived_ids: vec!["n1".into(), "n2".into(), "n3".into()],
                old_kept: false,
            }
        );
        assert_eq!(secret.applied, Applied::Reload);
        let moved: Vec<&Applied> = changes
            .iter()
            .filter(|c| matches!(c.what, What::NodeMoved { key: "id", .. }))
            .map(|c| &c.applied)
            .collect();
        assert_eq!(moved, [&node("n1"), &node("n2"), &node("n3")]);
        let printed = render(&changes);
        assert!(!printed.contains("0123456789abcdef0123"), "{printed}");
        assert!(!printed.contains("a-new-secret"), "{printed}");
        assert!(
            printed.contains("needs a restart (node n1):\n  node n1 moved: id 0x"),
            "{printed}"
        );
        assert!(
            printed.contains("without the old one as `previous_secret`"),
            "{printed}"
        );
    }

    /// `BASE` with every node's id written out, as a rotation needs.
    fn explicit_ids() -> String {
        let mut text = BASE.to_string();
        for (i, n) in ["n1", "n2", "n3"].iter().enumerate() {
            text = text.replace(
                &format!("name = \"{n}\"\n"),
                &format!("name = \"{n}\"\nid = {}\n", (1u64 << 50) + 1000 * i as u64),
            );
        }
        text
    }

    #[test]
    fn explicit_node_ids_stay_when_the_cluster_secret_changes() {
        let old = explicit_ids();
        let new = old.replace("0123456789abcdef0123", "a-new-secret-0123456789");
        assert_eq!(
            between(&old, &new),
            [(
                "[cluster] secret changed (the current cookie key's secret and the peers' key); without the old \
                 one as `previous_secret`, nodes that reloaded cannot replicate with those that did not yet; every \
                 node id is explicit, none changes"
                    .to_string(),
                Applied::Reload
            )]
        );
    }

    #[test]
    fn a_rotation_that_keeps_the_old_secret_as_previous_secret_is_applied_by_a_reload() {
        let old = explicit_ids();
        let new = old.replace(
            "secret = \"0123456789abcdef0123\"",
            "secret = \"a-new-secret-0123456789\"\nprevious_secret = \"0123456789abcdef0123\"",
        );
        let changes = diff(&cfg(&old), &cfg(&new));
        assert_eq!(
            changes,
            [
                Change {
                    what: What::ClusterSecret {
                        derived_ids: Vec::new(),
                        old_kept: true
                    },
                    applied: Applied::Reload
                },
                Change {
                    what: What::SecretSetting {
                        key: "cluster.previous_secret",
                        how: "set"
                    },
                    applied: Applied::Reload
                },
            ]
        );
        let printed = render(&changes);
        assert!(!printed.contains("without the old one"), "{printed}");
        assert!(
            printed.contains("  cluster.previous_secret set\n"),
            "{printed}"
        );
        assert!(!printed.contains("0123456789abcdef0123"), "{printed}");
        let done = new.replace("previous_secret = \"0123456789abcdef0123\"\n", "");
        assert_eq!(
            between(&new, &done),
            [(
                "cluster.previous_secret removed".to_string(),
                Applied::Reload
            )]
        );
    }

    #[test]
    fn replication_topology_copies_min_copies_and_the_bank_need_every_node_restarted() {
        let rss = BASE.replace(
            "repl = \"127.0.0.1:9103\"",
            "repl = \"127.0.0.1:9103\"\nrole = \"rss\"",
        );
        let pair = with("[replication]\nmode = \"sync\"");
        let strict = with("[replication]\nmode = \"sync\"\nmin_copies = 2\nheartbeat_ms = 250");
        assert_eq!(
            between(&pair, &strict),
            [
                (
                    "replication.min_copies 1 -> 2".to_string(),
                    restart(Restart::Nodes)
                ),
                (
                    "replication.heartbeat_ms 500 -> 250".to_string(),
                    restart(Restart::Nodes)
                ),
            ]
        );
        let broadcast = with("[replication]\ntopology = \"broadcast\"");
        let changes = diff(&cfg(&pair), &cfg(&broadcast));
        assert_eq!(
            changes[0].what.to_string(),
            "replication.topology pair -> broadcast"
        );
        assert!(changes[0].nodes_refuse_reload());
        let banked = BASE.to_string()
            + "\n[replication]\ntopology = \"rss\"\n\n[replication.bank]\nredis = [\"redis://127.0.0.1:6379\"]\n";
        let moved_bank = banked.replace("6379", "6380");
        let changes = diff(&cfg(&banked), &cfg(&moved_bank));
        assert_eq!(
            changes[0].what.to_string(),
            "replication.bank.redis redis://127.0.0.1:6379 -> redis://127.0.0.1:6380"
        );
        assert!(changes[0].nodes_refuse_reload());
        let two = format!("{rss}\n[replication]\ntopology = \"rss\"\n").replace(
            "repl = \"127.0.0.1:9102\"",
            "repl = \"127.0.0.1:9102\"\nrole = \"rss\"",
        );
        let copies = two.replace("topology = \"rss\"", "topology = \"rss\"\ncopies = 2");
        let changes = diff(&cfg(&two), &cfg(&copies));
        assert_eq!(changes[0].what.to_string(), "replication.copies 1 -> 2");
        assert_eq!(changes[0].applied, restart(Restart::Nodes));
        assert!(changes[0].nodes_refuse_reload());
        let bankless = format!("{rss}\n[replication]\ntopology = \"rss\"\n");
        assert_eq!(
            between(&bankless, &banked)
                .iter()
                .find(|(line, _)| line.starts_with("replication.bank "))
                .map(|(line, _)| line.as_str()),
            Some("replication.bank none -> redis://127.0.0.1:6379")
        );
    }

    #[test]
    fn lb_addresses_threads_and_grace_need_an_lb_restart_and_the_rest_of_lb_is_reloaded() {
        let new = BASE
            .replace("127.0.0.1:8080", "127.0.0.1:8090")
            .replace(
                "admin = \"127.0.0.1:8081\"\n",
                "admin = \"127.0.0.1:8081\"\nthreads = 2\ngrace_period_s = 9\nalgorithm = \"random\"\n\
                 failover = \"secondary\"\nadmin_token = \"a-token-of-sixteen-chars\"\n\n[lb.health]\nfall = 3\n\
                 interval_ms = 100\n\n[lb.limits]\nmax_headers = 50\nread_timeout_ms = 20000\n",
            );
        assert_eq!(
            between(BASE, &new),
            [
                (
                    "lb.listen 127.0.0.1:8080 -> 127.0.0.1:8090".to_string(),
                    restart(Restart::Lb)
                ),
                ("lb.threads 1 -> 2".to_string(), restart(Restart::Lb)),
                ("lb.grace_period_s 5 -> 9".to_string(), restart(Restart::Lb)),
                (
                    "lb.algorithm least_connections -> random".to_string(),
                    Applied::Reload
                ),
                (
                    "lb.failover rebalance -> secondary".to_string(),
                    Applied::Reload
                ),
                (
                    "lb.health.interval_ms 500 -> 100".to_string(),
                    Applied::Reload
                ),
                ("lb.health.fall 2 -> 3".to_string(), Applied::Reload),
                (
                    "lb.limits.max_headers 100 -> 50".to_string(),
                    Applied::Reload
                ),
                (
                    "lb.limits.read_timeout_ms 60000 -> 20000".to_string(),
                    Applied::Reload
                ),
                ("lb.admin_token set".to_string(), Applied::Reload),
            ]
        );
        assert!(!render(&diff(&cfg(BASE), &cfg(&new))).contains("a-token-of"));
    }

    #[test]
    fn the_layer_4_listener_and_turning_tls_on_need_an_lb_restart_and_new_certificate_files_are_reloaded(
    ) {
        let lb_tables = "admin = \"127.0.0.1:8081\"\n";
        let l4 = |extra: &str| {
            format!("{lb_tables}\n[lb.l4]\nlisten = \"127.0.0.1:8090\"\n{extra}\n[lb.tls]\ncert = \"a.pem\"\nkey = \"a.key\"\n")
        };
        let old = BASE.replace(lb_tables, &l4(""));
        assert_eq!(
            between(BASE, &old),
            [
                (
                    "lb.l4.listen none -> 127.0.0.1:8090".to_string(),
                    restart(Restart::Lb)
                ),
                ("lb.tls false -> true".to_string(), restart(Restart::Lb)),
            ]
        );
        let new = BASE
            .replace(
                lb_tables,
                &l4("send_proxy = true\nidle_timeout_ms = 5000\n"),
            )
            .replace("a.pem", "b.pem")
            .replace("[lb]", "[node]\naccept_proxy = true\n\n[lb]");
        assert_eq!(
            between(&old, &new),
            [
                (
                    "lb.l4.idle_timeout_ms 300000 -> 5000".to_string(),
                    restart(Restart::Lb)
                ),
                (
                    "lb.l4.send_proxy false -> true".to_string(),
                    restart(Restart::Lb)
                ),
                ("lb.tls.cert a.pem -> b.pem".to_string(), Applied::Reload),
                (
                    "node.accept_proxy false -> true".to_string(),
                    restart(Restart::Nodes)
                ),
            ]
        );
    }

    #[test]
    fn with_trusted_sources_the_nodes_restart_too_when_the_lb_moves() {
        let old = with("[node]\ntrusted = [\"10.0.0.0/8\"]");
        let new = old.replace("127.0.0.1:8081", "127.0.0.1:8091");
        assert_eq!(
            between(&old, &new),
            [(
                "lb.admin 127.0.0.1:8081 -> 127.0.0.1:8091".to_string(),
                restart(Restart::All)
            )]
        );
    }

    #[test]
    fn node_session_and_sidecar_settings_need_every_node_restarted() {
        let new = with(
            "[node]\ntrusted = [\"10.0.0.0/8\"]\ndrain_rate = 100\ngrace_period_s = 20\nexpose_node = true\n\
             log_format = \"json\"\n\n[session]\nidle_timeout_s = 60\n\n[sidecar]\nreplay_body_bytes = 1024",
        );
        assert_eq!(
            between(BASE, &new),
            [
                (
                    "node.expose_node false -> true".to_string(),
                    restart(Restart::Nodes)
                ),
                (
                    "node.log_format text -> json".to_string(),
                    restart(Restart::All)
                ),
                (
                    "node.grace_period_s 10 -> 20".to_string(),
                    restart(Restart::Nodes)
                ),
                (
                    "node.drain_rate 500 -> 100".to_string(),
                    restart(Restart::Nodes)
                ),
                (
                    "node.trusted none -> [10.0.0.0/8]".to_string(),
                    restart(Restart::Nodes)
                ),
                (
                    "session.idle_timeout_s 1800 -> 60".to_string(),
                    restart(Restart::Nodes)
                ),
                (
                    "sidecar.replay_body_bytes 16384 -> 1024".to_string(),
                    restart(Restart::Nodes)
                ),
            ]
        );
    }

    #[test]
    fn an_upstream_set_in_node_counts_as_a_change_of_every_entry() {
        let new = with("[node]\nupstream = \"http://127.0.0.1:3000\"");
        let changes = between(BASE, &new);
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert_eq!(
            changes[0],
            (
                "node n1 upstream none -> 127.0.0.1:3000".to_string(),
                node("n1")
            )
        );
    }

    #[test]
    fn a_section_that_differs_in_a_way_no_rule_names_still_needs_a_restart() {
        let random = BASE.replace("[lb]\n", "[lb]\nalgorithm = \"random\"\n");
        let (a, b) = (cfg(BASE), cfg(&random));
        let mut d = Diff::default();
        d.unexplained("[lb]", &a.lb, &b.lb, 0, Restart::All);
        assert_eq!(
            d.0,
            [Change {
                what: What::Other {
                    section: "[lb]".into()
                },
                applied: restart(Restart::All)
            }]
        );
        let printed = d.0[0].what.to_string();
        assert_eq!(printed, "[lb]: other settings changed");
        let mut explained = Diff::default();
        explained.setting(
            "lb.algorithm",
            a.lb.algorithm,
            b.lb.algorithm,
            Applied::Reload,
        );
        explained.unexplained("[lb]", &a.lb, &b.lb, 0, Restart::All);
        assert_eq!(explained.0.len(), 1, "a named change explains the section");
    }

    #[test]
    fn the_rest_of_the_file_outside_its_sections_compares_equal_when_unchanged() {
        let new = with("[lb.health]\nfall = 5\n\n[session]\nidle_timeout_s = 60");
        assert_eq!(residual(&cfg(BASE)), residual(&cfg(&new)));
    }

    #[test]
    fn the_printout_groups_reload_changes_first_then_each_restart() {
        let new = BASE
            .replace(
                "repl = \"127.0.0.1:9102\"",
                "repl = \"127.0.0.1:9102\"\ndrain = true",
            )
            .replace("http = \"127.0.0.1:9003\"", "http = \"127.0.0.1:9013\"")
            .replace("127.0.0.1:8080", "127.0.0.1:8090");
        assert_eq!(
            render(&diff(&cfg(BASE), &cfg(&new))),
            "applied by reload (SIGHUP or POST /reload to the lb, SIGHUP to every node):\n\
             \x20 node n2 drained\n\
             needs a restart (the lb):\n\
             \x20 lb.listen 127.0.0.1:8080 -> 127.0.0.1:8090\n\
             needs a restart (node n3):\n\
             \x20 node n3 moved: http 127.0.0.1:9003 -> 127.0.0.1:9013\n"
        );
    }
}
