//! The reverse bridge to a native driver: a real oslo.messaging client (the venv's Python,
//! `$QUARTET_VENV/bin/python`, default `.venv` at the workspace root) calls driver
//! operations on a topic Quartet serves, through the real RabbitMQ (127.0.0.1:5672) and the
//! real `qemu-img`, and gets oslo replies: results, and failures as `RemoteError`s whose
//! `exc_type` says what went wrong. A missing broker, peer or `qemu-img` is a failure that
//! says what is missing.

use quartet_tests::{eventually, Gateway, SERVER};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(30);
const QEMU_IMG: &str = "/usr/bin/qemu-img";

fn qemu_img_present() {
    assert!(
        Path::new(QEMU_IMG).is_file(),
        "{QEMU_IMG} is missing: install it (`apt-get install qemu-utils`)"
    );
}

/// A plain oslo.messaging client: makes each call of `calls` (`[method, kwargs]`) on
/// `topic` and prints one JSON line per call with the result, or the exception as the
/// oslo client sees it.
const CLIENT: &str = r#"
import json, sys
import oslo_messaging as om
from oslo_config import cfg

url, topic, calls = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
cfg.CONF([], project="quartet-peer")
transport = om.get_rpc_transport(cfg.CONF, url=url)
client = om.get_rpc_client(transport, om.Target(topic=topic), timeout=20)
ctxt = {"user": "u1", "project_id": "p1", "request_id": "req-1"}
for method, kwargs in calls:
    try:
        out = {"result": client.call(ctxt, method, **kwargs)}
    except Exception as e:
        out = {"exception": type(e).__name__, "module": type(e).__module__, "text": str(e)}
        if isinstance(e, om.RemoteError):
            out["exc_type"] = e.exc_type
            out["value"] = e.value
    print(json.dumps({"method": method, **out}), flush=True)
transport.cleanup()
"#;

/// Runs [`CLIENT`] to the end; one outcome per call, in order.
fn oslo_calls(topic: &str, calls: &[(&str, Value)]) -> Vec<Value> {
    let calls: Vec<Value> = calls.iter().map(|(m, a)| json!([m, a])).collect();
    let out = Command::new(quartet_tests::oslo_python())
        .args([
            "-c",
            CLIENT,
            "rabbit://guest:guest@127.0.0.1:5672/",
            topic,
            &Value::Array(calls.clone()).to_string(),
        ])
        .output()
        .expect("run the oslo.messaging client");
    assert!(
        out.status.success(),
        "the oslo.messaging client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(lines.len(), calls.len(), "one outcome per call: {lines:?}");
    lines
}

fn qemu_info(path: &Path) -> Value {
    let out = Command::new(QEMU_IMG)
        .args(["info", "--output=json", "-U"])
        .arg(path)
        .output()
        .expect("qemu-img info");
    assert!(
        out.status.success(),
        "qemu-img info {}: {out:?}",
        path.display()
    );
    serde_json::from_slice(&out.stdout).expect("qemu-img info's JSON")
}

async fn servers_ready(gw: &Gateway, topic: &str) -> Value {
    eventually(
        "/readyz shows the reverse bridge consuming",
        BOUND,
        || async {
            let (status, body) = gw.admin_json("/readyz").await;
            (status == StatusCode::OK
                && body["channels"]["rpc"]["servers"][topic]["state"] == "ready")
                .then_some(body)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oslo_client_creates_a_volume_through_the_reverse_bridge_and_the_qemu_img_driver() {
    quartet_tests::broker_up();
    qemu_img_present();
    let dir = quartet_tests::tempdir();
    let root = dir.path().join("volumes");
    let topic = quartet_tests::unique("cinder-volume");
    // A concurrency of 1 on the driver's policy: an RPC call holds the same slot a
    // /native call would, since both go through the one stack.
    let cfg = format!(
        "{SERVER}\n[amqp]\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n\
         connection_name = \"{conn}\"\n\n\
         [native]\ndatabase = \"sqlite://{db}\"\n\n\
         [[native.drivers]]\nname = \"volumes\"\nkind = \"qemu-img\"\nroot = \"{root}\"\n\
         qemu_img = \"{QEMU_IMG}\"\n\n\
         [[rpc.servers]]\ntopic = \"{topic}\"\ndriver = \"volumes\"\n",
        conn = quartet_tests::unique("quartet-test"),
        db = dir.path().join("quartet.db").display(),
        root = root.display(),
    );
    let gw = Gateway::start_in(dir, &cfg).await;
    servers_ready(&gw, &topic).await;

    let out = oslo_calls(
        &topic,
        &[
            ("create_volume", json!({"id": "v1", "size_gb": 1})),
            ("get_volume", json!({"id": "v1"})),
            ("create_volume", json!({"id": "../etc", "size_gb": 1})),
            ("get_volume", json!({"id": "nope"})),
            ("create_snapshot", json!({"id": "s1", "volume_id": "v1"})),
            ("delete_volume", json!({"id": "v1"})),
            ("resize_everything", json!({})),
        ],
    );

    // 1. create_volume: the driver's result comes back as the oslo result, and the file
    //    is a 1 GiB qcow2 image.
    let created = &out[0];
    assert_eq!(created["result"]["id"], "v1", "{created}");
    assert_eq!(created["result"]["size_gb"], 1, "{created}");
    let file = root.join("volume-v1.qcow2");
    let info = qemu_info(&file);
    assert_eq!(info["format"], "qcow2", "{info}");
    assert_eq!(info["virtual-size"], 1u64 << 30, "{info}");
    assert_eq!(out[1]["result"]["size_gb"], 1, "{}", out[1]);

    // 2. Failures are RemoteErrors whose exc_type says what went wrong.
    let remote = |o: &Value, class: &str| {
        assert_eq!(o["exception"], "RemoteError", "{o}");
        assert_eq!(o["exc_type"], class, "{o}");
    };
    remote(&out[2], "InvalidInput");
    assert!(
        out[2]["value"].as_str().unwrap_or_default().contains("id"),
        "the message says what is wrong: {}",
        out[2]
    );
    assert!(!root.join("../etc").exists() && !dir_has(&root, "etc"));
    remote(&out[3], "NotFound");
    assert_eq!(out[4]["result"]["id"], "s1", "{}", out[4]);
    remote(&out[5], "Conflict");
    assert!(file.is_file(), "a volume with snapshots is kept");
    // An operation the driver does not have: oslo's own NoSuchMethod.
    remote(&out[6], "NoSuchMethod");

    // 3. The calls went through the driver's stack: its target counted them.
    let metrics = gw.metrics().await;
    let calls = quartet_tests::metric_sum(
        &metrics,
        "quartet_requests_total",
        &[("channel", "native"), ("target", "volumes")],
    );
    assert!(
        calls >= 6.0,
        "native:volumes counted the RPC calls: {calls}"
    );
}

fn dir_has(dir: &Path, name: &str) -> bool {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().contains(name))
        })
        .unwrap_or(false)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_and_http_calls_share_the_drivers_one_stack() {
    quartet_tests::broker_up();
    let dir = quartet_tests::tempdir();
    let topic = quartet_tests::unique("tools");
    // One concurrency slot for the driver: a call over HTTP holding it leaves none for
    // a call over RPC, because both pass the same stack.
    let cfg = format!(
        "{SERVER}\n[amqp]\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n\
         connection_name = \"{conn}\"\n\n\
         [policies.one]\nconcurrency = 1\ntimeout = \"2m\"\nper_try_timeout = \"2m\"\n\
         retry = {{ attempts = 1 }}\n\n\
         [native]\ndatabase = \"sqlite://{db}\"\n\n\
         [[native.drivers]]\nname = \"tools\"\nkind = \"exec\"\npolicy = \"one\"\n\
         [native.drivers.commands.nap]\nexecutable = \"/usr/bin/sleep\"\n\
         args = [\"[0-9]{{1,3}}\"]\n\n\
         [[rpc.servers]]\ntopic = \"{topic}\"\ndriver = \"tools\"\n",
        conn = quartet_tests::unique("quartet-test"),
        db = dir.path().join("quartet.db").display(),
    );
    let gw = Gateway::start_in(dir, &cfg).await;
    servers_ready(&gw, &topic).await;

    // 1. Free: the RPC call runs the operation and answers its result.
    let out = oslo_calls(&topic, &[("nap", json!({"args": ["0"]}))]);
    assert_eq!(out[0]["result"], "", "sleep prints nothing: {}", out[0]);

    // 2. An HTTP call holds the one slot...
    let url = gw.url("/native/tools/nap");
    let held = tokio::spawn(async move {
        quartet_tests::client()
            .post(url)
            .json(&json!({"args": ["96"]}))
            .send()
            .await
    });
    eventually("the HTTP call holds the slot", BOUND, || async {
        let (_, body) = gw.admin_json("/readyz").await;
        (body["channels"]["native"]["drivers"]["tools"]["in_flight"] == 1).then_some(())
    })
    .await;
    // The slot is taken before the process starts: wait for the process too.
    eventually("the held call's process runs", BOUND, || async {
        pid_of(&["/usr/bin/sleep", "96"]).map(|_| ())
    })
    .await;
    // ...so the RPC call is refused at once by the same limit.
    let out = oslo_calls(&topic, &[("nap", json!({"args": ["0"]}))]);
    assert_eq!(out[0]["exception"], "RemoteError", "{}", out[0]);
    assert_eq!(out[0]["exc_type"], "DriverUnavailable", "{}", out[0]);

    // 3. The HTTP client goes away: its call is dropped and its process killed.
    held.abort();
    eventually("the held call's process is gone", BOUND, || async {
        pid_of(&["/usr/bin/sleep", "96"]).is_none().then_some(())
    })
    .await;
    let overloaded = quartet_tests::metric_sum(
        &gw.metrics().await,
        "quartet_requests_total",
        &[("target", "tools"), ("outcome", "overloaded")],
    );
    assert!(overloaded >= 1.0, "counted on native:tools: {overloaded}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_that_could_not_start_answers_rpc_calls_with_driver_unavailable() {
    quartet_tests::broker_up();
    let dir = quartet_tests::tempdir();
    let topic = quartet_tests::unique("cinder-volume");
    let cfg = format!(
        "{SERVER}\n[amqp]\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n\
         connection_name = \"{conn}\"\n\n\
         [native]\ndatabase = \"sqlite://{db}\"\n\n\
         [[native.drivers]]\nname = \"volumes\"\nkind = \"qemu-img\"\nroot = \"{root}\"\n\
         qemu_img = \"/nonexistent/qemu-img\"\n\n\
         [[rpc.servers]]\ntopic = \"{topic}\"\ndriver = \"volumes\"\n",
        conn = quartet_tests::unique("quartet-test"),
        db = dir.path().join("quartet.db").display(),
        root = dir.path().join("volumes").display(),
    );
    let gw = Gateway::start_in(dir, &cfg).await;
    servers_ready(&gw, &topic).await;
    assert!(
        gw.log().text().contains("native driver not ready"),
        "a clear log line says why"
    );
    let out = oslo_calls(
        &topic,
        &[("create_volume", json!({"id": "v1", "size_gb": 1}))],
    );
    assert_eq!(out[0]["exception"], "RemoteError", "{}", out[0]);
    assert_eq!(out[0]["exc_type"], "DriverUnavailable", "{}", out[0]);
}
