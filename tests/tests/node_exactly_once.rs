//! Exactly once without the balancer's help: a client that sends no request id (another balancer in front, or
//! none) never gets one write applied twice, even when the node's own attempt loop runs again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster_tests::{wait_until, Cluster, ClusterSpec, User};
use node::connection::{auth_key, server_handshake};
use node::wire::{Body, Envelope, ItemResult};

/// A replication peer on `addr` that answers heartbeats and, while `stubborn` is set, asks for the full session
/// after every copy, so that no copy it is sent is ever confirmed (a peer out of step, seen from the primary).
/// While `stubborn` is clear it confirms every item.
fn stubborn_peer(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    secret: &str,
    stubborn: Arc<AtomicBool>,
) {
    let key = auth_key(secret);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(addr))
        .expect("bind the peer's port");
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let stubborn = stubborn.clone();
            tokio::spawn(async move {
                let Ok((mut reader, mut writer, _)) = server_handshake(stream, &[key]).await else {
                    return;
                };
                while let Ok(Some(env)) = reader.next().await {
                    let body = match env.body {
                        Body::Ping { .. } => Body::Pong {
                            sessions: 0,
                            incarnation: 1,
                        },
                        Body::Batch { items, .. } => {
                            let answer = if stubborn.load(Ordering::SeqCst) {
                                // Gently: a resend loop against this peer must not eat the machine.
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                ItemResult::NeedFull
                            } else {
                                ItemResult::Applied
                            };
                            Body::BatchReply {
                                results: vec![answer; items.len()],
                            }
                        }
                        _ => Body::Error {
                            message: "not served here".into(),
                        },
                    };
                    if writer.write(&Envelope { id: env.id, body }).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

#[test]
fn a_write_without_a_request_id_whose_copy_times_out_is_applied_once_and_answered_503() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut c = Cluster::prepare(ClusterSpec {
        nodes: 2,
        ..Default::default()
    })
    .unwrap();
    let stubborn = Arc::new(AtomicBool::new(false));
    stubborn_peer(
        &rt,
        c.node("n2").repl,
        c.config().secret.expose(),
        stubborn.clone(),
    );
    c.start_node("n1").unwrap();
    let n1 = c.node_url("n1");
    let mut u = User::new();
    wait_until(
        Duration::from_secs(10),
        "a session with n2 as its secondary",
        || {
            u.cookie = None;
            u.incr(&n1, "n")
                .is_ok_and(|r| r.status == 200 && r.json()["value"] == 1)
                && u.get(&n1).is_ok_and(|r| r.json()["secondary"] == "n2")
        },
    )
    .unwrap();
    let sid = u.get(&n1).unwrap().json()["id"]
        .as_str()
        .unwrap()
        .to_string();

    stubborn.store(true, Ordering::SeqCst);
    let r = u.incr(&n1, "n");
    let copy: serde_json::Value = reqwest::blocking::get(format!("{n1}/_node/sessions/{sid}"))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        copy["version"], 2,
        "the increment was applied exactly once: {copy}"
    );
    assert_eq!(copy["data"]["n"], 2, "{copy}");
    let r = r.expect("answered within the client's 15 s");
    assert_eq!(
        r.status, 503,
        "a write whose copy is not confirmed in time is not acknowledged: {}",
        r.body
    );
    assert!(
        r.headers.contains_key("retry-after"),
        "the 503 says when to retry"
    );

    stubborn.store(false, Ordering::SeqCst);
    let r = u.get(&n1).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["data"]["n"],
        2,
        "once the copy is confirmed the applied write is there, once"
    );
}
