//! End to end: the real `quartet` binary in front of real upstream servers, and a drill
//! against it. The upstream `api` has two replicas; one answers 500 to everything until
//! the test heals it (the upstream failing half its calls). The drill also injects a 50%
//! abort window on the admin API.
//!
//! With the default policy (breaker `open_for` shortened to fit a 3 s drill), retries and
//! the breaker absorb the failing replica and the drill passes (exit 0). With a wrong
//! policy (one attempt, breaker triggers off) the same drill fails (exit 1): a drill can
//! fail. Needs `target/debug/quartet`: `cargo build -p quartet`.

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use quartet_drill::{Options, ProgressMode};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The `quartet` binary built beside this test executable.
fn quartet_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/e2e-HASH -> target/debug/quartet
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(format!("quartet{}", std::env::consts::EXE_SUFFIX)))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: the end-to-end drill runs against the real binary; run `cargo build -p quartet` first",
        bin.display()
    );
    bin
}

/// A Quartet process, killed when dropped.
struct Quartet {
    child: Child,
    public: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Quartet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_quartet(dir: &Path, config: &str) -> Quartet {
    let path = dir.join("quartet.toml");
    std::fs::write(&path, config).expect("write config");
    let mut child = Command::new(quartet_bin())
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start quartet");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent {
                if let Some(rest) = line.split("quartet listening ").nth(1) {
                    let addr = |key: &str| {
                        rest.split_whitespace()
                            .find_map(|w| w.strip_prefix(key))
                            .and_then(|a| a.parse::<SocketAddr>().ok())
                    };
                    if let (Some(p), Some(a)) = (addr("public="), addr("admin=")) {
                        let _ = tx.send((p, a));
                        sent = true;
                    }
                }
            }
            // E2E_LOG=1 shows Quartet's log (its access lines say why a call failed).
            if std::env::var_os("E2E_LOG").is_some() {
                eprintln!("quartet: {line}");
            }
            // Keep draining so Quartet never blocks on a full pipe.
        }
    });
    let (public, admin) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("quartet logs `quartet listening public=ADDR admin=ADDR` within 30 s");
    Quartet {
        child,
        public,
        admin,
    }
}

/// Serves `app` on 127.0.0.1, port 0.
async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// Two replicas: `good` always answers, `bad` answers 500 until `healed` is set.
async fn upstreams() -> (SocketAddr, SocketAddr, Arc<AtomicBool>) {
    let good = serve(Router::new().route("/item", get(|| async { "ok" }))).await;
    let healed = Arc::new(AtomicBool::new(false));
    let h = healed.clone();
    let bad = serve(Router::new().route(
        "/item",
        get(move || {
            let h = h.clone();
            async move {
                if h.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::INTERNAL_SERVER_ERROR, "replica failing")
                }
            }
        }),
    ))
    .await;
    (good, bad, healed)
}

fn config(good: SocketAddr, bad: SocketAddr, policy: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
grace_period = "1s"

{policy}

[upstreams.api]
endpoints = ["http://{good}", "http://{bad}"]

[[routes]]
prefix = "/api"
upstream = "api"
strip_prefix = true
"#
    )
}

/// The default policy, with the breaker's open time shortened so a probe comes within the
/// 3 s drill.
const DEFAULT_POLICY: &str = r#"
[policies.default.breaker]
open_for = "500ms"
"#;

/// What a naive proxy does: one attempt, a breaker that never opens.
const WRONG_POLICY: &str = r#"
[policies.default.retry]
attempts = 1

[policies.default.breaker]
consecutive_failures = 0
failure_rate = 2.0
open_for = "500ms"
"#;

fn scenario(q: &Quartet, bad: SocketAddr) -> String {
    format!(
        r#"
name = "e2e-half-failing"
description = "one of two replicas failing every call, and a 50% abort window"

[quartet]
public = "{public}"
admin = "{admin}"

[[load]]
name = "reads"
channel = "rest"
target = "api"
rate = 40
duration = "3s"
timeout = "20s"
request = {{ method = "GET", path = "/api/item" }}

[[faults]]
at = "1s"
duration = "1s"
target = "api"
abort_status = 503
abort_percent = 50

[[expect]]
kind = "success_rate"
load = "reads"
window = "before fault 1"
at_least = 0.99

[[expect]]
kind = "success_rate"
load = "reads"
window = "after fault 1"
at_least = 0.99

[[expect]]
kind = "error_status"
load = "reads"
window = "during fault 1"
status = 503
at_least = 0.2
at_most = 0.8

[[expect]]
kind = "breaker_opens"
target = "api"
endpoint = "{bad}"
at = "0s"
within = "1s"

[[expect]]
kind = "breaker_closes"
target = "api"
endpoint = "{bad}"
at = "1500ms"
within = "1500ms"

[[expect]]
kind = "latency"
load = "reads"
window = "before fault 1"
percentile = 99
under = "1s"

[[expect]]
kind = "max_duration"
load = "reads"
under = "10s"
"#,
        public = q.public,
        admin = q.admin,
    )
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("quartet-drill-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn options() -> Options {
    Options {
        progress: ProgressMode::Off,
        ignore_ctrl_c: true,
        quiet: true,
        ..Default::default()
    }
}

/// Runs the drill while healing the bad replica 1.5 s in; returns the outcome.
async fn drill_healing(path: &Path, healed: Arc<AtomicBool>) -> quartet_drill::Outcome {
    let heal = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        healed.store(true, Ordering::Relaxed);
    });
    let outcome = quartet_drill::drill(path, &options())
        .await
        .unwrap_or_else(|e| panic!("{}", quartet_drill::Chain(&e)));
    let _ = heal.await;
    outcome
}

async fn admin_json(q: &Quartet, path: &str) -> serde_json::Value {
    reqwest::get(format!("http://{}{path}", q.admin))
        .await
        .expect("admin answers")
        .json()
        .await
        .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_policy_passes_the_half_failing_drill() {
    let dir = temp_dir("pass");
    let (good, bad, healed) = upstreams().await;
    let q = start_quartet(&dir, &config(good, bad, DEFAULT_POLICY));
    let path = dir.join("half.toml");
    std::fs::write(&path, scenario(&q, bad)).expect("write scenario");

    let outcome = drill_healing(&path, healed).await;
    let table = quartet_drill::result::table(&outcome.result);
    eprintln!("{table}");
    assert!(outcome.result.pass, "the drill should pass:\n{table}");
    assert_eq!(outcome.exit_status(), 0);

    // The 50% aborts reached the clients, the failing replica's errors did not.
    let r = &outcome.result;
    assert!(r.loads[0].requests >= 100, "{table}");
    assert!(r.faults[0].applied_at.is_some() && r.faults[0].removed_at.is_some());
    // The breaker of the bad replica was seen open, then closed again.
    let bands = r
        .breakers
        .iter()
        .find(|b| b.endpoint == bad.to_string())
        .expect("bands of the bad replica");
    assert!(bands.bands.iter().any(|b| b.state.is_open()), "{bands:?}");

    // The drill left nothing behind.
    assert_eq!(admin_json(&q, "/admin/faults").await, serde_json::json!([]));

    // The result and the report are beside the scenario.
    assert_eq!(
        outcome.result_path,
        dir.join("e2e-half-failing.result.json")
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&outcome.result_path).expect("result file"))
            .expect("result json");
    assert_eq!(json["pass"], true);
    let page = std::fs::read_to_string(&outcome.report_path).expect("report file");
    assert!(page.contains("<svg class=\"chart breakers\""));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_policy_fails_the_same_drill() {
    let dir = temp_dir("fail");
    let (good, bad, healed) = upstreams().await;
    let q = start_quartet(&dir, &config(good, bad, WRONG_POLICY));
    let path = dir.join("half.toml");
    std::fs::write(&path, scenario(&q, bad)).expect("write scenario");

    let outcome = drill_healing(&path, healed).await;
    let table = quartet_drill::result::table(&outcome.result);
    eprintln!("{table}");
    assert!(!outcome.result.pass, "the drill should fail:\n{table}");
    assert_eq!(outcome.exit_status(), 1);
    let v = &outcome.result.expectations;
    // Without retries the failing replica's 500s reach the clients...
    assert!(!v[0].pass, "{table}");
    assert!(v[0].value.is_some_and(|s| s < 0.9), "{table}");
    // ...and its breaker never opens.
    assert!(!v[3].pass, "{table}");
    assert_eq!(v[3].measured, "never seen open");
    assert_eq!(admin_json(&q, "/admin/faults").await, serde_json::json!([]));

    // Through the CLI's entry point: exit status 1, the table on stdout.
    let code = tokio::task::spawn_blocking(move || quartet_drill::run(&path, &options()))
        .await
        .expect("run");
    assert_eq!(code, std::process::ExitCode::from(1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_drill_removes_its_faults() {
    let dir = temp_dir("interrupt");
    let (good, bad, _healed) = upstreams().await;
    let q = start_quartet(&dir, &config(good, bad, DEFAULT_POLICY));
    let mut src = scenario(&q, bad);
    // A breaker window too, so both kinds are cleaned up.
    src.push_str(&format!(
        "\n[[faults]]\nat = \"1s\"\nduration = \"5s\"\ntarget = \"api\"\nbreaker = \"forced_open\"\nendpoint = \"{good}\"\n"
    ));
    let plan = quartet_drill::scenario::parse(&src, "interrupt.toml", "interrupt")
        .unwrap_or_else(|e| panic!("{e}"));

    // Stopped at 1.5 s, inside both windows.
    let rec = quartet_drill::runner::execute(
        &plan,
        ProgressMode::Off,
        tokio::time::sleep(Duration::from_millis(1500)),
    )
    .await
    .unwrap_or_else(|e| panic!("{}", quartet_drill::Chain(&e)));
    assert!(rec.interrupted);
    assert!(
        rec.faults.iter().all(|f| f.applied_at.is_some()),
        "{:?}",
        rec.faults
    );
    assert!(
        rec.elapsed < Duration::from_millis(2500),
        "{:?}",
        rec.elapsed
    );

    assert_eq!(admin_json(&q, "/admin/faults").await, serde_json::json!([]));
    let breakers = admin_json(&q, "/admin/breakers").await;
    let good_state = breakers
        .as_array()
        .and_then(|a| a.iter().find(|b| b["endpoint"] == good.to_string()))
        .map(|b| b["state"].clone());
    assert_eq!(good_state, Some(serde_json::json!("closed")), "{breakers}");

    // A target Quartet does not know is an invalid scenario (exit 2), found before any load.
    let src = scenario(&q, bad).replace(
        "target = \"api\"\nabort_status",
        "target = \"nope\"\nabort_status",
    );
    let path = dir.join("unknown.toml");
    std::fs::write(&path, src).expect("write");
    let err = quartet_drill::drill(&path, &options())
        .await
        .expect_err("unknown target");
    assert_eq!(err.exit_status(), 2);
    assert!(
        quartet_drill::Chain(&err)
            .to_string()
            .contains("knows no target `nope` (it knows: api)"),
        "{}",
        quartet_drill::Chain(&err)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The SQL load generator against the real PostgreSQL (the one the SQL proxy's tests use,
/// started by tests/run.sh): statements complete, SQL errors keep their SQLSTATE, a
/// refused connection is a connect failure. Quartet's SQL listener speaks the same
/// protocol, so a drill's SQL load is these requests sent to its address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_load_runs_statements_on_a_real_postgres() {
    use quartet_drill::load::{self, Caller, Counters};
    use quartet_drill::record::Outcome;
    const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
    let reachable = tokio::net::TcpStream::connect("127.0.0.1:5432")
        .await
        .is_ok();
    assert!(
        reachable,
        "PostgreSQL is not listening on 127.0.0.1:5432: start it (bash tests/run.sh does) and run again"
    );
    let run = |statement: &str, url: &str| {
        let src = format!(
            r#"
[quartet]
public = "127.0.0.1:8080"
admin = "127.0.0.1:9090"
[[load]]
name = "q"
channel = "sql"
target = "main"
rate = 40
connections = 2
duration = "500ms"
timeout = "5s"
request = {{ url = "{url}", statement = "{statement}" }}
"#
        );
        let plan = quartet_drill::scenario::parse(&src, "sql.toml", "sql")
            .unwrap_or_else(|e| panic!("{e}"));
        let l = plan.loads[0].clone();
        async move {
            let caller = Arc::new(Caller::new(&l, plan.public).expect("caller"));
            let t0 = tokio::time::Instant::now();
            let (_tx, cancel) = tokio::sync::watch::channel(false);
            load::run(
                Arc::new(l),
                caller,
                t0,
                t0 + Duration::from_secs(10),
                Arc::new(Counters::default()),
                cancel,
            )
            .await
        }
    };
    let ok = run("SELECT 1", PG_URL).await;
    assert_eq!(ok.len(), 20);
    assert!(
        ok.iter().all(|r| r.outcome == Outcome::SqlOk),
        "{:?}",
        ok.iter().map(|r| &r.outcome).collect::<Vec<_>>()
    );
    let div = run("SELECT 1/0", PG_URL).await;
    assert!(
        div.iter().all(|r| r.outcome
            == Outcome::SqlError {
                code: "22012".into()
            }),
        "{:?}",
        div.iter().map(|r| &r.outcome).collect::<Vec<_>>()
    );
    let refused = run("SELECT 1", "postgres://postgres@127.0.0.1:1/test").await;
    assert!(
        refused.iter().all(|r| r.outcome == Outcome::Connect),
        "{:?}",
        refused.iter().map(|r| &r.outcome).collect::<Vec<_>>()
    );
}

/// The RPC and native load generators send what the gateway's `/rpc/{topic}` and
/// `/native/{driver}/{operation}` expect: checked against a stand-in public listener that
/// records each request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_and_native_loads_post_json_to_the_public_listener() {
    use axum::extract::{Path as UrlPath, State};
    use axum::http::HeaderMap;
    use axum::routing::post;
    use quartet_drill::load::{self, Caller, Counters};
    use quartet_drill::record::Outcome;
    type Seen =
        Arc<std::sync::Mutex<Vec<(String, Option<String>, Option<String>, serde_json::Value)>>>;
    let seen: Seen = Arc::default();
    async fn record(
        State(seen): State<Seen>,
        UrlPath(parts): UrlPath<Vec<(String, String)>>,
        headers: HeaderMap,
        body: String,
    ) -> &'static str {
        let path = parts
            .into_iter()
            .map(|(_, v)| v)
            .collect::<Vec<_>>()
            .join("/");
        let h = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
        seen.lock().unwrap_or_else(|p| p.into_inner()).push((
            path,
            h("content-type"),
            h("x-auth-token"),
            json,
        ));
        "{}"
    }
    let app = Router::new()
        .route("/rpc/{topic}", post(record))
        .route("/native/{driver}/{operation}", post(record))
        .with_state(seen.clone());
    let public = serve(app).await;
    let src = format!(
        r#"
[quartet]
public = "{public}"
admin = "127.0.0.1:9090"
[[load]]
name = "calls"
channel = "rpc"
target = "compute"
concurrency = 1
duration = "200ms"
request = {{ topic = "compute", method = "get_info", args = {{ instance = "i-1" }}, headers = {{ "X-Auth-Token" = "tok" }} }}
[[load]]
name = "ops"
channel = "native"
target = "volumes"
concurrency = 1
duration = "200ms"
request = {{ driver = "volumes", operation = "create", args = {{ size = 1 }} }}
"#
    );
    let plan =
        quartet_drill::scenario::parse(&src, "rpc.toml", "rpc").unwrap_or_else(|e| panic!("{e}"));
    for l in &plan.loads {
        let caller = Arc::new(Caller::new(l, plan.public).expect("caller"));
        let t0 = tokio::time::Instant::now();
        let (_tx, cancel) = tokio::sync::watch::channel(false);
        let records = load::run(
            Arc::new(l.clone()),
            caller,
            t0,
            t0 + Duration::from_secs(10),
            Arc::new(Counters::default()),
            cancel,
        )
        .await;
        assert!(!records.is_empty());
        assert!(records
            .iter()
            .all(|r| r.outcome == Outcome::Status { status: 200 }));
    }
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let rpc = seen.iter().find(|s| s.0 == "compute").expect("an rpc call");
    assert_eq!(rpc.1.as_deref(), Some("application/json"));
    assert_eq!(rpc.2.as_deref(), Some("tok"));
    assert_eq!(
        rpc.3,
        serde_json::json!({"method": "get_info", "args": {"instance": "i-1"}})
    );
    let native = seen
        .iter()
        .find(|s| s.0 == "volumes/create")
        .expect("a native call");
    assert_eq!(native.3, serde_json::json!({"size": 1}));
}
