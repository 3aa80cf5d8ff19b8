//! `bench up`: the local cluster in the foreground, for `make run`. Stops everything on Ctrl-C, SIGTERM, or
//! when any one process exits (a half-running cluster would only confuse whoever is trying it out).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use tokio::signal::unix::{signal, SignalKind};

use crate::cluster::Procs;

/// Starts every node and the lb of `config`, prints how to try it, and runs until Ctrl-C, SIGTERM or a child's
/// exit; then stops everything (SIGTERM, SIGKILL after 5 s).
///
/// # Errors
/// When the file is invalid, a signal handler cannot be installed, or the cluster does not come up.
pub async fn up(config: &Path) -> Result<()> {
    let mut procs = Procs::new(config)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        r = procs.start_all(true) => r?,
        _ = int.recv() => { procs.kill_all(); return Ok(()); }
        _ = term.recv() => { procs.kill_all(); return Ok(()); }
    }
    let (lb, admin, cookie) = (
        procs.config.lb.listen,
        procs.config.lb.admin,
        procs.config.cookie.name.clone(),
    );
    let nodes: Vec<String> = procs
        .config
        .nodes
        .iter()
        .map(|n| format!("{} http://{}", n.name, n.http))
        .collect();
    // In sidecar mode the paths belong to the app behind the nodes, not to the built-in API.
    let sidecar = procs.config.nodes.iter().any(|n| n.upstream.is_some());
    let try_it = if sidecar {
        format!("open: http://{lb}/  (each node's app answers; the session lives in the nodes)")
    } else {
        format!(
            "try:  curl -si -c /tmp/jar -b /tmp/jar -X POST http://{lb}/session/incr/visits\n        \
             curl -s  -c /tmp/jar -b /tmp/jar http://{lb}/session"
        )
    };
    println!(
        "\n  cluster up: lb http://{lb}  (admin http://{admin}/status, /metrics)\n  nodes: {}\n  logs:  {}\n\n  \
         {try_it}\n  (the routing cookie is {cookie})\n  Ctrl-C stops everything.\n",
        nodes.join(", "),
        procs.log_dir.display()
    );
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = poll.tick() => {
                if let Some((key, st)) = procs.exited() {
                    eprintln!("{key} exited ({st}); stopping the cluster. Its last log lines:\n{}", procs.log_tail(&key));
                    break;
                }
            }
        }
    }
    procs.shutdown(Duration::from_secs(5)).await;
    println!("stopped");
    Ok(())
}
