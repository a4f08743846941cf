//! The end-to-end harness: Quartet as a child process, real upstream servers in-process.
//!
//! Everything here is black-box. [`Gateway`] writes a config file into a temporary
//! directory, starts the `quartet` binary that `cargo build -p quartet` left next to the
//! test executable, reads its logs continuously (a full pipe would block the gateway) and
//! waits for the `quartet listening public=ADDR admin=ADDR` line. [`Upstream`] is a small
//! HTTP/1.1 + HTTP/2 (h2c or TLS) server on port 0 that echoes what reached it and can be
//! told to fail, hold requests, stream large bodies or echo WebSocket messages. Tests wait
//! for conditions with [`eventually`], never for fixed sleeps, and assert on behaviour and
//! counts, never on durations.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::ffi::OsStr;
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// How long the harness waits for the gateway to start, exit or reach a condition.
pub const WAIT: Duration = Duration::from_secs(30);

/// The `[server]` section every test config starts with: both listeners on port 0.
pub const SERVER: &str = r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
"#;

// ---------------------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------------------

/// The `quartet` binary built by `cargo build -p quartet`: target/debug/quartet, found
/// from this test executable's own path (target/debug/deps/rest-HASH).
pub fn quartet_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("QUARTET_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the path of the test executable");
    let mut dir = exe
        .parent()
        .expect("the test executable's directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(format!("quartet{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "the quartet binary is missing at {}: run `cargo build -p quartet` first \
         (`bash tests/run.sh` does it), or point QUARTET_BIN at it",
        bin.display()
    );
    bin
}

/// `quartet` with a clean environment for it: no `QUARTET_*` variable of the caller's (they
/// override backend URLs) and no colours.
fn quartet_command(cwd: &Path) -> Command {
    let mut command = Command::new(quartet_bin());
    command
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("QUARTET_") {
            command.env_remove(name);
        }
    }
    command
}

/// Runs `quartet ARGS` to completion (for `check` and `config default`).
pub fn run_quartet<I, S>(args: I, cwd: &Path) -> Finished
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let output = quartet_command(cwd)
        .args(args)
        .output()
        .expect("run the quartet binary");
    Finished {
        status: output.status,
        stdout: strip_ansi(&String::from_utf8_lossy(&output.stdout)),
        stderr: strip_ansi(&String::from_utf8_lossy(&output.stderr)),
    }
}

/// The outcome of a `quartet` command run to completion.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// stdout and stderr together, for assertions that do not care which one was used.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Removes ANSI colour sequences, in case the gateway colours its logs anyway.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------------------
// The gateway process
// ---------------------------------------------------------------------------------------

/// The lines a child process printed, stdout and stderr (stderr lines prefixed).
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, line: String) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }

    /// A copy of every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many lines so far; pass it to [`Log::since`] to look only at later lines.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The lines printed after the first `from`.
    pub fn since(&self, from: usize) -> Vec<String> {
        let lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .get(from..)
            .map(<[String]>::to_vec)
            .unwrap_or_default()
    }

    /// The whole log as one text, for failure messages.
    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    fn tail(&self, n: usize) -> String {
        let lines = self.lines();
        let start = lines.len().saturating_sub(n);
        lines[start..].join("\n")
    }

    fn reader<R: Read + Send + 'static>(
        &self,
        stream: R,
        prefix: &'static str,
    ) -> std::thread::JoinHandle<()> {
        let log = self.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = strip_ansi(String::from_utf8_lossy(&buf).trim_end());
                        log.push(format!("{prefix}{line}"));
                    }
                }
            }
        })
    }
}

/// A running `quartet` process: its output is read continuously; it is killed on drop, and
/// its log is printed when the test fails.
pub struct Process {
    child: Child,
    pub log: Log,
    exit: Option<ExitStatus>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Process {
    /// Starts `quartet ARGS` in `cwd`, with piped output read by background threads.
    pub fn spawn<I, S>(args: I, cwd: &Path) -> Process
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Process::spawn_with_env(args, cwd, &[])
    }

    /// Like [`Process::spawn`], with these environment variables set.
    pub fn spawn_with_env<I, S>(args: I, cwd: &Path, env: &[(&str, &str)]) -> Process
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = quartet_command(cwd);
        command.args(args).env(
            "RUST_LOG",
            std::env::var("QUARTET_TEST_LOG").unwrap_or("info".into()),
        );
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the quartet binary");
        let log = Log::default();
        let readers = vec![
            log.reader(child.stdout.take().expect("piped stdout"), ""),
            log.reader(child.stderr.take().expect("piped stderr"), "[stderr] "),
        ];
        Process {
            child,
            log,
            exit: None,
            readers,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited (then its log is complete).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("poll the quartet process");
            if self.exit.is_some() {
                // The pipes reach EOF once the process is gone: read what is left.
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
            }
        }
        self.exit
    }

    /// Waits (bounded) for the process to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "quartet (pid {}) did not exit within {timeout:?}; its log:\n{}",
                self.pid(),
                self.log.tail(100)
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sends a signal by name (`HUP`, `TERM`) with the `kill` command.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg("-s")
            .arg(name)
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} {} failed", self.pid());
    }

    /// Waits (bounded) for a log line at index `from` or later that satisfies `pred`.
    pub async fn wait_for_log(
        &mut self,
        from: usize,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self.log.since(from).into_iter().find(|l| pred(l)) {
                return line;
            }
            if let Some(status) = self.try_exit() {
                panic!(
                    "quartet exited ({status}) while the test waited for {what}; its log:\n{}",
                    self.log.tail(100)
                );
            }
            assert!(
                Instant::now() < deadline,
                "quartet never logged {what} within {WAIT:?}; its log:\n{}",
                self.log.tail(100)
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits for `quartet listening public=ADDR admin=ADDR` and returns the two addresses,
    /// made connectable (an unspecified IP becomes loopback).
    pub async fn wait_listening(&mut self) -> (SocketAddr, SocketAddr) {
        let line = self
            .wait_for_log(0, "`quartet listening public=ADDR admin=ADDR`", |l| {
                l.contains("quartet listening")
            })
            .await;
        let public = field_addr(&line, "public")
            .unwrap_or_else(|| panic!("no public=ADDR in the listening line: {line}"));
        let admin = field_addr(&line, "admin")
            .unwrap_or_else(|| panic!("no admin=ADDR in the listening line: {line}"));
        (connectable(public), connectable(admin))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            // QUARTET_TEST_LOG_TAIL=N prints more (or fewer) of the log's last lines.
            let lines = std::env::var("QUARTET_TEST_LOG_TAIL")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(200);
            eprintln!(
                "---- quartet (pid {}) log, last {lines} lines ----\n{}\n---- end of quartet log ----",
                self.child.id(),
                self.log.tail(lines)
            );
        }
    }
}

/// Reads `NAME=ADDR` from a text log line, or `"NAME":"ADDR"` from a JSON one.
fn field_addr(line: &str, name: &str) -> Option<SocketAddr> {
    let text = line.trim_start_matches("[stderr] ");
    if text.starts_with('{') {
        if let Ok(value) = serde_json::from_str::<Value>(text) {
            if let Some(addr) = find_json_str(&value, name).and_then(|s| s.parse().ok()) {
                return Some(addr);
            }
        }
    }
    // `name=ADDR` (or `name="ADDR"`) in a text line, or inside a JSON line's message.
    let pattern = format!("{name}=");
    let mut rest = text;
    while let Some(at) = rest.find(&pattern) {
        let starts_word = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        rest = &rest[at + pattern.len()..];
        let value = rest.trim_start_matches(['"', '\'']);
        let end = value
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ','))
            .unwrap_or(value.len());
        if let Ok(addr) = value[..end].parse() {
            if starts_word {
                return Some(addr);
            }
        }
    }
    None
}

fn find_json_str<'a>(value: &'a Value, name: &str) -> Option<&'a str> {
    match value {
        Value::Object(map) => map
            .get(name)
            .and_then(Value::as_str)
            .or_else(|| map.values().find_map(|v| find_json_str(v, name))),
        _ => None,
    }
}

/// An address a client can connect to: 0.0.0.0 or :: become loopback.
pub fn connectable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

/// A gateway started from a config file written into its own temporary directory.
pub struct Gateway {
    pub process: Process,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// The bound address of the SQL listener `name`, from its start-up log line.
    pub fn sql_addr(&self, name: &str) -> SocketAddr {
        let needle = format!("quartet sql listening name={name} ");
        let line = self
            .log()
            .lines()
            .into_iter()
            .map(|l| strip_ansi(&l))
            .find(|l| l.contains(&needle))
            .unwrap_or_else(|| panic!("no `{needle}addr=...` line in the log"));
        let rest = &line[line.find(&needle).map_or(0, |i| i + needle.len())..];
        let addr = rest
            .trim_start_matches("addr=")
            .split(|c: char| c.is_whitespace() || c == '"')
            .next()
            .unwrap_or_default();
        addr.parse()
            .unwrap_or_else(|e| panic!("bad address {addr:?} in {line:?}: {e}"))
    }

    /// Writes `config` to DIR/quartet.toml, runs `quartet serve --config` on it and waits
    /// until it listens.
    pub async fn start(config: &str) -> Gateway {
        Gateway::start_in(tempdir(), config).await
    }

    /// Like [`Gateway::start`], in a directory the test prepared (certificates, CA files).
    pub async fn start_in(dir: tempfile::TempDir, config: &str) -> Gateway {
        Gateway::start_with_env(dir, config, &[]).await
    }

    /// Like [`Gateway::start_in`], with these environment variables set.
    pub async fn start_with_env(
        dir: tempfile::TempDir,
        config: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        let config_path = dir.path().join("quartet.toml");
        std::fs::write(&config_path, config).expect("write the config file");
        let mut process = Process::spawn_with_env(
            [
                OsStr::new("serve"),
                OsStr::new("--config"),
                config_path.as_os_str(),
            ],
            dir.path(),
            env,
        );
        let (public, admin) = process.wait_listening().await;
        Gateway {
            process,
            public,
            admin,
            config_path,
            dir,
        }
    }

    /// `http://PUBLIC{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    /// `http://ADMIN{path}`
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Replaces the config file (for a SIGHUP reload).
    pub fn rewrite_config(&self, config: &str) {
        std::fs::write(&self.config_path, config).expect("rewrite the config file");
    }

    pub fn log(&self) -> &Log {
        &self.process.log
    }

    /// GET on the admin listener, returning the status and the body as JSON.
    pub async fn admin_json(&self, path: &str) -> (StatusCode, Value) {
        let resp = client()
            .get(self.admin_url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on the admin listener: {e}"));
        let status = resp.status();
        let text = resp.text().await.expect("admin body");
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("GET {path} on the admin listener: not JSON ({e}): {text}"));
        (status, value)
    }

    /// The Prometheus text of GET /metrics.
    pub async fn metrics(&self) -> String {
        let resp = client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(resp.status(), StatusCode::OK, "GET /metrics");
        resp.text().await.expect("metrics body")
    }

    /// The state of the breakers of `target` as listed by GET /admin/breakers.
    pub async fn breaker_states(&self, target: &str) -> Vec<String> {
        let (status, value) = self.admin_json("/admin/breakers").await;
        assert_eq!(status, StatusCode::OK, "GET /admin/breakers: {value}");
        let list = value
            .as_array()
            .or_else(|| value.get("breakers").and_then(Value::as_array))
            .unwrap_or_else(|| panic!("GET /admin/breakers is not a JSON list: {value}"));
        list.iter()
            .filter(|b| b.get("target").and_then(Value::as_str) == Some(target))
            .map(|b| {
                b.get("state")
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| panic!("a breaker without a state: {b}"))
                    .to_string()
            })
            .collect()
    }
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("quartet-test-")
        .tempdir()
        .expect("create a temporary directory")
}

/// Sums the samples of `metric` whose labels contain every `name="value"` in `labels`.
pub fn metric_sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    metric_samples(text, metric)
        .into_iter()
        .filter(|(l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

/// The samples of `metric` (exact name) as (labels, value).
pub fn metric_samples(text: &str, metric: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        let (labels, value) = if let Some(rest) = rest.strip_prefix('{') {
            let Some(end) = rest.rfind('}') else { continue };
            (parse_labels(&rest[..end]), rest[end + 1..].trim())
        } else if rest.starts_with(' ') {
            (BTreeMap::new(), rest.trim())
        } else {
            continue;
        };
        let value = value.split_whitespace().next().unwrap_or("");
        if let Ok(v) = value.parse::<f64>() {
            out.push((labels, v));
        }
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 1..];
        let Some(after) = after.strip_prefix('"') else {
            break;
        };
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(n);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        map.insert(key, value);
        rest = &after[end..];
    }
    map
}

// ---------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------

/// Polls `check` until it returns `Some`, for at most `timeout`; panics naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Bounds a future that must finish: a hang becomes a failure that says what hung.
pub async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("{what} did not finish within {WAIT:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
}

/// A plain HTTP/1.1 client (no proxy, no redirects, a generous safety timeout).
pub fn client() -> reqwest::Client {
    client_builder()
        .http1_only()
        .build()
        .expect("build an HTTP client")
}

/// A client that speaks HTTP/2 without TLS, by prior knowledge (h2c).
pub fn h2c_client() -> reqwest::Client {
    client_builder()
        .http2_prior_knowledge()
        .build()
        .expect("build an h2c client")
}

/// A TLS client that trusts only the test CA and resolves `localhost` to `addr`.
pub fn tls_client(pki: &Pki, addr: SocketAddr, http1_only: bool) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).expect("the test CA");
    let mut builder = client_builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .resolve("localhost", addr);
    if http1_only {
        builder = builder.http1_only();
    }
    builder.build().expect("build a TLS client")
}

/// Asserts that `resp` is an error the gateway made itself: the status, and Keystone's
/// body `{"error": {"code": N, "title": "...", "message": "..."}}`. Returns the body.
pub async fn expect_gateway_error(resp: reqwest::Response, status: u16) -> Value {
    let got = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(
        got.as_u16(),
        status,
        "expected a {status} from the gateway, got {got}: {headers:?} {text}"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the gateway's {status} body is not JSON ({e}): {text}"));
    let error = body
        .get("error")
        .unwrap_or_else(|| panic!("the gateway's {status} body has no \"error\" object: {body}"));
    assert_eq!(
        error.get("code").and_then(Value::as_u64),
        Some(u64::from(status)),
        "error.code in {body}"
    );
    assert!(
        error.get("title").and_then(Value::as_str).is_some(),
        "error.title in {body}"
    );
    assert!(
        error.get("message").and_then(Value::as_str).is_some(),
        "error.message in {body}"
    );
    body
}

/// Like [`expect_gateway_error`], and the response carries `Retry-After` in seconds.
pub async fn expect_gateway_error_retry_after(resp: reqwest::Response, status: u16) -> Value {
    let retry_after = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap_or("").to_string());
    let body = expect_gateway_error(resp, status).await;
    let retry_after = retry_after
        .unwrap_or_else(|| panic!("the gateway's {status} has no Retry-After header: {body}"));
    assert!(
        retry_after.trim().parse::<u64>().is_ok(),
        "Retry-After should be a number of seconds, got {retry_after:?}"
    );
    body
}

/// Reads a JSON echo from an upstream through the gateway, asserting a 200.
pub async fn echo(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let text = resp.text().await.expect("response body");
    assert_eq!(
        status,
        StatusCode::OK,
        "expected the upstream's 200 echo, got {status}: {text}"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not an upstream echo ({e}): {text}"))
}

/// A header of an echo, as the upstream received it.
pub fn echoed_header<'a>(echo: &'a Value, name: &str) -> Option<&'a str> {
    echo["headers"].get(name).and_then(Value::as_str)
}

/// A response read off a raw socket, for headers that HTTP clients hide or manage.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Writes `request` (HTTP/1.1, should say `Connection: close`) and reads the response to
/// EOF; decodes a chunked body.
pub async fn raw_http1(addr: SocketAddr, request: &str) -> RawResponse {
    bounded("a raw HTTP/1.1 exchange", async {
        let mut stream = TcpStream::connect(addr)
            .await
            .expect("connect to the gateway");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write the request");
        let mut buf = Vec::new();
        stream
            .read_to_end(&mut buf)
            .await
            .expect("read the response");
        parse_raw_response(&buf)
    })
    .await
}

fn parse_raw_response(buf: &[u8]) -> RawResponse {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let raw = &buf[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked { dechunk(raw) } else { raw.to_vec() };
    RawResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..eol]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
        raw = &raw[eol + 2..];
        if size == 0 || raw.len() < size {
            break;
        }
        body.extend_from_slice(&raw[..size]);
        raw = &raw[(size + 2).min(raw.len())..];
    }
    body
}

/// Checks the form `req-<uuid4>` (lowercase hex, version 4, RFC 4122 variant).
pub fn is_request_id(s: &str) -> bool {
    let Some(uuid) = s.strip_prefix("req-") else {
        return false;
    };
    let bytes = uuid.as_bytes();
    if bytes.len() != 36 {
        return false;
    }
    for (i, b) in bytes.iter().enumerate() {
        let ok = match i {
            8 | 13 | 18 | 23 => *b == b'-',
            14 => *b == b'4',
            19 => matches!(b, b'8' | b'9' | b'a' | b'b'),
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(b),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// A free loopback port nobody listens on (bound, then released): a closed endpoint.
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    format!("http://{addr}")
}

// ---------------------------------------------------------------------------------------
// Checksums and generated bodies
// ---------------------------------------------------------------------------------------

/// FNV-1a, 64 bits: enough to tell a body arrived intact, with no extra dependency.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn of(data: &[u8]) -> u64 {
        let mut f = Fnv::default();
        f.update(data);
        f.0
    }
}

/// The bytes of the generated body at `offset..offset+len`: a pattern that is not
/// periodic in any chunk size a proxy would use, so a lost, doubled or reordered chunk
/// changes the checksum.
pub fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| ((i % 251) as u8) ^ ((i / 251 % 253) as u8))
        .collect()
}

/// The checksum of the first `len` bytes of [`pattern`].
pub fn pattern_fnv(len: usize) -> u64 {
    let mut f = Fnv::default();
    let mut offset = 0;
    while offset < len {
        let n = CHUNK.min(len - offset);
        f.update(&pattern(offset, n));
        offset += n;
    }
    f.0
}

/// The chunk size of generated bodies.
pub const CHUNK: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------
// TLS material
// ---------------------------------------------------------------------------------------

/// A test CA and one server certificate it signed for `localhost` and `127.0.0.1`, as
/// PEM files in `dir`.
pub struct Pki {
    pub ca_pem: String,
    pub ca_path: PathBuf,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

impl Pki {
    pub fn generate(dir: &Path) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Quartet test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("self-sign the CA");

        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server cert params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &ca).expect("sign the server cert");

        let ca_pem = ca.pem();
        let ca_path = dir.join("ca.pem");
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&ca_path, &ca_pem).expect("write ca.pem");
        std::fs::write(&cert_path, cert.pem()).expect("write cert.pem");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key.pem");
        Pki {
            ca_pem,
            ca_path,
            cert_path,
            key_path,
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        }
    }

    /// A TLS connection to `addr` as `localhost`, trusting only the test CA, offering
    /// `alpn` (e.g. `http/1.1` for a WebSocket).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        use rustls::pki_types::ServerName;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut self.ca_pem.as_bytes()) {
            roots
                .add(cert.expect("the test CA's PEM"))
                .expect("add the test CA");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpStream::connect(addr).await.expect("connect for TLS");
        let name = ServerName::try_from("localhost").expect("a server name");
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("a TLS handshake trusting the test CA")
    }

    /// A rustls acceptor with this server certificate, offering h2 and http/1.1 by ALPN.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(self.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
            )
            .expect("server TLS config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

/// A path as it goes into a TOML string.
pub fn toml_path(path: &Path) -> String {
    path.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}

// ---------------------------------------------------------------------------------------
// Upstream servers
// ---------------------------------------------------------------------------------------

type Body = BoxBody<Bytes, Infallible>;

struct State {
    name: String,
    hits: AtomicUsize,
    health_hits: AtomicUsize,
    /// 0: `/health` follows `fail_status`; otherwise the status `/health` answers.
    health_status: AtomicU16,
    /// 0: answer normally; otherwise the status of a failure.
    fail_status: AtomicU16,
    /// How many more failures to give; negative means until told otherwise.
    fail_left: AtomicI64,
    /// Requests with `?hold=1` wait here for a permit from [`Upstream::release`].
    hold: Semaphore,
    holding: AtomicUsize,
    /// Responses with `?size=N&gate=1` send one chunk, then wait here.
    download_gate: Semaphore,
    /// A permit is added when the first bytes of a `?upload_gate=1` body arrive.
    upload_started: Semaphore,
}

impl State {
    fn take_failure(&self) -> Option<u16> {
        let status = self.fail_status.load(Ordering::SeqCst);
        if status == 0 {
            return None;
        }
        let left = self.fail_left.load(Ordering::SeqCst);
        if left < 0 {
            return Some(status);
        }
        if left == 0 {
            return None;
        }
        match self
            .fail_left
            .compare_exchange(left, left - 1, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => Some(status),
            Err(_) => self.take_failure(),
        }
    }
}

/// An in-process upstream HTTP server on a port-0 loopback socket, HTTP/1.1 and HTTP/2
/// (h2c by prior knowledge, or h2 by ALPN with TLS). It answers every request with a JSON
/// echo of what reached it, unless the query asks otherwise:
///
/// - `status=N`: answer with status N (still an echo);
/// - `delay_ms=N`: wait N ms before answering (a slow upstream);
/// - `hold=1`: wait until the test calls [`Upstream::release`];
/// - `size=N`: stream N bytes of [`pattern`] in 64 KiB chunks; with `gate=1`, send the
///   first chunk and wait for [`Upstream::open_download_gate`] before the rest;
/// - `upload_gate=1`: signal [`Upstream::upload_started`] when the body's first bytes come;
/// - `hop=1`: add hop-by-hop headers to the response;
/// - a path ending in `/ws` with a WebSocket upgrade: echo messages back.
///
/// `/health` answers 200 (or the failure status) and is counted apart from [`hits`].
///
/// [`hits`]: Upstream::hits
pub struct Upstream {
    pub addr: SocketAddr,
    pub tls: bool,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// A plain (HTTP/1.1 and h2c) upstream.
    pub async fn start(name: &str) -> Upstream {
        Upstream::serve(name, None).await
    }

    /// An HTTPS upstream with the certificate of `pki`.
    pub async fn start_tls(name: &str, pki: &Pki) -> Upstream {
        Upstream::serve(name, Some(pki.acceptor())).await
    }

    async fn serve(name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an upstream");
        let addr = listener.local_addr().expect("upstream address");
        let state = Arc::new(State {
            name: name.to_string(),
            hits: AtomicUsize::new(0),
            health_hits: AtomicUsize::new(0),
            health_status: AtomicU16::new(0),
            fail_status: AtomicU16::new(0),
            fail_left: AtomicI64::new(0),
            hold: Semaphore::new(0),
            holding: AtomicUsize::new(0),
            download_gate: Semaphore::new(0),
            upload_started: Semaphore::new(0),
        });
        let is_tls = tls.is_some();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), peer, req));
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await;
                        }
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                                .await;
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            tls: is_tls,
            state,
            task,
        }
    }

    /// `http://127.0.0.1:PORT` (or `https://`), as it goes into `endpoints`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Requests that reached this upstream, `/health` excepted.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Requests to `/health`.
    pub fn health_hits(&self) -> usize {
        self.state.health_hits.load(Ordering::SeqCst)
    }

    /// Fails every request with `status` until [`Upstream::recover`].
    pub fn fail_with(&self, status: u16) {
        self.state.fail_left.store(-1, Ordering::SeqCst);
        self.state.fail_status.store(status, Ordering::SeqCst);
    }

    /// Fails the next `n` requests with `status`, then answers normally.
    pub fn fail_next(&self, n: i64, status: u16) {
        self.state.fail_left.store(n, Ordering::SeqCst);
        self.state.fail_status.store(status, Ordering::SeqCst);
    }

    /// Makes `/health` answer `status` (0: follow the other failure settings).
    pub fn set_health(&self, status: u16) {
        self.state.health_status.store(status, Ordering::SeqCst);
    }

    /// Answers normally again.
    pub fn recover(&self) {
        self.state.fail_status.store(0, Ordering::SeqCst);
    }

    /// Lets `n` held (`?hold=1`) requests, present or future, go on.
    pub fn release(&self, n: usize) {
        self.state.hold.add_permits(n);
    }

    /// How many requests are held right now.
    pub fn holding(&self) -> usize {
        self.state.holding.load(Ordering::SeqCst)
    }

    /// Lets a gated download (`?size=N&gate=1`) send the rest of its body.
    pub fn open_download_gate(&self) {
        self.state.download_gate.add_permits(1);
    }

    /// Waits until the first bytes of an `?upload_gate=1` body reached this upstream.
    pub async fn upload_started(&self) {
        self.state
            .upload_started
            .acquire()
            .await
            .expect("the upload semaphore is never closed")
            .forget();
    }
}

fn query_map(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

fn json_response(status: u16, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(full(value.to_string()))
        .expect("a valid response")
}

async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let query = query_map(req.uri().query());
    let param = |k: &str| query.get(k).and_then(|v| v.parse::<u64>().ok());

    if path == "/health" {
        state.health_hits.fetch_add(1, Ordering::SeqCst);
        let status = match state.health_status.load(Ordering::SeqCst) {
            0 => match state.fail_status.load(Ordering::SeqCst) {
                0 => 200,
                s => s,
            },
            s => s,
        };
        return Ok(json_response(
            status,
            &json!({"server": state.name, "health": true}),
        ));
    }
    state.hits.fetch_add(1, Ordering::SeqCst);

    if let Some(status) = state.take_failure() {
        // Read the body first, as most servers do: answering early and closing would race
        // the proxy's writing of the body, and the test would see that race.
        let body = req.body_mut();
        while let Some(Ok(_)) = body.frame().await {}
        return Ok(json_response(
            status,
            &json!({"server": state.name, "failed": true}),
        ));
    }
    if param("hold").is_some() {
        state.holding.fetch_add(1, Ordering::SeqCst);
        if let Ok(permit) = state.hold.acquire().await {
            permit.forget();
        }
        state.holding.fetch_sub(1, Ordering::SeqCst);
    }
    if let Some(ms) = param("delay_ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if path.ends_with("/ws") && req.headers().contains_key(http::header::UPGRADE) {
        return Ok(websocket_echo(&mut req));
    }
    if let Some(size) = param("size") {
        let gated = param("gate").is_some();
        return Ok(streaming_response(state, size as usize, gated));
    }

    // Read the body as it comes, never whole.
    let upload_gate = param("upload_gate").is_some();
    let mut fnv = Fnv::default();
    let mut len = 0usize;
    let mut body_error = None;
    let body = req.body_mut();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    if len == 0 && !data.is_empty() && upload_gate {
                        state.upload_started.add_permits(1);
                    }
                    len += data.len();
                    fnv.update(data);
                }
            }
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }

    let mut headers = serde_json::Map::new();
    for name in req.headers().keys() {
        let values: Vec<&str> = req
            .headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("<binary>"))
            .collect();
        headers.insert(name.as_str().to_string(), Value::String(values.join(", ")));
    }
    let echo = json!({
        "server": state.name,
        "method": req.method().as_str(),
        "path": path,
        "query": req.uri().query(),
        "version": format!("{:?}", req.version()),
        "headers": headers,
        "peer": peer.to_string(),
        "body_len": len,
        "body_fnv": fnv.0.to_string(),
        "body_error": body_error,
    });
    let mut resp = json_response(param("status").map_or(200, |s| s as u16), &echo);
    if param("hop").is_some() {
        let h = resp.headers_mut();
        h.insert("keep-alive", HeaderValue::from_static("timeout=99"));
        h.insert(
            "x-upstream-hop",
            HeaderValue::from_static("should-not-pass"),
        );
        h.insert("connection", HeaderValue::from_static("x-upstream-hop"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("x-upstream-end-to-end", HeaderValue::from_static("kept"));
    }
    Ok(resp)
}

fn streaming_response(state: Arc<State>, size: usize, gated: bool) -> Response<Body> {
    let stream = futures_util::stream::unfold(0usize, move |offset| {
        let state = state.clone();
        async move {
            if offset >= size {
                return None;
            }
            if gated && offset == CHUNK.min(size) {
                if let Ok(permit) = state.download_gate.acquire().await {
                    permit.forget();
                }
            }
            let n = CHUNK.min(size - offset);
            let chunk = Bytes::from(pattern(offset, n));
            Some((Ok::<_, Infallible>(Frame::data(chunk)), offset + n))
        }
    });
    Response::builder()
        .status(200)
        .header(http::header::CONTENT_TYPE, "application/octet-stream")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("a valid response")
}

fn websocket_echo(req: &mut Request<Incoming>) -> Response<Body> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::WebSocketStream;

    let Some(key) = req.headers().get("sec-websocket-key") else {
        return json_response(400, &json!({"error": "no sec-websocket-key"}));
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let (mut tx, mut rx) = ws.split();
        while let Some(Ok(msg)) = rx.next().await {
            if msg.is_text() || msg.is_binary() {
                if tx.send(msg).await.is_err() {
                    break;
                }
            } else if msg.is_close() {
                let _ = tx.close().await;
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, "websocket")
        .header(http::header::CONNECTION, "upgrade")
        .header("sec-websocket-accept", accept)
        .body(full(Bytes::new()))
        .expect("a valid response")
}

/// `[upstreams.NAME]` with these endpoints and extra keys (e.g. `balance = "round_robin"`).
pub fn upstream_toml(name: &str, endpoints: &[String], extra: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    format!(
        "\n[upstreams.{name}]\nendpoints = [{}]\n{extra}\n",
        list.join(", ")
    )
}

/// `[[routes]]` with a prefix, an upstream and extra keys (e.g. `policy = "fast"`).
pub fn route_toml(prefix: &str, upstream: &str, extra: &str) -> String {
    format!("\n[[routes]]\nprefix = {prefix:?}\nupstream = {upstream:?}\n{extra}\n")
}

// ---- the shared broker and the Python peers ------------------------------------------

/// Fails, saying how to start it, when RabbitMQ does not listen on 127.0.0.1:5672.
pub fn broker_up() {
    let up = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:5672".parse().expect("address"),
        Duration::from_secs(2),
    )
    .is_ok();
    assert!(
        up,
        "RabbitMQ is not listening on 127.0.0.1:5672: start it with `rabbitmq-server -detached` \
         (or `bash tests/run.sh`, which starts it)"
    );
}

/// A name no other test (of this run or another) uses: topics, connection names.
pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// The venv's Python with oslo.messaging (`$QUARTET_VENV`, default `.venv` at the
/// workspace root); fails, saying how to install it, when there is none.
pub fn oslo_python() -> PathBuf {
    let venv = std::env::var_os("QUARTET_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    let python = venv.join("bin/python");
    let ok = std::process::Command::new(&python)
        .args(["-c", "import oslo_messaging"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "no Python with oslo.messaging at {}: run `bash tests/run.sh` (it installs the peers \
         into .venv) or set QUARTET_VENV to a venv with oslo.messaging",
        python.display()
    );
    python
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_listening_line_in_text_and_json() {
        let text = "2026-11-26T03:00:00Z  INFO quartet: quartet listening public=127.0.0.1:4000 admin=0.0.0.0:4001";
        assert_eq!(
            field_addr(text, "public"),
            Some("127.0.0.1:4000".parse().unwrap())
        );
        assert_eq!(
            field_addr(text, "admin").map(connectable),
            Some("127.0.0.1:4001".parse().unwrap())
        );
        let quoted = "INFO quartet listening public=\"[::1]:5\", admin=\"127.0.0.1:6\"";
        assert_eq!(
            field_addr(quoted, "public"),
            Some("[::1]:5".parse().unwrap())
        );
        assert_eq!(
            field_addr(quoted, "admin"),
            Some("127.0.0.1:6".parse().unwrap())
        );
        let json = r#"{"level":"INFO","fields":{"message":"quartet listening","public":"127.0.0.1:7","admin":"127.0.0.1:8"}}"#;
        assert_eq!(
            field_addr(json, "public"),
            Some("127.0.0.1:7".parse().unwrap())
        );
        assert_eq!(
            field_addr(json, "admin"),
            Some("127.0.0.1:8".parse().unwrap())
        );
    }

    #[test]
    fn decodes_chunked_bodies() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n";
        let resp = parse_raw_response(raw);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-a"), Some("b"));
        assert_eq!(resp.body, b"abcde");
    }
}
