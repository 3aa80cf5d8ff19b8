//! TLS and HTTP/2 on the balancer's listener (`[lb.tls]`, issue 13), with real processes and the `curl` CLI
//! (the harness's reqwest has no TLS backend): sessions over https get `Secure` cookies, one HTTP/2 connection
//! carries requests of sessions on different nodes, a reload refuses a bad certificate and swaps in a good one,
//! and `lb check` names an expired certificate.

mod lb_support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use cluster_tests::{bin, wait_until, Cluster, ClusterSpec};
use lb_support::*;
use rcgen::{date_time_ymd, CertificateParams, KeyPair, SanType};
use serde_json::Value;

/// A self-signed certificate for the cluster's address (its own CA for `curl --cacert`), valid from January 1st
/// of `years.0` to December 31st of `years.1`, or for ever without; written to `<dir>/<name>.pem` and `.key`.
fn new_cert(c: &Cluster, name: &str, years: Option<(i32, i32)>) -> PathBuf {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::IpAddress(c.ip.into())];
    if let Some((from, to)) = years {
        params.not_before = date_time_ymd(from, 1, 1);
        params.not_after = date_time_ymd(to, 12, 31);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let pem = c.dir.join(format!("{name}.pem"));
    std::fs::write(&pem, cert.pem()).unwrap();
    std::fs::write(c.dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    pem
}

/// Makes `cert`'s certificate and `key`'s key the files `[lb.tls]` names (`lb.pem`, `lb.key`).
fn install(c: &Cluster, cert: &str, key: &str) {
    let copy = |from: String, to: &str| std::fs::copy(c.dir.join(from), c.dir.join(to)).unwrap();
    copy(format!("{cert}.pem"), "lb.pem");
    copy(format!("{key}.key"), "lb.key");
}

/// `[lb.tls]` with paths relative to the cluster file.
const TLS: &str = "\n[lb.tls]\ncert = \"lb.pem\"\nkey = \"lb.key\"\nh2 = true\n";

/// `nodes` nodes behind an lb whose listener serves a fresh certificate `first`; returns it for `--cacert`.
fn tls_cluster(nodes: usize) -> (Cluster, PathBuf) {
    let mut c = Cluster::prepare(ClusterSpec {
        nodes,
        lb: true,
        lb_extra: TLS.into(),
        ..ClusterSpec::default()
    })
    .unwrap();
    let ca = new_cert(&c, "first", None);
    install(&c, "first", "first");
    for n in c.nodes.clone() {
        c.start_node(&n.name).unwrap();
    }
    c.start_lb().unwrap();
    (c, ca)
}

fn https(c: &Cluster, path: &str) -> String {
    format!("https://{}{path}", c.lb_listen)
}

/// One answer of a curl run, and what curl says of its transfer.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Lower-case names.
    headers: Vec<(String, String)>,
    body: String,
    /// `%{http_version}`: `1.1` or `2`.
    version: String,
    /// `%{num_connects}`: connections this transfer opened (0: it reused one).
    connects: u32,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        let h = self.headers.iter().find(|(k, _)| k == name);
        h.map(|(_, v)| v.as_str())
    }

    /// `NAME=value` of the routing cookie the answer set.
    fn cookie(&self) -> String {
        let sc = self.header("set-cookie").expect("a Set-Cookie");
        sc.split(';').next().unwrap().trim().to_string()
    }

    /// Whether the answer set a cookie marked `Secure`.
    fn secure(&self) -> bool {
        let sc = self.header("set-cookie").expect("a Set-Cookie");
        sc.split(';').any(|a| a.trim() == "Secure")
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

const MARK: &str = "\n@@curl ";

/// Runs one curl process over `requests` (each its own arguments, joined by `--next`, so one process can reuse
/// one connection), trusting `ca`; the answers, or curl's stderr when it fails.
fn curl(ca: &Path, requests: &[&[&str]]) -> Result<Vec<Answer>, String> {
    let mut cmd = Command::new("curl");
    for (i, args) in requests.iter().enumerate() {
        if i > 0 {
            cmd.arg("--next");
        }
        cmd.args(["-sS", "--noproxy", "*", "--max-time", "10", "-D", "-"])
            .arg("--cacert")
            .arg(ca)
            .args([
                "-w",
                &format!("{MARK}%{{http_version}} %{{num_connects}}\n"),
            ])
            .args(*args);
    }
    let out = cmd.output().expect("curl runs");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let mut answers = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find(MARK) {
        let (answer, tail) = (&rest[..at], &rest[at + MARK.len()..]);
        let (stats, next) = tail.split_once('\n').unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
        let mut lines = head.lines();
        let status = lines.next().unwrap().split(' ').nth(1).unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()));
        let (version, connects) = stats.split_once(' ').unwrap();
        answers.push(Answer {
            status: status.parse().unwrap(),
            headers: headers.collect(),
            body: body.to_string(),
            version: version.to_string(),
            connects: connects.parse().unwrap(),
        });
        rest = next;
    }
    assert_eq!(
        answers.len(),
        requests.len(),
        "an answer per request:\n{text}"
    );
    Ok(answers)
}

/// One request by one curl process, which must succeed.
fn one(ca: &Path, args: &[&str]) -> Answer {
    curl(ca, &[args]).unwrap().remove(0)
}

/// `GET /session` over a new connection trusting `ca`: the answer, or curl's error.
fn get_with(c: &Cluster, ca: &Path, cookie: &str) -> Result<Answer, String> {
    let url = https(c, "/session");
    curl(ca, &[&["--http1.1", "-b", cookie, &url]]).map(|mut a| a.remove(0))
}

#[test]
fn a_client_gets_its_session_over_https_with_a_secure_cookie_and_plain_http_gets_nothing() {
    let (c, ca) = tls_cluster(2);
    let url = https(&c, "/session/incr/a");
    let created = one(&ca, &["--http1.1", "-X", "POST", &url]);
    assert_eq!(created.json()["value"], 1, "{created:?}");
    // The node saw X-Forwarded-Proto: https.
    assert!(created.secure(), "{created:?}");
    let (cookie, node) = (created.cookie(), created.header("x-served-by").unwrap());

    // A client's own claim of plain http is replaced by the lb's: the re-minted cookie is still Secure.
    let claim = "X-Forwarded-Proto: http";
    let again = one(&ca, &["-X", "POST", "-b", &cookie, "-H", claim, &url]);
    assert_eq!(again.json()["value"], 2, "{again:?}");
    assert!(again.secure(), "{again:?}");

    let read = get_with(&c, &ca, &again.cookie()).unwrap();
    assert_eq!(read.json()["data"]["a"], 2, "{read:?}");
    assert_eq!(read.header("x-served-by"), Some(node), "its primary");

    // Plain HTTP on the TLS port is no HTTP: no answer, and the balancer keeps serving.
    let plain = reqwest::blocking::Client::new()
        .get(format!("http://{}/session", c.lb_listen))
        .header("cookie", &cookie)
        .timeout(Duration::from_secs(5))
        .send();
    assert!(plain.is_err(), "plaintext on the TLS port: {plain:?}");
    let after = get_with(&c, &ca, &again.cookie()).unwrap();
    assert_eq!(after.json()["data"]["a"], 2, "{after:?}");
    assert_eq!(status(&c.admin_url())["generation"], 1);
}

#[test]
fn one_http2_connection_carries_two_sessions_each_answered_by_its_own_node() {
    let (c, ca) = tls_cluster(3);
    // New sessions until two have different primaries (the node that created a session is its primary).
    let mut sessions: Vec<(String, String, String)> = Vec::new(); // (cookie, node, key)
    for i in 0..30 {
        let key = format!("k{i}");
        let url = https(&c, &format!("/session/incr/{key}"));
        let a = one(&ca, &["--http2", "-X", "POST", &url]);
        assert_eq!((a.status, a.version.as_str()), (200, "2"), "{a:?}");
        let node = a.header("x-served-by").unwrap().to_string();
        if sessions.iter().all(|(_, n, _)| *n != node) {
            sessions.push((a.cookie(), node, key));
        }
        if sessions.len() == 2 {
            break;
        }
    }
    assert_eq!(sessions.len(), 2, "30 new sessions all landed on one node");

    let url = https(&c, "/session");
    let (one, two) = (&sessions[0], &sessions[1]);
    let answers = curl(
        &ca,
        &[
            &["--http2", "-b", &one.0, &url],
            &["--http2", "-b", &two.0, &url],
        ],
    )
    .unwrap();
    for (a, (_, node, key)) in answers.iter().zip(&sessions) {
        assert_eq!((a.status, a.version.as_str()), (200, "2"), "{a:?}");
        assert_eq!(a.header("x-served-by"), Some(node.as_str()), "{a:?}");
        let data = &a.json()["data"];
        assert_eq!(data[key.as_str()], 1, "its own data: {a:?}");
        assert_eq!(
            data.as_object().unwrap().len(),
            1,
            "only its own data: {a:?}"
        );
    }
    assert_eq!(
        (answers[0].connects, answers[1].connects),
        (1, 0),
        "the second request rode the first one's connection"
    );
}

/// An HTTP/1.1 connection through `openssl s_client` trusting `ca`, kept open across reloads.
struct Held {
    child: Child,
    stdin: ChildStdin,
    out: Receiver<Vec<u8>>,
    buf: Vec<u8>,
}

impl Held {
    fn open(c: &Cluster, ca: &Path) -> Held {
        let mut child = Command::new("openssl")
            .args(["s_client", "-quiet", "-verify_return_error"])
            .args(["-alpn", "http/1.1", "-connect", &c.lb_listen.to_string()])
            .arg("-CAfile")
            .arg(ca)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl runs");
        let (stdin, mut stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
        let (tx, out) = channel();
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut b) {
                if tx.send(b[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        let buf = Vec::new();
        Held {
            child,
            stdin,
            out,
            buf,
        }
    }

    /// `GET /session` on this connection: the status and body.
    fn get(&mut self, cookie: &str) -> (u16, String) {
        let req = format!("GET /session HTTP/1.1\r\nHost: lb\r\nCookie: {cookie}\r\n\r\n");
        self.stdin.write_all(req.as_bytes()).unwrap();
        loop {
            let text = String::from_utf8_lossy(&self.buf).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .expect("a Content-Length");
                if body.len() >= len {
                    self.buf.drain(..head.len() + 4 + len);
                    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                    return (status, body[..len].to_string());
                }
            }
            match self.out.recv_timeout(Duration::from_secs(10)) {
                Ok(bytes) => self.buf.extend(bytes),
                Err(e) => panic!("no answer on the held connection ({e}); so far: {text:?}"),
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const REFUSED: &str = "lb_reloads_total{result=\"refused\"}";

#[test]
fn a_reload_refuses_an_expired_or_mismatched_certificate_and_swaps_in_a_new_one_for_new_handshakes()
{
    let (c, old) = tls_cluster(1);
    let refused = || sample(&metrics(&c.admin_url()), REFUSED);
    let url = https(&c, "/session/incr/a");
    let cookie = one(&old, &["-X", "POST", &url]).cookie();

    // Expired, by POST /reload: refused with the reason, and the old certificate still serves new handshakes.
    new_cert(&c, "expired", Some((2020, 2020)));
    install(&c, "expired", "expired");
    let (code, body) = reload(&c.admin_url());
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("lb.tls.cert") && body.contains("expired"),
        "{body}"
    );
    assert_eq!(refused(), 1.0);
    assert_eq!(get_with(&c, &old, &cookie).unwrap().status, 200);

    // A key that is not the certificate's, by SIGHUP: refused too, and logged.
    new_cert(&c, "other", None);
    install(&c, "other", "first");
    c.signal("lb", libc::SIGHUP);
    wait_until(
        Duration::from_secs(10),
        "the SIGHUP reload to be refused",
        || refused() == 2.0,
    )
    .unwrap();
    assert!(
        c.log("lb").contains("does not belong to the certificate"),
        "{}",
        c.log("lb")
    );
    assert_eq!(get_with(&c, &old, &cookie).unwrap().status, 200);
    assert_eq!(status(&c.admin_url())["generation"], 1, "nothing changed");

    // A new certificate with a new key: taken; new handshakes get it, a connection already open keeps going.
    let mut held = Held::open(&c, &old);
    assert_eq!(held.get(&cookie).0, 200, "before the reload");
    let new = new_cert(&c, "new", None);
    install(&c, "new", "new");
    let (code, body) = reload(&c.admin_url());
    assert_eq!(code, 200, "{body}");
    let fresh = get_with(&c, &new, &cookie).expect("a new handshake presents the new certificate");
    assert_eq!(fresh.json()["data"]["a"], 1, "{fresh:?}");
    let err = get_with(&c, &old, &cookie).expect_err("the old certificate is no longer presented");
    assert!(err.contains("certificate"), "{err}");
    let (code, body) = held.get(&cookie);
    let data = serde_json::from_str::<Value>(&body).map(|v| v["data"]["a"].clone());
    assert_eq!((code, data.ok()), (200, Some(1.into())), "after: {body}");
}

#[test]
fn lb_check_names_lb_tls_cert_when_it_is_expired_or_not_valid_yet_and_accepts_a_valid_one() {
    let c = Cluster::prepare(ClusterSpec {
        nodes: 1,
        lb: true,
        lb_extra: TLS.into(),
        ..ClusterSpec::default()
    })
    .unwrap();
    // From another directory: the files are found next to the cluster file, not in the working directory.
    let check = || {
        let out = Command::new(bin("lb"))
            .arg("check")
            .arg(&c.config_path)
            .current_dir("/")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (years, reason) in [((2020, 2020), "expired"), ((2090, 2091), "not valid yet")] {
        new_cert(&c, "bad", Some(years));
        install(&c, "bad", "bad");
        let (ok, err) = check();
        assert!(!ok, "a certificate valid {years:?} passes lb check");
        assert!(err.contains("lb.tls.cert") && err.contains(reason), "{err}");
        assert!(
            err.contains(&c.dir.join("lb.pem").display().to_string()),
            "names the file: {err}"
        );
    }
    new_cert(&c, "good", None);
    install(&c, "good", "good");
    let (ok, err) = check();
    assert!(ok, "{err}");
}

#[test]
fn a_reload_that_drains_a_node_is_taken_though_the_certificate_served_expired_meanwhile() {
    let mut c = Cluster::prepare(ClusterSpec {
        nodes: 2,
        lb: true,
        lb_extra: TLS.into(),
        ..ClusterSpec::default()
    })
    .unwrap();
    // Valid from a minute ago until two seconds from now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::IpAddress(c.ip.into())];
    params.not_before = date_time_ymd(1970, 1, 1) + (now - Duration::from_secs(60));
    params.not_after = date_time_ymd(1970, 1, 1) + (now + Duration::from_secs(2));
    let key = KeyPair::generate().unwrap();
    std::fs::write(
        c.dir.join("lb.pem"),
        params.self_signed(&key).unwrap().pem(),
    )
    .unwrap();
    std::fs::write(c.dir.join("lb.key"), key.serialize_pem()).unwrap();
    for n in c.nodes.clone() {
        c.start_node(&n.name).unwrap();
    }
    c.start_lb().unwrap();
    let expired = now + Duration::from_secs(3);
    wait_until(
        Duration::from_secs(10),
        "the served certificate to expire",
        || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                > expired
        },
    )
    .unwrap();

    // The same files: the reload's drain is applied, and the lb says the certificate must be replaced.
    c.spec.node_extra.insert(0, "drain = true".into());
    c.rewrite_config().unwrap();
    let (code, body) = reload(&c.admin_url());
    assert_eq!(code, 200, "{body}");
    assert_eq!(status(&c.admin_url())["generation"], 2);
    assert!(
        c.log("lb")
            .contains("the certificate being served is expired"),
        "{}",
        c.log("lb")
    );
    // A new certificate that is expired is still refused.
    new_cert(&c, "old", Some((2020, 2020)));
    install(&c, "old", "old");
    let (code, body) = reload(&c.admin_url());
    assert_eq!(code, 400, "{body}");
}
