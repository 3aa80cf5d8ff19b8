//! The baseline `lb`'s own cost is measured against: the least a Pingora 0.9 proxy can be (every request to one
//! upstream), with the same process-level choices as `lb` — mimalloc, one runtime per thread without work
//! stealing, no downstream compression module — so that the difference is the balancer's logic alone.
//! (`bench minimal-proxy` is Pingora with its defaults.) Used by `lb/perf/callgrind.sh`.
//!
//! `cargo run --release -p lb --example minimal_pingora -- LISTEN UPSTREAM [THREADS]`

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::modules::http::HttpModules;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Forward {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Forward {
    type CTX = ();

    fn new_ctx(&self) {}

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: minimal_pingora LISTEN UPSTREAM [THREADS]";
    let listen: SocketAddr = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let upstream: SocketAddr = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let threads: usize = args.next().map_or(Ok(1), |t| t.parse())?;
    anyhow::ensure!(
        listen.ip().is_loopback() && upstream.ip().is_loopback(),
        "loopback addresses only"
    );
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = http_proxy_service(&Arc::clone(&server.configuration), Forward { upstream });
    svc.add_tcp(&listen.to_string());
    svc.threads = Some(threads.max(1));
    server.add_service(svc);
    server.run_forever()
}
