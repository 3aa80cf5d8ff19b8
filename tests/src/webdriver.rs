//! A small W3C WebDriver client: a real headless Chromium driven through `chromedriver`'s HTTP API, for tests
//! that check what a person with a browser sees (cookies, redirects after a form post, reloads).
//!
//! [`Browser::start`] starts `chromedriver` on a free loopback port as a child process and opens one browser
//! session with a fresh profile; dropping the [`Browser`] ends the session (which closes Chromium), kills
//! `chromedriver` by its pid and removes the profile.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use reqwest::blocking::Client;
use reqwest::Method;
use serde_json::{json, Value};

/// Debian's Chromium (package `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's driver for it (package `chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The key under which WebDriver names an element (W3C WebDriver §12.1).
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// What is missing to run a browser test, as a sentence, or `None` when Chromium and chromedriver are there.
pub fn missing() -> Option<String> {
    let absent: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    (!absent.is_empty()).then(|| {
        format!(
            "{} not installed: run `bash .ci/setup` (as root) to install chromium and chromium-driver",
            absent.join(" and ")
        )
    })
}

/// One headless Chromium session and the `chromedriver` serving it.
pub struct Browser {
    driver: Child,
    /// `http://127.0.0.1:PORT/session/ID`: every command's prefix.
    base: String,
    client: Client,
    /// The browser profile and chromedriver's log, removed on drop.
    dir: PathBuf,
}

impl Browser {
    /// Starts `chromedriver` and a headless Chromium with a fresh profile.
    ///
    /// # Errors
    /// When either is missing, chromedriver does not become ready, or the browser does not start.
    pub fn start() -> Result<Browser> {
        if let Some(why) = missing() {
            bail!(why);
        }
        let dir = std::env::temp_dir().join(format!(
            "srv-browser-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(dir.join("profile"))?;
        // No proxy from the environment: every address a test uses is on loopback.
        let client = Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()?;
        // A port free a moment ago may be taken before chromedriver binds it: then it exits, and we try another.
        let mut last = anyhow!("chromedriver did not start");
        for _ in 0..3 {
            let port = crate::free_port(Ipv4Addr::LOCALHOST);
            let mut driver = spawn_driver(port, &dir)?;
            let url = format!("http://{}", SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
            match wait_ready(&client, &url, &mut driver) {
                Ok(()) => {
                    let mut b = Browser {
                        driver,
                        base: url,
                        client,
                        dir,
                    };
                    let id = b.new_session()?;
                    b.base = format!("{}/session/{id}", b.base);
                    return Ok(b);
                }
                Err(e) => {
                    let _ = driver.kill();
                    let _ = driver.wait();
                    last = e.context(driver_log(&dir));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(last)
    }

    /// `POST /session` with Chromium headless and a profile of its own; returns the session id.
    fn new_session(&self) -> Result<String> {
        let profile = self.dir.join("profile");
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-proxy-server".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let url = format!("{}/session", self.base);
        let v = send(&self.client, Method::POST, &url, Some(caps))
            .with_context(|| format!("starting Chromium; {}", driver_log(&self.dir)))?;
        v["sessionId"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no sessionId in {v}"))
    }

    /// One command of this session: `method {base}{path}` with `body`; returns the answer's `value`.
    fn cmd(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        send(&self.client, method, &format!("{}{path}", self.base), body)
    }

    /// Opens `url` and waits for the page to load.
    ///
    /// # Errors
    /// When the browser cannot load it.
    pub fn goto(&self, url: &str) -> Result<()> {
        self.cmd(Method::POST, "/url", Some(json!({ "url": url })))
            .map(drop)
    }

    /// Reloads the current page, as F5 does.
    ///
    /// # Errors
    /// When the browser cannot.
    pub fn refresh(&self) -> Result<()> {
        self.cmd(Method::POST, "/refresh", Some(json!({})))
            .map(drop)
    }

    /// The address of the current page.
    ///
    /// # Errors
    /// When the browser does not answer.
    pub fn url(&self) -> Result<String> {
        let v = self.cmd(Method::GET, "/url", None)?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// The WebDriver id of the first element matching the CSS selector `css`.
    ///
    /// # Errors
    /// When nothing matches (`no such element`).
    pub fn find(&self, css: &str) -> Result<String> {
        let v = self.cmd(
            Method::POST,
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        v[ELEMENT_KEY]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no element reference in {v}"))
    }

    /// How many elements match `css`.
    ///
    /// # Errors
    /// When the browser does not answer.
    pub fn count(&self, css: &str) -> Result<usize> {
        let v = self.cmd(
            Method::POST,
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        Ok(v.as_array().map_or(0, Vec::len))
    }

    /// Clicks the first element matching `css` (a button submits its form).
    ///
    /// # Errors
    /// When nothing matches or it cannot be clicked.
    pub fn click(&self, css: &str) -> Result<()> {
        let id = self.find(css)?;
        self.cmd(
            Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .map(drop)
    }

    /// The rendered text of the first element matching `css`.
    ///
    /// # Errors
    /// When nothing matches.
    pub fn text(&self, css: &str) -> Result<String> {
        let id = self.find(css)?;
        let v = self.cmd(Method::GET, &format!("/element/{id}/text"), None)?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// The current page's HTML as the browser has it.
    ///
    /// # Errors
    /// When the browser does not answer.
    pub fn source(&self) -> Result<String> {
        let v = self.cmd(Method::GET, "/source", None)?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// The cookies the browser holds for the current page, as `(name, value)`.
    ///
    /// # Errors
    /// When the browser does not answer.
    pub fn cookies(&self) -> Result<Vec<(String, String)>> {
        let v = self.cmd(Method::GET, "/cookie", None)?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                (s("name"), s("value"))
            })
            .collect())
    }

    /// Saves a PNG of the viewport to `path` (creating its directory).
    ///
    /// # Errors
    /// When the browser cannot take it or the file cannot be written.
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        let v = self.cmd(Method::GET, "/screenshot", None)?;
        let png = base64_decode(v.as_str().unwrap_or_default())?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session makes chromedriver close Chromium; killing chromedriver alone could leave it running.
        let _ = self
            .client
            .delete(&self.base)
            .timeout(Duration::from_secs(10))
            .send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `chromedriver --port=PORT`, its log in `dir`, killed with the test process (PR_SET_PDEATHSIG).
fn spawn_driver(port: u16, dir: &Path) -> Result<Child> {
    let log = std::fs::File::create(dir.join("chromedriver.log"))?;
    let mut cmd = Command::new(CHROMEDRIVER);
    cmd.arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the child when we go.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().context("starting chromedriver")
}

/// Waits until chromedriver's `/status` says ready, up to 20 s, or fails at once when it exited.
fn wait_ready(client: &Client, url: &str, driver: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = driver.try_wait()? {
            bail!("chromedriver exited ({st})");
        }
        let ready = client
            .get(format!("{url}/status"))
            .timeout(Duration::from_secs(1))
            .send()
            .and_then(|r| r.json::<Value>())
            .is_ok_and(|v| v["value"]["ready"] == true);
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("chromedriver at {url} was not ready within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The end of chromedriver's log, for error messages.
fn driver_log(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("chromedriver.log")).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(20).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!("chromedriver log:\n{}", tail.join("\n"))
}

/// One WebDriver request; the answer's `value`, or its `error` and `message` as an error.
fn send(client: &Client, method: Method, url: &str, body: Option<Value>) -> Result<Value> {
    let mut rb = client.request(method.clone(), url);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().with_context(|| format!("{method} {url}"))?;
    let status = r.status();
    let mut v: Value = r
        .json()
        .with_context(|| format!("{method} {url}: answer is not JSON"))?;
    let value = v["value"].take();
    if !status.is_success() {
        bail!(
            "{method} {url}: {status} {}: {}",
            value["error"].as_str().unwrap_or("error"),
            value["message"].as_str().unwrap_or_default()
        );
    }
    Ok(value)
}

/// Standard base64 (RFC 4648 §4, padded or not), as WebDriver sends screenshots.
fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        let six = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("not base64: {:?}", c as char),
        };
        acc = (acc << 6) | u32::from(six);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_padded_and_unpadded_text() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("/+8=").unwrap(), [0xff, 0xef]);
        assert!(base64_decode("a*b").is_err());
    }
}
