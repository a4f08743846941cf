//! The `quartet` command line as users meet it: `check`, `config default`, `serve` with a
//! bad config, the admin listener's token rule, and `serve` with no config at all.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::StatusCode;
use quartet_tests::*;
use serde_json::Value;

/// Exit status for a bad config (EX_USAGE in sysexits.h).
const EX_USAGE: i32 = 64;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a config file");
    path
}

fn check(path: &Path) -> Finished {
    run_quartet(
        ["check".as_ref(), "--config".as_ref(), path.as_os_str()],
        path.parent().expect("a directory"),
    )
}

/// Asserts `check` refused the file with exit 64 and `FILE:LINE: KEY: message`.
fn assert_refused(path: &Path, line: usize, key: &str) -> String {
    let out = check(path);
    let text = out.output();
    assert_eq!(
        out.status.code(),
        Some(EX_USAGE),
        "`quartet check` exits 64 for a bad config; output:\n{text}"
    );
    let location = format!("{}:{line}:", path.display());
    let error_line = text
        .lines()
        .find(|l| l.contains(&location))
        .unwrap_or_else(|| {
            panic!("the error names {location} (FILE:LINE: KEY: message); output:\n{text}")
        });
    assert!(
        error_line.contains(key),
        "the error names the key {key}: {error_line}"
    );
    text
}

const GOOD: &str = r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
max_body_bytes = 1048576
grace_period = "5s"

[policies.default]
timeout = "30s"
per_try_timeout = "10s"
retry = { attempts = 3, backoff = "25ms", max_backoff = "1s", budget = 0.2, min_per_second = 10, budget_window = "10s", buffer_limit = 65536 }
breaker = { consecutive_failures = 5, failure_rate = 0.5, window = "10s", min_calls = 20, slow_call_duration = "2s", slow_call_rate = 1.0, open_for = "5s", half_open_probes = 1 }
concurrency = 1024
rate_limit = { per_second = 1000, burst = 100 }
fault = { delay = "10ms", delay_percent = 0, abort_status = 503, abort_percent = 0 }

[upstreams.compute]
endpoints = ["http://127.0.0.1:8774", "http://127.0.0.1:8775"]
balance = "round_robin"
health = { path = "/", interval = "5s", timeout = "1s", unhealthy_threshold = 3, healthy_threshold = 2 }
http2 = false
connect_timeout = "1s"

[[routes]]
prefix = "/compute"
upstream = "compute"
strip_prefix = true
policy = "default"
idempotent = false
"#;

#[test]
fn check_accepts_a_good_config_using_every_documented_key() {
    let dir = tempdir();
    let path = write(dir.path(), "good.toml", GOOD);
    let out = check(&path);
    assert_eq!(
        out.status.code(),
        Some(0),
        "`quartet check` accepts it; output:\n{}",
        out.output()
    );
    assert!(
        out.stdout.contains(&format!("{}: ok", path.display())),
        "`quartet check` prints `FILE: ok`; stdout:\n{}",
        out.stdout
    );
}

#[test]
fn check_refuses_an_unknown_key_naming_line_and_key() {
    let dir = tempdir();
    let path = write(
        dir.path(),
        "unknown.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nbogus_key = 1\n",
    );
    assert_refused(&path, 4, "bogus_key");
}

#[test]
fn check_refuses_a_bad_duration_naming_line_and_key() {
    let dir = tempdir();
    let path = write(
        dir.path(),
        "duration.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[policies.fast]\ntimeout = \"soon\"\n",
    );
    assert_refused(&path, 6, "timeout");
}

#[test]
fn check_refuses_a_route_to_an_unknown_upstream() {
    let dir = tempdir();
    let path = write(
        dir.path(),
        "route.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[[routes]]\nprefix = \"/x\"\nupstream = \"missing\"\n",
    );
    let text = assert_refused(&path, 7, "upstream");
    assert!(
        text.contains("missing"),
        "the error names the missing upstream:\n{text}"
    );
}

#[test]
fn check_refuses_a_route_to_an_unknown_policy() {
    let dir = tempdir();
    let path = write(
        dir.path(),
        "policy.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[upstreams.a]\nendpoints = [\"http://127.0.0.1:1\"]\n\n[[routes]]\nprefix = \"/x\"\nupstream = \"a\"\npolicy = \"nonesuch\"\n",
    );
    let text = assert_refused(&path, 11, "policy");
    assert!(
        text.contains("nonesuch"),
        "the error names the missing policy:\n{text}"
    );
}

#[test]
fn check_refuses_a_non_loopback_admin_listener_without_a_token() {
    let dir = tempdir();
    let open = "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"0.0.0.0:0\"\n";
    let path = write(dir.path(), "open-admin.toml", open);
    assert_refused(&path, 3, "admin_listen");

    let path = write(
        dir.path(),
        "token-admin.toml",
        &format!("{open}admin_token = \"s3cret\"\n"),
    );
    let out = check(&path);
    assert_eq!(
        out.status.code(),
        Some(0),
        "with admin_token it is accepted:\n{}",
        out.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_a_bad_config_exits_64() {
    let dir = tempdir();
    let path = write(
        dir.path(),
        "bad.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmax_body_bytes = \"lots\"\n",
    );
    let mut process = Process::spawn(
        ["serve".as_ref(), "--config".as_ref(), path.as_os_str()],
        dir.path(),
    );
    let status = process.wait_exit(WAIT).await;
    let text = process.log.text();
    assert_eq!(
        status.code(),
        Some(EX_USAGE),
        "`quartet serve` exits 64 on a bad config:\n{text}"
    );
    assert!(
        text.contains(&format!("{}:4:", path.display())) && text.contains("max_body_bytes"),
        "it says FILE:LINE: KEY: message:\n{text}"
    );
}

#[test]
fn config_default_prints_a_config_that_check_accepts() {
    let dir = tempdir();
    let out = run_quartet(["config", "default"], dir.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "`quartet config default`:\n{}",
        out.output()
    );
    for needle in ["[server]", "127.0.0.1:8080", "127.0.0.1:9090"] {
        assert!(
            out.stdout.contains(needle),
            "the default config has {needle}:\n{}",
            out.stdout
        );
    }
    let path = write(dir.path(), "default.toml", &out.stdout);
    let checked = check(&path);
    assert_eq!(
        checked.status.code(),
        Some(0),
        "the default config passes check:\n{}",
        checked.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_admin_listener_requires_the_bearer_token() {
    let config = "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"0.0.0.0:0\"\nadmin_token = \"s3cret-admin-token\"\n";
    let gw = Gateway::start(config).await;
    let http = client();

    let resp = http.get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "no token: 401");
    let resp = http
        .get(gw.admin_url("/metrics"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert!(
        resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN,
        "a wrong token is refused, got {}",
        resp.status()
    );
    for path in ["/healthz", "/metrics", "/admin/breakers"] {
        let resp = http
            .get(gw.admin_url(path))
            .bearer_auth("s3cret-admin-token")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "GET {path} with the token");
    }
    assert!(
        !gw.log().text().contains("s3cret-admin-token"),
        "the admin token must never appear in the logs"
    );
}

/// Waits for a fixed port to be free: another test run on this machine may hold it briefly.
fn wait_port_free(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(_) => return,
            Err(e) if Instant::now() >= deadline => panic!(
                "port {port} is taken on this machine ({e}); `quartet serve` with the default \
                 config needs it: find the owner with `ss -ltnp 'sport = :{port}'` and stop it"
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_runs_quartet_serve_with_the_default_config() {
    wait_port_free(8080);
    wait_port_free(9090);
    let dir = tempdir();
    let mut process = Process::spawn(["serve"], dir.path());
    let (public, admin) = process.wait_listening().await;
    assert_eq!(
        public.to_string(),
        "127.0.0.1:8080",
        "the default public listener"
    );
    assert_eq!(
        admin.to_string(),
        "127.0.0.1:9090",
        "the default admin listener"
    );
    let http = client();

    let resp = http
        .get("http://127.0.0.1:9090/healthz")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "ok");

    // The default config has the RPC channel on the local RabbitMQ (up for the tests):
    // ready once its client connected, which takes a moment after the listeners are up.
    let (status, body) = eventually(
        "/readyz ready with the default config (RabbitMQ on 127.0.0.1:5672)",
        WAIT,
        || async {
            let resp = http.get("http://127.0.0.1:9090/readyz").send().await.ok()?;
            let status = resp.status();
            let body: Value = resp.json().await.ok()?;
            (status == StatusCode::OK).then_some((status, body))
        },
    )
    .await;
    assert_eq!(status, StatusCode::OK, "/readyz: {body}");
    assert_eq!(body["status"], "ready", "/readyz: {body}");
    assert!(
        body["channels"]["rest"].is_object(),
        "/readyz shows the rest channel: {body}"
    );
    assert_eq!(
        body["channels"]["rpc"]["state"], "ready",
        "/readyz shows the rpc channel of the default config: {body}"
    );

    let resp = http
        .get("http://127.0.0.1:8080/no/such/route")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::NOT_FOUND,
        "the public listener answers too"
    );
    assert!(process.try_exit().is_none(), "quartet keeps running");
}

#[test]
fn check_refuses_missing_certificate_and_ca_files_naming_the_key() {
    let dir = tempdir();
    let path = write(
        dir.path(),
        "tls.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         tls = { cert = \"/nonexistent/cert.pem\", key = \"/nonexistent/key.pem\" }\n",
    );
    assert_refused(&path, 4, "tls");

    let path = write(
        dir.path(),
        "ca.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n\
         [upstreams.secure]\nendpoints = [\"https://127.0.0.1:1\"]\nca_file = \"/nonexistent/ca.pem\"\n",
    );
    assert_refused(&path, 7, "ca_file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_variable_overrides_an_upstreams_endpoints() {
    let up = Upstream::start("real").await;
    // The file points at a closed port; the environment points at the real upstream.
    let config = format!(
        "{SERVER}{}{}",
        upstream_toml("image-store", &[closed_port_url()], ""),
        route_toml("/images", "image-store", "strip_prefix = true"),
    );
    let endpoints = up.url();
    let gw = Gateway::start_with_env(
        tempdir(),
        &config,
        &[("QUARTET_UPSTREAM_IMAGE_STORE_ENDPOINTS", endpoints.as_str())],
    )
    .await;
    let e = echo(
        client()
            .get(gw.url("/images/v2/images"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        e["server"], "real",
        "QUARTET_UPSTREAM_IMAGE_STORE_ENDPOINTS wins over the file"
    );
    assert!(
        gw.log()
            .text()
            .contains("QUARTET_UPSTREAM_IMAGE_STORE_ENDPOINTS"),
        "the override is logged, naming the variable"
    );
}
