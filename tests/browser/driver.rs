//! The browser harness: one headless Chromium per test, driven over
//! WebDriver by fantoccini.
//!
//! Each `Browser` starts its own `chromedriver` on a free 127.0.0.1 port, in
//! a process group of its own so that dropping the `Browser` kills the driver
//! and every Chromium process it started, even when a test panics. A static
//! semaphore keeps at most two browsers alive at once, so `cargo test`'s many
//! threads do not start a dozen Chromiums on a small machine.
//!
//! Nothing here sleeps for a fixed time: every wait polls with a deadline of
//! at most [`WAIT`] and fails with what it was waiting for, where the browser
//! was and what the page said.
//!
//! Without chromedriver or Chromium a test says `SKIPPED: <why>` and passes,
//! unless `TUNEHOOK_TEST_BROWSER=required` (as in CI), when it fails.

use crate::helpers::TestApp;
use axum::http::Method;
use fantoccini::{
    Client, ClientBuilder, Locator, elements::Element, wd::WebDriverCompatibleCommand,
};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use std::{
    fs::File,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use tempfile::TempDir;
use tokio::sync::{Semaphore, SemaphorePermit};

/// The longest any single wait lasts.
pub const WAIT: Duration = Duration::from_secs(15);
/// How long chromedriver gets to answer `/status`.
const DRIVER_START: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);
/// The window of every browser, as `--window-size` gives it.
pub const WIDTH: u32 = 1280;
pub const HEIGHT: u32 = 900;

/// Browsers alive at once across the whole test binary.
static BROWSERS: Semaphore = Semaphore::const_new(2);

/// A headless Chromium on its own chromedriver. Fields drop in order: the
/// WebDriver session, then the driver's process group, then the permit.
pub struct Browser {
    pub client: Client,
    driver: Chromedriver,
    _permit: SemaphorePermit<'static>,
}

/// The programs a browser needs, or why they are not there.
struct Programs {
    chromedriver: PathBuf,
    chromium: PathBuf,
}

impl Browser {
    /// A fresh browser, or `None` (after printing `SKIPPED: <why>`) when
    /// chromedriver or Chromium is not installed and browser tests are not
    /// required. Once both are installed, any failure to start is a failure.
    pub async fn start() -> Option<Browser> {
        let programs = match Programs::find() {
            Ok(programs) => programs,
            Err(why) => {
                let test = std::thread::current()
                    .name()
                    .unwrap_or("a browser test")
                    .to_owned();
                assert!(
                    !required(),
                    "TUNEHOOK_TEST_BROWSER=required, but {why} ({test})"
                );
                eprintln!("SKIPPED: {why} ({test}); set TUNEHOOK_TEST_BROWSER=required to fail");
                return None;
            }
        };
        let permit = BROWSERS
            .acquire()
            .await
            .expect("the browser semaphore is never closed");
        let driver = Chromedriver::start(&programs.chromedriver).await;
        let client = driver.connect(&programs.chromium).await;
        Some(Browser {
            client,
            driver,
            _permit: permit,
        })
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("the browser could not open {url}: {e}"));
    }

    /// The current URL's path and query, as `/signin?next=%2F`.
    pub async fn location(&self) -> String {
        let url = self
            .client
            .current_url()
            .await
            .expect("the browser has a current URL");
        match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("the page could not run `{script}`: {e}"))
    }

    /// Waits for an element matching `css`; `what` says in words what it is.
    pub async fn wait_for(&self, css: &str, what: &str) -> Element {
        let deadline = Instant::now() + WAIT;
        loop {
            let error = match self.client.find(Locator::Css(css)).await {
                Ok(element) => return element,
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                self.give_up(&format!("{what} (`{css}`)"), &error.to_string())
                    .await;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the JavaScript expression `condition` is truthy.
    pub async fn wait_until(&self, condition: &str, what: &str) {
        self.poll(condition, what, false).await;
    }

    /// Like `wait_until`, but reloads the page before each look: for pages
    /// that do not update themselves.
    pub async fn wait_until_reloading(&self, condition: &str, what: &str) {
        self.poll(condition, what, true).await;
    }

    async fn poll(&self, condition: &str, what: &str, reload: bool) {
        let script = format!("return Boolean({condition});");
        let deadline = Instant::now() + WAIT;
        loop {
            if reload {
                // A failed reload shows up as the condition not holding.
                let _ = self.client.refresh().await;
            }
            let last = match self.client.execute(&script, vec![]).await {
                Ok(Value::Bool(true)) => return,
                Ok(other) => format!("`{condition}` was {other}"),
                Err(e) => format!("`{condition}` failed: {e}"),
            };
            if Instant::now() >= deadline {
                self.give_up(what, &last).await;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Fails the test with where the browser is and what the page shows.
    async fn give_up(&self, what: &str, last: &str) -> ! {
        let location = match self.client.current_url().await {
            Ok(url) => url.to_string(),
            Err(e) => format!("(no URL: {e})"),
        };
        let text = self
            .client
            .execute(
                "return document.body ? document.body.innerText.slice(0, 600) : '';",
                vec![],
            )
            .await
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        panic!(
            "timed out after {WAIT:?} waiting for {what}\n  last: {last}\n  at: {location}\n  page text: {text:?}\n{}",
            self.driver.log_tail()
        );
    }

    /// The elements matching `css` (none is not an error).
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("looking for `{css}` failed: {e}"))
    }

    /// The rendered text of the first element matching `css`.
    pub async fn text(&self, css: &str, what: &str) -> String {
        self.wait_for(css, what)
            .await
            .text()
            .await
            .unwrap_or_else(|e| panic!("reading the text of {what} (`{css}`) failed: {e}"))
    }

    /// Types `text` into the field matching `css`, replacing what it held.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.wait_for(css, &format!("the field `{css}`")).await;
        field.clear().await.expect("the field can be cleared");
        field
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("typing into `{css}` failed: {e}"));
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str, what: &str) {
        self.wait_for(css, what)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking {what} (`{css}`) failed: {e}"));
    }

    /// Signs in through the form with `token`, from wherever the browser is
    /// (it must show the sign-in page).
    pub async fn submit_token(&self, token: &str) {
        self.fill("#signin-form #token", token).await;
        self.click("#signin-form #signin", "the sign-in button")
            .await;
    }

    /// Opens the sign-in page, signs in with the app's token and waits for
    /// the jobs page.
    pub async fn sign_in(&self, app: &TestApp) {
        self.goto(&app.url("/signin")).await;
        self.submit_token(&app.api_token).await;
        self.wait_for("form#job-filter", "the jobs page after signing in")
            .await;
    }

    /// The value of the cookie `name`, HttpOnly ones included.
    pub async fn cookie(&self, name: &str) -> String {
        self.client
            .get_named_cookie(name)
            .await
            .unwrap_or_else(|e| panic!("the browser has no cookie {name}: {e}"))
            .value()
            .to_owned()
    }

    /// The text of an open `alert()`, if one is open.
    pub async fn alert(&self) -> Option<String> {
        match self.client.get_alert_text().await {
            Ok(text) => Some(text),
            Err(e) if e.is_no_such_alert() => None,
            Err(e) => panic!("asking the browser for an alert failed: {e}"),
        }
    }

    /// Resizes the window so that the page's viewport is `width` CSS pixels
    /// wide, whatever the window's frame takes.
    pub async fn set_viewport_width(&self, width: u32) {
        for _ in 0..3 {
            let inner = self.js("return window.innerWidth;").await;
            let inner = inner.as_u64().expect("innerWidth is a number");
            let (outer, height) = self
                .client
                .get_window_size()
                .await
                .expect("the window has a size");
            if inner == u64::from(width) {
                return;
            }
            let frame = outer.saturating_sub(inner);
            let target = u64::from(width) + frame;
            self.client
                .set_window_size(
                    u32::try_from(target).expect("a window width"),
                    u32::try_from(height).expect("a window height"),
                )
                .await
                .expect("the window can be resized");
        }
        let inner = self.js("return window.innerWidth;").await;
        assert_eq!(
            inner,
            json!(width),
            "the browser would not make its viewport {width} px wide"
        );
    }

    /// The console's errors since the last call: scripts that threw,
    /// resources that failed, and everything the Content Security Policy
    /// refused.
    pub async fn console_errors(&self) -> Vec<String> {
        let log = self
            .client
            .issue_cmd(ConsoleLog)
            .await
            .unwrap_or_else(|e| panic!("the browser's console log could not be read: {e}"));
        log.as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Saves a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("the browser could not take a screenshot: {e}"));
        std::fs::write(path, png)
            .unwrap_or_else(|e| panic!("writing {} failed: {e}", path.display()));
    }
}

/// chromedriver's command for the browser's console log since last asked.
#[derive(Debug)]
struct ConsoleLog;

impl WebDriverCompatibleCommand for ConsoleLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (Method, Option<String>) {
        (Method::POST, Some(json!({"type": "browser"}).to_string()))
    }
}

/// Whether a missing browser is a failure rather than a skip.
fn required() -> bool {
    std::env::var("TUNEHOOK_TEST_BROWSER").is_ok_and(|v| v == "required")
}

impl Programs {
    fn find() -> Result<Programs, String> {
        Ok(Programs {
            chromedriver: program("CHROMEDRIVER", "/usr/bin/chromedriver", "chromedriver")?,
            chromium: program("CHROMIUM", "/usr/bin/chromium", "chromium")?,
        })
    }
}

/// The program named by the environment variable `var`, else `default`.
fn program(var: &str, default: &str, what: &str) -> Result<PathBuf, String> {
    match std::env::var_os(var) {
        Some(named) => {
            let named = PathBuf::from(named);
            on_path(&named).ok_or_else(|| {
                format!(
                    "{var}={} is not an executable file or on PATH",
                    named.display()
                )
            })
        }
        None => {
            let default = PathBuf::from(default);
            if is_executable(&default) {
                Ok(default)
            } else {
                Err(format!(
                    "{what} is not installed ({} is missing; {var} names another)",
                    default.display()
                ))
            }
        }
    }
}

/// `name` itself when it is a path, else the first match on PATH.
fn on_path(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return is_executable(name).then(|| name.to_owned());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A running chromedriver, the leader of its own process group.
struct Chromedriver {
    child: Child,
    port: u16,
    /// Holds chromedriver's log and Chromium's profile; removed on drop.
    dir: TempDir,
}

impl Chromedriver {
    /// Starts chromedriver on a free port and waits until it is ready. A
    /// port taken between choosing and binding it makes chromedriver exit;
    /// then another port is tried.
    async fn start(program: &Path) -> Chromedriver {
        let mut complaint = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("a temporary folder for the browser");
            let port = free_port();
            let log = File::create(dir.path().join("chromedriver.log")).expect("a log file");
            let child = Command::new(program)
                .arg(format!("--port={port}"))
                // Chromium's own scratch folders go where drop removes them.
                .env("TMPDIR", dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("the log file, twice"))
                .stderr(log)
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("{} could not start: {e}", program.display()));
            let mut driver = Chromedriver { child, port, dir };
            match driver.wait_until_ready().await {
                Ok(()) => return driver,
                Err(why) => complaint = format!("{why}\n{}", driver.log_tail()),
            }
        }
        panic!("chromedriver did not start: {complaint}");
    }

    async fn wait_until_ready(&mut self) -> Result<(), String> {
        let status = format!("{}/status", self.url());
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("an HTTP client");
        let deadline = Instant::now() + DRIVER_START;
        loop {
            if let Ok(Some(exit)) = self.child.try_wait() {
                return Err(format!("chromedriver exited with {exit}"));
            }
            if let Ok(response) = client.get(&status).send().await {
                if let Ok(body) = response.json::<Value>().await {
                    if body["value"]["ready"] == true {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{status} did not answer ready within {DRIVER_START:?}"
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A WebDriver session on a headless Chromium with a profile of its own.
    async fn connect(&self, chromium: &Path) -> Client {
        let profile = self.dir.path().join("profile");
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    format!("--window-size={WIDTH},{HEIGHT}"),
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
            // Bound every page load and script; no implicit waits, the
            // helpers poll.
            "timeouts": {"pageLoad": WAIT.as_millis(), "script": WAIT.as_millis(), "implicit": 0},
            // Console messages, CSP violations among them, can be read back.
            "goog:loggingPrefs": {"browser": "ALL"},
            // An alert stays open, so that a test can see one was raised.
            "unhandledPromptBehavior": "ignore",
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("the capabilities are an object")
        };
        // chromedriver speaks plain HTTP on loopback, so no TLS connector
        // (which would have to pick one of the two rustls crypto providers
        // linked into this binary).
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(capabilities);
        let url = self.url();
        let connected = match tokio::time::timeout(WAIT, builder.connect(&url)).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no session within {WAIT:?}")),
        };
        connected.unwrap_or_else(|why| {
            panic!(
                "chromedriver could not start {}: {why}\n{}",
                chromium.display(),
                self.log_tail()
            )
        })
    }

    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default();
        let start = log.len().saturating_sub(2000);
        let start = (start..log.len())
            .find(|&i| log.is_char_boundary(i))
            .unwrap_or(log.len());
        format!("chromedriver log (tail):\n{}", &log[start..])
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The group is chromedriver and every Chromium process it started.
        let group = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}
