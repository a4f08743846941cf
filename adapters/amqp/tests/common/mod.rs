//! Shared harness for the integration tests: the real RabbitMQ on 127.0.0.1:5672 (or
//! `QUARTET_AMQP_URL`), real oslo.messaging peers run with the venv's interpreter, bounded
//! waits on conditions (never fixed sleeps) and cleanup of what a test declared.
#![allow(dead_code)]

use quartet_amqp::AmqpConfig;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Every bounded wait in these tests; far above what any step needs, far below a hang.
pub const BOUND: Duration = Duration::from_secs(30);

pub fn amqp_url() -> String {
    std::env::var("QUARTET_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The same broker as kombu wants it.
pub fn rabbit_url() -> String {
    amqp_url()
        .replacen("amqp://", "rabbit://", 1)
        .replace("/%2f", "/")
}

pub fn config(name: &str) -> AmqpConfig {
    AmqpConfig {
        url: amqp_url(),
        connection_name: name.to_owned(),
        ..AmqpConfig::default()
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// The venv's Python: `$QUARTET_VENV/bin/python`, or `<workspace>/.venv/bin/python`.
pub fn python() -> PathBuf {
    let venv = std::env::var_os("QUARTET_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv"));
    let python = venv.join("bin/python");
    let ok = std::process::Command::new(&python)
        .args(["-c", "import oslo_messaging"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "no Python with oslo.messaging at {}: run `bash tests/run.sh` (it installs the peers \
         into .venv) or set QUARTET_VENV to a venv where `pip install oslo.messaging` was run",
        python.display()
    );
    python
}

fn peer_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(name)
}

/// A running Python peer; its JSON stdout lines arrive on `lines`. Killed when dropped.
pub struct Peer {
    child: Child,
    lines: mpsc::UnboundedReceiver<Value>,
}

impl Peer {
    pub async fn spawn(script: &str, args: &[&str]) -> Peer {
        let mut child = Command::new(python())
            .arg(peer_script(script))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn python peer");
        let stdout = child.stdout.take().expect("peer stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Peer { child, lines }
    }

    /// An oslo.messaging RPC server on `topic` named `server`, ready to take calls.
    pub async fn oslo_server(topic: &str, server: &str) -> Peer {
        let url = rabbit_url();
        let mut peer = Peer::spawn(
            "oslo_rpc_server.py",
            &["--url", &url, "--topic", topic, "--server", server],
        )
        .await;
        peer.expect(|v| v["event"] == "ready").await;
        peer
    }

    /// The next line matching `pred` (others are skipped), within [`BOUND`].
    pub async fn expect(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let found = tokio::time::timeout(BOUND, async {
            while let Some(v) = self.lines.recv().await {
                if pred(&v) {
                    return Some(v);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(v)) => v,
            Ok(None) => panic!("peer exited before the expected line"),
            Err(_) => panic!("peer did not print the expected line within {BOUND:?}"),
        }
    }

    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(BOUND, self.child.wait())
            .await
            .expect("peer exits in time")
            .expect("peer wait")
    }

    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(BOUND, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Polls `cond` every 20 ms until it holds, at most [`BOUND`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rabbitmqctl(args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Closes (from the broker's side) the connection whose client-given name is `name`,
/// without touching anyone else's.
pub fn close_connection_named(name: &str) {
    // Text output: `<pid>\t[{"product","quartet"},...,{"connection_name","NAME"}]`.
    let list = rabbitmqctl(&[
        "list_connections",
        "pid",
        "client_properties",
        "-q",
        "--no-table-headers",
    ]);
    let needle = format!("{{\"connection_name\",\"{name}\"}}");
    let pids: Vec<&str> = list
        .lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| l.split('\t').next())
        .collect();
    assert_eq!(pids.len(), 1, "exactly one connection named {name}: {list}");
    rabbitmqctl(&[
        "close_connection",
        pids[0],
        "quartet test: broker-side close",
    ]);
}

/// Deletes every queue whose name starts with `prefix` (topic, topic.server, fanout).
pub fn delete_queues(prefix: &str) {
    let list = rabbitmqctl(&["list_queues", "name", "--formatter", "json", "-q"]);
    let queues: Value = serde_json::from_str(&list).unwrap_or(Value::Null);
    for q in queues.as_array().into_iter().flatten() {
        if let Some(name) = q["name"].as_str() {
            if name.starts_with(prefix) {
                let _ = std::process::Command::new("rabbitmqctl")
                    .args(["delete_queue", name, "-q"])
                    .output();
            }
        }
    }
}

/// The heartbeat (s) the broker negotiated for the connection named `name`.
pub fn connection_heartbeat(name: &str) -> u64 {
    let list = rabbitmqctl(&[
        "list_connections",
        "timeout",
        "client_properties",
        "-q",
        "--no-table-headers",
    ]);
    let needle = format!("{{\"connection_name\",\"{name}\"}}");
    let line = list
        .lines()
        .find(|l| l.contains(&needle))
        .expect("our connection is listed");
    line.split('\t')
        .next()
        .and_then(|t| t.trim().parse().ok())
        .expect("a timeout column")
}
