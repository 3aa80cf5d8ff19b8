//! Child processes by key, the one process controller of `bench` and the integration tests: each child logs
//! to `<dir>/<key>.log`, dies with its parent (PR_SET_PDEATHSIG), is signalled and killed by its own pid
//! (never by name), and is killed when the controller is dropped.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Running children, by key.
pub struct Children {
    log_dir: PathBuf,
    /// `RUST_LOG` for children when the parent's environment sets none.
    log_level: &'static str,
    children: BTreeMap<String, Child>,
}

impl Children {
    /// No children yet; logs go to `log_dir` (created if missing), `RUST_LOG` defaults to `log_level`.
    ///
    /// # Errors
    /// When `log_dir` cannot be created.
    pub fn new(log_dir: PathBuf, log_level: &'static str) -> Result<Children> {
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        Ok(Children {
            log_dir,
            log_level,
            children: BTreeMap::new(),
        })
    }

    /// Where the children's logs go.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Starts `program` with `args` under `key` (replacing nothing: the caller kills an old one first).
    /// Returns its pid.
    ///
    /// # Errors
    /// When the log file cannot be created or the program not started.
    pub fn spawn<S: AsRef<OsStr>>(&mut self, key: &str, program: &Path, args: &[S]) -> Result<u32> {
        let log = std::fs::File::create(self.log_path(key))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| self.log_level.into()),
        );
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the child when we go.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let pid = child.id();
        self.children.insert(key.to_string(), child);
        Ok(pid)
    }

    /// The pid of `key`, while it is ours.
    pub fn pid(&self, key: &str) -> Option<u32> {
        self.children.get(key).map(Child::id)
    }

    /// Whether `key` is running (not exited, not killed).
    pub fn is_running(&mut self, key: &str) -> bool {
        self.children
            .get_mut(key)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The first child that exited by itself, if any.
    pub fn exited(&mut self) -> Option<(String, ExitStatus)> {
        self.children
            .iter_mut()
            .find_map(|(k, c)| c.try_wait().ok().flatten().map(|st| (k.clone(), st)))
    }

    /// Sends `sig` (e.g. `libc::SIGSTOP`) to `key`.
    pub fn signal(&self, key: &str, sig: i32) {
        if let Some(pid) = self.pid(key) {
            signal(pid, sig);
        }
    }

    /// Sends `sig` to every child.
    pub fn signal_all(&self, sig: i32) {
        for c in self.children.values() {
            signal(c.id(), sig);
        }
    }

    /// kill -9 (after SIGCONT, so a stopped child goes too), and reap.
    pub fn kill(&mut self, key: &str) {
        if let Some(mut c) = self.children.remove(key) {
            signal(c.id(), libc::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills every child.
    pub fn kill_all(&mut self) {
        let keys: Vec<String> = self.children.keys().cloned().collect();
        for k in keys {
            self.kill(&k);
        }
    }

    /// Waits up to `timeout` for `key` to exit by itself; returns its status (and forgets it), or `None`.
    pub fn wait_exit(&mut self, key: &str, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.children.get_mut(key)?;
            if let Ok(Some(st)) = child.try_wait() {
                self.children.remove(key);
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether any child is still running.
    pub fn any_running(&mut self) -> bool {
        self.children
            .values_mut()
            .any(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn log_path(&self, key: &str) -> PathBuf {
        self.log_dir.join(format!("{key}.log"))
    }

    /// Everything `key` logged so far.
    pub fn log(&self, key: &str) -> String {
        std::fs::read_to_string(self.log_path(key)).unwrap_or_default()
    }

    /// The last `n` lines `key` logged.
    pub fn log_tail(&self, key: &str, n: usize) -> String {
        let text = self.log(key);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid of our own child.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}
