//! Helpers shared by the balancer's integration tests (`lb_*.rs`).
#![allow(dead_code)]

use std::time::Duration;

use anyhow::Result;
#[allow(unused_imports)] // not every lb_*.rs reads metrics
pub(crate) use cluster_tests::sample;
use cluster_tests::{render_config, Cluster, ClusterSpec, Reply, User};

/// A cluster of `nodes` nodes behind one lb, `lb_extra` appended to `[lb]`.
pub(crate) fn cluster(nodes: usize, lb_extra: &str) -> Cluster {
    Cluster::start(ClusterSpec {
        nodes,
        lb: true,
        lb_extra: lb_extra.to_string(),
        ..ClusterSpec::default()
    })
    .expect("cluster starts")
}

/// The lb's `/status` document.
pub(crate) fn status(admin_url: &str) -> serde_json::Value {
    let r = reqwest::blocking::Client::new()
        .get(format!("{admin_url}/status"))
        .timeout(Duration::from_secs(5))
        .send()
        .expect("status answers");
    r.json().expect("status is JSON")
}

/// Whether the lb behind `admin_url` currently counts node `name` healthy.
pub(crate) fn node_healthy(admin_url: &str, name: &str) -> bool {
    status(admin_url)["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["name"] == name))
        .and_then(|n| n["healthy"].as_bool())
        .unwrap_or(false)
}

/// The lb's `/metrics` text.
pub(crate) fn metrics(admin_url: &str) -> String {
    reqwest::blocking::get(format!("{admin_url}/metrics"))
        .and_then(|r| r.text())
        .expect("metrics answer")
}

/// `POST /reload` on the admin listener: (status, body).
pub(crate) fn reload(admin_url: &str) -> (u16, String) {
    let r = reqwest::blocking::Client::new()
        .post(format!("{admin_url}/reload"))
        .timeout(Duration::from_secs(10))
        .send()
        .expect("reload answers");
    (r.status().as_u16(), r.text().unwrap_or_default())
}

/// The counter a `POST /session/incr/{key}` reply reports.
pub(crate) fn value(r: &Reply) -> i64 {
    r.json()["value"]
        .as_i64()
        .unwrap_or_else(|| panic!("no value in {}", r.body))
}

/// `data[key]` of a `GET /session` reply.
pub(crate) fn data(r: &Reply, key: &str) -> i64 {
    r.json()["data"][key]
        .as_i64()
        .unwrap_or_else(|| panic!("no data.{key} in {}", r.body))
}

/// A user with a given cookie (`NAME=value`).
pub(crate) fn user_with_cookie(cookie: &str) -> User {
    let mut u = User::new();
    u.cookie = Some(cookie.to_string());
    u
}

/// A second lb process reading its own copy of the cluster file with other listen and admin ports; the
/// cluster owns (and cleans up) the process, as `lb2`.
pub(crate) struct SecondLb {
    /// `http://ip:port` of its client listener.
    pub(crate) url: String,
    /// `http://ip:port` of its admin listener.
    pub(crate) admin_url: String,
}

impl SecondLb {
    /// Writes `cluster-lb2.toml` on fresh ports in the cluster's directory and starts `lb2` on it; returns once
    /// its admin listener answers.
    ///
    /// # Errors
    /// When the file cannot be written or the process does not come up.
    pub(crate) fn start(c: &mut Cluster) -> Result<SecondLb> {
        let listen = c.unused_addr();
        let admin = c.unused_addr();
        let config_path = c.dir.join("cluster-lb2.toml");
        std::fs::write(
            &config_path,
            render_config(&c.spec, &c.nodes, listen, admin),
        )?;
        c.start_lb_as("lb2", &config_path, admin)?;
        Ok(SecondLb {
            url: format!("http://{listen}"),
            admin_url: format!("http://{admin}"),
        })
    }
}
