//! Wiring: one Pingora server with the proxy service, the Layer-4 service when configured, the admin service
//! and a control service (health checks, SIGHUP reloads, graceful exit).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use node::config::ClusterConfig;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use tokio::signal::unix::{signal, SignalKind};

use crate::admin::Admin;
use crate::health;
use crate::l4::L4App;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::proxy::{Lb, LbApp};
use crate::tls::{self, Certs};
use pingora::tls::sign::CertifiedKey;

/// Builds the server for a config and certificate already read and checked from `path` (which reloads
/// re-read; [`crate::membership::read_file`]); `key` is `Some` exactly when the file has `[lb.tls]`.
pub fn build(path: &Path, cfg: ClusterConfig, key: Option<Arc<CertifiedKey>>) -> Server {
    let lb = cfg.lb.clone();
    let certs = key.map(|key| Arc::new(Certs::new(key)));
    let mut membership = Membership::from_config(path, cfg, Arc::new(Metrics::new()));
    if let Some(c) = &certs {
        membership = membership.with_certs(c.clone());
    }
    let membership = Arc::new(membership);
    let conf = ServerConf {
        // Services set their own thread counts; this one is for the control service.
        threads: 1,
        // One runtime per thread without stealing: measured cheaper per request for a proxy (notes/pingora-0.9).
        work_stealing: false,
        // Our control service exits as soon as in-flight requests are done; this is only the upper bound.
        grace_period_seconds: Some(lb.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    // One per process, for its whole life: requests count themselves without an Arc's reference count.
    let in_flight: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
    let proxy = pingora::proxy::http_proxy(
        &server.configuration,
        Lb::new(membership.clone(), in_flight, lb.tls.is_some()),
    );
    let mut service = Service::new("lb".to_string(), LbApp::new(proxy, membership.clone()));
    match (&lb.tls, certs) {
        (Some(t), Some(certs)) => {
            service.add_tls_with_settings(&lb.listen.to_string(), None, tls::settings(certs, t.h2))
        }
        _ => service.add_tcp(&lb.listen.to_string()),
    }
    service.threads = Some(lb.threads);

    let l4 = lb.l4.clone().map(|cfg| {
        let listen = cfg.listen.to_string();
        let mut s = Service::new(
            "lb l4".to_string(),
            L4App::new(membership.clone(), cfg, in_flight),
        );
        s.add_tcp(&listen);
        s.threads = Some(lb.threads);
        s
    });

    warn_if_admin_exposed(&lb);
    if lb.l4.as_ref().is_some_and(|l| !l.send_proxy) {
        tracing::warn!(
            "[lb.l4] relays clients to the nodes as the lb itself: their /_node/ paths (a session's copy by id, \
             metrics) answer them; set [lb.l4] send_proxy = true and [node] accept_proxy = true so nodes tell \
             clients apart"
        );
    }
    let mut admin = Service::new("lb admin".to_string(), Admin::new(membership.clone()));
    admin.add_tcp(&lb.admin.to_string());
    admin.threads = Some(1);

    let control = background_service(
        "lb control",
        Control {
            membership,
            in_flight,
            grace: lb.grace_period,
        },
    );
    server.add_service(service);
    if let Some(l4) = l4 {
        server.add_service(l4);
    }
    server.add_service(admin);
    server.add_service(control);
    server
}

/// The admin listener can reload the config and shows every node: off loopback, say so at start.
fn warn_if_admin_exposed(lb: &node::config::LbConfig) {
    if lb.admin.ip().is_loopback() {
        return;
    }
    if lb.admin_token.is_some() {
        tracing::warn!(
            admin = %lb.admin,
            "the admin listener is not on loopback; its requests need [lb] admin_token, which crosses the \
             network in clear text (the admin listener has no TLS)"
        );
    } else {
        tracing::warn!(
            admin = %lb.admin,
            "the admin listener is not on loopback and [lb] admin_token is not set: anyone who reaches it can \
             read /status and /metrics and POST /reload"
        );
    }
}

/// Health checks, SIGHUP reloads and the graceful exit.
struct Control {
    membership: Arc<Membership>,
    in_flight: &'static AtomicUsize,
    /// The grace period Pingora was started with: a reload cannot change it (it says so), so it is not re-read.
    grace: Duration,
}

#[async_trait]
impl BackgroundService for Control {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::spawn(health::run(self.membership.clone(), shutdown.clone()));
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP, reload only through POST /reload: {e}");
                None
            }
        };
        while !*shutdown.borrow() {
            tokio::select! {
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading");
                    // Inline, as POST /reload is: reading a small file takes a millisecond, and a blocking-pool
                    // thread made for it (gone 10 s later) left its allocator pages resident, about 1.5 MiB
                    // measured at the first reload (bench/PERFORMANCE.md, 2026-12-07). Errors are logged (with
                    // file and line) by reload itself; the old config keeps serving.
                    let _ = self.membership.reload();
                }
                r = shutdown.changed() => if r.is_err() { break },
            }
        }
        // Pingora has stopped accepting; it would sleep the whole grace period. Leave as soon as the requests
        // already accepted are answered.
        let grace = self.grace;
        let deadline = Instant::now() + grace;
        tracing::info!(
            in_flight = self.in_flight.load(Ordering::Relaxed),
            ?grace,
            "shutting down gracefully"
        );
        while self.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = self.in_flight.load(Ordering::Relaxed);
        if left > 0 {
            tracing::warn!(left, "grace period over, exiting with requests in flight");
        } else {
            tracing::info!("all requests answered, exiting");
        }
        std::process::exit(0);
    }
}
