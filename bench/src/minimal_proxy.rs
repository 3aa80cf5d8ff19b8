//! The reference point for the balancer's cost: the least a Pingora 0.9 proxy can be, forwarding every request
//! to one upstream. Built with the same profile and Pingora features as `lb`, and with lb's process-level
//! choices (mimalloc, set in the bench's `main.rs`; no work stealing; no downstream compression module) and,
//! given the cluster file, lb's own upstream peer (its connect and read timeouts, no pooled idle timeout), so
//! the difference between the two is the balancer's own logic. Runs as its own process (`bench minimal-proxy`) so
//! its CPU can be read apart from the generator's; `lb/perf/callgrind.sh minimal` counts its instructions.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::modules::http::HttpModules;
use pingora::prelude::HttpPeer;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

struct Forward {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Forward {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

/// Serves forever on `listen`, forwarding to `upstream`; both must be loopback. With `config`, the upstream
/// gets exactly the peer settings lb gives a node of that cluster file (its connect and read timeouts);
/// without, Pingora's defaults (no timeouts).
pub fn serve(
    listen: SocketAddr,
    upstream: SocketAddr,
    threads: usize,
    config: Option<&Path>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        listen.ip().is_loopback() && upstream.ip().is_loopback(),
        "loopback addresses only"
    );
    let peer = match config {
        Some(path) => {
            let cfg = node::config::ClusterConfig::load(path)?;
            lb::membership::node_peer(upstream, &cfg.lb.limits)
        }
        None => HttpPeer::new(upstream, false, String::new()),
    };
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = http_proxy_service(&Arc::clone(&server.configuration), Forward { peer });
    svc.add_tcp(&listen.to_string());
    svc.threads = Some(threads.max(1));
    server.add_service(svc);
    server.run_forever()
}
