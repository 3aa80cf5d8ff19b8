//! `--fault rolling@10s`: a rolling restart under load. For each node in file order: set `drain = true` on its
//! `[[nodes]]` entry of the cluster file (in place; every other byte kept), have every running node and then
//! the lb re-read the file (SIGHUP), wait until the node owns nothing, stop it gracefully (SIGTERM), put the
//! file's original text back, have the others and the lb re-read it, start the node again and wait until it is
//! healthy, its peers and the lb see it, and it holds copies again (a few seconds at most); then the next.
//!
//! `--fault drain:n2@400s` is one such step without the start: the node is drained and stopped, and stays down
//! until a `restart:n2@...` fault.
//!
//! The cluster file is the user's: its original text is written back after each node, at the end, and by
//! [`FileGuard`]'s drop on every early way out (an error, the load ending first, Ctrl-C, a panic).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use node::config::ClusterConfig;
use toml_edit::{DocumentMut, Item, TableLike, Value};

use crate::client::get_text;
use crate::cluster::{Procs, LB};
use crate::faults::Applied;

/// How long a node or the lb may take to re-read the file after a SIGHUP.
const RELOAD_WAIT: Duration = Duration::from_secs(10);
/// How long a draining node may take to hand every session over.
const DRAIN_WAIT: Duration = Duration::from_secs(60);
/// How long a node may take to exit after SIGTERM before it is killed.
const EXIT_WAIT: Duration = Duration::from_secs(30);
/// How long a restarted node's peers and the lb may take to see it again.
const SEEN_WAIT: Duration = Duration::from_secs(10);
/// How long a restarted node is given to hold copies again (peers only copy new or re-homed sessions to it).
const REFILL_WAIT: Duration = Duration::from_secs(3);
/// A node's `node_sessions` gauges are refreshed about once a second: "owns nothing" must hold this long.
const SETTLE: Duration = Duration::from_millis(1100);
/// Between two looks at a node's metrics.
const POLL: Duration = Duration::from_millis(100);

/// `text` (a cluster file) with `drain = on` on the `[[nodes]]` entry named `node`; everything else, comments
/// and formatting included, as it was. An existing `drain` keeps its comments.
///
/// # Errors
/// When `text` is not TOML or has no node of that name.
pub fn with_drain(text: &str, node: &str, on: bool) -> Result<String> {
    let mut doc: DocumentMut = text.parse().context("the cluster file is not valid TOML")?;
    let nodes = doc
        .get_mut("nodes")
        .context("the cluster file has no [[nodes]]")?;
    let named = |t: &dyn TableLike| t.get("name").and_then(Item::as_str) == Some(node);
    let entry: Option<&mut dyn TableLike> = match nodes {
        Item::ArrayOfTables(a) => a
            .iter_mut()
            .find(|t| named(*t))
            .map(|t| t as &mut dyn TableLike),
        Item::Value(Value::Array(a)) => a
            .iter_mut()
            .filter_map(Value::as_inline_table_mut)
            .find(|t| named(*t))
            .map(|t| t as &mut dyn TableLike),
        _ => None,
    };
    let entry = entry.with_context(|| format!("no [[nodes]] entry named {node:?}"))?;
    match entry.get_mut("drain").and_then(Item::as_value_mut) {
        Some(v) => {
            let decor = v.decor().clone();
            *v = Value::from(on);
            *v.decor_mut() = decor;
        }
        None => {
            entry.insert("drain", toml_edit::value(on));
        }
    }
    Ok(doc.to_string())
}

/// The cluster file while the rolling restart edits it: its original text, written back by
/// [`FileGuard::restore`] and, whatever happens, on drop.
pub struct FileGuard {
    path: PathBuf,
    original: String,
    /// Whether the file may differ from `original` now.
    dirty: bool,
}

impl FileGuard {
    /// Reads the file at `path`.
    ///
    /// # Errors
    /// When it cannot be read.
    pub fn new(path: &Path) -> Result<FileGuard> {
        let original =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(FileGuard {
            path: path.to_path_buf(),
            original,
            dirty: false,
        })
    }

    /// Writes the original text with `drain = true` on `node`, after checking that the nodes would take it.
    ///
    /// # Errors
    /// When the edit or the write fails, or the edited file is not a valid cluster file.
    pub fn drain(&mut self, node: &str) -> Result<()> {
        let text = with_drain(&self.original, node, true)?;
        ClusterConfig::from_toml(&self.path.display().to_string(), &text)
            .map_err(|e| anyhow::anyhow!("the file with {node} draining is refused: {e}"))?;
        self.dirty = true;
        // In place (same inode, mode and symlinks): the processes only read it when told to.
        std::fs::write(&self.path, text).with_context(|| format!("writing {}", self.path.display()))
    }

    /// Writes the original text back.
    ///
    /// # Errors
    /// When the write fails (the guard tries again on drop).
    pub fn restore(&mut self) -> Result<()> {
        if self.dirty {
            std::fs::write(&self.path, &self.original)
                .with_context(|| format!("restoring {}", self.path.display()))?;
            self.dirty = false;
        }
        Ok(())
    }
}

impl Drop for FileGuard {
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            eprintln!(
                "\ncould not restore {}: {e:#}; its original text:\n{}",
                self.path.display(),
                self.original
            );
        }
    }
}

/// The value of the Prometheus sample `name` whose labels include `labels`, summed over the matching series;
/// `None` when there is none.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.trim().rsplit_once(' ') else {
            continue;
        };
        let (n, tags) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let has = |(k, v): &(&str, &str)| {
            tags.split(',')
                .filter_map(|kv| kv.split_once('='))
                .any(|(tk, tv)| tk.trim() == *k && tv.trim().trim_matches('"') == *v)
        };
        if labels.iter().all(has) {
            if let Ok(v) = value.parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}

/// Progress of one rolling restart or drain: printed as it goes, and the step it was at when cut short.
#[derive(Clone)]
pub struct Progress {
    start: Instant,
    what: &'static str,
    step: Arc<Mutex<String>>,
}

impl Progress {
    /// Timestamps count from `start` (the start of the load); lines start with `what` (`rolling restart`,
    /// `drain`).
    pub fn new(start: Instant, what: &'static str) -> Progress {
        Progress {
            start,
            what,
            step: Arc::new(Mutex::new("not started".into())),
        }
    }

    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Prints a progress line like the other faults' and remembers it as the current step.
    fn say(&self, step: String) {
        eprintln!(
            "\n[{:>6.2}s] {}: {step}",
            self.ms() as f64 / 1000.0,
            self.what
        );
        *self.step.lock().unwrap_or_else(|e| e.into_inner()) = step;
    }

    /// `rolling restart` or `drain`.
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// The last step announced.
    pub fn step(&self) -> String {
        self.step.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What happened to one node.
struct Cycled {
    name: String,
    old_pid: Option<u32>,
    /// `None`: not started again (a drain).
    new_pid: Option<u32>,
    handed_over: u64,
    /// How it exited after SIGTERM.
    exit: String,
    /// From SIGTERM to healthy again.
    back_ms: u128,
}

/// Restarts every node of `procs`, one at a time, as the module says. The fault counts as applied only when
/// every node was restarted; the label (`rolling restart of 3 nodes in ...`) says how, or where it failed.
pub async fn roll(procs: &mut Procs, progress: &Progress) -> Applied {
    let names = node_names(procs);
    run(procs, &names, true, progress).await
}

/// Drains node `name` and stops it gracefully (`drain:n2@400s`); it stays down until a `restart:` fault. The
/// cluster file is put back as it was, and the others and the lb re-read it.
pub async fn drain(procs: &mut Procs, name: &str, progress: &Progress) -> Applied {
    run(procs, &[name.to_string()], false, progress).await
}

async fn run(procs: &mut Procs, names: &[String], restart: bool, progress: &Progress) -> Applied {
    let at_ms = progress.ms();
    let started = Instant::now();
    let what = if restart {
        "rolling restart".to_string()
    } else {
        format!("drain {}", names.join(", "))
    };
    let mut file = match FileGuard::new(&procs.config_path) {
        Ok(f) => f,
        Err(e) => {
            return Applied {
                at_ms,
                label: format!("{what} failed: {e:#}"),
            }
        }
    };
    let mut done = Vec::new();
    let mut result = Ok(());
    for name in names {
        match cycle(procs, &mut file, progress, name, restart).await {
            Ok(c) => done.push(c),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let restored = file.restore();
    let label = match (result, restored) {
        (Ok(()), Ok(())) if restart => {
            let each: Vec<String> = done
                .iter()
                .map(|c| {
                    format!(
                        "{} pid {} -> {} ({} handed over, back in {:.1} s)",
                        c.name,
                        c.old_pid.map_or("-".into(), |p| p.to_string()),
                        c.new_pid.map_or("-".into(), |p| p.to_string()),
                        c.handed_over,
                        c.back_ms as f64 / 1000.0
                    )
                })
                .collect();
            format!(
                "rolling restart of {} nodes in {:.1} s: {}",
                done.len(),
                started.elapsed().as_secs_f64(),
                each.join("; ")
            )
        }
        (Ok(()), Ok(())) => {
            let each: Vec<String> = done
                .iter()
                .map(|c| format!("{} handed over, stopped ({})", c.handed_over, c.exit))
                .collect();
            format!(
                "{what}: {} in {:.1} s",
                each.join("; "),
                started.elapsed().as_secs_f64()
            )
        }
        (Err(e), _) | (Ok(()), Err(e)) => {
            // Back to what the file says for everyone still running (best effort: the error is the news).
            let all = node_names(procs);
            if let Err(e2) = reload(procs, &all, progress).await {
                eprintln!("\n{what}: reloading after the failure failed too: {e2:#}");
            }
            let ok: Vec<&str> = done.iter().map(|c| c.name.as_str()).collect();
            if restart {
                format!(
                    "{what} failed ({} restarted: {}): {e:#}",
                    ok.len(),
                    ok.join(", ")
                )
            } else {
                format!("{what} failed: {e:#}")
            }
        }
    };
    Applied { at_ms, label }
}

fn node_names(procs: &Procs) -> Vec<String> {
    procs.config.nodes.iter().map(|n| n.name.clone()).collect()
}

fn node_http(procs: &Procs, name: &str) -> Result<SocketAddr> {
    Ok(procs
        .config
        .node(name)
        .with_context(|| format!("no node {name} in the config"))?
        .http)
}

/// Drains `name`, stops it, puts the file back and (with `restart`) starts it again and waits until it is back.
async fn cycle(
    procs: &mut Procs,
    file: &mut FileGuard,
    progress: &Progress,
    name: &str,
    restart: bool,
) -> Result<Cycled> {
    let names = node_names(procs);
    let others: Vec<String> = names.iter().filter(|n| *n != name).cloned().collect();
    let http = node_http(procs, name)?;
    if !procs.is_running(name) {
        if !restart {
            bail!("{name} is not running");
        }
        progress.say(format!("{name} is not running: starting it"));
        procs.start_node(name)?;
        procs.wait_node(name).await?;
    }
    let old_pid = procs.pid(name);

    // 1-2: drain = true in the file; the nodes take it, then the lb.
    file.drain(name)?;
    progress.say(format!("{name} draining (drain = true, reloading)"));
    reload(procs, &names, progress).await?;

    // 3: until it owns nothing.
    let handed_over = wait_drained(procs, name, http).await?;
    progress.say(format!(
        "{name} owns nothing ({handed_over} handed over): stopping it"
    ));

    // 4: SIGTERM, the file back, the others and the lb reload, start, healthy, seen, refilled.
    let t = Instant::now();
    procs.signal(name, libc::SIGTERM);
    let exit = wait_exit(procs, name).await;
    file.restore()?;
    progress.say(format!(
        "{name} stopped ({exit}); drain back to false, reloading"
    ));
    reload(procs, &others, progress).await?;
    let mut cycled = Cycled {
        name: name.to_string(),
        old_pid,
        new_pid: None,
        handed_over,
        exit,
        back_ms: 0,
    };
    if !restart {
        return Ok(cycled);
    }
    let seen_before = peers_received(procs, &others, name).await;
    let new_pid = procs.start_node(name)?;
    procs.wait_node(name).await?;
    cycled.new_pid = Some(new_pid);
    cycled.back_ms = t.elapsed().as_millis();
    progress.say(format!(
        "{name} started again (pid {new_pid}) and healthy in {:.1} s",
        cycled.back_ms as f64 / 1000.0
    ));
    if let Some(note) = wait_seen(procs, name, &seen_before).await {
        progress.say(format!("{name}: {note}"));
    }
    progress.say(format!(
        "{name} {}",
        wait_refilled(procs, http, &others).await
    ));
    Ok(cycled)
}

/// The metrics of the node at `http`, `None` when unreadable.
async fn node_metrics(http: SocketAddr) -> Option<String> {
    get_text(http, "/_node/metrics").await.ok()
}

async fn node_sample(http: SocketAddr, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    sample(&node_metrics(http).await?, name, labels)
}

/// The lb's `/status`, `None` when unreadable (e.g. behind an admin token).
async fn lb_status(procs: &Procs) -> Option<serde_json::Value> {
    let text = get_text(procs.config.lb.admin, "/status").await.ok()?;
    serde_json::from_str(&text).ok()
}

/// SIGHUPs every running node of `names` and waits until each took the file (`node_reloads_total` rises),
/// then the lb (its `/status` generation rises): the lb must not send a node sessions whose peers it does not
/// know yet.
async fn reload(procs: &mut Procs, names: &[String], progress: &Progress) -> Result<()> {
    let mut waiting = Vec::new();
    for n in names {
        if !procs.is_running(n) {
            continue;
        }
        // A node still starting up may not handle SIGHUP yet (its default action ends the process).
        procs.wait_node(n).await?;
        let http = node_http(procs, n)?;
        let before = node_sample(http, "node_reloads_total", &[])
            .await
            .with_context(|| format!("cannot read node_reloads_total of {n} at {http}"))?;
        waiting.push((n.clone(), http, before));
    }
    for (n, _, _) in &waiting {
        procs.signal(n, libc::SIGHUP);
    }
    for (n, http, before) in &waiting {
        let deadline = Instant::now() + RELOAD_WAIT;
        loop {
            if node_sample(*http, "node_reloads_total", &[]).await > Some(*before) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{n} did not take the file within {RELOAD_WAIT:?} (node_reloads_total stayed at {before}); log:\n{}",
                    procs.log_tail(n)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
    if !procs.is_running(LB) {
        return Ok(());
    }
    let generation = |s: &serde_json::Value| s["generation"].as_u64();
    let before = lb_status(procs).await.as_ref().and_then(generation);
    procs.signal(LB, libc::SIGHUP);
    let Some(before) = before else {
        progress.say("the lb's /status is unreadable: giving its reload a second".into());
        tokio::time::sleep(Duration::from_secs(1)).await;
        return Ok(());
    };
    let deadline = Instant::now() + RELOAD_WAIT;
    while lb_status(procs).await.as_ref().and_then(generation) <= Some(before) {
        if Instant::now() > deadline {
            bail!(
                "the lb did not take the file within {RELOAD_WAIT:?} (generation stayed at {before}); log:\n{}",
                procs.log_tail(LB)
            );
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Waits until `name` owns nothing: `node_drain_sessions_left` and `node_sessions{role="primary"}` both 0 for
/// [`SETTLE`]. Returns the most sessions it had left to hand over.
async fn wait_drained(procs: &mut Procs, name: &str, http: SocketAddr) -> Result<u64> {
    let deadline = Instant::now() + DRAIN_WAIT;
    let mut most = 0.0f64;
    let mut zero_since: Option<Instant> = None;
    let (mut left, mut owned) = (None, None);
    loop {
        if let Some(m) = node_metrics(http).await {
            left = sample(&m, "node_drain_sessions_left", &[]);
            owned = sample(&m, "node_sessions", &[("role", "primary")]);
        }
        most = most.max(left.unwrap_or(0.0)).max(owned.unwrap_or(0.0));
        if left == Some(0.0) && owned.unwrap_or(0.0) == 0.0 {
            let since = *zero_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= SETTLE {
                return Ok(most as u64);
            }
        } else {
            zero_since = None;
        }
        if !procs.is_running(name) {
            bail!(
                "{name} exited while draining; log:\n{}",
                procs.log_tail(name)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{name} still owns sessions after {DRAIN_WAIT:?} (node_drain_sessions_left {left:?}, primary {owned:?}); log:\n{}",
                procs.log_tail(name)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits for `name` to exit after its SIGTERM; kills it after [`EXIT_WAIT`]. Says how it went.
async fn wait_exit(procs: &mut Procs, name: &str) -> String {
    let deadline = Instant::now() + EXIT_WAIT;
    loop {
        if let Some(st) = procs.wait_exit(name, Duration::ZERO) {
            return st.to_string();
        }
        if !procs.is_running(name) {
            return "gone".into();
        }
        if Instant::now() > deadline {
            procs.kill(name);
            return format!("still running {EXIT_WAIT:?} after SIGTERM: killed");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What each running node of `others` has received so far on its replication link to `name`.
async fn peers_received(procs: &mut Procs, others: &[String], name: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for o in others {
        if !procs.is_running(o) {
            continue;
        }
        let Ok(http) = node_http(procs, o) else {
            continue;
        };
        let labels = [("peer", name), ("direction", "received")];
        let got = node_sample(http, "node_replication_bytes_total", &labels).await;
        out.push((o.clone(), got.unwrap_or(0.0)));
    }
    out
}

/// Waits until every peer in `before` has heard from the restarted `name` (its replication link is back) and
/// the lb calls it healthy. `None` when both happened within [`SEEN_WAIT`], else what did not.
async fn wait_seen(procs: &mut Procs, name: &str, before: &[(String, f64)]) -> Option<String> {
    let deadline = Instant::now() + SEEN_WAIT;
    let mut pending: Vec<(String, f64)> = before.to_vec();
    let mut lb_sees = !procs.is_running(LB);
    loop {
        let mut still = Vec::new();
        for (o, b) in pending {
            let now = peers_received(procs, std::slice::from_ref(&o), name).await;
            if !now.first().is_some_and(|(_, v)| *v > b) {
                still.push((o, b));
            }
        }
        pending = still;
        if !lb_sees {
            lb_sees = lb_status(procs).await.is_none_or(|s| {
                s["nodes"].as_array().is_some_and(|ns| {
                    ns.iter()
                        .any(|n| n["name"] == name && n["healthy"].as_bool() == Some(true))
                })
            });
        }
        if pending.is_empty() && lb_sees {
            return None;
        }
        if Instant::now() > deadline {
            let peers: Vec<&str> = pending.iter().map(|(o, _)| o.as_str()).collect();
            return Some(format!(
                "after {SEEN_WAIT:?}: {}{}",
                if peers.is_empty() {
                    String::new()
                } else {
                    format!("no word on the link from {} yet ", peers.join(", "))
                },
                if lb_sees {
                    ""
                } else {
                    "the lb does not call it healthy yet"
                }
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits (at most [`REFILL_WAIT`]) until the restarted `name` holds copies or sessions again, when its peers
/// own any. Says how it went.
async fn wait_refilled(procs: &mut Procs, http: SocketAddr, others: &[String]) -> String {
    let mut owned_elsewhere = 0.0;
    for o in others {
        if procs.is_running(o) {
            if let Ok(h) = node_http(procs, o) {
                owned_elsewhere += node_sample(h, "node_sessions", &[("role", "primary")])
                    .await
                    .unwrap_or(0.0);
            }
        }
    }
    if owned_elsewhere == 0.0 {
        return "is back; its peers own no session to copy to it".into();
    }
    let deadline = Instant::now() + REFILL_WAIT;
    loop {
        if let Some(m) = node_metrics(http).await {
            let replicas = sample(&m, "node_sessions", &[("role", "replica")]).unwrap_or(0.0);
            let primaries = sample(&m, "node_sessions", &[("role", "primary")]).unwrap_or(0.0);
            if replicas + primaries > 0.0 {
                return format!("refilled: {replicas} copies, {primaries} sessions owned");
            }
        }
        if Instant::now() > deadline {
            return format!(
                "holds no copy yet after {REFILL_WAIT:?} (its peers keep their copies where they are; \
                 it gets new sessions and the copies of the next drained node)"
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# the cluster\n[cluster]\nsecret = \"x\" # keep\n\n[[nodes]]\nname = \"n1\"\nhttp = \"127.0.0.1:1\"\n\n# second\n[[nodes]]\nname = \"n2\"  # me\nhttp   =   \"127.0.0.1:2\"\ndrain = false # was off\n\n[[nodes]]\nname = \"n3\"\n";

    #[test]
    fn drain_is_set_on_one_entry_and_nothing_else_moves() {
        let on = with_drain(FILE, "n1", true).unwrap();
        assert_eq!(
            on,
            FILE.replace(
                "http = \"127.0.0.1:1\"\n",
                "http = \"127.0.0.1:1\"\ndrain = true\n"
            )
        );
        let on = with_drain(FILE, "n2", true).unwrap();
        assert_eq!(
            on,
            FILE.replace("drain = false # was off", "drain = true # was off")
        );
        let on = with_drain(FILE, "n3", true).unwrap();
        assert_eq!(on, format!("{FILE}drain = true\n"));
        assert_eq!(with_drain(FILE, "n2", false).unwrap(), FILE);
        assert!(with_drain(FILE, "n4", true).is_err());
        assert!(with_drain("nodes = 3", "n1", true).is_err());
        assert!(with_drain("[[nodes]\n", "n1", true).is_err());
    }

    #[test]
    fn inline_node_tables_are_edited_too() {
        let text = "nodes = [{ name = \"n1\", http = \"a\" }, { name = \"n2\" }]\n";
        let on = with_drain(text, "n2", true).unwrap();
        assert_eq!(
            on,
            "nodes = [{ name = \"n1\", http = \"a\" }, { name = \"n2\" , drain = true }]\n"
        );
    }

    #[test]
    fn the_local_cluster_file_keeps_its_comments() {
        let text = include_str!("../../config/local.toml");
        let on = with_drain(text, "n2", true).unwrap();
        let added: Vec<&str> = on
            .lines()
            .filter(|l| !text.lines().any(|t| t == *l))
            .collect();
        assert_eq!(added, ["drain = true"]);
        assert_eq!(on.lines().count(), text.lines().count() + 1);
        let cfg = ClusterConfig::from_toml("local.toml", &on).unwrap();
        let drains: Vec<bool> = cfg.nodes.iter().map(|n| n.drain).collect();
        assert_eq!(drains, [false, true, false]);
    }

    #[test]
    fn the_guard_puts_the_original_back() {
        let dir = std::env::temp_dir().join(format!("rolling-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("local.toml");
        let text = include_str!("../../config/local.toml");
        std::fs::write(&path, text).unwrap();
        {
            let mut g = FileGuard::new(&path).unwrap();
            g.drain("n3").unwrap();
            assert_ne!(std::fs::read_to_string(&path).unwrap(), text);
            g.restore().unwrap();
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
            g.drain("n1").unwrap();
            assert!(g.drain("n9").is_err());
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn samples_are_found_by_name_and_labels() {
        let m = "# HELP x\nnode_sessions{role=\"primary\"} 12\nnode_sessions{role=\"replica\"} 3\n\
                 node_reloads_total 2\nnode_replication_bytes_total{direction=\"received\",peer=\"n1\"} 40\n\
                 node_replication_bytes_total{direction=\"sent\",peer=\"n1\"} 7\n";
        assert_eq!(
            sample(m, "node_sessions", &[("role", "primary")]),
            Some(12.0)
        );
        assert_eq!(sample(m, "node_sessions", &[]), Some(15.0));
        assert_eq!(sample(m, "node_reloads_total", &[]), Some(2.0));
        assert_eq!(
            sample(
                m,
                "node_replication_bytes_total",
                &[("peer", "n1"), ("direction", "received")]
            ),
            Some(40.0)
        );
        assert_eq!(sample(m, "node_sessions", &[("role", "unprotected")]), None);
        assert_eq!(sample(m, "node_drain_sessions_left", &[]), None);
    }
}
