//! `bench up`: the local cluster in the foreground, for `make run`, and the failover demo: a node (or the Redis
//! bank the bench started) that exits is reported, with its log and how to start it again, while the lb and the
//! other nodes keep serving; Enter starts every stopped one again. Only the lb's exit, Ctrl-C or SIGTERM stop
//! everything.

use std::collections::BTreeSet;
use std::io::{BufRead, IsTerminal};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::cluster::{bin_dir, http_status, Procs, BANK, LB};

/// Starts every node and the lb of `config`, prints how to try it and every process's pid, and runs until
/// Ctrl-C, SIGTERM or the lb's exit; then stops everything (SIGTERM, SIGKILL after 5 s). A node or bank that
/// exits meanwhile is reported and started again on Enter.
///
/// # Errors
/// When the file is invalid, a signal handler cannot be installed, the cluster does not come up, or the lb
/// exited by itself.
pub async fn up(config: &Path) -> Result<()> {
    let mut procs = Procs::new(config)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        r = procs.start_all(true) => r?,
        _ = int.recv() => { procs.kill_all(); return Ok(()); }
        _ = term.recv() => { procs.kill_all(); return Ok(()); }
    }
    // Everything watched: the nodes, the bank when the bench started it, and the lb.
    let mut keys: Vec<String> = procs.config.nodes.iter().map(|n| n.name.clone()).collect();
    if procs.pid(BANK).is_some() {
        keys.push(BANK.to_string());
    }
    keys.push(LB.to_string());
    let mut lines = stdin_lines();
    println!("{}", banner(&procs, &keys, lines.is_some()));

    // Stopped nodes and bank, and restarted nodes not yet healthy.
    let mut dead: BTreeSet<String> = BTreeSet::new();
    let mut starting: BTreeSet<String> = BTreeSet::new();
    // The lb's exit status, when it exited by itself.
    let mut lb_exit = None;
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            line = recv(&mut lines) => {
                if line.is_none() {
                    // stdin closed: no more restarts on Enter, and no more reading (no spinning on EOF).
                    lines = None;
                    if !dead.is_empty() {
                        eprintln!("(stdin closed: start them again with the commands above)");
                    }
                    continue;
                }
                if dead.is_empty() {
                    eprintln!("every process is running; Enter restarts a node only after it exits");
                    continue;
                }
                let restarted = tokio::select! {
                    r = restart_all(&mut procs, &mut dead) => r,
                    _ = int.recv() => break,
                    _ = term.recv() => break,
                };
                starting.extend(restarted);
            }
            _ = poll.tick() => {
                for key in &keys {
                    let Some(st) = procs.wait_exit(key, Duration::ZERO) else { continue };
                    starting.remove(key);
                    if key == LB {
                        let tail = procs.log_tail(LB);
                        eprintln!(
                            "\nlb exited ({st}): nothing routes to the nodes any more; stopping the cluster.\n  \
                             its log: {}{}{tail}",
                            procs.log_dir.join("lb.log").display(),
                            if tail.trim().is_empty() { "" } else { ", ending:\n" },
                        );
                        lb_exit = Some(st);
                    } else {
                        eprintln!("{}", exit_report(&procs, key, &st.to_string(), lines.is_some()));
                        dead.insert(key.clone());
                    }
                }
                if lb_exit.is_some() {
                    break;
                }
                for key in starting.clone() {
                    if let Some(n) = procs.config.node(&key) {
                        if http_status(n.http, node::HEALTH_PATH).await == Some(200) {
                            eprintln!("{key} is back and healthy (pid {})", pid_text(&procs, &key));
                            starting.remove(&key);
                        }
                    }
                }
            }
        }
    }
    procs.shutdown(Duration::from_secs(5)).await;
    println!("stopped");
    match lb_exit {
        Some(st) => bail!("the lb exited ({st})"),
        None => Ok(()),
    }
}

/// What `bench up` prints once the cluster answers: addresses, pids, logs, how to try it and how to stop it.
fn banner(procs: &Procs, keys: &[String], enter: bool) -> String {
    let c = &procs.config;
    let (lb, admin, cookie) = (c.lb.listen, c.lb.admin, &c.cookie.name);
    let nodes: Vec<String> = c
        .nodes
        .iter()
        .map(|n| format!("{} http://{}", n.name, n.http))
        .collect();
    let pids: Vec<String> = keys
        .iter()
        .map(|k| format!("{k} {}", pid_text(procs, k)))
        .collect();
    // In sidecar mode the paths belong to the app behind the nodes, not to the built-in API.
    let sidecar = c.nodes.iter().any(|n| n.upstream.is_some());
    let try_it = if sidecar {
        format!("open: http://{lb}/  (each node's app answers; the session lives in the nodes)")
    } else {
        format!(
            "try:  curl -si -c /tmp/jar -b /tmp/jar -X POST http://{lb}/session/incr/visits\n        \
             curl -s  -c /tmp/jar -b /tmp/jar http://{lb}/session"
        )
    };
    let restart = if enter {
        "kill -9 a node: the others keep serving; Enter starts it again."
    } else {
        "kill -9 a node: the others keep serving."
    };
    format!(
        "\n  cluster up: lb http://{lb}  (admin http://{admin}/status, /metrics)\n  nodes: {}\n  pids:  {}\n  \
         logs:  {}\n\n  {try_it}\n  (the routing cookie is {cookie}; X-Served-By names the node)\n  {restart}\n  \
         Ctrl-C stops everything.\n",
        nodes.join(", "),
        pids.join(", "),
        procs.log_dir.display()
    )
}

/// The report of node or bank `key`'s exit with `status`: what keeps running, its log and how to start it.
fn exit_report(procs: &Procs, key: &str, status: &str, enter: bool) -> String {
    let log = procs.log_dir.join(format!("{key}.log"));
    let mut out =
        format!("\n{key} exited ({status}); the lb and the other processes keep serving.");
    if log.is_file() {
        out += &format!("\n  its log: {}", log.display());
        let tail = procs.log_tail(key);
        if !tail.trim().is_empty() {
            out += &format!(", ending:\n{tail}");
        }
    }
    let by_hand = if key == BANK {
        match procs.local_bank() {
            Some(a) => format!(
                "redis-server --bind {} --port {} --save '' --appendonly no",
                a.ip(),
                a.port()
            ),
            None => "redis-server".to_string(),
        }
    } else {
        format!(
            "{} --config {} --name {key}",
            bin_dir()
                .map(|d| d.join("node").display().to_string())
                .unwrap_or_else(|_| "node".into()),
            procs.config_path.display()
        )
    };
    if enter {
        out += &format!(
            "\n  press Enter to start every stopped process again (or by hand: {by_hand})"
        );
    } else {
        out += &format!("\n  start it again by hand: {by_hand}");
    }
    out
}

/// Starts every process of `dead` again (a node without waiting for its health; the bank until it answers),
/// emptying it of those that started; returns the nodes started.
async fn restart_all(procs: &mut Procs, dead: &mut BTreeSet<String>) -> BTreeSet<String> {
    let mut nodes = BTreeSet::new();
    // The bank first: the nodes look for it as they start.
    let mut order: Vec<String> = dead.iter().filter(|k| *k == BANK).cloned().collect();
    order.extend(dead.iter().filter(|k| *k != BANK).cloned());
    for key in order {
        match procs.restart(&key).await {
            Ok(pid) => {
                eprintln!("restarted {key} (pid {pid})");
                dead.remove(&key);
                if key != BANK {
                    nodes.insert(key);
                }
            }
            Err(e) => eprintln!("could not start {key} again: {e:#}"),
        }
    }
    nodes
}

/// `key`'s pid as text, `-` when it has none.
fn pid_text(procs: &Procs, key: &str) -> String {
    procs
        .pid(key)
        .map_or_else(|| "-".to_string(), |p| p.to_string())
}

/// Lines typed on stdin, from a thread of their own (a blocking read of stdin cannot be cancelled, and a
/// runtime task reading it would hold up the bench's exit). `None` when there is nothing to read Enter from:
/// stdin is `/dev/null` (or another device that is no terminal), or a terminal whose foreground is another
/// job (`make run &`). The channel closes at the end of input or on a read error.
fn stdin_lines() -> Option<mpsc::Receiver<()>> {
    use std::os::unix::fs::FileTypeExt;
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        // SAFETY: tcgetpgrp and getpgrp only read the terminal's and our process group.
        if unsafe { libc::tcgetpgrp(0) != libc::getpgrp() } {
            return None;
        }
        // Put in the background later, a read would stop the whole bench (SIGTTIN); ignored, it fails instead
        // and the thread ends.
        // SAFETY: changes the disposition of one job-control signal no code of ours handles.
        unsafe {
            libc::signal(libc::SIGTTIN, libc::SIG_IGN);
        }
    } else if std::fs::metadata("/dev/stdin").map_or(true, |m| m.file_type().is_char_device()) {
        return None;
    }
    let (tx, rx) = mpsc::channel(4);
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in stdin.lock().lines() {
                if line.is_err() || tx.blocking_send(()).is_err() {
                    break;
                }
            }
        })
        .ok()?;
    Some(rx)
}

/// The next line of `lines`; pending forever once there is no stdin to read.
async fn recv(lines: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match lines {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
