//! Wire edge cases a well-behaved oslo.messaging peer does not produce on demand, played
//! with raw AMQP against the real broker: duplicate replies, old two-message replies,
//! undecodable messages, replies for unknown ids, a server losing its connection; and the
//! client behind the real policy stack (retry + breaker reading `RpcClassify`).

mod common;

use common::{close_connection_named, config, delete_queues, unique, wait_until, BOUND};
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use quartet_amqp::codec::{self, Reply};
use quartet_amqp::config::RpcServerSpec;
use quartet_amqp::{
    IncomingCall, RemoteFailure, RpcClassify, RpcClient, RpcError, RpcReplay, RpcRequest,
    RpcResponse, RpcServer, State,
};
use serde_json::{json, Value};
use std::time::Duration;

async fn raw() -> (Connection, Channel) {
    let conn = Connection::connect(&common::amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

/// A hand-made "server": a queue bound to `openstack` with key `topic`, consumed raw.
async fn fake_server(ch: &Channel, topic: &str) -> lapin::Consumer {
    ch.exchange_declare(
        "openstack".into(),
        lapin::ExchangeKind::Topic,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        topic.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        topic.into(),
        "openstack".into(),
        topic.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_consume(
        topic.into(),
        "".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap()
}

async fn next_request(consumer: &mut lapin::Consumer) -> codec::Request {
    let d = tokio::time::timeout(BOUND, consumer.next())
        .await
        .expect("request in time")
        .expect("consumer open")
        .expect("delivery");
    let props = &d.properties;
    assert_eq!(
        props.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(
        props.content_encoding().as_ref().map(|s| s.as_str()),
        Some("utf-8")
    );
    assert_eq!(*props.delivery_mode(), Some(2));
    codec::decode_request(&d.data).expect("our request decodes")
}

async fn publish_raw(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

fn reply(msg_id: &str, result: Value, ending: bool, unique_id: &str) -> Vec<u8> {
    Reply {
        result,
        failure: None,
        ending,
        msg_id: msg_id.to_owned(),
        unique_id: Some(unique_id.to_owned()),
    }
    .encode()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_unknown_and_bad_replies_are_dropped_and_old_style_replies_work() {
    let topic = unique("qt-raw");
    let (conn, ch) = raw().await;
    let mut requests = fake_server(&ch, &topic).await;
    let client = RpcClient::start(config("qt-raw"));
    client.wait_ready(BOUND).await.unwrap();

    let call = tokio::spawn({
        let c = client.clone();
        let topic = topic.clone();
        async move {
            c.call(RpcRequest::call(&topic, "m").timeout(Duration::from_secs(7)))
                .await
        }
    });
    let req = next_request(&mut requests).await;
    let header = req.call.clone().expect("a call");
    assert_eq!(header.reply_q, client.reply_queue());
    // Garbage, an unknown id, then the old two-message form (result, then a bare
    // `ending`), with the result duplicated under the same _unique_id.
    publish_raw(&ch, "", &header.reply_q, b"{not json").await;
    publish_raw(
        &ch,
        "",
        &header.reply_q,
        &reply("ffff", json!(1), true, "u0"),
    )
    .await;
    let first = reply(&header.msg_id, json!({"v": 1}), false, "u1");
    publish_raw(&ch, "", &header.reply_q, &first).await;
    publish_raw(&ch, "", &header.reply_q, &first).await;
    publish_raw(
        &ch,
        "",
        &header.reply_q,
        &reply(&header.msg_id, Value::Null, true, "u2"),
    )
    .await;
    let result = tokio::time::timeout(BOUND, call)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(result, json!({"v": 1}));
    wait_until("counters", || {
        let s = client.stats();
        s.bad_replies == 1 && s.unknown_replies == 1 && s.duplicate_replies == 1
    })
    .await;

    // The message carries the call timeout as its expiration, in ms.
    let call = tokio::spawn({
        let c = client.clone();
        let topic = topic.clone();
        async move {
            c.call(RpcRequest::call(&topic, "m").timeout(Duration::from_millis(2500)))
                .await
        }
    });
    let d = tokio::time::timeout(BOUND, requests.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        d.properties.expiration().as_ref().map(|s| s.as_str()),
        Some("2500")
    );
    let req = codec::decode_request(&d.data).unwrap();
    let header = req.call.unwrap();
    publish_raw(
        &ch,
        "",
        &header.reply_q,
        &reply(&header.msg_id, json!("ok"), true, "u3"),
    )
    .await;
    assert_eq!(call.await.unwrap().unwrap(), json!("ok"));

    client.close().await;
    ch.queue_delete(topic.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let _ = conn.close(200, "OK".into()).await;
}

fn echo_server(topic: &str, name: &str) -> RpcServer {
    let spec = RpcServerSpec {
        topic: topic.to_owned(),
        exchange: "openstack".to_owned(),
        server: None,
        fanout: false,
        concurrency: 4,
        upstream: None,
        driver: None,
    };
    RpcServer::start(config(name), spec, |call: IncomingCall| async move {
        match call.request.method.as_str() {
            "echo" => Ok(Value::Object(call.request.args)),
            other => Err(RemoteFailure::no_such_method(other)),
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_server_rejects_bad_requests_drops_duplicates_and_recovers_from_a_broker_close() {
    let topic = unique("qt-srv-edge");
    let server = echo_server(&topic, "qt-srv-edge");
    server.wait_ready(BOUND).await.unwrap();
    let client = RpcClient::start(config("qt-srv-edge-cli"));
    client.wait_ready(BOUND).await.unwrap();

    // Bad input is rejected, counted, and does not stop the server.
    let (conn, ch) = raw().await;
    publish_raw(&ch, "openstack", &topic, b"\xff\xfe not json").await;
    publish_raw(
        &ch,
        "openstack",
        &topic,
        br#"{"oslo.version": "2.0", "oslo.message": "{\"args\": {}}"}"#,
    )
    .await;
    publish_raw(
        &ch,
        "openstack",
        &topic,
        br#"{"oslo.version": "9.0", "oslo.message": "{}"}"#,
    )
    .await;
    wait_until("bad requests counted", || server.stats().bad_requests == 3).await;

    // The same cast twice (same _unique_id): handled once.
    let cast = codec::Request {
        method: "echo".into(),
        args: Default::default(),
        namespace: None,
        version: None,
        call: None,
        unique_id: Some(codec::new_id()),
        context: Default::default(),
    }
    .encode()
    .unwrap();
    publish_raw(&ch, "openstack", &topic, &cast).await;
    publish_raw(&ch, "openstack", &topic, &cast).await;
    wait_until("duplicate dropped", || {
        server.stats().duplicates == 1 && server.stats().casts == 1
    })
    .await;

    let r = client
        .call(RpcRequest::call(&topic, "echo").arg("x", json!(1)))
        .await
        .unwrap();
    assert_eq!(r, json!({"x": 1}));

    // The broker closes the server's connection: it reconnects and serves again.
    let mut states = server.watch_status();
    close_connection_named(&server.status().connection_name);
    tokio::time::timeout(
        BOUND,
        states.wait_for(|s| s.state == State::Ready && s.connects == 2),
    )
    .await
    .expect("server reconnects")
    .unwrap();
    let r = client
        .call(RpcRequest::call(&topic, "echo").arg("x", json!(2)))
        .await
        .unwrap();
    assert_eq!(r, json!({"x": 2}));

    let _ = conn.close(200, "OK".into()).await;
    client.close().await;
    server.close().await;
    delete_queues(&topic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casts_are_never_silently_lost_when_not_connected() {
    let cfg = quartet_amqp::AmqpConfig {
        url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
        connect_timeout: Duration::from_millis(200),
        ..config("qt-down")
    };
    let client = RpcClient::start(cfg);
    let mut states = client.watch_status();
    tokio::time::timeout(BOUND, states.wait_for(|s| s.state == State::Down))
        .await
        .unwrap()
        .unwrap();
    assert!(client.status().last_error.is_some());
    let err = client.cast(RpcRequest::cast("t", "m")).await.unwrap_err();
    assert!(matches!(err, RpcError::NotConnected(Some(_))), "{err:?}");
    assert!(err.is_not_sent());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_stack_retries_unroutable_calls_and_the_breaker_opens() {
    use quartet_policies::breaker::{BreakerHandle, CircuitBreakerLayer};
    use quartet_policies::classify::{Class, Classify};
    use quartet_policies::metrics::Metrics;
    use quartet_policies::retry::{budget::Budget, RetryLayer};
    use quartet_policies::spec::{BreakerSpec, RetrySpec};
    use quartet_policies::Target;
    use std::sync::Arc;
    use tower::{Service, ServiceBuilder, ServiceExt};

    let client = RpcClient::start(config("qt-stack"));
    client.wait_ready(BOUND).await.unwrap();
    let target = Target::new("rpc", "nobody");
    let metrics = Metrics::new();
    let retry = RetrySpec {
        attempts: 3,
        backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        ..RetrySpec::default()
    };
    let breaker = BreakerSpec {
        consecutive_failures: 3,
        ..BreakerSpec::default()
    };
    let handle = BreakerHandle::new(target.clone(), "amqp", breaker, metrics.clone());
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(
            &retry,
            Arc::new(Budget::new(&retry)),
            RpcClassify::default(),
            RpcReplay::default(),
            target,
            metrics,
        ))
        .layer(CircuitBreakerLayer::new(handle, RpcClassify::default()))
        .service(client.clone());

    // Unroutable is NotSent: retried even for a non-idempotent target, 3 attempts.
    let req = RpcRequest::call(unique("qt-nobody"), "m").mandatory(true);
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(req.clone())
        .await
        .unwrap_err();
    assert!(
        err.downcast_ref::<RpcError>()
            .is_some_and(|e| matches!(e, RpcError::Unroutable { .. })),
        "{err:?}"
    );
    assert_eq!(client.stats().calls, 3);
    // Three failures in a row opened the breaker: the next call never reaches the client.
    let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
    assert_eq!(
        RpcClassify::default().classify(&Err::<RpcResponse, _>(err)),
        Class::Local
    );
    assert_eq!(client.stats().calls, 3);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_server_uses_a_topic_queue_declared_durable_by_someone_else() {
    // A cloud with amqp_durable_queues = True declared `<topic>` durable: our
    // non-durable declaration gets 406, and we fall back to a passive declaration on a
    // fresh channel instead of failing (or losing the connection).
    let topic = unique("qt-durable-q");
    let (conn, ch) = raw().await;
    ch.queue_declare(
        topic.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let server = echo_server(&topic, "qt-durable-q");
    server
        .wait_ready(BOUND)
        .await
        .expect("server ready despite the 406");
    let client = RpcClient::start(config("qt-durable-q-cli"));
    client.wait_ready(BOUND).await.unwrap();
    let r = client
        .call(RpcRequest::call(&topic, "echo").arg("d", json!(true)))
        .await
        .unwrap();
    assert_eq!(r, json!({"d": true}));
    assert_eq!(server.status().connects, 1);
    // The heartbeat we asked for is the one the broker uses for our connection.
    assert_eq!(
        common::connection_heartbeat(&client.status().connection_name),
        20
    );

    client.close().await;
    server.close().await;
    ch.queue_delete(topic.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let _ = conn.close(200, "OK".into()).await;
}
