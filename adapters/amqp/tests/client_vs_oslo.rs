//! Our RPC client against the real RabbitMQ and real oslo.messaging RPC servers.

mod common;

use common::{close_connection_named, config, delete_queues, unique, wait_until, Peer, BOUND};
use quartet_amqp::{Context, RpcClient, RpcError, RpcRequest, State};
use serde_json::json;
use std::time::Duration;

async fn client(name: &str) -> RpcClient {
    let client = RpcClient::start(config(name));
    client.wait_ready(BOUND).await.expect("client ready");
    client
}

fn ctx() -> Context {
    Context::new()
        .with("user", json!("u1"))
        .with("project_id", json!("p1"))
        .with("roles", json!(["member", "reader"]))
        .with("request_id", json!("req-test"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_cast_fanout_and_direct_call_reach_real_oslo_servers() {
    let topic = unique("qt-basic");
    let mut h1 = Peer::oslo_server(&topic, "h1").await;
    let mut h2 = Peer::oslo_server(&topic, "h2").await;
    let c = client("qt-basic").await;

    let echo = c
        .call(
            RpcRequest::call(&topic, "echo")
                .args(json!({"text": "héllo", "n": 1, "nested": {"a": [1, 2, 3]}}))
                .context(ctx()),
        )
        .await
        .unwrap();
    assert_eq!(
        echo,
        json!({"text": "héllo", "n": 1, "nested": {"a": [1, 2, 3]}})
    );

    let sum = c
        .call(RpcRequest::call(&topic, "add").args(json!({"a": 2, "b": 40})))
        .await
        .unwrap();
    assert_eq!(sum, json!(42));

    let shapes = c.call(RpcRequest::call(&topic, "shapes")).await.unwrap();
    assert_eq!(shapes, json!([1, "two", {"three": 3.5}, null, true, "été"]));

    // A version the endpoint (1.3) is compatible with.
    let v = c
        .call(
            RpcRequest::call(&topic, "add")
                .version("1.2")
                .args(json!({"a": 1, "b": 1})),
        )
        .await
        .unwrap();
    assert_eq!(v, json!(2));

    // A namespaced, versioned endpoint.
    let ns = c
        .call(
            RpcRequest::call(&topic, "ns_echo")
                .namespace("quartet_ns")
                .version("2.0")
                .arg("k", json!("v")),
        )
        .await
        .unwrap();
    assert_eq!(ns, json!({"namespace": "quartet_ns", "args": {"k": "v"}}));

    // Direct call to topic.server, with the context passed through.
    let who = c
        .call(
            RpcRequest::call(&topic, "whoami")
                .server("h2")
                .context(ctx()),
        )
        .await
        .unwrap();
    assert_eq!(who["server"], "h2");
    assert_eq!(who["context"]["user"], "u1");
    assert_eq!(who["context"]["roles"], json!(["member", "reader"]));

    // A cast reaches one server of the topic.
    c.cast(RpcRequest::cast(&topic, "record").arg("tag", json!("cast-1")))
        .await
        .unwrap();
    let (a, b) = (
        h1.lines_matching_tag("cast-1"),
        h2.lines_matching_tag("cast-1"),
    );
    let got = tokio::select! { v = a => v, v = b => v };
    assert_eq!(got["event"], "record");

    // A fanout cast reaches every server.
    c.cast(
        RpcRequest::cast(&topic, "record")
            .fanout()
            .arg("tag", json!("fan-1")),
    )
    .await
    .unwrap();
    assert_eq!(h1.lines_matching_tag("fan-1").await["server"], "h1");
    assert_eq!(h2.lines_matching_tag("fan-1").await["server"], "h2");

    // A cast targeted at one server.
    c.cast(
        RpcRequest::cast(&topic, "record")
            .server("h1")
            .arg("tag", json!("direct-cast")),
    )
    .await
    .unwrap();
    assert_eq!(h1.lines_matching_tag("direct-cast").await["server"], "h1");

    assert_eq!(c.stats().calls, 6);
    assert_eq!(c.stats().casts, 3);
    h1.stop().await;
    h2.stop().await;
    c.close().await;
    delete_queues(&topic);
}

trait TagLines {
    fn lines_matching_tag(
        &mut self,
        tag: &str,
    ) -> impl std::future::Future<Output = serde_json::Value>;
}

impl TagLines for Peer {
    fn lines_matching_tag(
        &mut self,
        tag: &str,
    ) -> impl std::future::Future<Output = serde_json::Value> {
        let tag = tag.to_owned();
        self.expect(move |v| v["tag"] == tag.as_str() && v["event"] == "record")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_exceptions_arrive_as_typed_failures() {
    let topic = unique("qt-fail");
    let peer = Peer::oslo_server(&topic, "h1").await;
    let c = client("qt-fail").await;

    let remote = |r: Result<serde_json::Value, RpcError>| match r {
        Err(RpcError::Remote(f)) => *f,
        other => panic!("expected a remote failure, got {other:?}"),
    };
    let f = remote(
        c.call(
            RpcRequest::call(&topic, "fail")
                .args(json!({"kind": "value", "message": "boom-value"})),
        )
        .await,
    );
    assert_eq!(
        (f.class.as_str(), f.module.as_str(), f.message.as_str()),
        ("ValueError", "builtins", "boom-value")
    );
    assert!(f.tb.iter().any(|l| l.contains("ValueError: boom-value")));
    assert_eq!(f.args, vec![json!("boom-value")]);

    let f = remote(
        c.call(
            RpcRequest::call(&topic, "fail")
                .args(json!({"kind": "custom", "message": "boom-custom"})),
        )
        .await,
    );
    assert_eq!(
        (f.class.as_str(), f.module.as_str()),
        ("GatewayDemoError", "__main__")
    );
    assert_eq!(f.message, "boom-custom");

    let f = remote(
        c.call(RpcRequest::call(&topic, "fail_expected").arg("message", json!("k")))
            .await,
    );
    assert_eq!(
        (f.class.as_str(), f.module.as_str()),
        ("KeyError", "builtins")
    );

    let f = remote(c.call(RpcRequest::call(&topic, "no_such_method")).await);
    assert_eq!(
        f.qualified_class(),
        "oslo_messaging.rpc.dispatcher.NoSuchMethod"
    );

    let f = remote(
        c.call(RpcRequest::call(&topic, "echo").version("2.0"))
            .await,
    );
    assert_eq!(
        f.qualified_class(),
        "oslo_messaging.rpc.dispatcher.UnsupportedVersion"
    );

    let f = remote(
        c.call(RpcRequest::call(&topic, "echo").namespace("other"))
            .await,
    );
    assert_eq!(f.class, "UnsupportedVersion");

    peer.stop().await;
    c.close().await;
    delete_queues(&topic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_nobody_can_receive_fails_at_once_when_mandatory() {
    let c = client("qt-mandatory").await;
    let topic = unique("qt-nobody");
    // The timeout is far longer than BOUND: only an immediate failure passes.
    let req = RpcRequest::call(&topic, "echo")
        .timeout(Duration::from_secs(600))
        .mandatory(true);
    let err = tokio::time::timeout(BOUND, c.call(req))
        .await
        .expect("fails at once")
        .unwrap_err();
    match &err {
        RpcError::Unroutable {
            exchange,
            routing_key,
            reply_code,
            ..
        } => {
            assert_eq!(
                (exchange.as_str(), routing_key.as_str(), *reply_code),
                ("openstack", topic.as_str(), 312)
            );
        }
        other => panic!("expected unroutable, got {other:?}"),
    }
    assert!(err.is_not_sent());
    // A mandatory cast too.
    let err = c
        .cast(
            RpcRequest::cast(&topic, "record")
                .server("nohost")
                .mandatory(true),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Unroutable { .. }), "{err:?}");
    // Without mandatory the broker drops it silently: the call times out.
    let err = c
        .call(RpcRequest::call(&topic, "echo").timeout(Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RpcError::Timeout { monitor: false, .. }),
        "{err:?}"
    );
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_monitor_heartbeats_keep_a_slow_call_alive() {
    let topic = unique("qt-monitor");
    let peer = Peer::oslo_server(&topic, "h1").await;
    let c = client("qt-monitor").await;

    // The method takes 3 s, the call monitor allows 2 s without news: the server's
    // heartbeats (every 1 s) keep it alive.
    let res = c
        .call(
            RpcRequest::call(&topic, "slow")
                .args(json!({"seconds": 3, "tag": "hb"}))
                .timeout(Duration::from_secs(25))
                .call_monitor_timeout(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    assert_eq!(res, json!({"slept": 3, "tag": "hb"}));
    assert!(c.stats().heartbeats >= 1, "{:?}", c.stats());

    // With a monitor timeout whose half is under 1 s, oslo's server sends no heartbeat,
    // so the call-monitor deadline ends the call.
    let err = c
        .call(
            RpcRequest::call(&topic, "slow")
                .args(json!({"seconds": 2, "tag": "no-hb"}))
                .timeout(Duration::from_secs(25))
                .call_monitor_timeout(Duration::from_secs(1)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, RpcError::Timeout { monitor: true, .. }),
        "{err:?}"
    );

    peer.stop().await;
    c.close().await;
    delete_queues(&topic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_call_drops_and_counts_its_late_reply() {
    let topic = unique("qt-late");
    let peer = Peer::oslo_server(&topic, "h1").await;
    let c = client("qt-late").await;
    let err = c
        .call(
            RpcRequest::call(&topic, "slow")
                .args(json!({"seconds": 1.5, "tag": "late"}))
                .timeout(Duration::from_millis(500)),
        )
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    wait_until("late reply counted", || c.stats().late_replies == 1).await;
    // The client still works.
    let sum = c
        .call(RpcRequest::call(&topic, "add").args(json!({"a": 1, "b": 2})))
        .await
        .unwrap();
    assert_eq!(sum, json!(3));
    assert_eq!(c.stats().unknown_replies, 0);
    peer.stop().await;
    c.close().await;
    delete_queues(&topic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_side_close_fails_calls_in_flight_at_once_and_the_client_recovers() {
    let topic = unique("qt-outage");
    let mut peer = Peer::oslo_server(&topic, "h1").await;
    let c = client("qt-outage").await;
    let name = c.status().connection_name.to_string();
    let reply_queue = c.reply_queue().to_owned();

    // A call that would wait 10 minutes.
    let in_flight = tokio::spawn({
        let c = c.clone();
        let topic = topic.clone();
        async move {
            c.call(
                RpcRequest::call(&topic, "slow")
                    .args(json!({"seconds": 20, "tag": "outage"}))
                    .timeout(Duration::from_secs(600)),
            )
            .await
        }
    });
    peer.expect(|v| v["event"] == "slow-start").await;

    let mut states = c.watch_status();
    close_connection_named(&name);

    let err = tokio::time::timeout(BOUND, in_flight)
        .await
        .expect("the in-flight call fails at once")
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, RpcError::Disconnected(_)), "{err:?}");
    assert!(err.is_unavailable());

    // It notices, says so, and comes back by itself with the same reply queue.
    tokio::time::timeout(BOUND, states.wait_for(|s| s.state != State::Ready))
        .await
        .expect("state leaves ready")
        .unwrap();
    tokio::time::timeout(
        BOUND,
        states.wait_for(|s| s.state == State::Ready && s.connects == 2),
    )
    .await
    .expect("reconnects")
    .unwrap();
    let status = c.status();
    assert!(status.last_error.is_some());
    assert_eq!(c.reply_queue(), reply_queue);

    let sum = c
        .call(RpcRequest::call(&topic, "add").args(json!({"a": 20, "b": 22})))
        .await
        .unwrap();
    assert_eq!(sum, json!(42));
    peer.stop().await;
    c.close().await;
    delete_queues(&topic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_declared_with_other_flags_is_used_without_losing_the_connection() {
    use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions};
    let exchange = unique("qt-durable-ex");
    // Someone declared the control exchange durable (amqp_durable_queues = True).
    let conn =
        lapin::Connection::connect(&common::amqp_url(), lapin::ConnectionProperties::default())
            .await
            .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        exchange.as_str().into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        Default::default(),
    )
    .await
    .unwrap();

    let c = client("qt-flags").await;
    let req = RpcRequest::call("qt-nobody", "echo")
        .exchange(&exchange)
        .mandatory(true);
    let err = c.call(req.clone()).await.unwrap_err();
    // The publish went through the existing exchange (and came back unroutable).
    assert!(matches!(err, RpcError::Unroutable { .. }), "{err:?}");
    let err = c.call(req).await.unwrap_err();
    assert!(matches!(err, RpcError::Unroutable { .. }), "{err:?}");
    let s = c.status();
    assert_eq!((s.state, s.connects), (State::Ready, 1));

    ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    let _ = conn.close(200, "OK".into()).await;
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_steady_load_a_broker_side_close_hangs_nothing_and_serving_resumes() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let topic = unique("qt-load");
    let peer = Peer::oslo_server(&topic, "h1").await;
    let c = client("qt-load").await;
    let timeout = Duration::from_secs(5);
    let running = Arc::new(AtomicBool::new(true));
    let ok = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (c, topic, running, ok) = (c.clone(), topic.clone(), running.clone(), ok.clone());
            tokio::spawn(async move {
                let mut errors = Vec::new();
                let mut i = 0i64;
                while running.load(Ordering::Relaxed) {
                    i += 1;
                    let req = RpcRequest::call(&topic, "add")
                        .args(json!({"a": w, "b": i}))
                        .timeout(timeout);
                    // A call never outlives its timeout by much: the outer bound is a hang check.
                    match tokio::time::timeout(timeout * 3, c.call(req)).await {
                        Ok(Ok(v)) => {
                            assert_eq!(v, json!(w + i));
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => {
                            errors.push(e);
                            // Do not spin while the client is down.
                            let mut s = c.watch_status();
                            let _ =
                                tokio::time::timeout(timeout, s.wait_for(|s| s.is_ready())).await;
                        }
                        Err(_) => panic!("a call hung past its timeout"),
                    }
                }
                errors
            })
        })
        .collect();
    wait_until("load is flowing", || ok.load(Ordering::Relaxed) >= 50).await;
    let mut states = c.watch_status();
    close_connection_named(&c.status().connection_name);
    tokio::time::timeout(
        BOUND,
        states.wait_for(|s| s.state == State::Ready && s.connects == 2),
    )
    .await
    .expect("reconnects")
    .unwrap();
    let after = ok.load(Ordering::Relaxed);
    wait_until("calls succeed again", || {
        ok.load(Ordering::Relaxed) >= after + 50
    })
    .await;
    running.store(false, Ordering::Relaxed);
    let mut errors = Vec::new();
    for w in workers {
        errors.extend(w.await.unwrap());
    }
    // During the outage: only "broker unavailable" errors (503 at the edge), never a
    // timeout (504) and never anything else.
    for e in &errors {
        assert!(
            e.is_unavailable(),
            "unexpected error during the outage: {e:?}"
        );
    }
    peer.stop().await;
    c.close().await;
    delete_queues(&topic);
}
