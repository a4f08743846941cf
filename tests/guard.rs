//! The one guard on every channel of the public listener, end to end: the real `quartet`
//! binary with the embedded identity (SQLite in a temp dir, users made with the real
//! `quartet identity` CLI, tokens from the real `POST /v3/auth/tokens`), the real
//! RabbitMQ and a real oslo.messaging server (`adapters/amqp/tests/peers`), the real
//! `qemu-img` for the native driver, and a REST upstream.
//!
//! What is checked: `/rpc/{topic}`, `[[rpc.routes]]`, `/native/{driver}/{operation}` and
//! `/native/jobs/{id}` refuse a missing token (401 with `WWW-Authenticate`), a wrong role
//! (403) and let the right token through; `project_id:%(project_id)s` reads a REST
//! route's path parameter, an RPC route's path parameter and an RPC call's args; a
//! refused call never reaches the backend; the RPC context carries the token's user,
//! project and roles, as the oslo.messaging server received it.

use quartet_tests::{client, eventually, run_quartet, Gateway, Upstream, SERVER};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(30);
const ADMIN_PASSWORD: &str = "guard-admin-pass";
const RABBIT_URL: &str = "rabbit://guest:guest@127.0.0.1:5672/";

/// A real oslo.messaging RPC server (killed on drop).
struct OsloServer(Child);

impl Drop for OsloServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl OsloServer {
    async fn start(topic: &str) -> OsloServer {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../adapters/amqp/tests/peers/oslo_rpc_server.py");
        let mut child = Command::new(quartet_tests::oslo_python())
            .arg(script)
            .args(["--url", RABBIT_URL, "--topic", topic, "--server", "s1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the oslo.messaging server");
        let stdout = child.stdout.take().expect("stdout");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        eventually("the oslo.messaging server is ready", BOUND, || {
            let ready = lines
                .lock()
                .expect("lines")
                .iter()
                .any(|l| l.contains("ready") || l.contains("READY"));
            async move { ready.then_some(()) }
        })
        .await;
        OsloServer(child)
    }
}

/// Runs `quartet identity ARGS --config CONFIG`; its stdout (an id), or a failure.
fn identity_cli(dir: &Path, config: &Path, args: &[&str]) -> String {
    let mut all: Vec<&str> = vec!["identity"];
    all.extend_from_slice(args);
    let config = config.to_str().expect("utf-8 path");
    all.extend_from_slice(&["--config", config]);
    let out = run_quartet(all, dir);
    assert!(
        out.status.success(),
        "quartet identity {args:?}: {}",
        out.output()
    );
    out.stdout.trim().to_string()
}

/// A token from the embedded identity's `POST /v3/auth/tokens`, scoped to `project`.
async fn token(gw: &Gateway, user: &str, password: &str, project: &str) -> String {
    let body = json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"id": "default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}
    }});
    let resp = client()
        .post(gw.url("/v3/auth/tokens"))
        .json(&body)
        .send()
        .await
        .expect("POST /v3/auth/tokens");
    assert_eq!(resp.status(), StatusCode::CREATED, "token for {user}");
    resp.headers()["x-subject-token"]
        .to_str()
        .expect("token")
        .to_string()
}

struct Answer {
    status: StatusCode,
    www: Option<String>,
    body: Value,
}

async fn send(req: reqwest::RequestBuilder, token: Option<&str>) -> Answer {
    let req = match token {
        Some(t) => req.header("X-Auth-Token", t),
        None => req,
    };
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or("").to_string());
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer { status, www, body }
}

fn assert_401(a: &Answer, what: &str) {
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{what}: {}", a.body);
    assert!(
        a.www
            .as_deref()
            .is_some_and(|w| w.starts_with("Keystone uri=\"http://") && w.ends_with("/v3\"")),
        "{what}: WWW-Authenticate {:?}",
        a.www
    );
    assert_eq!(a.body["error"]["code"], 401, "{what}: {}", a.body);
    assert_eq!(
        a.body["error"]["message"], "The request you have made requires authentication.",
        "{what}"
    );
}

fn assert_403(a: &Answer, rule: &str, what: &str) {
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{what}: {}", a.body);
    assert_eq!(a.body["error"]["code"], 403, "{what}: {}", a.body);
    assert_eq!(a.body["error"]["title"], "Forbidden", "{what}");
    assert_eq!(
        a.body["error"]["message"],
        format!("You are not authorized to perform the requested action: {rule}."),
        "{what}"
    );
}

struct Setup {
    gw: Gateway,
    upstream: Upstream,
    _server: OsloServer,
    topic: String,
    admin_topic: String,
    project_topic: String,
    alice_id: String,
    demo_id: String,
    alice: String,
    admin: String,
}

async fn setup() -> Setup {
    quartet_tests::broker_up();
    let dir = quartet_tests::tempdir();
    let upstream = Upstream::start("echo").await;
    let topic = quartet_tests::unique("guard");
    let admin_topic = quartet_tests::unique("guard_admin");
    let project_topic = quartet_tests::unique("guard_project");
    let d = dir.path().display();
    let config = format!(
        r#"{SERVER}
[upstreams.echo]
endpoints = ["{up}"]

[[routes]]
prefix = "/projects"
upstream = "echo"
access = "project_id:%(project_id)s"
path_params = ["/projects/{{project_id}}"]

[amqp]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
connection_name = "{conn}"
default_timeout = "10s"

[[rpc.topics]]
topic = "{topic}"
access = "role:member or role:admin"

[[rpc.topics]]
topic = "{admin_topic}"
access = "rule:admin_required"

[[rpc.topics]]
topic = "{project_topic}"
server = "s1"
access = "project_id:%(project_id)s"

[[rpc.routes]]
method = "GET"
path = "/p/{{project_id}}/whoami"
topic = "{project_topic}"
rpc_method = "whoami"

[native]
database = "sqlite://{d}/jobs.db"

[[native.drivers]]
name = "volumes"
kind = "qemu-img"
root = "{d}/volumes"

[native.drivers.access]
create_volume = "role:admin"
"*" = "role:member or role:admin"

[identity]
database = "sqlite://{d}/identity.db"
key_repository = "{d}/jws-keys"
policy_file = "{d}/policy.yaml"
"#,
        up = upstream.url(),
        conn = quartet_tests::unique("quartet-guard"),
    );
    std::fs::write(
        dir.path().join("policy.yaml"),
        "\"admin_required\": \"role:admin\"\n",
    )
    .expect("policy file");
    let config_path = dir.path().join("quartet.toml");
    std::fs::write(&config_path, &config).expect("config");
    identity_cli(
        dir.path(),
        &config_path,
        &["bootstrap", "--password", ADMIN_PASSWORD],
    );
    let demo_id = identity_cli(dir.path(), &config_path, &["project", "create", "demo"]);
    let alice_id = identity_cli(
        dir.path(),
        &config_path,
        &["user", "create", "alice", "--password", "alice-pass"],
    );
    identity_cli(
        dir.path(),
        &config_path,
        &[
            "role",
            "add",
            "--user",
            "alice",
            "--project",
            "demo",
            "--role",
            "member",
        ],
    );
    let server = OsloServer::start(&project_topic).await;
    let gw = Gateway::start_in(dir, &config).await;
    eventually("/readyz shows the rpc channel ready", BOUND, || async {
        let (_, body) = gw.admin_json("/readyz").await;
        (body["channels"]["rpc"]["state"] == "ready").then_some(())
    })
    .await;
    let alice = token(&gw, "alice", "alice-pass", "demo").await;
    let admin = token(&gw, "admin", ADMIN_PASSWORD, "admin").await;
    Setup {
        gw,
        upstream,
        _server: server,
        topic,
        admin_topic,
        project_topic,
        alice_id,
        demo_id,
        alice,
        admin,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_channel_checks_the_token_and_the_access_rule() {
    let s = setup().await;
    let gw = &s.gw;
    let http = client();
    let rpc = |topic: &str, body: Value| http.post(gw.url(&format!("/rpc/{topic}"))).json(&body);

    // POST /rpc/{topic}: no token 401; a member on an admin topic 403. The topics have no
    // server: a call that got through would time out, so these answers are the guard's.
    let call = json!({"method": "whoami", "args": {}});
    let a = send(rpc(&s.topic, call.clone()), None).await;
    assert_401(&a, "rpc without a token");
    let a = send(rpc(&s.topic, call.clone()), Some("not-a-token")).await;
    assert_401(&a, "rpc with a bad token");
    let a = send(rpc(&s.admin_topic, call.clone()), Some(&s.alice)).await;
    assert_403(&a, "admin_required", "rpc: member on an admin topic");

    // project_id:%(project_id)s against the call's args: the right project reaches the
    // real oslo.messaging server, another is refused.
    let a = send(
        rpc(
            &s.project_topic,
            json!({"method": "echo", "args": {"project_id": s.demo_id}}),
        ),
        Some(&s.alice),
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "rpc with alice's token: {}",
        a.body
    );
    assert_eq!(
        a.body["result"]["project_id"],
        s.demo_id.as_str(),
        "{}",
        a.body
    );
    let a = send(
        rpc(
            &s.project_topic,
            json!({"method": "echo", "args": {"project_id": "someone-else"}}),
        ),
        Some(&s.alice),
    )
    .await;
    assert_403(
        &a,
        "project_id:%(project_id)s",
        "rpc: args of another project",
    );

    // [[rpc.routes]]: the topic's rule, against the route's path parameter.
    let path = |p: &str| gw.url(&format!("/p/{p}/whoami"));
    let a = send(http.get(path(&s.demo_id)), None).await;
    assert_401(&a, "rpc route without a token");
    let a = send(http.get(path("someone-else")), Some(&s.alice)).await;
    assert_403(
        &a,
        "project_id:%(project_id)s",
        "rpc route: another project",
    );
    // Allowed: the context the oslo.messaging server received is the token's.
    let a = send(http.get(path(&s.demo_id)), Some(&s.alice)).await;
    assert_eq!(a.status, StatusCode::OK, "rpc route: {}", a.body);
    let ctx = &a.body["context"];
    assert_eq!(ctx["user"], s.alice_id.as_str(), "context: {ctx}");
    assert_eq!(ctx["project_id"], s.demo_id.as_str(), "context: {ctx}");
    assert_eq!(ctx["user_domain"], "default", "context: {ctx}");
    assert!(
        ctx["roles"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r == "member")),
        "context roles: {ctx}"
    );
    assert_eq!(ctx["is_admin"], false, "context: {ctx}");
    assert!(
        ctx["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("req-")),
        "context request id: {ctx}"
    );

    // A REST route: project_id from path_params. Refusals never reach the upstream.
    let before = s.upstream.hits();
    let a = send(
        http.get(gw.url("/projects/someone-else/servers")),
        Some(&s.alice),
    )
    .await;
    assert_403(&a, "project_id:%(project_id)s", "rest: another project");
    let a = send(http.get(gw.url("/projects/x/servers")), None).await;
    assert_401(&a, "rest without a token");
    assert_eq!(
        s.upstream.hits(),
        before,
        "a refused request reached the upstream"
    );
    let a = send(
        http.get(gw.url(&format!("/projects/{}/servers", s.demo_id))),
        Some(&s.alice),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "rest: own project: {}", a.body);
    assert_eq!(s.upstream.hits(), before + 1);

    // /native: no token 401, a member may not create (403), the admin may; the "*" rule
    // lets the member read.
    let native = |op: &str, args: Value| {
        http.post(gw.url(&format!("/native/volumes/{op}")))
            .json(&args)
    };
    let vol = json!({"id": "g1", "size_gb": 1});
    let a = send(native("create_volume", vol.clone()), None).await;
    assert_401(&a, "native without a token");
    let a = send(native("create_volume", vol.clone()), Some(&s.alice)).await;
    assert_403(&a, "role:admin", "native: member creates");
    assert!(
        !s.gw.dir.path().join("volumes/volume-g1.qcow2").exists(),
        "a refused call reached the driver"
    );
    let a = send(native("create_volume", vol.clone()), Some(&s.admin)).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "native: admin creates: {}",
        a.body
    );
    let a = send(native("get_volume", json!({"id": "g1"})), Some(&s.alice)).await;
    assert_eq!(a.status, StatusCode::OK, "native: member reads: {}", a.body);

    // /native/jobs/{id}: read under the job's operation's guard.
    let a = send(
        native("create_volume", json!({"id": "g2", "size_gb": 1}))
            .header("Prefer", "respond-async"),
        Some(&s.admin),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "async create: {}", a.body);
    let job = gw.url(&format!(
        "/native/jobs/{}",
        a.body["id"].as_str().expect("job id")
    ));
    let a = send(http.get(&job), None).await;
    assert_401(&a, "job without a token");
    let a = send(http.get(&job), Some(&s.alice)).await;
    assert_403(&a, "role:admin", "job of an admin-only operation, member");
    let a = send(http.get(&job), Some(&s.admin)).await;
    assert_eq!(a.status, StatusCode::OK, "job, admin: {}", a.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_writes_answer_keystones_401_and_403() {
    let s = setup().await;
    let http = client();
    let url = s.gw.admin_url("/admin/faults/echo");
    let fault = json!({"abort_status": 503, "abort_percent": 50});
    let a = send(http.put(&url).json(&fault), None).await;
    assert_401(&a, "admin write without a token");
    let a = send(http.put(&url).json(&fault), Some(&s.alice)).await;
    assert_403(&a, "admin_required", "admin write by a member");
    let a = send(http.put(&url).json(&fault), Some(&s.admin)).await;
    assert!(a.status.is_success(), "admin write by admin: {}", a.body);
}
