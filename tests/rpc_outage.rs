//! The broker going away and coming back under a steady load of RPC calls.
//!
//! The shared RabbitMQ on 127.0.0.1:5672 serves every other test, so this one starts a
//! private RabbitMQ node of its own (its own node name, ports, data and log directories,
//! no plugins) and runs `rabbitmqctl stop_app` / `start_app` on that node only. The node
//! is stopped and its directory removed when the test ends, passed or failed.
//!
//! Quartet is both sides here: `POST /rpc/{topic}` through its RPC client, and a reverse
//! bridge (`[[rpc.servers]]`) on the same topic forwarding to an HTTP echo upstream, so
//! the client and the server both lose the broker and both have to come back by themselves.

use quartet_tests::{eventually, Gateway, Upstream, SERVER};
use reqwest::StatusCode;
use serde_json::json;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A RabbitMQ node of our own, stopped and removed on drop.
struct PrivateBroker {
    node: String,
    port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn ctl(node: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("rabbitmqctl")
        .arg("-n")
        .arg(node)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("rabbitmqctl could not run (is RabbitMQ installed?): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "rabbitmqctl -n {node} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl PrivateBroker {
    async fn start() -> PrivateBroker {
        let dir = tempfile::Builder::new()
            .prefix("quartet-outage-")
            .tempdir()
            .expect("a temporary directory for the private broker");
        let path = dir.path().to_path_buf();
        // RabbitMQ's scripts run the node as the `rabbitmq` user: let it write there.
        let open = |p: &PathBuf, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                .expect("permissions on the broker's files");
        };
        open(&path, 0o777);
        let (port, dist) = (free_port(), free_port());
        let node = format!("quartet-outage-{}-{port}@localhost", std::process::id());
        let plugins = path.join("enabled_plugins");
        std::fs::write(&plugins, "").expect("write enabled_plugins");
        open(&plugins, 0o666);
        let conf = path.join("rabbitmq.conf");
        std::fs::write(
            &conf,
            format!("listeners.tcp.default = {port}\nloopback_users = none\n"),
        )
        .expect("write rabbitmq.conf");
        open(&conf, 0o644);
        let log = path.join("log");
        std::fs::create_dir(&log).expect("log dir");
        open(&log, 0o777);
        let broker = PrivateBroker { node, port, dir };
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &broker.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("RABBITMQ_MNESIA_BASE", path.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", &log)
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
            .env("RABBITMQ_CONFIG_FILE", &conf)
            .env("RABBITMQ_PID_FILE", path.join("pid"))
            .stdin(Stdio::null())
            .status()
            .expect("rabbitmq-server runs (it comes with RabbitMQ)");
        assert!(status.success(), "rabbitmq-server -detached failed");
        let node = broker.node.clone();
        eventually(
            "the private RabbitMQ node is up (see its log in the test's tempdir)",
            Duration::from_secs(90),
            || {
                let node = node.clone();
                async move {
                    tokio::task::spawn_blocking(move || {
                        ctl(&node, &["await_startup", "--timeout", "5"]).ok()
                    })
                    .await
                    .ok()
                    .flatten()
                }
            },
        )
        .await;
        broker
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    async fn ctl(&self, args: &'static [&'static str]) {
        let node = self.node.clone();
        let res = tokio::task::spawn_blocking(move || ctl(&node, args))
            .await
            .expect("rabbitmqctl task");
        if let Err(e) = res {
            panic!("{e}");
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Err(e) = ctl(&self.node, &["stop"]) {
            eprintln!(
                "could not stop the private broker {} (dir {}): {e}",
                self.node,
                self.dir.path().display()
            );
        }
    }
}

/// One call made by the load: when it started (from the test's start), what it got and how
/// long it took.
#[derive(Clone, Debug)]
struct Outcome {
    started: Duration,
    status: Option<u16>,
    took: Duration,
}

#[tokio::test]
async fn calls_under_load_survive_a_broker_stop_and_start() {
    let broker = PrivateBroker::start().await;
    let upstream = Upstream::start("echo").await;
    let topic = format!("qt_outage_{}", std::process::id());
    // The policy's total timeout bounds every request; the RPC timeout each attempt.
    let total = Duration::from_secs(4);
    let cfg = format!(
        "{SERVER}\n[amqp]\nurl = \"{}\"\nheartbeat = \"2s\"\nconnection_name = \"quartet-outage\"\n\
         reconnect = {{ backoff = \"50ms\", max_backoff = \"500ms\" }}\n\n\
         [policies.default]\ntimeout = \"4s\"\nper_try_timeout = \"2s\"\n\n\
         [upstreams.echo]\nendpoints = [\"{}\"]\n\n\
         [[rpc.topics]]\ntopic = \"{topic}\"\ntimeout = \"2s\"\n\n\
         [[rpc.servers]]\ntopic = \"{topic}\"\nupstream = \"echo\"\n",
        broker.url(),
        upstream.url()
    );
    // The broker's story in the log a failure prints (its last 200 lines), not the
    // hundreds of access lines of the refused calls.
    let gw = Gateway::start_with_env(
        quartet_tests::tempdir(),
        &cfg,
        &[(
            "RUST_LOG",
            "info,quartet_amqp=debug,quartet::access=off,quartet::error=off",
        )],
    )
    .await;
    let bound = Duration::from_secs(60);
    eventually("/readyz shows the rpc channel ready", bound, || async {
        let (status, body) = gw.admin_json("/readyz").await;
        (status == StatusCode::OK && body["channels"]["rpc"]["state"] == "ready").then_some(())
    })
    .await;

    // A steady load: four callers, one call after the other each.
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let url = gw.url(&format!("/rpc/{topic}"));
    let http = reqwest::Client::builder()
        // Far above the policy's bound: a hang shows as a call that took too long.
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client");
    let mut callers = Vec::new();
    for n in 0..4 {
        let (stop, outcomes, url, http) =
            (stop.clone(), outcomes.clone(), url.clone(), http.clone());
        callers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let started = t0.elapsed();
                let at = Instant::now();
                let res = http
                    .post(&url)
                    .json(&json!({"method": "echo", "args": {"caller": n, "i": i}}))
                    .send()
                    .await;
                let status = res.ok().map(|r| r.status().as_u16());
                let took = at.elapsed();
                outcomes.lock().expect("outcomes").push(Outcome {
                    started,
                    status,
                    took,
                });
                if status != Some(200) {
                    // Errors come fast during the outage: do not spin.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    let count = |pred: &dyn Fn(&Outcome) -> bool| {
        outcomes
            .lock()
            .expect("outcomes")
            .iter()
            .filter(|o| pred(o))
            .count()
    };

    eventually("calls succeed before the outage", bound, || async {
        (count(&|o| o.status == Some(200)) >= 20).then_some(())
    })
    .await;

    let stopped_at = t0.elapsed();
    broker.ctl(&["stop_app"]).await;
    eventually(
        "calls fail and /readyz says rpc is not ready while the broker is stopped",
        bound,
        || async {
            let (status, body) = gw.admin_json("/readyz").await;
            let failing = count(&|o| o.started > stopped_at && o.status != Some(200)) >= 10;
            (failing
                && status == StatusCode::SERVICE_UNAVAILABLE
                && body["channels"]["rpc"]["state"] != "ready")
                .then_some(())
        },
    )
    .await;

    let started_at = t0.elapsed();
    broker.ctl(&["start_app"]).await;
    eventually(
        "calls succeed again after the broker is back",
        bound,
        || async {
            (count(&|o| o.started > started_at && o.status == Some(200)) >= 20).then_some(())
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await.expect("a caller task");
    }

    let all = outcomes.lock().expect("outcomes").clone();
    let first_ok_after = all
        .iter()
        .filter(|o| o.started > started_at && o.status == Some(200))
        .map(|o| o.started + o.took)
        .min()
        .unwrap_or_default();
    let mut by_status = std::collections::BTreeMap::new();
    for o in &all {
        *by_status.entry(o.status).or_insert(0usize) += 1;
    }
    let slowest = all.iter().map(|o| o.took).max().unwrap_or_default();
    eprintln!(
        "{} calls; by status {by_status:?}; slowest {slowest:?}; first success {:?} after start_app",
        all.len(),
        first_ok_after.saturating_sub(started_at)
    );

    // Errors during the outage are 503 or 504, never anything else, never a dropped
    // connection.
    let odd: Vec<&Outcome> = all
        .iter()
        .filter(|o| !matches!(o.status, Some(200 | 503 | 504)))
        .collect();
    assert!(odd.is_empty(), "unexpected answers: {odd:?}");
    // No request outlives the policy's total timeout (plus slack for a loaded machine):
    // a call stuck past it is a hang.
    let slack = Duration::from_secs(3);
    let hung: Vec<&Outcome> = all.iter().filter(|o| o.took > total + slack).collect();
    assert!(
        hung.is_empty(),
        "calls outlived the {total:?} timeout: {hung:?}"
    );
    assert!(
        all.iter()
            .any(|o| o.started > stopped_at && o.started < started_at && o.status == Some(503)),
        "a 503 during the outage: {by_status:?}"
    );

    let (status, body) = gw.admin_json("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["channels"]["rpc"]["servers"][&topic]["state"], "ready",
        "{body}"
    );
    assert!(
        body["channels"]["rpc"]["client"]["connects"].as_u64() >= Some(2),
        "{body}"
    );
}
