//! The native-API channel end to end: the real `quartet` binary (run `cargo build -p
//! quartet` first) started with a config file, called over HTTP, with the real `qemu-img`,
//! real processes for the `exec` driver and a real HTTP server behind the `http` driver.
//!
//! The helpers below are local to this file: the shared harness (`tests/src/lib.rs`) is
//! still on its own branch; when it lands these tests can move onto it.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn quartet_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/debug");
    let bin = dir.join("quartet");
    assert!(
        bin.is_file(),
        "{} missing: run `cargo build -p quartet` first",
        bin.display()
    );
    bin
}

/// A running `quartet serve` with its log collected.
struct Gateway {
    child: Child,
    public: SocketAddr,
    admin: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("quartet's log:\n{}", self.log.lock().unwrap().join("\n"));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SERVER: &str = "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
    grace_period = \"2s\"\n";

impl Gateway {
    /// Writes `config` (after a `[server]` on port 0 and the jobs store in `dir`) into
    /// `dir`, starts Quartet there and waits for its jobs store to open.
    async fn start(dir: &Path, config: &str) -> Gateway {
        // A stable instance name: a restart fails the jobs it left at once.
        let native = format!(
            "[native]\ndatabase = \"sqlite://{}/quartet.db\"\ninstance = \"native-test\"\n",
            dir.display()
        );
        Gateway::start_with(dir, &native, config).await
    }

    /// Like [`Gateway::start`] with the `[native]` table given.
    async fn start_with(dir: &Path, native: &str, config: &str) -> Gateway {
        let path = dir.join("quartet.toml");
        let src = format!("{SERVER}\n{native}\n{config}");
        std::fs::write(&path, src).expect("write config");
        let mut child = Command::new(quartet_bin())
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn quartet");
        let log = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = log.lock().unwrap().iter().find_map(|l| {
                let rest = &l[l.find("quartet listening public=")? + 25..];
                let (public, admin) = rest.split_once(" admin=")?;
                Some((public.parse().ok()?, admin.trim().parse().ok()?))
            });
            if let Some((public, admin)) = found {
                let gw = Gateway {
                    child,
                    public,
                    admin,
                    log,
                };
                eventually(
                    "the jobs store is open",
                    Duration::from_secs(20),
                    || async { gw.readyz().await["channels"]["native"]["jobs"]["state"] == "open" },
                )
                .await;
                return gw;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("quartet exited {status}: {:#?}", log.lock().unwrap());
            }
            assert!(
                Instant::now() < deadline,
                "quartet did not start: {:#?}",
                log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    async fn call(&self, driver: &str, op: &str, args: Value) -> (u16, Value) {
        let resp = client()
            .post(self.url(&format!("/native/{driver}/{op}")))
            .json(&args)
            .send()
            .await
            .expect("send");
        status_json(resp).await
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = client().request(method, format!("http://{}{path}", self.admin));
        if let Some(b) = body {
            req = req.json(&b);
        }
        status_json(req.send().await.expect("admin send")).await
    }

    async fn readyz(&self) -> Value {
        self.admin(reqwest::Method::GET, "/readyz", None).await.1
    }

    /// SIGTERM, then waits for the exit.
    async fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().expect("try_wait").is_none() {
            assert!(Instant::now() < deadline, "quartet did not exit on SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

async fn status_json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("body");
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, value)
}

/// Asserts the Keystone error body for `status`.
fn keystone_error(body: &Value, status: u16) {
    assert_eq!(body["error"]["code"], status, "{body}");
    assert!(body["error"]["title"].is_string(), "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "not reached: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The pid of the process whose command line is exactly `argv`.
fn pid_of(argv: &[&str]) -> Option<u32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| a.bytes().chain(std::iter::once(0)))
        .collect();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
        (std::fs::read(e.path().join("cmdline")).ok()? == want).then_some(pid)
    })
}

fn qemu_img() -> &'static str {
    "/usr/bin/qemu-img"
}

fn volumes_driver(dir: &Path) -> String {
    format!(
        "[[native.drivers]]\nname = \"volumes\"\nkind = \"qemu-img\"\nroot = \"{}/volumes\"\n\
         qemu_img = \"{}\"\n",
        dir.display(),
        qemu_img()
    )
}

/// An exec driver `tools` whose `nap` runs `/usr/bin/sleep N`, under `policy`.
fn nap_driver(policy: &str) -> String {
    format!(
        "[[native.drivers]]\nname = \"tools\"\nkind = \"exec\"\npolicy = \"{policy}\"\n\
         [native.drivers.commands.nap]\nexecutable = \"/usr/bin/sleep\"\n\
         args = [\"[0-9]{{1,3}}\"]\n"
    )
}

fn qemu_info(path: &str) -> Value {
    let out = Command::new(qemu_img())
        .args(["info", "--output=json", "-U", path])
        .output()
        .expect("qemu-img info");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("info json")
}

#[tokio::test]
async fn volumes_over_http_with_the_real_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &volumes_driver(dir.path())).await;

    let (s, v) = gw
        .call(
            "volumes",
            "create_volume",
            json!({"id": "v1", "size_gb": 1}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let file = v["provider_location"].as_str().unwrap().to_string();
    let info = qemu_info(&file);
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 1u64 << 30);

    let (s, v) = gw.call("volumes", "get_volume", json!({"id": "v1"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["size_gb"], 1);

    let (s, v) = gw
        .call(
            "volumes",
            "extend_volume",
            json!({"id": "v1", "size_gb": 2}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(qemu_info(&file)["virtual-size"], 2u64 << 30);

    let (s, v) = gw
        .call(
            "volumes",
            "create_snapshot",
            json!({"id": "s1", "volume_id": "v1"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = gw.call("volumes", "get_volume", json!({"id": "v1"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["snapshots"], json!(["s1"]));

    // A volume with snapshots cannot go: 409, with the reason.
    let (s, v) = gw
        .call("volumes", "delete_volume", json!({"id": "v1"}))
        .await;
    assert_eq!(s, 409, "{v}");
    keystone_error(&v, 409);
    assert!(std::path::Path::new(&file).exists());

    let (s, v) = gw.call("volumes", "get_volume_stats", json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["volume_backend_name"], "volumes");
    assert!(v["total_capacity_gb"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["volumes"], 1);

    // The caller's mistakes.
    let (s, v) = gw
        .call("volumes", "get_volume", json!({"id": "../etc"}))
        .await;
    assert_eq!(s, 400, "{v}");
    keystone_error(&v, 400);
    let (s, v) = gw
        .call("volumes", "get_volume", json!({"id": "nope"}))
        .await;
    assert_eq!(s, 404, "{v}");
    keystone_error(&v, 404);
    let (s, v) = gw.call("nosuch", "get_volume", json!({})).await;
    assert_eq!(s, 404, "{v}");
    keystone_error(&v, 404);
    let (s, v) = gw.call("volumes", "format_disk", json!({})).await;
    assert_eq!(s, 404, "{v}");
    keystone_error(&v, 404);
    let resp = client()
        .post(gw.url("/native/volumes/get_volume"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (s, v) = status_json(resp).await;
    assert_eq!(s, 400, "{v}");
    keystone_error(&v, 400);

    // /readyz lists the driver in the native channel.
    let ready = gw.readyz().await;
    let native = &ready["channels"]["native"];
    assert_eq!(native["state"], "ready", "{ready}");
    assert_eq!(native["jobs"]["state"], "open", "{ready}");
    assert_eq!(native["drivers"]["volumes"]["ready"], true, "{ready}");
    assert_eq!(native["drivers"]["volumes"]["breaker"], "closed", "{ready}");
    assert_eq!(native["drivers"]["volumes"]["in_flight"], 0, "{ready}");
}

#[tokio::test]
async fn an_async_call_answers_202_and_its_job_shows_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &volumes_driver(dir.path())).await;

    let resp = client()
        .post(gw.url("/native/volumes/create_volume"))
        .header("Prefer", "respond-async")
        .json(&json!({"id": "a1", "size_gb": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["preference-applied"], "respond-async");
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with("/native/jobs/"), "{location}");
    let (_, accepted) = status_json(resp).await;
    assert_eq!(accepted["state"], "queued");

    let job = Arc::new(Mutex::new(Value::Null));
    eventually("the job succeeds", Duration::from_secs(20), || {
        let job = job.clone();
        let url = gw.url(&location);
        async move {
            let (s, v) = status_json(client().get(url).send().await.unwrap()).await;
            assert_eq!(s, 200, "{v}");
            assert_ne!(v["state"], "failed", "{v}");
            let done = v["state"] == "succeeded";
            *job.lock().unwrap() = v;
            done
        }
    })
    .await;
    let job = job.lock().unwrap().clone();
    assert_eq!(job["driver"], "volumes");
    assert_eq!(job["operation"], "create_volume");
    assert_eq!(job["result"]["id"], "a1");
    assert!(job.get("error").is_none(), "{job}");
    let info = qemu_info(job["result"]["provider_location"].as_str().unwrap());
    assert_eq!(info["virtual-size"], 1u64 << 30);

    // A failed async call keeps its error's kind.
    let resp = client()
        .post(gw.url("/native/volumes/create_volume"))
        .header("Prefer", "respond-async")
        .json(&json!({"id": "a1", "size_gb": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let job = Arc::new(Mutex::new(Value::Null));
    eventually("the job fails", Duration::from_secs(20), || {
        let job = job.clone();
        let url = gw.url(&location);
        async move {
            let (_, v) = status_json(client().get(url).send().await.unwrap()).await;
            let done = v["state"] == "failed";
            *job.lock().unwrap() = v;
            done
        }
    })
    .await;
    let job = job.lock().unwrap().clone();
    assert_eq!(job["error"]["kind"], "conflict", "{job}");

    // Unknown jobs, and an unknown operation refused before any job is made.
    let missing = "/native/jobs/00000000-0000-4000-8000-000000000000";
    let (s, v) = status_json(client().get(gw.url(missing)).send().await.unwrap()).await;
    assert_eq!(s, 404, "{v}");
    keystone_error(&v, 404);
    let (s, _) = status_json(
        client()
            .get(gw.url("/native/jobs/xyz"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 404);
    let resp = client()
        .post(gw.url("/native/volumes/nope"))
        .header("Prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn a_call_past_its_timeout_gets_504_and_its_process_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[policies.short]\ntimeout = \"2s\"\nper_try_timeout = \"300ms\"\n\
         retry = {{ attempts = 1 }}\n\n{}",
        nap_driver("short")
    );
    let gw = Gateway::start(dir.path(), &config).await;
    let started = Instant::now();
    let (s, v) = gw.call("tools", "nap", json!({"args": ["97"]})).await;
    assert_eq!(s, 504, "{v}");
    keystone_error(&v, 504);
    assert!(started.elapsed() < Duration::from_secs(5));
    eventually("no sleep 97 left", Duration::from_secs(5), || async {
        pid_of(&["/usr/bin/sleep", "97"]).is_none()
    })
    .await;
    // The allow-list refuses what does not match, with 400 and no process.
    for bad in [
        json!(["1;id"]),
        json!(["$(id)"]),
        json!(["../1"]),
        json!(["1", "2"]),
    ] {
        let (s, v) = gw.call("tools", "nap", json!({ "args": bad })).await;
        assert_eq!(s, 400, "{bad}: {v}");
    }
}

#[tokio::test]
async fn a_saturated_driver_refuses_the_next_call_at_once_with_503() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[policies.one]\nconcurrency = 1\ntimeout = \"30s\"\nper_try_timeout = \"30s\"\n\
         retry = {{ attempts = 1 }}\n\n{}",
        nap_driver("one")
    );
    let gw = Arc::new(Gateway::start(dir.path(), &config).await);
    let holder = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.call("tools", "nap", json!({"args": ["98"]})).await })
    };
    eventually("one call in flight", Duration::from_secs(10), || async {
        gw.readyz().await["channels"]["native"]["drivers"]["tools"]["in_flight"] == 1
    })
    .await;
    let started = Instant::now();
    let resp = client()
        .post(gw.url("/native/tools/nap"))
        .json(&json!({"args": ["1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_secs(2));
    let (_, v) = status_json(resp).await;
    keystone_error(&v, 503);
    holder.abort();
    eventually(
        "the holder's process is killed",
        Duration::from_secs(10),
        || async { pid_of(&["/usr/bin/sleep", "98"]).is_none() },
    )
    .await;
}

/// A vendor API on `addr`: 500 while `failing`, else `{"ok": true}`; counts hits.
async fn vendor(
    listener: tokio::net::TcpListener,
    failing: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    let app = axum::Router::new().fallback(move || {
        let failing = failing.clone();
        let hits = hits.clone();
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            if failing.load(Ordering::SeqCst) {
                (http::StatusCode::INTERNAL_SERVER_ERROR, "down").into_response_pair()
            } else {
                (http::StatusCode::OK, "{\"ok\": true}").into_response_pair()
            }
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

trait IntoPair {
    fn into_response_pair(self) -> axum::response::Response;
}

impl IntoPair for (http::StatusCode, &'static str) {
    fn into_response_pair(self) -> axum::response::Response {
        let mut resp = axum::response::Response::new(axum::body::Body::from(self.1));
        *resp.status_mut() = self.0;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        resp
    }
}

#[tokio::test]
async fn the_breaker_opens_on_a_failing_backend_and_closes_after_it_recovers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let failing = Arc::new(AtomicBool::new(true));
    let hits = Arc::new(AtomicUsize::new(0));
    let server = vendor(listener, failing.clone(), hits.clone()).await;

    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[policies.array]\ntimeout = \"5s\"\nper_try_timeout = \"2s\"\n\
         retry = {{ attempts = 1 }}\n\
         breaker = {{ consecutive_failures = 2, open_for = \"1s\" }}\n\n\
         [[native.drivers]]\nname = \"array\"\nkind = \"http\"\npolicy = \"array\"\n\
         base_url = \"http://{addr}/api\"\nconnect_timeout = \"1s\"\n\
         [native.drivers.operations.status]\nmethod = \"GET\"\npath = \"/status\"\n"
    );
    let gw = Gateway::start(dir.path(), &config).await;

    for _ in 0..2 {
        let (s, v) = gw.call("array", "status", json!({})).await;
        assert!(s == 502 || s == 500, "{s} {v}");
        keystone_error(&v, s);
    }
    // The backend then stops altogether; the open breaker answers without trying it.
    server.abort();
    let _ = server.await;
    let before = hits.load(Ordering::SeqCst);
    let started = Instant::now();
    let resp = client()
        .post(gw.url("/native/array/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_millis(900));
    assert_eq!(hits.load(Ordering::SeqCst), before);
    let ready = gw.readyz().await;
    assert_eq!(
        ready["channels"]["native"]["drivers"]["array"]["breaker"], "open",
        "{ready}"
    );
    let (s, breakers) = gw
        .admin(reqwest::Method::GET, "/admin/breakers", None)
        .await;
    assert_eq!(s, 200);
    assert!(breakers.to_string().contains("native"), "{breakers}");

    // The backend comes back on the same address; after open_for a probe closes it.
    failing.store(false, Ordering::SeqCst);
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let _server = vendor(listener, failing.clone(), hits.clone()).await;
    eventually("the breaker closes", Duration::from_secs(10), || async {
        gw.call("array", "status", json!({})).await.0 == 200
    })
    .await;
    let ready = gw.readyz().await;
    assert_eq!(
        ready["channels"]["native"]["drivers"]["array"]["breaker"], "closed",
        "{ready}"
    );
}

#[tokio::test]
async fn a_fault_injected_on_a_native_target_through_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &volumes_driver(dir.path())).await;
    let (s, v) = gw
        .admin(
            reqwest::Method::PUT,
            "/admin/faults/native:volumes",
            Some(json!({"abort_status": 503, "abort_percent": 100.0})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v[0]["channel"], "native", "{v}");
    let (s, v) = gw.call("volumes", "get_volume_stats", json!({})).await;
    assert_eq!(s, 503, "{v}");
    keystone_error(&v, 503);
    let ready = gw.readyz().await;
    assert_eq!(
        ready["channels"]["native"]["drivers"]["volumes"]["fault"]["abort_status"], 503,
        "{ready}"
    );
    let (s, _) = gw
        .admin(
            reqwest::Method::DELETE,
            "/admin/faults/native:volumes",
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, v) = gw.call("volumes", "get_volume_stats", json!({})).await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test]
async fn a_job_running_when_quartet_stops_is_failed_after_the_restart_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[policies.long]\ntimeout = \"5m\"\nper_try_timeout = \"5m\"\n\
         retry = {{ attempts = 1 }}\n\n{}",
        nap_driver("long")
    );
    let mut gw = Gateway::start(dir.path(), &config).await;
    let resp = client()
        .post(gw.url("/native/tools/nap"))
        .header("Prefer", "respond-async")
        .json(&json!({"args": ["99"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    eventually("the job runs", Duration::from_secs(10), || {
        let url = gw.url(&location);
        async move {
            let (_, v) = status_json(client().get(url).send().await.unwrap()).await;
            v["state"] == "running"
        }
    })
    .await;
    assert!(pid_of(&["/usr/bin/sleep", "99"]).is_some());

    // Jobs are not requests in flight: SIGTERM does not wait for them.
    let started = Instant::now();
    gw.terminate().await;
    assert!(started.elapsed() < Duration::from_secs(15));
    eventually(
        "the job's process is gone",
        Duration::from_secs(10),
        || async { pid_of(&["/usr/bin/sleep", "99"]).is_none() },
    )
    .await;
    drop(gw);

    let gw = Gateway::start(dir.path(), &config).await;
    eventually(
        "the jobs store is open",
        Duration::from_secs(10),
        || async { gw.readyz().await["channels"]["native"]["jobs"]["state"] == "open" },
    )
    .await;
    let (s, v) = status_json(client().get(gw.url(&location)).send().await.unwrap()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["error"]["kind"], "interrupted", "{v}");
    assert_eq!(v["operation"], "nap");
}

#[tokio::test]
async fn the_cli_calls_a_driver_locally_through_its_stack() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.toml");
    std::fs::write(&path, volumes_driver(dir.path())).unwrap();
    let run = |args: &[&str]| {
        Command::new(quartet_bin())
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("run quartet")
    };
    let cfg = path.to_str().unwrap();
    let out = run(&[
        "native",
        "call",
        "volumes",
        "create_volume",
        "--args",
        r#"{"id": "c1", "size_gb": 1}"#,
        "--config",
        cfg,
    ]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json on stdout");
    assert_eq!(v["id"], "c1");
    assert!(dir
        .path()
        .join("volumes")
        .read_dir()
        .unwrap()
        .next()
        .is_some());

    let out = run(&[
        "native",
        "call",
        "volumes",
        "create_volume",
        "--args",
        r#"{"id": "c1", "size_gb": 1}"#,
        "--config",
        cfg,
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("409"), "{err}");
    assert!(err.contains("exists"), "{err}");

    let out = run(&["native", "call", "nosuch", "x", "--config", cfg]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no driver named nosuch"));
    // No jobs store is opened by a local call.
    assert!(!dir.path().join("quartet.db").exists());
}

/// A database of its own on the real PostgreSQL (127.0.0.1:5432), dropped at the end.
struct PgDatabase {
    name: String,
}

impl PgDatabase {
    async fn create() -> PgDatabase {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("quartet_jobs_{}_{nanos}", std::process::id());
        let admin = pg_admin().await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        PgDatabase { name }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    async fn drop_now(self) {
        let admin = pg_admin().await;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .expect("drop the test database");
    }
}

async fn pg_admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test",
        tokio_postgres::NoTls,
    )
    .await
    .expect(
        "PostgreSQL is not reachable on 127.0.0.1:5432 as postgres (trust): start it \
         (`bash tests/run.sh` does)",
    );
    tokio::spawn(conn);
    client
}

async fn job(gw: &Gateway, location: &str) -> Value {
    let (s, v) = status_json(client().get(gw.url(location)).send().await.unwrap()).await;
    assert_eq!(s, 200, "{v}");
    v
}

#[tokio::test]
async fn instances_sharing_a_postgresql_store_fail_only_the_jobs_of_instances_that_are_gone() {
    let db = PgDatabase::create().await;
    // No instance name: each process is an owner of its own; a short lease so the test
    // sees a stopped instance's jobs taken over soon.
    let native = format!(
        "[native]\ndatabase = \"{}\"\nowner_lease = \"3s\"\n",
        db.url()
    );
    let config = format!(
        "[policies.long]\ntimeout = \"5m\"\nper_try_timeout = \"5m\"\n\
         retry = {{ attempts = 1 }}\n\n{}",
        nap_driver("long")
    );
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Gateway::start_with(dir_a.path(), &native, &config).await;
    let mut b = Gateway::start_with(dir_b.path(), &native, &config).await;

    // 1. A runs a long job.
    let resp = client()
        .post(a.url("/native/tools/nap"))
        .header("Prefer", "respond-async")
        .json(&json!({"args": ["97"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    eventually("A's job runs", Duration::from_secs(10), || async {
        job(&a, &location).await["state"] == "running"
    })
    .await;

    // 2. B restarts: opening the store does not touch A's job; B sees it running.
    b.terminate().await;
    drop(b);
    let b = Gateway::start_with(dir_b.path(), &native, &config).await;
    assert_eq!(job(&b, &location).await["state"], "running");
    // B runs a job of its own to the end (its heartbeats go on meanwhile): A's is
    // still running.
    let resp = client()
        .post(b.url("/native/tools/nap"))
        .header("Prefer", "respond-async")
        .json(&json!({"args": ["0"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let own = resp.headers()["location"].to_str().unwrap().to_string();
    eventually("B's own job succeeds", Duration::from_secs(10), || async {
        job(&b, &own).await["state"] == "succeeded"
    })
    .await;
    assert_eq!(job(&b, &location).await["state"], "running");
    assert!(
        pid_of(&["/usr/bin/sleep", "97"]).is_some(),
        "A's process runs"
    );

    // 3. A stops (its process is killed with it): once A's lease runs out, B marks A's
    //    job failed, interrupted.
    a.terminate().await;
    drop(a);
    let v = eventually_value(
        "B marks the stopped instance's job failed",
        Duration::from_secs(30),
        || async {
            let v = job(&b, &location).await;
            (v["state"] == "failed").then_some(v)
        },
    )
    .await;
    assert_eq!(v["error"]["kind"], "interrupted", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("instance running it stopped"),
        "{v}"
    );
    assert!(pid_of(&["/usr/bin/sleep", "97"]).is_none());
    drop(b);
    db.drop_now().await;
}

async fn eventually_value<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not reached: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
