//! `lb check --diff OLD NEW`: the real binary on two cluster files says what a reload would change, grouped as
//! applied by a reload or needing a restart, without printing a secret; an invalid file fails as `lb check` does.

use std::path::{Path, PathBuf};
use std::process::Output;

use cluster_tests::bin;

const OLD_SECRET: &str = "the-old-cluster-secret-0123456789";
const NEW_SECRET: &str = "the-new-cluster-secret-9876543210";

/// Node `i`'s id: one bit each above the floor, so no two pairs share a sum.
fn id(i: u64) -> u64 {
    (1 << 50) + (1 << (8 * i))
}

/// Three nodes with their ids written out (so a new secret moves none), in a pair topology.
fn old_file() -> String {
    let mut text = format!(
        "[cluster]\nsecret = \"{OLD_SECRET}\"\n\n[lb]\nlisten = \"127.0.0.1:8080\"\nadmin = \"127.0.0.1:8081\"\n"
    );
    for i in 1..=3u64 {
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"n{i}\"\nid = {}\nhttp = \"127.0.0.1:900{i}\"\nrepl = \"127.0.0.1:910{i}\"\n",
            id(i)
        ));
    }
    text
}

/// The old file with n4 added, n2 drained, n3 re-weighted, the cookie key rotated (a new cluster secret signs,
/// the old one stays as key 1 and as `previous_secret` for the peers) and the broadcast topology.
fn new_file() -> String {
    let text = old_file()
        .replace(
            &format!("secret = \"{OLD_SECRET}\"\n"),
            &format!(
                "secret = \"{NEW_SECRET}\"\nprevious_secret = \"{OLD_SECRET}\"\n\n[cookie]\nkey_id = 2\n\n[[cookie.previous_keys]]\nid = 1\n\
                 secret = \"{OLD_SECRET}\"\n\n[replication]\ntopology = \"broadcast\"\n"
            ),
        )
        .replace(
            "repl = \"127.0.0.1:9102\"\n",
            "repl = \"127.0.0.1:9102\"\ndrain = true\n",
        )
        .replace(
            "repl = \"127.0.0.1:9103\"\n",
            "repl = \"127.0.0.1:9103\"\nweight = 3\n",
        );
    format!(
        "{text}\n[[nodes]]\nname = \"n4\"\nid = {}\nhttp = \"127.0.0.1:9004\"\nrepl = \"127.0.0.1:9104\"\n",
        id(4)
    )
}

struct Dir(PathBuf);

impl Dir {
    /// A fresh directory for test `test` (tests run in parallel: one each).
    fn new(test: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("lb-check-diff-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn check_diff(old: &Path, new: &Path) -> Output {
    std::process::Command::new(bin("lb"))
        .arg("check")
        .arg("--diff")
        .arg(old)
        .arg(new)
        .output()
        .unwrap()
}

/// The lines printed under the group header that starts with `header`.
fn group<'a>(out: &'a str, header: &str) -> Vec<&'a str> {
    out.lines()
        .skip_while(|l| !l.starts_with(header))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(str::trim)
        .collect()
}

#[test]
fn lb_check_diff_groups_each_change_by_reload_or_restart_and_prints_no_secret() {
    let dir = Dir::new("groups");
    let old = dir.write("old.toml", &old_file());
    let new = dir.write("new.toml", &new_file());
    let out = check_diff(&old, &new);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");

    let reload = group(&stdout, "applied by reload");
    for want in [
        "node n4 added (http 127.0.0.1:9004)",
        "node n2 drained",
        "node n3 weight 1 -> 3",
        "[cluster] secret changed",
        "cluster.previous_secret set",
        "[cookie] key_id 1 -> 2",
        "[[cookie.previous_keys]] id 1 added",
    ] {
        assert!(
            reload.iter().any(|l| l.starts_with(want)),
            "`{want}` under applied by reload: {stdout}"
        );
    }
    let restart = group(&stdout, "needs a restart (every node)");
    assert!(
        restart
            .iter()
            .any(|l| l.starts_with("replication.topology pair -> broadcast")),
        "the topology under needs a restart (every node): {stdout}"
    );
    assert_eq!(
        (reload.len(), restart.len()),
        (7, 1),
        "nothing else changed: {stdout}"
    );
    assert!(
        stdout.contains("note: every node refuses a reload while this differs"),
        "{stdout}"
    );
    for secret in [OLD_SECRET, NEW_SECRET] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "a secret printed: {stdout}{stderr}"
        );
    }
}

#[test]
fn lb_check_diff_of_a_file_with_itself_says_no_change() {
    let dir = Dir::new("same");
    let old = dir.write("same.toml", &old_file());
    let out = check_diff(&old, &old);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.lines().any(|l| l == "no change"), "{stdout}");
}

#[test]
fn lb_check_diff_fails_naming_file_line_and_key_when_either_file_is_invalid() {
    let dir = Dir::new("invalid");
    let old = dir.write("good.toml", &old_file());
    let text = new_file().replace("weight = 3", "weight = 0");
    let line = 1 + text
        .lines()
        .position(|l| l == "weight = 0")
        .expect("the bad key is in the file");
    let bad = dir.write("bad.toml", &text);
    for (a, b) in [(&old, &bad), (&bad, &old)] {
        let out = check_diff(a, b);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("bad.toml:{line}: `nodes[2].weight`")),
            "the error names file:line and key: {stderr}"
        );
        assert!(out.stdout.is_empty(), "no diff of an invalid file");
    }
}
