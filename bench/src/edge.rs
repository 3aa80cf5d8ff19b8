//! `bench edge` (issue 13): the balancer's edge features against HAProxy (Debian's, when installed), in one
//! run, as ratios. Four workloads, each on both proxies:
//! 1. *Layer-4 connections*: many short TCP connections through `[lb.l4]` and through HAProxy `mode tcp` with
//!    `balance source` to the same nodes, each one `GET /_node/health` with `Connection: close`, read to EOF.
//!    The clients come from 16 addresses of 127.0.1.0/24, so both proxies spread them over the nodes.
//! 2. *Layer-4 bytes*: a few long connections, each streaming bulk data from a bench-owned backend to the
//!    client. The nodes speak HTTP with capped bodies, so a second `lb` and a second HAProxy frontend relay to
//!    backends inside this process instead: they answer the health probe's `GET` like a node and stream to
//!    anything else.
//! 3. *TLS handshakes*: new connections, each a full TLS handshake (no resumption) and one pinned
//!    `GET /session` with `Connection: close` (each client's session made beforehand), against lb's `[lb.tls]`
//!    and HAProxy's `bind ... ssl crt` with the same EC P-256 certificate, which the run makes with the openssl
//!    CLI.
//! 4. *Pinned HTTPS GETs*: kept-alive HTTPS connections, each holding one session and sending `GET /session`
//!    with its cookies (HAProxy sticky by its own cookie, as in `bench compare`); every answer must come from
//!    the node the first one came from.
//!
//! Proxy CPU is read from /proc, so "per proxy CPU-second" compares what each proxy burns. As in
//! `bench compare`, each round measures the paths in a rotating order, ratios are taken round by round, and
//! the median is reported.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{COOKIE, HOST, SET_COOKIE};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use node::config::builder::NodeEntry;
use node::config::{ClusterConfig, ClusterFile};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::cli::write_file;
use crate::client::Jar;
use crate::cluster::{free_addrs, which, Procs, LB};
use crate::compare::{
    haproxy_global, haproxy_http, haproxy_tcp, median, merge_rounds, ratios_by_round, servers, Row,
};
use crate::cpu;
use crate::spec::parse_duration;

/// The flags of `bench edge`.
#[derive(clap::Args, Debug, Clone)]
pub struct EdgeArgs {
    /// Cluster file: its secret, cookie name, lb threads and replication settings are used; every process runs
    /// on free loopback ports.
    #[arg(long, default_value = "config/local.toml")]
    pub config: PathBuf,
    /// Each workload is measured this many times on each proxy, in a rotating order; ratios are taken round
    /// by round.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Measured time of one workload on one proxy in one round (at most 60 s).
    #[arg(long, default_value = "3s")]
    pub duration: String,
    /// Clients at once for connections, handshakes and GETs (each GET client holds one connection and one
    /// session).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Long connections of the bytes workload.
    #[arg(long, default_value_t = 4)]
    pub streams: usize,
    /// Bounds every connect, handshake, request and read.
    #[arg(long, default_value = "5s")]
    pub timeout: String,
    /// Write every run, the ratios and the table as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Short Layer-4 connections to the nodes.
    L4Connections,
    /// Long Layer-4 connections streaming from bench-owned backends.
    L4Bytes,
    /// New TLS connections, one request each.
    TlsHandshakes,
    /// Kept-alive HTTPS connections, pinned `GET /session`.
    HttpsGets,
}

impl Workload {
    /// In the order they run in each round.
    pub const ALL: [Workload; 4] = [
        Workload::L4Connections,
        Workload::L4Bytes,
        Workload::TlsHandshakes,
        Workload::HttpsGets,
    ];

    /// Its name in the tables and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Workload::L4Connections => "L4 connections",
            Workload::L4Bytes => "L4 bytes",
            Workload::TlsHandshakes => "TLS handshakes",
            Workload::HttpsGets => "pinned HTTPS GETs",
        }
    }

    /// What one counted operation is, per second.
    pub fn unit(self) -> &'static str {
        match self {
            Workload::L4Connections => "conn",
            Workload::L4Bytes => "MB",
            Workload::TlsHandshakes => "hs",
            Workload::HttpsGets => "GET",
        }
    }

    /// Counted operations per unit: bytes are reported in MB (10^6).
    pub fn scale(self) -> f64 {
        match self {
            Workload::L4Bytes => 1e6,
            _ => 1.0,
        }
    }
}

/// Every loop stops after this many operations, whatever the time.
const MAX_OPS: u64 = 10_000_000;
/// An answer longer than this is not read further (the answers here are a few hundred bytes).
const MAX_ANSWER: usize = 64 * 1024;
/// A bench backend streams to one connection at most this long.
const STREAM_MAX: Duration = Duration::from_secs(120);
/// The longest measured window of one workload on one proxy.
const MAX_DURATION: Duration = Duration::from_secs(60);
/// After a failed operation a client waits this long, so a refusing proxy is not hammered in a tight loop.
const ERROR_PAUSE: Duration = Duration::from_millis(20);
/// Error messages kept per run; the count is always exact.
const ERROR_SAMPLES: usize = 3;
/// The Layer-4 request: what a probe sends, answered by any node.
const HEALTH_REQUEST: &str =
    "GET /_node/health HTTP/1.1\r\nHost: bench-edge\r\nConnection: close\r\n\r\n";
/// What a bytes client sends to open its stream.
const BULK_REQUEST: &[u8] = b"BULK /stream HTTP/1.1\r\nHost: bench-edge\r\n\r\n";

/// One proxy in front of one set of backends.
#[derive(Clone, Debug)]
struct Target {
    /// `lb` or `haproxy`.
    name: &'static str,
    /// The process whose CPU is read, as [`Procs`] knows it.
    key: &'static str,
    addr: SocketAddr,
}

/// What the clients of every run share.
struct Env {
    duration: Duration,
    timeout: Duration,
    concurrency: usize,
    streams: usize,
    tls: TlsConnector,
}

/// What the clients of one run found.
#[derive(Default, Debug)]
struct Tally {
    /// Connections, handshakes, GETs or bytes, counted inside the measured window.
    ops: u64,
    errors: u64,
    samples: Vec<String>,
    /// Latency of each operation (not for bytes), in microseconds.
    lat_us: Vec<u32>,
    /// Answers by the node that gave them (`X-Served-By`).
    served: BTreeMap<String, u64>,
    /// The TLS parameters the first handshake settled on.
    tls: Option<String>,
}

impl Tally {
    fn fail(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.samples.len() < ERROR_SAMPLES {
            self.samples.push(e.to_string());
        }
    }

    fn ok(&mut self, started: Instant, served: Option<&str>) {
        self.ops += 1;
        self.lat_us
            .push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
        if let Some(n) = served {
            *self.served.entry(n.to_string()).or_default() += 1;
        }
    }

    fn merge(&mut self, o: Tally) {
        self.ops += o.ops;
        self.errors += o.errors;
        for s in o.samples {
            if self.samples.len() < ERROR_SAMPLES {
                self.samples.push(s);
            }
        }
        self.lat_us.extend(o.lat_us);
        for (k, v) in o.served {
            *self.served.entry(k).or_default() += v;
        }
        self.tls = self.tls.take().or(o.tls);
    }
}

/// One workload on one proxy in one round.
struct Measured {
    workload: Workload,
    round: usize,
    target: &'static str,
    elapsed: Duration,
    proxy_cpu: Option<Duration>,
    bench_cpu: Duration,
    tally: Tally,
}

impl Measured {
    fn row(&self) -> Row {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        Row {
            name: self.target.to_string(),
            rps: self.tally.ops as f64 / secs,
            p99_ms: percentile_ms(&self.tally.lat_us, 0.99),
            proxy_cpu: self.proxy_cpu,
            requests: self.tally.ops,
            failed: self.tally.errors > 0,
        }
    }

    fn line(&self) -> String {
        let w = self.workload;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let row = self.row();
        let mut t = format!(
            "  {}: {:.1} {}/s",
            self.target,
            row.rps / w.scale(),
            w.unit()
        );
        if w != Workload::L4Bytes {
            let _ = write!(t, ", p99 {:.2} ms", row.p99_ms);
        }
        let cores = |c: Duration| c.as_secs_f64() / secs;
        let _ = write!(
            t,
            ", proxy {} cores, bench {:.2} cores, {} errors",
            self.proxy_cpu
                .map_or("-".into(), |c| format!("{:.2}", cores(c))),
            cores(self.bench_cpu),
            self.tally.errors
        );
        if !self.tally.served.is_empty() {
            let _ = write!(t, "; {}", spread(&self.tally.served));
        }
        if let Some(tls) = &self.tally.tls {
            let _ = write!(t, "; {tls}");
        }
        for s in &self.tally.samples {
            let _ = write!(t, "\n    error: {s}");
        }
        t
    }

    fn json(&self) -> Value {
        let row = self.row();
        json!({
            "workload": self.workload.name(), "round": self.round + 1, "proxy": self.target,
            "ops": self.tally.ops, "per_s": row.rps, "p99_ms": row.p99_ms,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "proxy_cpu_s": self.proxy_cpu.map(|c| c.as_secs_f64()),
            "per_proxy_cpu_s": row.per_cpu_s(),
            "bench_cpu_s": self.bench_cpu.as_secs_f64(),
            "errors": self.tally.errors, "error_samples": self.tally.samples,
            "served": self.tally.served, "tls": self.tally.tls,
        })
    }
}

/// Runs every workload on lb and on HAProxy (lb alone when HAProxy is not installed), `--rounds` times, prints
/// the table of ratios and writes `--json`; `Ok(false)` when any operation failed on any proxy.
///
/// # Errors
/// When a flag is invalid, openssl is missing, a process cannot be started, or the output cannot be written.
pub async fn edge(args: &EdgeArgs) -> Result<bool> {
    let base = ClusterConfig::load(&args.config)?;
    let duration = parse_duration(&args.duration)?;
    if duration.is_zero() || duration > MAX_DURATION {
        bail!("--duration must be more than 0 and at most {MAX_DURATION:?}");
    }
    let rounds = args.rounds.max(1);
    let dir = std::env::temp_dir().join(format!("bench-edge-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let certs = make_certificate(&dir)?;

    // Every address of the run at once, none alike: the lb's listener, admin and Layer-4 listener, two per
    // node, the bulk lb's three and its entries' replication addresses, HAProxy's three.
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut free = free_addrs(ip, 3 + 2 * 3 + 3 + 3 + 3)?.into_iter();
    let mut addr = || free.next().context("fewer free addresses than asked for");
    let (listen, admin, l4) = (addr()?, addr()?, addr()?);
    let mut file = edge_file(&base, listen, admin, l4);
    file.lb.extra.push_str(&format!(
        "\n[lb.tls]\ncert = {}\nkey = {}\nh2 = true\n",
        toml_string(&certs.cert),
        toml_string(&certs.key)
    ));
    for i in 1..=3 {
        let mut n = NodeEntry::new(format!("n{i}"), addr()?, addr()?);
        n.machine = Some(format!("m{i}"));
        file.nodes.push(n);
    }
    let path = dir.join("edge.toml");
    std::fs::write(&path, file.render())?;

    let streamers = Streamers::start(ip, 3).await?;
    let (bulk_listen, bulk_admin, bulk_l4) = (addr()?, addr()?, addr()?);
    let mut bulk = edge_file(&base, bulk_listen, bulk_admin, bulk_l4);
    for (i, a) in streamers.addrs.iter().enumerate() {
        // Never bound: no node process runs for these entries.
        bulk.nodes
            .push(NodeEntry::new(format!("s{}", i + 1), *a, addr()?));
    }
    let bulk_path = dir.join("bulk.toml");
    std::fs::write(&bulk_path, bulk.render())?;
    let bulk_cfg = ClusterConfig::load(&bulk_path)?;

    let mut procs = Procs::new(&path)?;
    procs.start_all(true).await?;
    procs.wait_healthy(LB, l4, node::HEALTH_PATH).await?;
    let b = bulk_path.display().to_string();
    procs.spawn(BULK_LB, Path::new("lb"), &["--config", &b])?;
    procs.wait_healthy(BULK_LB, bulk_admin, "/status").await?;
    procs
        .wait_healthy(BULK_LB, bulk_l4, node::HEALTH_PATH)
        .await?;

    let mut targets: BTreeMap<&'static str, Vec<Target>> = BTreeMap::new();
    let lb = |addr| Target {
        name: "lb",
        key: LB,
        addr,
    };
    targets.insert(Workload::L4Connections.name(), vec![lb(l4)]);
    targets.insert(
        Workload::L4Bytes.name(),
        vec![Target {
            key: BULK_LB,
            ..lb(bulk_l4)
        }],
    );
    targets.insert(Workload::TlsHandshakes.name(), vec![lb(listen)]);
    targets.insert(Workload::HttpsGets.name(), vec![lb(listen)]);

    let haproxy_version = match which("haproxy") {
        Some(haproxy) => {
            let version = Command::new(&haproxy)
                .arg("-v")
                .output()
                .ok()
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .and_then(|v| v.lines().next().map(str::to_string))
                .unwrap_or_default();
            let (h_l4, h_tls, h_bulk) = (addr()?, addr()?, addr()?);
            let mut c = haproxy_global(procs.config.lb.threads);
            c.push_str(&haproxy_tcp("l4", h_l4, &servers(&procs.config)));
            c.push_str(&haproxy_http(
                "https",
                h_tls,
                Some(&certs.haproxy_pem),
                &servers(&procs.config),
            ));
            c.push_str(&haproxy_tcp("bulk", h_bulk, &servers(&bulk_cfg)));
            let cfg_file = dir.join("haproxy.cfg");
            std::fs::write(&cfg_file, c)?;
            let f = cfg_file.display().to_string();
            procs.spawn(HAPROXY, &haproxy, &["-f", &f, "-db"])?;
            procs.wait_healthy(HAPROXY, h_l4, node::HEALTH_PATH).await?;
            procs
                .wait_healthy(HAPROXY, h_bulk, node::HEALTH_PATH)
                .await?;
            let h = |addr| Target {
                name: "haproxy",
                key: HAPROXY,
                addr,
            };
            for (w, a) in [
                (Workload::L4Connections, h_l4),
                (Workload::L4Bytes, h_bulk),
                (Workload::TlsHandshakes, h_tls),
                (Workload::HttpsGets, h_tls),
            ] {
                targets.entry(w.name()).or_default().push(h(a));
            }
            Some(version)
        }
        None => {
            eprintln!("haproxy is not installed: lb alone, no ratios");
            None
        }
    };

    let env = Arc::new(Env {
        duration,
        timeout: parse_duration(&args.timeout)?,
        concurrency: args.concurrency.max(1),
        streams: args.streams.max(1),
        tls: TlsConnector::from(tls_client(&std::fs::read(&certs.cert)?)?),
    });
    eprintln!(
        "lb {} (Layer 4 {l4}, bulk Layer 4 {bulk_l4}), nodes {}, {}; logs in {}",
        listen,
        procs
            .config
            .nodes
            .iter()
            .map(|n| n.http.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        haproxy_version.as_deref().unwrap_or("no HAProxy"),
        procs.log_dir.display()
    );

    let mut runs: Vec<Measured> = Vec::new();
    for round in 0..rounds {
        for w in Workload::ALL {
            let ts = &targets[w.name()];
            for k in 0..ts.len() {
                // A rotating order, so that a drift in the machine's load (it is shared) falls on both alike.
                let t = &ts[(k + round) % ts.len()];
                let m = measure(w, round, t, procs.pid(t.key), &env).await;
                eprintln!(
                    "== round {} of {rounds}, {} via {} ({}):\n{}",
                    round + 1,
                    w.name(),
                    t.name,
                    t.addr,
                    m.line()
                );
                runs.push(m);
            }
        }
    }
    let exited = procs.exited();
    if let Some((key, st)) = &exited {
        eprintln!(
            "{key} exited during the run ({st}); log:\n{}",
            procs.log_tail(key)
        );
    }
    procs.kill_all();
    drop(streamers);

    let t = table(&runs, &targets, rounds, args, haproxy_version.as_deref());
    println!("{t}");
    if let Some(p) = &args.json {
        let v = json!({
            "workload": {
                "rounds": rounds, "duration_s": duration.as_secs_f64(), "concurrency": env.concurrency,
                "streams": env.streams, "haproxy": haproxy_version,
            },
            "runs": runs.iter().map(Measured::json).collect::<Vec<_>>(),
            "ratios": Workload::ALL.iter().map(|w| {
                let rounds = by_round(&runs, *w, &targets[w.name()]);
                let rate = ratios_by_round(&rounds, 0, 1, |r| Some(r.rps));
                let cpu = ratios_by_round(&rounds, 0, 1, Row::per_cpu_s);
                (w.name().to_string(), json!({
                    "rate_by_round": rate, "rate_median": median(rate.clone()),
                    "per_proxy_cpu_s_by_round": cpu, "per_proxy_cpu_s_median": median(cpu.clone()),
                }))
            }).collect::<serde_json::Map<_, _>>(),
            "table": t,
        });
        write_file(p, &serde_json::to_string_pretty(&v)?)?;
    }
    let clean = exited.is_none() && runs.iter().all(|m| m.tally.errors == 0 && m.tally.ops > 0);
    if clean {
        let _ = std::fs::remove_dir_all(&procs.log_dir);
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!(
            "errors: logs kept in {} and files in {}",
            procs.log_dir.display(),
            dir.display()
        );
    }
    Ok(clean)
}

/// The key of the second lb, whose nodes are the bench's own streaming backends.
const BULK_LB: &str = "lb-bulk";
/// The key of the one HAProxy process that serves every workload.
const HAPROXY: &str = "haproxy";

/// A cluster file on the given addresses with `base`'s secret, cookie and lb threads, and a Layer-4 listener;
/// no nodes yet.
fn edge_file(
    base: &ClusterConfig,
    listen: SocketAddr,
    admin: SocketAddr,
    l4: SocketAddr,
) -> ClusterFile {
    let mut file = ClusterFile::new(base.secret.clone(), listen, admin);
    file.cookie.name = Some(base.cookie.name.clone());
    file.lb.threads = Some(base.lb.threads);
    file.lb.extra = format!("\n[lb.l4]\nlisten = \"{l4}\"\n");
    file.replication.mode = Some(base.replication.mode);
    file.replication.heartbeat = Some(base.replication.heartbeat);
    file.replication.peer_timeout = Some(base.replication.peer_timeout);
    file.replication.max_updates = Some(base.replication.max_updates);
    file.replication.max_delay = Some(base.replication.max_delay);
    // X-Served-By shows how each proxy spread the clients, and proves the GETs stayed pinned.
    file.node.expose_node = Some(true);
    // No session expires during a run.
    file.session.idle_timeout = Some(Duration::from_secs(3600));
    file
}

/// `path` as a TOML string.
fn toml_string(path: &Path) -> String {
    toml_edit::Value::from(path.display().to_string()).to_string()
}

/// The certificate and key for both proxies.
struct Certificate {
    /// For lb's `[lb.tls] cert`, and the client's trust root.
    cert: PathBuf,
    /// For lb's `[lb.tls] key`.
    key: PathBuf,
    /// Both in one file, as HAProxy's `crt` wants them.
    haproxy_pem: PathBuf,
}

/// A self-signed EC P-256 certificate for 127.0.0.1, made with the openssl CLI into `dir`. Not a CA, so that
/// the client can trust it as it is (webpki refuses a CA certificate as a server's).
fn make_certificate(dir: &Path) -> Result<Certificate> {
    let openssl =
        which("openssl").context("openssl is not installed (the certificate is made with it)")?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!(
            "openssl req failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let haproxy_pem = dir.join("haproxy.pem");
    let mut both = std::fs::read(&cert)?;
    both.extend(std::fs::read(&key)?);
    std::fs::write(&haproxy_pem, both)?;
    Ok(Certificate {
        cert,
        key,
        haproxy_pem,
    })
}

/// A TLS client on ring that trusts only `cert_pem`, offers only HTTP/1.1, and never resumes a session, so
/// that every handshake is a full one.
fn tls_client(cert_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(cert_pem) {
        roots.add(c.context("reading the certificate")?)?;
    }
    // ring, as lb's own TLS: deprecated in rustls only for lacking post-quantum key exchange, which neither
    // proxy measured here offers (HAProxy's OpenSSL 3.0 has none either). Its list starts with P-384; a browser
    // offers X25519 first, and both servers follow the client's order, so that is the order here.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        kx_groups: {
            use rustls::crypto::ring::kx_group::{SECP256R1, SECP384R1, X25519};
            vec![X25519, SECP256R1, SECP384R1]
        },
        ..rustls::crypto::ring::default_provider()
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// The bench's own backends for the bytes workload, on `ip`: each answers a `GET` (the lb's health probe) as a
/// node would, and streams to anything else until the client goes or [`STREAM_MAX`] passes. Stopped on drop.
struct Streamers {
    addrs: Vec<SocketAddr>,
    tasks: JoinSet<()>,
}

impl Streamers {
    async fn start(ip: IpAddr, n: usize) -> Result<Streamers> {
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::new();
        for i in 1..=n {
            let listener = TcpListener::bind((ip, 0)).await?;
            addrs.push(listener.local_addr()?);
            let name = format!("s{i}");
            tasks.spawn(async move {
                // Dropped with this task, so aborting the accept loop ends its connections too.
                let mut conns = JoinSet::new();
                while let Ok((s, _)) = listener.accept().await {
                    conns.spawn(stream_to(s, name.clone()));
                    while conns.try_join_next().is_some() {}
                }
            });
        }
        Ok(Streamers { addrs, tasks })
    }
}

impl Drop for Streamers {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// One connection to a bench backend.
async fn stream_to(mut s: TcpStream, name: String) {
    // The whole request head first: closing with unread bytes would reset the connection, and the probe
    // would count a failure.
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut s)).await;
    let Ok(Ok(head)) = head else { return };
    if head.starts_with(b"GET ") {
        let body = json!({ "name": name }).to_string();
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\
             X-Served-By: {name}\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(answer.as_bytes()).await;
        let _ = s.shutdown().await;
        return;
    }
    static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];
    let started = Instant::now();
    while started.elapsed() < STREAM_MAX {
        match tokio::time::timeout(Duration::from_secs(10), s.write_all(&CHUNK)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// Reads until the end of a request head (a blank line), at most 4 KiB.
async fn read_head(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 4096 {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

/// Runs one workload against one proxy: every client gets ready, then all start at once; CPU is read at the
/// start and once the last client is done.
async fn measure(
    w: Workload,
    round: usize,
    t: &Target,
    pid: Option<u32>,
    env: &Arc<Env>,
) -> Measured {
    let n = match w {
        Workload::L4Bytes => env.streams,
        _ => env.concurrency,
    };
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut clients = JoinSet::new();
    for i in 0..n {
        let (env, barrier, addr) = (env.clone(), barrier.clone(), t.addr);
        clients.spawn(async move {
            match w {
                Workload::L4Connections => l4_connections(&env, addr, i, &barrier).await,
                Workload::L4Bytes => l4_bytes(&env, addr, i, &barrier).await,
                Workload::TlsHandshakes => tls_handshakes(&env, addr, &barrier).await,
                Workload::HttpsGets => https_gets(&env, addr, &barrier).await,
            }
        });
    }
    barrier.wait().await;
    let (cpu0, own0, start) = (pid.and_then(cpu::of_pid), cpu::own(), Instant::now());
    let mut tally = Tally::default();
    while let Some(r) = clients.join_next().await {
        match r {
            Ok(t) => tally.merge(t),
            Err(e) => tally.fail(format!("a client task failed: {e}")),
        }
    }
    let elapsed = start.elapsed();
    let proxy_cpu = pid
        .and_then(cpu::of_pid)
        .zip(cpu0)
        .map(|(a, b)| a.saturating_sub(b));
    Measured {
        workload: w,
        round,
        target: t.name,
        elapsed,
        proxy_cpu,
        bench_cpu: cpu::own().saturating_sub(own0),
        tally,
    }
}

/// Client `i`'s source address: one of 16 in `127.0.<third>.0/24`, so that address affinity has several
/// clients to spread.
fn source_ip(third: u8, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, third, (i % 16) as u8 + 1)
}

/// A TCP connection to `to` from `from` (port chosen by the kernel): Layer-4 affinity tells clients apart by
/// their 127.x.y.z address.
///
/// # Errors
/// When `from` cannot be bound or the connection is refused.
pub async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
    let s = s.connect(to).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Writes `request`, reads the answer to the end (the server closes after it), and checks it is a 200.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    request: &[u8],
) -> Result<Vec<u8>, String> {
    s.write_all(request)
        .await
        .map_err(|e| format!("writing: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_ANSWER {
                    break;
                }
            }
            // A TLS server that closes without close_notify after its answer: the answer is all there
            // (Connection: close).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => break,
            Err(e) => return Err(format!("reading after {} bytes: {e}", buf.len())),
        }
    }
    if !status_ok(&buf) {
        return Err(format!("answer: {:?}", first_line(&buf)));
    }
    Ok(buf)
}

async fn l4_connections(env: &Env, to: SocketAddr, i: usize, go: &Barrier) -> Tally {
    let from = source_ip(1, i);
    let mut t = Tally::default();
    go.wait().await;
    let end = Instant::now() + env.duration;
    while Instant::now() < end && t.ops + t.errors < MAX_OPS {
        let started = Instant::now();
        let once = async {
            let mut s = connect_from(from, to)
                .await
                .map_err(|e| format!("connecting from {from}: {e}"))?;
            exchange(&mut s, HEALTH_REQUEST.as_bytes()).await
        };
        match tokio::time::timeout(env.timeout, once).await {
            Ok(Ok(answer)) => t.ok(started, header(&answer, "x-served-by")),
            Ok(Err(e)) => error_pause(&mut t, e).await,
            Err(_) => error_pause(&mut t, format!("no answer within {:?}", env.timeout)).await,
        }
    }
    t
}

async fn l4_bytes(env: &Env, to: SocketAddr, i: usize, go: &Barrier) -> Tally {
    let from = source_ip(2, i);
    let mut t = Tally::default();
    let ready = async {
        let mut s = connect_from(from, to)
            .await
            .map_err(|e| format!("connecting from {from}: {e}"))?;
        s.write_all(BULK_REQUEST)
            .await
            .map_err(|e| format!("writing: {e}"))?;
        // The stream flows before the start, so the window measures a relay at full speed.
        let mut first = [0u8; 1];
        s.read_exact(&mut first)
            .await
            .map_err(|e| format!("no stream: {e}"))?;
        Ok::<_, String>(s)
    };
    let mut s = match prepared(env, go, "no stream", ready).await {
        Ok(s) => s,
        Err(e) => {
            t.fail(e);
            return t;
        }
    };
    let end = tokio::time::Instant::now() + env.duration;
    let mut buf = vec![0u8; 64 * 1024];
    let mut reads = 0u64;
    while reads < MAX_OPS {
        reads += 1;
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) => {
                t.fail("the stream ended early");
                break;
            }
            Ok(Ok(n)) => t.ops += n as u64,
            Ok(Err(e)) => {
                t.fail(format!("reading: {e}"));
                break;
            }
        }
    }
    t
}

/// A TLS connection to `to` (certificate checked for 127.0.0.1).
async fn connect_tls(env: &Env, to: SocketAddr) -> Result<TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(to)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::IpAddress(to.ip().into());
    env.tls
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))
}

/// What a handshake settled on, e.g. `TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519`.
fn negotiated(s: &TlsStream<TcpStream>) -> String {
    let c = s.get_ref().1;
    let opt = |o: Option<String>| o.unwrap_or_else(|| "-".into());
    format!(
        "{} {} {}",
        opt(c.protocol_version().map(|v| format!("{v:?}"))),
        opt(c
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))),
        opt(c
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name())))
    )
}

/// Waits for `prepare` (at most the timeout; else `"{what} within ..."`), then for every worker at `go`, so
/// that the measured window starts for all at once whatever the preparation gave.
async fn prepared<T>(
    env: &Env,
    go: &Barrier,
    what: &str,
    prepare: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let ready = match tokio::time::timeout(env.timeout, prepare).await {
        Ok(r) => r,
        Err(_) => Err(format!("{what} within {:?}", env.timeout)),
    };
    go.wait().await;
    ready
}

async fn tls_handshakes(env: &Env, to: SocketAddr, go: &Barrier) -> Tally {
    let mut t = Tally::default();
    // A returning browser: its session (and HAProxy's cookie) made beforehand, on a connection of its own.
    // lb answers `/_node/` paths itself with 404, so a session's GET is the cheapest request both pass on.
    let (request, node) = match prepared(env, go, "no session", Pinned::open(env, to)).await {
        Ok(p) => (
            format!(
                "GET /session HTTP/1.1\r\nHost: {to}\r\nCookie: {}\r\nConnection: close\r\n\r\n",
                p.jar.header().unwrap_or_default()
            ),
            p.node,
        ),
        Err(e) => {
            t.fail(e);
            return t;
        }
    };
    let end = Instant::now() + env.duration;
    while Instant::now() < end && t.ops + t.errors < MAX_OPS {
        let started = Instant::now();
        let once = async {
            let mut s = connect_tls(env, to).await?;
            let tls = negotiated(&s);
            exchange(&mut s, request.as_bytes()).await.map(|a| (a, tls))
        };
        match tokio::time::timeout(env.timeout, once).await {
            Ok(Ok((answer, tls))) => match header(&answer, "x-served-by") {
                Some(n) if n == node => {
                    t.tls.get_or_insert(tls);
                    t.ok(started, Some(n));
                }
                other => t.fail(format!("pinned to {node} but answered by {other:?}")),
            },
            Ok(Err(e)) => error_pause(&mut t, e).await,
            Err(_) => error_pause(&mut t, format!("no answer within {:?}", env.timeout)).await,
        }
    }
    t
}

/// One kept-alive HTTPS connection holding one session.
struct Pinned {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    jar: Jar,
    host: String,
    node: String,
}

impl Pinned {
    /// Opens the connection and makes the session with a first `GET /session`.
    async fn open(env: &Env, to: SocketAddr) -> Result<Pinned, String> {
        let s = connect_tls(env, to).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .map_err(|e| format!("HTTP/1.1 over TLS: {e}"))?;
        // Ends by itself once the sender is dropped or the server closes.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut p = Pinned {
            sender,
            jar: Jar::default(),
            host: to.to_string(),
            node: String::new(),
        };
        p.node = p.get().await?;
        if p.jar.header().is_none() {
            return Err("the first GET /session set no cookie".into());
        }
        Ok(p)
    }

    /// `GET /session` with the jar's cookies; the node that answered.
    async fn get(&mut self) -> Result<String, String> {
        let mut req = Request::get("/session").header(HOST, &self.host);
        if let Some(c) = self.jar.header() {
            req = req.header(COOKIE, c);
        }
        let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| format!("GET /session: {e}"))?;
        let (parts, body) = resp.into_parts();
        body.collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if parts.status != StatusCode::OK {
            return Err(format!("GET /session: {}", parts.status));
        }
        for v in parts.headers.get_all(SET_COOKIE) {
            if let Ok(v) = v.to_str() {
                self.jar.set(v);
            }
        }
        parts
            .headers
            .get("x-served-by")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| "no X-Served-By on the answer".into())
    }
}

async fn https_gets(env: &Env, to: SocketAddr, go: &Barrier) -> Tally {
    let mut t = Tally::default();
    let mut p = match prepared(env, go, "no session", Pinned::open(env, to)).await {
        Ok(p) => p,
        Err(e) => {
            t.fail(e);
            return t;
        }
    };
    let end = Instant::now() + env.duration;
    while Instant::now() < end && t.ops + t.errors < MAX_OPS {
        let started = Instant::now();
        match tokio::time::timeout(env.timeout, p.get()).await {
            Ok(Ok(node)) if node == p.node => t.ok(started, Some(&node)),
            Ok(Ok(node)) => t.fail(format!("pinned to {} but answered by {node}", p.node)),
            Ok(Err(e)) => {
                // The connection may be gone: no further GET on it is meaningful.
                t.fail(e);
                break;
            }
            Err(_) => {
                t.fail(format!("no answer within {:?}", env.timeout));
                break;
            }
        }
    }
    t
}

async fn error_pause(t: &mut Tally, e: String) {
    t.fail(e);
    tokio::time::sleep(ERROR_PAUSE).await;
}

/// Whether an HTTP/1.x answer's status is 200.
fn status_ok(answer: &[u8]) -> bool {
    let line = first_line(answer);
    let mut parts = line.split(' ');
    matches!(parts.next(), Some("HTTP/1.1" | "HTTP/1.0")) && parts.next() == Some("200")
}

fn first_line(answer: &[u8]) -> &str {
    let end = answer
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(answer.len().min(80));
    std::str::from_utf8(&answer[..end]).unwrap_or("<not UTF-8>")
}

/// The value of header `name` (lowercase) in an answer's head.
fn header<'a>(answer: &'a [u8], name: &str) -> Option<&'a str> {
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&answer[..end]).ok()?;
    head.split("\r\n").skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The `q` quantile of latencies in microseconds, in milliseconds; 0 when there are none.
fn percentile_ms(lat_us: &[u32], q: f64) -> f64 {
    if lat_us.is_empty() {
        return 0.0;
    }
    let mut v = lat_us.to_vec();
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    let (_, x, _) = v.select_nth_unstable(i);
    f64::from(*x) / 1000.0
}

/// Each node's share of the answers, e.g. `n1 40% n2 35% n3 25%`.
fn spread(served: &BTreeMap<String, u64>) -> String {
    let total = served.values().sum::<u64>().max(1) as f64;
    served
        .iter()
        .map(|(k, v)| format!("{k} {:.0}%", *v as f64 * 100.0 / total))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One workload's rows round by round, each round in the targets' order (lb, then HAProxy).
fn by_round(runs: &[Measured], w: Workload, targets: &[Target]) -> Vec<Vec<Row>> {
    let rounds = runs.iter().map(|m| m.round + 1).max().unwrap_or(0);
    (0..rounds)
        .map(|r| {
            targets
                .iter()
                .filter_map(|t| {
                    runs.iter()
                        .find(|m| m.workload == w && m.round == r && m.target == t.name)
                        .map(Measured::row)
                })
                .collect()
        })
        .collect()
}

/// The report: per workload, each proxy's merged rounds, then the table of ratios lb over HAProxy.
fn table(
    runs: &[Measured],
    targets: &BTreeMap<&'static str, Vec<Target>>,
    rounds: usize,
    args: &EdgeArgs,
    haproxy: Option<&str>,
) -> String {
    let mut t = format!(
        "\nbench edge: {rounds} rounds of {} per workload and proxy, rotating order; {} clients ({} streams for \
         bytes); {}\n",
        args.duration,
        args.concurrency,
        args.streams,
        haproxy.unwrap_or("HAProxy not installed")
    );
    let _ = writeln!(
        t,
        "\n  {:<18} {:<8} {:>12} {:>9} {:>11} {:>14} {:>7}",
        "workload", "proxy", "per s", "p99 ms", "proxy cpu s", "per proxy cpu-s", "errors"
    );
    let mut ratios = Vec::new();
    for w in Workload::ALL {
        let ts = &targets[w.name()];
        let rs = by_round(runs, w, ts);
        for row in merge_rounds(&rs) {
            let errors: u64 = runs
                .iter()
                .filter(|m| m.workload == w && m.target == row.name)
                .map(|m| m.tally.errors)
                .sum();
            let _ = writeln!(
                t,
                "  {:<18} {:<8} {:>12} {:>9} {:>11} {:>14} {:>7}",
                w.name(),
                row.name,
                format!("{:.1} {}", row.rps / w.scale(), w.unit()),
                if w == Workload::L4Bytes {
                    "-".into()
                } else {
                    format!("{:.2}", row.p99_ms)
                },
                row.proxy_cpu
                    .map_or("-".into(), |c| format!("{:.2}", c.as_secs_f64())),
                row.per_cpu_s()
                    .map_or("-".into(), |p| format!("{:.1}", p / w.scale())),
                errors
            );
        }
        if ts.len() == 2 {
            ratios.push((
                w,
                ratios_by_round(&rs, 0, 1, |r| Some(r.rps)),
                ratios_by_round(&rs, 0, 1, Row::per_cpu_s),
            ));
        }
    }
    if !ratios.is_empty() {
        t.push_str(&ratio_lines(&ratios));
    }
    t
}

/// The table of ratios lb over HAProxy: the median of the rounds, and each round's.
fn ratio_lines(ratios: &[(Workload, Vec<f64>, Vec<f64>)]) -> String {
    let list = |xs: &[f64]| {
        xs.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let ratio = |xs: &[f64]| format!("{:.2}x ({})", median(xs.to_vec()), list(xs));
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n  lb over HAProxy, median of the rounds (each round's in brackets):\n  {:<18} {:<36} per proxy CPU-second",
        "workload", "rate"
    );
    for (w, rate, cpu) in ratios {
        let (rate, cpu) = (ratio(rate), ratio(cpu));
        let _ = writeln!(t, "  {:<18} {rate:<36} {cpu}", w.name());
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_come_from_sixteen_loopback_addresses_in_their_own_subnet() {
        assert_eq!(source_ip(1, 0), Ipv4Addr::new(127, 0, 1, 1));
        assert_eq!(source_ip(1, 15), Ipv4Addr::new(127, 0, 1, 16));
        assert_eq!(source_ip(2, 16), Ipv4Addr::new(127, 0, 2, 1));
        assert!((0..100).all(|i| source_ip(1, i).is_loopback()));
    }

    #[test]
    fn only_a_200_status_line_is_ok_and_headers_are_found_case_insensitively() {
        let a = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-served-by: n2\r\n\r\n{}";
        assert!(status_ok(a));
        assert_eq!(header(a, "x-served-by"), Some("n2"));
        assert_eq!(header(a, "content-length"), Some("2"));
        assert_eq!(header(a, "cookie"), None);
        assert!(!status_ok(b"HTTP/1.1 2000 OK\r\n\r\n"));
        assert!(!status_ok(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"));
        assert!(!status_ok(b""));
        assert_eq!(
            first_line(b"HTTP/1.1 502 Bad Gateway\r\n\r\n"),
            "HTTP/1.1 502 Bad Gateway"
        );
    }

    #[test]
    fn the_99th_percentile_is_the_value_below_which_99_in_100_fall() {
        let lat: Vec<u32> = (1..=1000).rev().map(|x| x * 1000).collect();
        assert_eq!(percentile_ms(&lat, 0.99), 990.0);
        assert_eq!(percentile_ms(&lat, 1.0), 1000.0);
        assert_eq!(percentile_ms(&[], 0.99), 0.0);
        assert_eq!(percentile_ms(&[1500], 0.5), 1.5);
    }

    #[test]
    fn a_path_is_written_as_a_toml_string() {
        assert_eq!(
            toml_string(Path::new("/tmp/a b/c.pem")),
            "\"/tmp/a b/c.pem\""
        );
    }

    #[test]
    fn the_spread_gives_each_nodes_share_of_the_answers() {
        let served = BTreeMap::from([("n1".to_string(), 1), ("n2".to_string(), 3)]);
        assert_eq!(spread(&served), "n1 25% n2 75%");
    }

    fn measured(w: Workload, round: usize, target: &'static str, ops: u64, cpu_s: u64) -> Measured {
        Measured {
            workload: w,
            round,
            target,
            elapsed: Duration::from_secs(2),
            proxy_cpu: Some(Duration::from_secs(cpu_s)),
            bench_cpu: Duration::ZERO,
            tally: Tally {
                ops,
                ..Tally::default()
            },
        }
    }

    #[test]
    fn ratios_are_lb_over_haproxy_round_by_round_whatever_order_each_round_ran_in() {
        let w = Workload::TlsHandshakes;
        let target = |name| Target {
            name,
            key: name,
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
        };
        let targets = vec![target("lb"), target("haproxy")];
        // Round 2 ran HAProxy first.
        let runs = vec![
            measured(w, 0, "lb", 1000, 1),
            measured(w, 0, "haproxy", 2000, 1),
            measured(w, 1, "haproxy", 1000, 2),
            measured(w, 1, "lb", 1500, 1),
            measured(Workload::HttpsGets, 1, "lb", 7, 1),
        ];
        let rounds = by_round(&runs, w, &targets);
        assert_eq!(rounds.len(), 2);
        assert_eq!(rounds[1][0].name, "lb");
        assert_eq!(
            ratios_by_round(&rounds, 0, 1, |r| Some(r.rps)),
            vec![0.5, 1.5]
        );
        // Per CPU-second: 1000/1 over 2000/1, then 1500/1 over 1000/2.
        assert_eq!(
            ratios_by_round(&rounds, 0, 1, Row::per_cpu_s),
            vec![0.5, 3.0]
        );
        let lines = ratio_lines(&[(w, vec![0.5, 1.5], vec![0.5, 3.0])]);
        assert!(lines.contains("1.00x (0.50 1.50)"), "{lines}");
        assert!(lines.contains("1.75x (0.50 3.00)"), "{lines}");
    }
}
