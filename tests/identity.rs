//! End to end: the real `quartet` binary with `[identity]` embedded on a temp SQLite file,
//! tokens from a real Keystone client (keystoneauth1, from the venv of
//! `tests/requirements.txt`: `QUARTET_VENV`, default `.venv` at the workspace root), REST
//! routes in front of an upstream that echoes the headers it received.

use axum::extract::Request;
use axum::Json;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The `quartet` binary, built once if missing.
fn binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace().join("target"));
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "-q", "-p", "quartet", "--bin", "quartet"])
                .current_dir(workspace())
                .status()
                .expect("cargo build");
            assert!(status.success(), "cargo build -p quartet failed");
            target.join("debug").join("quartet")
        })
        .clone()
}

fn python() -> PathBuf {
    let venv = std::env::var_os("QUARTET_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv"));
    venv.join("bin").join("python")
}

/// A token for `user` scoped to `project` (both in domain `default`), from keystoneauth1.
fn keystoneauth_token(v3: &str, user: &str, password: &str, project: &str) -> String {
    let script = r#"
import sys
from keystoneauth1 import session
from keystoneauth1.identity import v3
auth = v3.Password(auth_url=sys.argv[1], username=sys.argv[2], password=sys.argv[3],
                   project_name=sys.argv[4], user_domain_id="default", project_domain_id="default")
print(session.Session(auth=auth).get_token())
"#;
    let out = Command::new(python())
        .args(["-c", script, v3, user, password, project])
        .output()
        .expect("python from the venv (set QUARTET_VENV)");
    assert!(
        out.status.success(),
        "keystoneauth1 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// An upstream answering every request with the headers it received, as JSON; with 401
/// for a path ending in `/unauthorized`.
async fn echo_upstream() -> SocketAddr {
    async fn echo(req: Request) -> (axum::http::StatusCode, Json<Value>) {
        let status = if req.uri().path().ends_with("/unauthorized") {
            axum::http::StatusCode::UNAUTHORIZED
        } else {
            axum::http::StatusCode::OK
        };
        let mut headers = serde_json::Map::new();
        for (name, value) in req.headers() {
            headers.insert(
                name.as_str().to_string(),
                json!(value.to_str().unwrap_or("")),
            );
        }
        (
            status,
            Json(json!({"path": req.uri().path(), "headers": headers})),
        )
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, axum::Router::new().fallback(echo))
            .await
            .ok();
    });
    addr
}

/// `quartet::identity::DATABASE_VAR` (this package does not link the gateway).
const DATABASE_VAR: &str = "QUARTET_IDENTITY_DATABASE";

const ADMIN_PASSWORD: &str = "s3cret-admin";

/// A child process, killed and reaped when dropped (also when a test fails).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Quartet {
    _child: Proc,
    public: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
}

impl Quartet {
    fn v3(&self) -> String {
        format!("http://{}/v3", self.public)
    }
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }
}

fn write_config(dir: &Path, upstream: SocketAddr) -> PathBuf {
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[upstreams.echo]
endpoints = ["http://{upstream}"]

[[routes]]
prefix = "/echo"
upstream = "echo"

[[routes]]
prefix = "/delay"
upstream = "echo"
auth = "delay"

[[routes]]
prefix = "/denied"
upstream = "echo"
access = "role:auditor"

[[routes]]
prefix = "/admins"
upstream = "echo"
access = "rule:admin_required"

[[routes]]
prefix = "/open"
upstream = "echo"
auth = "none"

[identity]
database = "sqlite://{db}"
key_repository = "{keys}"
policy_file = "{policy}"
revocation_poll = "100ms"
"#,
        db = dir.join("identity.db").display(),
        keys = dir.join("jws-keys").display(),
        policy = dir.join("policy.yaml").display(),
    );
    std::fs::write(
        dir.join("policy.yaml"),
        "\"admin_required\": \"role:admin\"\n",
    )
    .unwrap();
    let path = dir.join("quartet.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Starts the binary; reads the listening line from its stdout.
fn start_in(dir: tempfile::TempDir, config: PathBuf, password: Option<&str>) -> Quartet {
    let mut cmd = Command::new(binary());
    cmd.args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env_remove(DATABASE_VAR)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    match password {
        Some(p) => cmd.env("QUARTET_ADMIN_PASSWORD", p),
        None => cmd.env_remove("QUARTET_ADMIN_PASSWORD"),
    };
    let mut child = Proc(cmd.spawn().expect("start quartet"));
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx.recv_timeout(left).expect("quartet did not start");
        assert!(
            !line.contains(ADMIN_PASSWORD),
            "a password reached the log: {line}"
        );
        if let Some(rest) = line.split("quartet listening public=").nth(1) {
            let mut parts = rest.split(" admin=");
            let public = parts.next().unwrap().trim().parse().unwrap();
            let admin = parts.next().unwrap().trim().parse().unwrap();
            // Keep draining stdout, checking no password is ever logged.
            std::thread::spawn(move || {
                while let Ok(line) = rx.recv() {
                    assert!(!line.contains(ADMIN_PASSWORD), "password logged: {line}");
                }
            });
            let dir_path = dir.path().to_path_buf();
            return Quartet {
                _child: child,
                public,
                admin,
                _dir: dir,
                dir: dir_path,
                config,
            };
        }
    }
}

async fn start() -> Quartet {
    let upstream = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), upstream);
    start_in(dir, config, Some(ADMIN_PASSWORD))
}

async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, reqwest::header::HeaderMap, Value) {
    let client = reqwest::Client::new();
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, headers, body)
}

fn seen<'a>(body: &'a Value, header: &str) -> Option<&'a str> {
    body["headers"][header].as_str()
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_from_keystoneauth_pass_and_the_rest_is_refused_as_keystonemiddleware_does() {
    let q = start().await;
    let v3 = q.v3();
    let token = tokio::task::spawn_blocking(move || {
        keystoneauth_token(&v3, "admin", ADMIN_PASSWORD, "admin")
    })
    .await
    .unwrap();

    // A valid token: the upstream sees the identity, never what the client claimed.
    let (status, _, body) = get(
        &q.url("/echo/servers"),
        &[
            ("X-Auth-Token", &token),
            ("X-User-Id", "spoofed"),
            ("X-Roles", "admin,spoofed"),
            ("X-Identity-Status", "Confirmed-spoofed"),
            ("X-Service-Roles", "service"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen(&body, "x-identity-status"), Some("Confirmed"));
    let user_id = seen(&body, "x-user-id").expect("x-user-id");
    assert_ne!(user_id, "spoofed");
    assert_eq!(seen(&body, "x-user-name"), Some("admin"));
    assert!(seen(&body, "x-project-id").is_some_and(|p| !p.is_empty()));
    assert_eq!(seen(&body, "x-project-name"), Some("admin"));
    let roles = seen(&body, "x-roles").unwrap();
    assert!(roles.split(',').any(|r| r == "admin"), "{roles}");
    assert!(!roles.contains("spoofed"), "{roles}");
    assert!(seen(&body, "x-service-roles").is_none(), "{body}");

    // A valid token the service itself refuses: its 401 passes, told where tokens are,
    // as keystonemiddleware tells it.
    let (status, headers, body) =
        get(&q.url("/echo/unauthorized"), &[("X-Auth-Token", &token)]).await;
    assert_eq!(status, 401);
    assert_eq!(
        body["path"], "/echo/unauthorized",
        "the service's own answer"
    );
    assert_eq!(
        headers["www-authenticate"].to_str().unwrap(),
        format!("Keystone uri=\"{}\"", q.v3())
    );

    // No token: keystonemiddleware's 401, with where to get one.
    let (status, headers, body) = get(&q.url("/echo/servers"), &[]).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], 401);
    assert_eq!(body["error"]["title"], "Unauthorized");
    assert_eq!(
        headers["www-authenticate"].to_str().unwrap(),
        format!("Keystone uri=\"{}\"", q.v3())
    );
    // A token that is not one.
    let (status, _, body) = get(&q.url("/echo/x"), &[("X-Auth-Token", "garbage")]).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], 401);

    // delay: passes on, marked Invalid; spoofed headers still removed.
    let (status, _, body) = get(
        &q.url("/delay/x"),
        &[("X-Auth-Token", "garbage"), ("X-User-Id", "spoofed")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(seen(&body, "x-identity-status"), Some("Invalid"));
    assert!(seen(&body, "x-user-id").is_none());

    // auth = "none": no check, but no spoofing either.
    let (status, _, body) = get(&q.url("/open/x"), &[("X-Roles", "admin")]).await;
    assert_eq!(status, 200);
    assert!(seen(&body, "x-roles").is_none());

    // Access rules: an expression and a rule of the policy file.
    let (status, _, body) = get(&q.url("/denied/x"), &[("X-Auth-Token", &token)]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], 403);
    assert_eq!(body["error"]["title"], "Forbidden");
    let (status, _, _) = get(&q.url("/admins/x"), &[("X-Auth-Token", &token)]).await;
    assert_eq!(status, 200);

    // The catalog lists the routes.
    let (status, _, body) = get(
        &format!("{}/auth/tokens", q.v3()),
        &[("X-Auth-Token", &token), ("X-Subject-Token", &token)],
    )
    .await;
    assert_eq!(status, 200);
    let types: Vec<&str> = body["token"]["catalog"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["type"].as_str())
        .collect();
    assert!(
        types.contains(&"echo") && types.contains(&"delay"),
        "{types:?}"
    );

    // Revocation: refused at once by this instance, even though the token was cached.
    let resp = reqwest::Client::new()
        .delete(format!("{}/auth/tokens", q.v3()))
        .header("X-Auth-Token", &token)
        .header("X-Subject-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let (status, _, _) = get(&q.url("/echo/x"), &[("X-Auth-Token", &token)]).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_writes_need_an_admin_token_when_identity_is_on() {
    let q = start().await;
    let v3 = q.v3();
    let admin_token = tokio::task::spawn_blocking(move || {
        keystoneauth_token(&v3, "admin", ADMIN_PASSWORD, "admin")
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let admin = format!("http://{}", q.admin);

    // Reads stay open.
    let resp = client
        .get(format!("{admin}/admin/breakers"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ready: Value = client
        .get(format!("{admin}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["channels"]["identity"]["state"], "ready", "{ready}");
    assert_eq!(ready["channels"]["identity"]["store"], "reachable");

    let fault = json!({"abort_status": 503, "abort_percent": 100.0});
    let resp = client
        .put(format!("{admin}/admin/faults/echo"))
        .json(&fault)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = client
        .put(format!("{admin}/admin/faults/echo"))
        .header("X-Auth-Token", "garbage")
        .json(&fault)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = client
        .post(format!("{admin}/admin/breakers/echo"))
        .json(&json!({"state": "forced_open"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    // A member (no admin role) is refused with 403.
    let cli = |args: &[&str]| {
        let out = Command::new(binary())
            .args(["identity"])
            .args(args)
            .arg("--config")
            .arg(&q.config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    cli(&["user", "create", "bob", "--password", "bob-pass"]);
    cli(&[
        "role",
        "add",
        "--user",
        "bob",
        "--project",
        "admin",
        "--role",
        "member",
    ]);
    let v3 = q.v3();
    let bob =
        tokio::task::spawn_blocking(move || keystoneauth_token(&v3, "bob", "bob-pass", "admin"))
            .await
            .unwrap();
    let resp = client
        .delete(format!("{admin}/admin/faults/echo"))
        .header("X-Auth-Token", &bob)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);

    // The admin may.
    let resp = client
        .put(format!("{admin}/admin/faults/echo"))
        .header("X-Auth-Token", &admin_token)
        .json(&fault)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // ... and a fault answers only requests that passed the token check.
    let (status, _, _) = get(&q.url("/echo/x"), &[]).await;
    assert_eq!(status, 401);
    let (status, _, _) = get(&q.url("/echo/x"), &[("X-Auth-Token", &admin_token)]).await;
    assert_eq!(status, 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_bootstrap_then_a_new_user_with_a_role_gets_through() {
    let upstream = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), upstream);
    let run = |args: &[&str]| {
        Command::new(binary())
            .arg("identity")
            .args(args)
            .arg("--config")
            .arg(&config)
            .env_remove("QUARTET_ADMIN_PASSWORD")
            .env_remove(DATABASE_VAR)
            .output()
            .unwrap()
    };
    let out = run(&["bootstrap", "--password", "first-pass"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["project", "create", "demo"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["user", "create", "alice", "--password", "alice-pass"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let alice_id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let out = run(&[
        "role",
        "add",
        "--user",
        "alice",
        "--project",
        "demo",
        "--role",
        "member",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Bad input: exit 64.
    let out = run(&[
        "role",
        "add",
        "--user",
        "nobody",
        "--project",
        "demo",
        "--role",
        "member",
    ]);
    assert_eq!(out.status.code(), Some(64));
    let out = run(&["user", "create", "alice", "--password", "x"]);
    assert_eq!(out.status.code(), Some(64));

    // The store is not empty: starting does not bootstrap again (no password needed).
    let q = start_in(dir, config, None);
    let v3 = q.v3();
    let token =
        tokio::task::spawn_blocking(move || keystoneauth_token(&v3, "alice", "alice-pass", "demo"))
            .await
            .unwrap();
    let (status, _, body) = get(&q.url("/echo/x"), &[("X-Auth-Token", &token)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen(&body, "x-user-id"), Some(alice_id.as_str()));
    assert_eq!(seen(&body, "x-project-name"), Some("demo"));
    assert!(seen(&body, "x-roles")
        .unwrap()
        .split(',')
        .any(|r| r == "member"));
    // member is not admin: the rule refuses.
    let (status, _, _) = get(&q.url("/admins/x"), &[("X-Auth-Token", &token)]).await;
    assert_eq!(status, 403);
    // The admin password set by the CLI works.
    let v3 = q.v3();
    tokio::task::spawn_blocking(move || keystoneauth_token(&v3, "admin", "first-pass", "admin"))
        .await
        .unwrap();
    assert!(q.dir.join("identity.db").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_start_without_a_password_prints_a_generated_one_once() {
    let upstream = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), upstream);
    let mut child = Proc(
        Command::new(binary())
            .args(["serve", "--config"])
            .arg(&config)
            .env_remove("QUARTET_ADMIN_PASSWORD")
            .env_remove(DATABASE_VAR)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let mut password = None;
    let mut public = None;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some(p) = line.split("admin password (shown once): ").nth(1) {
            password = Some(p.trim().to_string());
        }
        if let Some(rest) = line.split("quartet listening public=").nth(1) {
            public = rest.split(' ').next().map(str::to_string);
            break;
        }
    }
    let (password, public) = (password.expect("password line"), public.expect("listening"));
    assert_eq!(password.len(), 24);
    let v3 = format!("http://{public}/v3");
    let token =
        tokio::task::spawn_blocking(move || keystoneauth_token(&v3, "admin", &password, "admin"))
            .await
            .unwrap();
    assert!(!token.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_reaches_another_instance_on_the_same_database_within_the_poll() {
    let a = start().await;
    // A second instance on the same database and keys.
    let dir_b = tempfile::tempdir().unwrap();
    let config_b = dir_b.path().join("quartet.toml");
    std::fs::copy(&a.config, &config_b).unwrap();
    let b = start_in(dir_b, config_b, Some(ADMIN_PASSWORD));
    let v3 = a.v3();
    let token = tokio::task::spawn_blocking(move || {
        keystoneauth_token(&v3, "admin", ADMIN_PASSWORD, "admin")
    })
    .await
    .unwrap();
    // B validates (and caches) A's token.
    let (status, _, _) = get(&b.url("/echo/x"), &[("X-Auth-Token", &token)]).await;
    assert_eq!(status, 200);
    let resp = reqwest::Client::new()
        .delete(format!("{}/auth/tokens", a.v3()))
        .header("X-Auth-Token", &token)
        .header("X-Subject-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    // revocation_poll is 100ms: B refuses it soon (waiting for the condition, 10s at most).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _) = get(&b.url("/echo/x"), &[("X-Auth-Token", &token)]).await;
        if status == 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B still accepts the revoked token"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A second Quartet in `mode = "keystone"`, validating against `keystone_url`.
fn start_keystone_mode(upstream: SocketAddr, keystone_url: &str, jws: Option<&Path>) -> Quartet {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), upstream);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "mode = \"keystone\"\n\n[identity.keystone]\nurl = \"{keystone_url}\"\nusername = \"admin\"\npassword = \"{ADMIN_PASSWORD}\"\nproject_name = \"admin\"\n"
    ));
    if let Some(jws) = jws {
        text.push_str(&format!(
            "jws_public_key_repository = \"{}\"\n",
            jws.display()
        ));
    }
    std::fs::write(&config, text).unwrap();
    start_in(dir, config, None)
}

#[tokio::test(flavor = "multi_thread")]
async fn keystone_mode_validates_remotely_and_answers_503_when_keystone_is_down() {
    // The embedded identity of one instance is the "Keystone" of the other.
    let keystone = start().await;
    let upstream = echo_upstream().await;
    let jws = keystone.dir.join("jws-keys").join("public");
    let q = start_keystone_mode(upstream, &keystone.v3(), Some(&jws));
    let v3 = keystone.v3();
    let token = tokio::task::spawn_blocking(move || {
        keystoneauth_token(&v3, "admin", ADMIN_PASSWORD, "admin")
    })
    .await
    .unwrap();
    let (status, _, body) = get(&q.url("/echo/x"), &[("X-Auth-Token", &token)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen(&body, "x-identity-status"), Some("Confirmed"));
    assert_eq!(seen(&body, "x-user-name"), Some("admin"));
    let (status, _, _) = get(&q.url("/echo/x"), &[("X-Auth-Token", "garbage")]).await;
    assert_eq!(status, 401);
    // The remote Keystone's breaker is in the admin API's registry.
    let (status, _, breakers) = get(&format!("http://{}/admin/breakers", q.admin), &[]).await;
    assert_eq!(status, 200, "{breakers}");
    assert!(
        breakers.as_array().is_some_and(|list| list
            .iter()
            .any(|b| b["channel"] == "identity" && b["target"] == "keystone")),
        "GET /admin/breakers lists identity:keystone: {breakers}"
    );
    // No /v3 in keystone mode: the path is nobody's.
    let (status, _, _) = get(&q.url("/v3"), &[]).await;
    assert_eq!(status, 404);

    // Keystone unreachable and the token not cached: keystonemiddleware's 503.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let down = start_keystone_mode(upstream, &format!("http://{closed}/v3"), None);
    let (status, _, body) = get(&down.url("/echo/x"), &[("X-Auth-Token", &token)]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], 503);
    assert_eq!(
        body["error"]["message"],
        "The Keystone service is temporarily unavailable."
    );
    // ... and under delay, passed on marked Invalid.
    let (status, _, body) = get(&down.url("/delay/x"), &[("X-Auth-Token", &token)]).await;
    assert_eq!(status, 200);
    assert_eq!(seen(&body, "x-identity-status"), Some("Invalid"));
}

/// A token from Quartet's own `POST /v3/auth/tokens` for `user` (domain `default`).
async fn issue(q: &Quartet, user: &str, password: &str, scope: Value) -> String {
    let mut auth = json!({"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"id": "default"}, "password": password}}}});
    if !scope.is_null() {
        auth["scope"] = scope;
    }
    let resp = reqwest::Client::new()
        .post(format!("{}/auth/tokens", q.v3()))
        .json(&json!({ "auth": auth }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201, "token for {user}");
    resp.headers()["x-subject-token"]
        .to_str()
        .unwrap()
        .to_string()
}

/// The headers keystonemiddleware's auth_token may set or remove (and the tokens it
/// forwards), by their lowercase names.
fn identity_headers(headers: &Value) -> serde_json::Map<String, Value> {
    const PREFIXES: &[&str] = &[
        "x-identity-status",
        "x-service-",
        "x-user",
        "x-project-",
        "x-domain-",
        "x-tenant",
        "x-role",
        "x-is-admin-project",
        "openstack-system-scope",
        "x-auth-token",
        "x-storage-token",
    ];
    headers
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| PREFIXES.iter().any(|p| k.starts_with(p)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn domain_system_and_service_tokens_forward_what_keystonemiddleware_sets() {
    let upstream = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), upstream);
    let run = |args: &[&str]| {
        let out = Command::new(binary())
            .arg("identity")
            .args(args)
            .arg("--config")
            .arg(&config)
            .env_remove("QUARTET_ADMIN_PASSWORD")
            .env_remove(DATABASE_VAR)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "quartet identity {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Bootstrap gives admin `admin` on project admin and on the system; a domain role
    // for domain-scoped tokens, and a service user as in a real deployment.
    run(&["bootstrap", "--password", ADMIN_PASSWORD]);
    run(&[
        "role",
        "add",
        "--user",
        "admin",
        "--on-domain",
        "default",
        "--role",
        "member",
    ]);
    run(&["project", "create", "service"]);
    run(&["user", "create", "nova", "--password", "nova-pw"]);
    run(&[
        "role",
        "add",
        "--user",
        "nova",
        "--project",
        "service",
        "--role",
        "service",
    ]);
    let q = start_in(dir, config, None);

    let in_default = |name: &str| json!({"name": name, "domain": {"id": "default"}});
    let project = issue(
        &q,
        "admin",
        ADMIN_PASSWORD,
        json!({"project": in_default("admin")}),
    )
    .await;
    let domain = issue(
        &q,
        "admin",
        ADMIN_PASSWORD,
        json!({"domain": {"id": "default"}}),
    )
    .await;
    let system = issue(
        &q,
        "admin",
        ADMIN_PASSWORD,
        json!({"system": {"all": true}}),
    )
    .await;
    let service = issue(
        &q,
        "nova",
        "nova-pw",
        json!({"project": in_default("service")}),
    )
    .await;

    let spoofed = json!({"X-Roles": "admin", "X-User-Id": "root", "X-Tenant-Id": "t",
        "X-Service-Roles": "service", "X-Domain-Id": "d", "OpenStack-System-Scope": "all",
        "X-Identity-Status": "Confirmed", "X-Is-Admin-Project": "True"});
    let with = |extra: Value| {
        let mut h = spoofed.as_object().unwrap().clone();
        h.extend(extra.as_object().unwrap().clone());
        json!({ "headers": h })
    };
    let cases = vec![
        with(json!({"X-Auth-Token": domain})),
        with(json!({"X-Auth-Token": system})),
        with(json!({"X-Auth-Token": project, "X-Service-Token": service})),
        with(json!({"X-Auth-Token": domain, "X-Service-Token": service})),
        with(json!({"X-Auth-Token": system, "X-Service-Token": service})),
        // admin's domain token has no service role: not a service token.
        with(json!({"X-Auth-Token": project, "X-Service-Token": domain})),
        with(json!({"X-Service-Token": service})),
    ];

    // The real keystonemiddleware, validating against Quartet's /v3 with nova's token.
    let script = workspace().join("adapters/identity/tests/peers/keystonemiddleware_headers.py");
    let input = serde_json::to_vec(&cases).unwrap();
    let (v3, service_token) = (q.v3(), service.clone());
    let output = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new(python())
            .arg(script)
            .args([&v3, "nova", "nova-pw", "false", &service_token])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python from the venv (set QUARTET_VENV)");
        child.stdin.take().unwrap().write_all(&input).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "keystonemiddleware run failed (is it installed? run `bash tests/run.sh`):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let theirs: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let statuses: Vec<u64> = theirs
        .iter()
        .map(|t| t["status"].as_u64().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 401, 401],
        "keystonemiddleware"
    );

    let mut differences = Vec::new();
    for (i, (case, theirs)) in cases.iter().zip(&theirs).enumerate() {
        let headers: Vec<(&str, &str)> = case["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
            .collect();
        let (status, _, body) = get(&q.url("/echo/servers"), &headers).await;
        if u64::from(status) != theirs["status"].as_u64().unwrap() {
            differences.push(format!(
                "case {i}: status ours {status} theirs {}",
                theirs["status"]
            ));
            continue;
        }
        if status == 200 {
            let (ours, theirs) = (
                identity_headers(&body["headers"]),
                identity_headers(&theirs["body"]),
            );
            if ours != theirs {
                differences.push(format!(
                    "case {i}: headers\n ours   {}\n theirs {}",
                    Value::Object(ours),
                    Value::Object(theirs)
                ));
            }
        }
    }
    assert!(
        differences.is_empty(),
        "quartet forwards other headers than keystonemiddleware sets:\n{}",
        differences.join("\n")
    );
}
