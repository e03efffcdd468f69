//! A real browser for end-to-end tests: Debian's headless Chromium driven over WebDriver
//! (W3C, through Debian's ChromeDriver), and the certified OpenID provider (npm
//! `oidc-provider`) that stands in for Google. Both are stopped on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::client;
use nexus_toolenv::ports::free_port;

/// One headless Chromium session.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn start() -> Result<Browser> {
        let (chromium, chromedriver) = nexus_toolenv::browser::chromium()?;
        let port = free_port()?;
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver")?;
        let profile = tempfile::tempdir()?;
        let mut b = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while b.call("GET", "/status", None).is_err() {
            if Instant::now() > deadline {
                bail!("chromedriver did not answer on port {port}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", b._profile.path().display()),
                ],
            },
        }}});
        let answer = b.call("POST", "/session", Some(caps))?;
        b.session = answer["sessionId"]
            .as_str()
            .context("no sessionId from chromedriver")?
            .to_string();
        Ok(b)
    }

    /// One WebDriver command; its `value`, or the error WebDriver gave.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let host = format!("127.0.0.1:{}", self.port);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut headers = vec![("host", host.as_str())];
        if method == "POST" {
            headers.push(("content-type", "application/json"));
        }
        let r = client::request(self.port, method, path, &headers, body.as_bytes())?;
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if r.status != 200 {
            bail!("WebDriver {method} {path}: {} {}", r.status, r.text());
        }
        Ok(v["value"].clone())
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    /// Navigates and waits for the page load (WebDriver's default `normal` strategy).
    pub fn goto(&self, url: &str) -> Result<()> {
        self.session_call("POST", "/url", Some(json!({ "url": url })))
            .map(drop)
    }

    pub fn url(&self) -> Result<String> {
        Ok(self
            .session_call("GET", "/url", None)?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// The page's text (`document.body.innerText`: what a person sees).
    pub fn text(&self) -> Result<String> {
        let v = self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": "return document.body ? document.body.innerText : ''", "args": [] })),
        )?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// The element `css` selects, waiting up to `within` for it to appear.
    pub fn find(&self, css: &str, within: Duration) -> Result<String> {
        let deadline = Instant::now() + within;
        loop {
            let found = self.session_call(
                "POST",
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            );
            if let Ok(v) = found {
                if let Some(id) = v
                    .as_object()
                    .and_then(|o| o.values().next())
                    .and_then(Value::as_str)
                {
                    return Ok(id.to_string());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "no element {css:?} at {} within {within:?}; page:\n{}",
                    self.url()?,
                    self.text()?
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn type_into(&self, element: &str, text: &str) -> Result<()> {
        self.session_call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .map(drop)
    }

    pub fn click(&self, element: &str) -> Result<()> {
        self.session_call(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .map(drop)
    }

    /// The cookies the browser holds for the current page, as `(name, value, httpOnly)`.
    pub fn cookies(&self) -> Result<Vec<(String, String, bool)>> {
        let v = self.session_call("GET", "/cookie", None)?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or_default().to_string(),
                    c["value"].as_str().unwrap_or_default().to_string(),
                    c["httpOnly"].as_bool().unwrap_or(false),
                )
            })
            .collect())
    }

    /// Waits until the page's URL satisfies `want`.
    pub fn wait_url(&self, want: impl Fn(&str) -> bool, within: Duration) -> Result<String> {
        let deadline = Instant::now() + within;
        loop {
            let url = self.url()?;
            if want(&url) {
                return Ok(url);
            }
            if Instant::now() > deadline {
                bail!(
                    "the browser stayed at {url} for {within:?}; page:\n{}",
                    self.text()?
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The OpenID provider, listening on 127.0.0.1, with one confidential client.
pub struct OidcProvider {
    child: Child,
    pub issuer: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl OidcProvider {
    pub fn start(port: u16, client_id: &str, secret: &str, redirect_uri: &str) -> Result<Self> {
        let script = nexus_toolenv::browser::oidc_provider()?;
        let dir = script
            .parent()
            .context("the provider script has no directory")?;
        let mut child = Command::new("node")
            .arg(&script)
            .current_dir(dir)
            .env("PORT", port.to_string())
            .env("CLIENT_ID", client_id)
            .env("CLIENT_SECRET", secret)
            .env("REDIRECT_URI", redirect_uri)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting node (Debian's nodejs)")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().context("no stdout")?;
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let issuer = loop {
            let first = lines.lock().ok().and_then(|l| l.first().cloned());
            if let Some(line) = first {
                let v: Value = serde_json::from_str(&line)?;
                break v["issuer"].as_str().unwrap_or_default().to_string();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("the OpenID provider printed nothing within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Ok(OidcProvider {
            child,
            issuer,
            lines,
        })
    }

    /// How many authorization requests browsers made so far.
    pub fn authorizations(&self) -> usize {
        self.lines
            .lock()
            .map(|l| l.iter().filter(|s| s.contains("\"authorize\"")).count())
            .unwrap_or(0)
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
