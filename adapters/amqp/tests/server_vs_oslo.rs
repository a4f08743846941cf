//! Our RPC server side (the reverse bridge) called by a real oslo.messaging RPC client.

mod common;

use common::{config, delete_queues, rabbit_url, unique, Peer, BOUND};
use quartet_amqp::config::RpcServerSpec;
use quartet_amqp::{IncomingCall, RemoteFailure, RpcClient, RpcError, RpcRequest, RpcServer};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::mpsc;

fn spec(topic: &str, server: &str) -> RpcServerSpec {
    RpcServerSpec {
        topic: topic.to_owned(),
        exchange: "openstack".to_owned(),
        server: Some(server.to_owned()),
        fanout: true,
        concurrency: 16,
        upstream: None,
        driver: None,
    }
}

/// A handler like the Python peer's endpoint; casts report their tag on `records`.
fn handler(
    server: &'static str,
    records: mpsc::UnboundedSender<(String, String)>,
) -> impl Fn(
    IncomingCall,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Value, RemoteFailure>> + Send>,
> + Send
       + Sync
       + 'static {
    move |call: IncomingCall| {
        let records = records.clone();
        Box::pin(async move {
            let args = &call.request.args;
            match call.request.method.as_str() {
                "echo" => Ok(Value::Object(args.clone())),
                "add" => Ok(json!(
                    args["a"].as_i64().unwrap_or(0) + args["b"].as_i64().unwrap_or(0)
                )),
                "context" => Ok(Value::Object(call.request.context.to_map())),
                "whoami" => Ok(json!({"server": server, "queue": call.queue})),
                "slow" => {
                    let secs = args["seconds"].as_f64().unwrap_or(0.0);
                    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                    Ok(json!({"slept": secs}))
                }
                "fail" => {
                    let msg = args["message"].as_str().unwrap_or("boom");
                    if args["kind"] == "value" {
                        Err(RemoteFailure::new("ValueError", "builtins", msg))
                    } else {
                        Err(RemoteFailure::new("BridgeError", "quartet.bridge", msg))
                    }
                }
                "record" => {
                    let tag = args["tag"].as_str().unwrap_or_default().to_owned();
                    let _ = records.send((tag, call.queue.clone()));
                    Ok(Value::Null)
                }
                other => Err(RemoteFailure::no_such_method(other)),
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_oslo_client_calls_our_server_and_understands_the_replies() {
    // Before declaring anything: a missing venv fails here, leaving nothing behind.
    common::python();
    let topic = unique("qt-serve");
    let (tx, mut records) = mpsc::unbounded_channel();
    let server = RpcServer::start(config("qt-serve"), spec(&topic, "q1"), handler("q1", tx));
    server.wait_ready(BOUND).await.expect("server ready");

    let url = rabbit_url();
    let mut peer = Peer::spawn(
        "oslo_rpc_client.py",
        &["--url", &url, "--topic", &topic, "--server", "q1"],
    )
    .await;
    let out = peer.expect(|v| v.get("echo").is_some()).await;
    assert!(peer.wait_exit().await.success());

    assert_eq!(
        out["echo"]["result"],
        json!({"text": "hello", "n": 1, "nested": {"a": [1, 2, 3]}})
    );
    assert_eq!(out["add"]["result"], json!(5));
    let ctx = &out["context"]["result"];
    assert_eq!(
        (ctx["user"].clone(), ctx["roles"].clone()),
        (json!("u1"), json!(["member"]))
    );
    // builtins exceptions are re-raised as themselves (a `_Remote` subclass) by oslo.
    assert_eq!(
        out["fail_value"]["exception"], "ValueError",
        "{}",
        out["fail_value"]
    );
    assert_eq!(out["fail_value"]["module"], "builtins");
    assert!(out["fail_value"]["text"]
        .as_str()
        .unwrap()
        .starts_with("boom-value"));
    // Others as RemoteError carrying the class and message.
    assert_eq!(out["fail_custom"]["exception"], "RemoteError");
    assert_eq!(out["fail_custom"]["exc_type"], "BridgeError");
    assert_eq!(out["fail_custom"]["value"], "boom-custom");
    assert_eq!(out["no_such_method"]["exc_type"], "NoSuchMethod");
    // 2.5 s with a 2 s call monitor: only our heartbeats kept it alive.
    assert_eq!(
        out["slow_monitored"]["result"],
        json!({"slept": 2.5}),
        "{}",
        out["slow_monitored"]
    );
    assert!(server.stats().heartbeats >= 1);
    assert_eq!(
        out["direct"]["result"],
        json!({"server": "q1", "queue": format!("{topic}.q1")})
    );
    assert_eq!(out["cast"]["result"], Value::Null);

    // The cast and the fanout cast both arrived (on the topic and the fanout queue).
    let mut got = Vec::new();
    while got.len() < 2 {
        let rec = tokio::time::timeout(BOUND, records.recv())
            .await
            .expect("cast handled")
            .unwrap();
        got.push(rec);
    }
    got.sort();
    assert_eq!(got[0], ("cast-1".to_owned(), topic.clone()));
    assert_eq!(got[1].0, "fanout-1");
    assert_eq!(got[1].1, server.fanout_queue());
    let stats = server.stats();
    assert_eq!(
        (stats.casts, stats.failures, stats.bad_requests),
        (2, 3, 0),
        "{stats:?}"
    );

    server.close().await;
    delete_queues(&topic);
    if let Some(reply_q) = out["reply_q"].as_str() {
        delete_queues(reply_q);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_and_our_server_talk_oslo_to_each_other() {
    let topic = unique("qt-loop");
    let (tx, _records) = mpsc::unbounded_channel();
    let server = RpcServer::start(config("qt-loop-srv"), spec(&topic, "q1"), handler("q1", tx));
    server.wait_ready(BOUND).await.expect("server ready");
    let client = RpcClient::start(config("qt-loop-cli"));
    client.wait_ready(BOUND).await.expect("client ready");

    let r = client
        .call(RpcRequest::call(&topic, "add").args(json!({"a": 1, "b": 2})))
        .await
        .unwrap();
    assert_eq!(r, json!(3));
    let err = client
        .call(RpcRequest::call(&topic, "fail").args(json!({"kind": "value", "message": "x"})))
        .await
        .unwrap_err();
    let f = err.remote().expect("remote failure");
    assert_eq!(
        (f.class.as_str(), f.module.as_str(), f.message.as_str()),
        ("ValueError", "builtins", "x")
    );
    // Heartbeats from our server keep our client's monitored call alive.
    let r = client
        .call(
            RpcRequest::call(&topic, "slow")
                .args(json!({"seconds": 2.5}))
                .timeout(Duration::from_secs(20))
                .call_monitor_timeout(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    assert_eq!(r, json!({"slept": 2.5}));
    assert!(client.stats().heartbeats >= 1);
    // Many calls at once.
    let calls = (0..50).map(|i| {
        let c = client.clone();
        let topic = topic.clone();
        async move {
            c.call(RpcRequest::call(&topic, "add").args(json!({"a": i, "b": 1})))
                .await
        }
    });
    let results = futures_util::future::join_all(calls).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), json!(i as i64 + 1));
    }
    assert!(matches!(
        client.call(RpcRequest::call(&topic, "nope")).await,
        Err(RpcError::Remote(f)) if f.class == "NoSuchMethod"
    ));

    client.close().await;
    server.close().await;
    delete_queues(&topic);
}
