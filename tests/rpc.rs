//! The RPC channel end to end: the `quartet` binary against the real RabbitMQ
//! (127.0.0.1:5672, guest/guest) and real oslo.messaging peers (the scripts of
//! `adapters/amqp/tests/peers`, run with `$QUARTET_VENV/bin/python`, default `.venv` at the
//! workspace root). A missing broker or peer is a failure that says what to start.
//!
//! Every test uses topics of its own, so tests run in parallel on the shared broker; the
//! broker-side close touches only the gateway's own connection, found by its name.

use quartet_tests::{client, eventually, metric_sum, Gateway, Upstream, SERVER};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(30);

fn peer_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../adapters/amqp/tests/peers")
        .join(name)
}

const RABBIT_URL: &str = "rabbit://guest:guest@127.0.0.1:5672/";

/// A Python oslo.messaging peer; its JSON stdout lines are collected. Killed on drop.
struct Peer {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Peer {
    fn spawn(script: &str, args: &[&str]) -> Peer {
        let mut child = Command::new(quartet_tests::oslo_python())
            .arg(peer_script(script))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the python peer");
        let stdout = child.stdout.take().expect("peer stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().expect("lines").push(v);
                }
            }
        });
        Peer { child, lines }
    }

    /// A real oslo.messaging RPC server on `topic`, named `server`, consuming.
    async fn oslo_server(topic: &str, server: &str) -> Peer {
        let peer = Peer::spawn(
            "oslo_rpc_server.py",
            &["--url", RABBIT_URL, "--topic", topic, "--server", server],
        );
        peer.expect("the oslo.messaging server is ready", |v| {
            v["event"] == "ready"
        })
        .await;
        peer
    }

    async fn expect(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        eventually(what, BOUND, || {
            let found = self
                .lines
                .lock()
                .expect("lines")
                .iter()
                .find(|v| pred(v))
                .cloned();
            async move { found }
        })
        .await
    }
}

async fn post(gw: &Gateway, topic: &str, body: Value) -> (StatusCode, Value) {
    let resp = client()
        .post(gw.url(&format!("/rpc/{topic}")))
        .json(&body)
        .send()
        .await
        .expect("POST /rpc/{topic}");
    let status = resp.status();
    let text = resp.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

async fn rpc_ready(gw: &Gateway) -> Value {
    eventually("/readyz shows the rpc channel ready", BOUND, || async {
        let (status, body) = gw.admin_json("/readyz").await;
        (status == StatusCode::OK && body["channels"]["rpc"]["state"] == "ready").then_some(body)
    })
    .await
}

fn amqp(name: &str) -> String {
    format!(
        "[amqp]\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\nconnection_name = \"{name}\"\n\
         reconnect = {{ backoff = \"50ms\", max_backoff = \"500ms\" }}\n"
    )
}

/// A gateway with topic `t` (status_map KeyError -> 404), `none` (mandatory, no listener)
/// and a REST-to-RPC route GET /servers/{id} -> echo(server_id = id).
async fn gateway(t: &str, none: &str) -> Gateway {
    let cfg = format!(
        "{SERVER}\n{}\n[policies.default]\nper_try_timeout = \"5s\"\n\n\
         [[rpc.topics]]\ntopic = \"{t}\"\nstatus_map = {{ KeyError = 404 }}\n\n\
         [[rpc.topics]]\ntopic = \"{none}\"\nmandatory = true\n\n\
         [[rpc.routes]]\nmethod = \"GET\"\npath = \"/servers/{{id}}\"\ntopic = \"{t}\"\n\
         rpc_method = \"echo\"\nargs = {{ server_id = \"{{id}}\", fixed = 1 }}\nquery_args = true\n",
        amqp(&quartet_tests::unique("quartet-test"))
    );
    let gw = Gateway::start(&cfg).await;
    rpc_ready(&gw).await;
    gw
}

#[tokio::test]
async fn calls_casts_fanout_and_direct_reach_a_real_oslo_server() {
    quartet_tests::broker_up();
    let t = quartet_tests::unique("qt_rpc");
    let server = Peer::oslo_server(&t, "s1").await;
    let gw = gateway(&t, &quartet_tests::unique("qt_none")).await;

    let (status, body) = post(&gw, &t, json!({"method": "add", "args": {"a": 2, "b": 3}})).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"result": 5})));

    let (status, body) = post(&gw, &t, json!({"method": "shapes"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["result"],
        json!([1, "two", {"three": 3.5}, null, true, "\u{e9}t\u{e9}"])
    );

    let (status, body) = post(
        &gw,
        &t,
        json!({"method": "record", "args": {"tag": "cast-1"}, "cast": true}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    server
        .expect("the server received the cast", |v| {
            v["event"] == "record" && v["tag"] == "cast-1"
        })
        .await;

    let (status, body) = post(
        &gw,
        &t,
        json!({"method": "record", "args": {"tag": "fanout-1"}, "fanout": true}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    server
        .expect("the server received the fanout cast", |v| {
            v["event"] == "record" && v["tag"] == "fanout-1"
        })
        .await;

    // Direct to a server, with the request ids in the context.
    let rid = "req-0b5b6c1e-6f1d-4c8e-9d51-0123456789ab";
    let resp = client()
        .post(gw.url(&format!("/rpc/{t}")))
        .header("X-OpenStack-Request-ID", rid)
        .json(&json!({"method": "whoami", "server": "s1", "version": "1.3"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["result"]["server"], "s1", "{body}");
    let ctx = &body["result"]["context"];
    assert_eq!(ctx["global_request_id"], rid, "{body}");
    assert_eq!(
        ctx["user"],
        Value::Null,
        "anonymous without identity: {body}"
    );
    assert_eq!(ctx["auth_token"], Value::Null, "{body}");

    // Metrics: the topic's calls through the one registry.
    let text = gw.metrics().await;
    assert!(
        metric_sum(
            &text,
            "quartet_requests_total",
            &[("channel", "rpc"), ("target", &t)]
        ) >= 5.0,
        "{text}"
    );
    assert!(
        text.contains("quartet_rpc_connection_state{role=\"client\",topic=\"\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("quartet_rpc_client_replies_dropped_total"),
        "{text}"
    );
}

#[tokio::test]
async fn remote_exceptions_bad_bodies_unknown_topics_and_timeouts_map_to_statuses() {
    quartet_tests::broker_up();
    let t = quartet_tests::unique("qt_rpc");
    let none = quartet_tests::unique("qt_none");
    let _server = Peer::oslo_server(&t, "s1").await;
    let gw = gateway(&t, &none).await;

    let (status, body) = post(
        &gw,
        &t,
        json!({"method": "fail", "args": {"kind": "value", "message": "boom-v"}}),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"]["code"], 500, "{body}");
    assert_eq!(
        body["remote"],
        json!({"class": "ValueError", "module": "builtins", "message": "boom-v"}),
        "no traceback to clients by default: {body}"
    );

    // status_map: KeyError -> 404.
    let (status, body) = post(
        &gw,
        &t,
        json!({"method": "fail_expected", "args": {"message": "gone"}}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["remote"]["class"], "KeyError", "{body}");

    let (status, body) = post(&gw, &t, json!({"method": "no_such_thing"})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["remote"]["class"], "NoSuchMethod", "{body}");

    let (status, body) = post(&gw, &t, json!({"metod": "add"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("metod"), "the problem is named: {body}");
    let (status, body) = post(&gw, &t, json!({"method": "add", "timeout": -1})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("timeout"));

    let (status, body) = post(&gw, "not_configured", json!({"method": "add"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // A method slower than the timeout: 504.
    let (status, body) = post(
        &gw,
        &t,
        json!({"method": "slow", "args": {"seconds": 3}, "timeout": 0.5}),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");

    // Mandatory and nobody listening: 503 at once (far before the 5 s per-try timeout).
    let start = std::time::Instant::now();
    let (status, body) = post(&gw, &none, json!({"method": "add"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(start.elapsed() < Duration::from_secs(4), "503 at once");
}

#[tokio::test]
async fn a_fault_on_the_rpc_target_and_a_rest_to_rpc_route() {
    quartet_tests::broker_up();
    let t = quartet_tests::unique("qt_rpc");
    let _server = Peer::oslo_server(&t, "s1").await;
    let gw = gateway(&t, &quartet_tests::unique("qt_none")).await;

    // The configured route: path params (and the query) into the args.
    let resp = client()
        .get(gw.url("/servers/abc-1?flavor=small"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(
        body,
        json!({"server_id": "abc-1", "fixed": 1, "flavor": "small"})
    );

    let resp = client()
        .put(gw.admin_url(&format!("/admin/faults/rpc:{t}")))
        .body(r#"{"abort_status": 503, "abort_percent": 100}"#)
        .send()
        .await
        .expect("PUT fault");
    assert_eq!(resp.status(), StatusCode::OK);
    let (status, body) = post(&gw, &t, json!({"method": "add", "args": {"a": 1, "b": 1}})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (_, ready) = gw.admin_json("/readyz").await;
    assert_eq!(
        ready["channels"]["rpc"]["targets"][&t]["fault"]["abort_percent"], 100.0,
        "{ready}"
    );
    let resp = client()
        .delete(gw.admin_url(&format!("/admin/faults/{t}")))
        .send()
        .await
        .expect("DELETE fault");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (status, body) = post(&gw, &t, json!({"method": "add", "args": {"a": 1, "b": 1}})).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"result": 2})));

    // The breaker of the topic is listed with REST's.
    assert_eq!(gw.breaker_states(&t).await, ["closed"]);
}

#[tokio::test]
async fn a_real_oslo_client_calls_an_http_upstream_through_the_reverse_bridge() {
    quartet_tests::broker_up();
    let upstream = Upstream::start("echo").await;
    let topic = quartet_tests::unique("qt_bridge");
    let cfg = format!(
        "{SERVER}\n{}\n[upstreams.echo]\nendpoints = [\"{}\"]\n\n\
         [[rpc.servers]]\ntopic = \"{topic}\"\nserver = \"gw1\"\nupstream = \"echo\"\n",
        amqp(&quartet_tests::unique("quartet-test")),
        upstream.url()
    );
    let gw = Gateway::start(&cfg).await;
    let ready = rpc_ready(&gw).await;
    assert_eq!(
        ready["channels"]["rpc"]["servers"][&topic]["state"], "ready",
        "{ready}"
    );

    let peer = Peer::spawn(
        "oslo_rpc_client.py",
        &["--url", RABBIT_URL, "--topic", &topic, "--server", "gw1"],
    );
    let out = peer
        .expect("the oslo.messaging client's report", |v| {
            v.get("echo").is_some()
        })
        .await;
    let echo = &out["echo"]["result"];
    assert_eq!(echo["method"], "POST", "{out}");
    assert_eq!(echo["path"], "/echo", "{out}");
    assert!(echo["body_len"].as_u64().unwrap_or(0) > 0, "{out}");
    assert_eq!(out["direct"]["result"]["path"], "/whoami", "{out}");
    assert_eq!(out["cast"], json!({"result": null}), "{out}");
    assert_eq!(out["fanout"], json!({"result": null}), "{out}");
    assert!(
        upstream.hits() >= 8,
        "every call and cast reached the upstream"
    );

    // The upstream failing: the oslo client sees a RemoteError naming the status.
    upstream.fail_with(500);
    let peer = Peer::spawn(
        "oslo_rpc_client.py",
        &["--url", RABBIT_URL, "--topic", &topic],
    );
    let out = peer
        .expect("the oslo.messaging client's report", |v| {
            v.get("echo").is_some()
        })
        .await;
    assert_eq!(out["echo"]["exception"], "RemoteError", "{out}");
    assert_eq!(out["echo"]["exc_type"], "UpstreamError", "{out}");
    assert!(
        out["echo"]["value"]
            .as_str()
            .unwrap_or_default()
            .contains("500"),
        "{out}"
    );
}

fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (it comes with RabbitMQ)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Closes, from the broker's side, the one connection whose client-given name is `name`.
fn close_connection_named(name: &str) {
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

#[tokio::test]
async fn a_broker_side_close_shows_on_readyz_and_heals_by_itself() {
    quartet_tests::broker_up();
    let t = quartet_tests::unique("qt_rpc");
    let _server = Peer::oslo_server(&t, "s1").await;
    let gw = gateway(&t, &quartet_tests::unique("qt_none")).await;
    let ready = rpc_ready(&gw).await;
    let name = ready["channels"]["rpc"]["client"]["connection_name"]
        .as_str()
        .expect("the connection name on /readyz")
        .to_owned();
    let (status, _) = post(&gw, &t, json!({"method": "add", "args": {"a": 1, "b": 2}})).await;
    assert_eq!(status, StatusCode::OK);

    close_connection_named(&name);
    let not_ready = eventually("/readyz shows the rpc channel not ready", BOUND, || async {
        let (status, body) = gw.admin_json("/readyz").await;
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some(body)
    })
    .await;
    assert_ne!(
        not_ready["channels"]["rpc"]["state"], "ready",
        "{not_ready}"
    );
    assert!(
        not_ready["channels"]["rpc"]["reason"].is_string(),
        "{not_ready}"
    );
    assert_eq!(
        not_ready["channels"]["rest"]["state"], "ready",
        "{not_ready}"
    );

    let ready = rpc_ready(&gw).await;
    assert!(
        ready["channels"]["rpc"]["client"]["connects"].as_u64() >= Some(2),
        "{ready}"
    );
    let (status, body) = post(
        &gw,
        &t,
        json!({"method": "add", "args": {"a": 20, "b": 22}}),
    )
    .await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"result": 42})));
}

#[tokio::test]
async fn without_a_broker_rest_serves_and_readyz_says_rpc_is_down() {
    // A port nothing listens on: the channel is down and keeps retrying.
    let upstream = Upstream::start("up").await;
    let cfg = format!(
        "{SERVER}\n[amqp]\nurl = \"amqp://guest:guest@127.0.0.1:1/%2f\"\n\
         reconnect = {{ backoff = \"50ms\", max_backoff = \"200ms\" }}\n\
         [[rpc.topics]]\ntopic = \"t\"\n\
         [upstreams.up]\nendpoints = [\"{}\"]\n[[routes]]\nprefix = \"/up\"\nupstream = \"up\"\n",
        upstream.url()
    );
    let gw = Gateway::start(&cfg).await;
    let body = eventually("/readyz reports the rpc channel down", BOUND, || async {
        let (status, body) = gw.admin_json("/readyz").await;
        (status == StatusCode::SERVICE_UNAVAILABLE
            && body["channels"]["rpc"]["client"]["last_error"].is_string())
        .then_some(body)
    })
    .await;
    assert_ne!(body["channels"]["rpc"]["state"], "ready", "{body}");
    let resp = client().get(gw.url("/up/x")).send().await.expect("GET");
    assert_eq!(resp.status(), StatusCode::OK, "REST keeps serving");
    let (status, body) = post(&gw, "t", json!({"method": "add"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

#[tokio::test]
async fn quartet_rpc_call_and_cast_from_the_command_line() {
    quartet_tests::broker_up();
    let t = quartet_tests::unique("qt_cli");
    let server = Peer::oslo_server(&t, "s1").await;
    let dir = quartet_tests::tempdir();
    let t2 = t.clone();
    let call = tokio::task::spawn_blocking(move || {
        let args = ["rpc", "call", &t2, "add", "--args", r#"{"a": 2, "b": 3}"#];
        quartet_tests::run_quartet(args, std::env::temp_dir().as_path())
    })
    .await
    .expect("quartet rpc call");
    assert!(call.status.success(), "{}", call.output());
    assert_eq!(call.stdout.trim(), "5", "{}", call.output());

    let t2 = t.clone();
    let fail = tokio::task::spawn_blocking(move || {
        let args = [
            "rpc",
            "call",
            &t2,
            "fail",
            "--args",
            r#"{"message": "cli-boom"}"#,
        ];
        quartet_tests::run_quartet(args, std::env::temp_dir().as_path())
    })
    .await
    .expect("quartet rpc call");
    assert_eq!(fail.status.code(), Some(1), "{}", fail.output());
    let printed: Value = serde_json::from_str(fail.stderr.trim()).expect("the failure as JSON");
    assert_eq!(printed["remote"]["class"], "ValueError", "{printed}");
    assert_eq!(printed["remote"]["message"], "cli-boom", "{printed}");

    let t2 = t.clone();
    let cast = tokio::task::spawn_blocking(move || {
        let args = [
            "rpc",
            "cast",
            &t2,
            "record",
            "--args",
            r#"{"tag": "cli-cast"}"#,
            "--server",
            "s1",
        ];
        quartet_tests::run_quartet(args, std::env::temp_dir().as_path())
    })
    .await
    .expect("quartet rpc cast");
    assert!(cast.status.success(), "{}", cast.output());
    server
        .expect("the server received the cast from the CLI", |v| {
            v["event"] == "record" && v["tag"] == "cli-cast"
        })
        .await;

    let bad = quartet_tests::run_quartet(["rpc", "call", &t, "add", "--args", "[1]"], dir.path());
    assert_eq!(bad.status.code(), Some(64), "{}", bad.output());
}
