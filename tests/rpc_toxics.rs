//! Connection-level faults (toxics) on the broker connections, target `rpc:broker`,
//! against the real RabbitMQ (127.0.0.1:5672): latency is measured (a lower bound), a
//! reset is seen as 503 and heals once removed, a stall trips the call's timeout (504),
//! bandwidth slows a large call to its rate, close_after cuts the connection (503) and the
//! client recovers; `[rpc] broker_fault` sets them from the config, and a delay or abort
//! there is refused.
//!
//! Quartet is both sides: `POST /rpc/{topic}` through its client and a reverse bridge on
//! the same topic forwarding to an HTTP echo upstream; the toxics act on both broker
//! connections. Each test has its own gateway and topic, so they run in parallel.

use quartet_tests::{client, eventually, metric_sum, Gateway, Upstream, SERVER};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(60);

async fn gateway(name: &str, upstream: &Upstream) -> (Gateway, String) {
    let topic = format!("qt_toxic_{name}_{}", std::process::id());
    let cfg = format!(
        "{SERVER}\n[amqp]\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n\
         connection_name = \"quartet-toxics-{name}\"\n\
         reconnect = {{ backoff = \"50ms\", max_backoff = \"500ms\" }}\n\n\
         [policies.default]\ntimeout = \"5s\"\nper_try_timeout = \"3s\"\n\n\
         [upstreams.echo]\nendpoints = [\"{}\"]\n\n\
         [[rpc.topics]]\ntopic = \"{topic}\"\n\n\
         [[rpc.servers]]\ntopic = \"{topic}\"\nupstream = \"echo\"\n",
        upstream.url()
    );
    let gw = Gateway::start(&cfg).await;
    ready(&gw).await;
    (gw, topic)
}

async fn ready(gw: &Gateway) -> Value {
    eventually("/readyz shows the rpc channel ready", BOUND, || async {
        let (status, body) = gw.admin_json("/readyz").await;
        (status == StatusCode::OK && body["channels"]["rpc"]["state"] == "ready").then_some(body)
    })
    .await
}

async fn call(gw: &Gateway, topic: &str, timeout: f64) -> (StatusCode, Value, Duration) {
    let start = Instant::now();
    let resp = client()
        .post(gw.url(&format!("/rpc/{topic}")))
        .json(&json!({"method": "echo", "args": {"x": 1}, "timeout": timeout}))
        .send()
        .await
        .expect("POST /rpc/{topic}");
    let status = resp.status();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body, start.elapsed())
}

async fn put_fault(gw: &Gateway, target: &str, fault: Value) {
    let resp = client()
        .put(gw.admin_url(&format!("/admin/faults/{target}")))
        .json(&fault)
        .send()
        .await
        .expect("PUT /admin/faults");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::OK, "{text}");
}

async fn clear_fault(gw: &Gateway, target: &str) {
    let resp = client()
        .delete(gw.admin_url(&format!("/admin/faults/{target}")))
        .send()
        .await
        .expect("DELETE /admin/faults");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}

fn injected(metrics: &str, kind: &str) -> f64 {
    metric_sum(
        metrics,
        "quartet_faults_injected_total",
        &[("channel", "rpc"), ("target", "broker"), ("kind", kind)],
    )
}

#[tokio::test]
async fn latency_on_the_broker_connection_is_measured_and_shown() {
    quartet_tests::broker_up();
    let upstream = Upstream::start("echo").await;
    let (gw, topic) = gateway("latency", &upstream).await;
    let (status, body, _) = call(&gw, &topic, 5.0).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let latency = Duration::from_millis(300);
    put_fault(
        &gw,
        "rpc:broker",
        json!({"connection": [{"kind": "latency", "latency": "300ms", "jitter": "10ms"}]}),
    )
    .await;
    // Shown while active: /readyz and /metrics.
    let (_, ready) = gw.admin_json("/readyz").await;
    assert_eq!(
        ready["channels"]["rpc"]["broker"]["fault"]["connection"][0]["kind"], "latency",
        "{ready}"
    );
    let (status, body, took) = call(&gw, &topic, 5.0).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Every frame read from the broker waits: the confirm and the reply at least.
    assert!(
        took >= latency - Duration::from_millis(10),
        "a call under {latency:?} of latency took {took:?}"
    );
    let metrics = gw.metrics().await;
    assert!(injected(&metrics, "latency") >= 1.0, "{metrics}");
    assert_eq!(
        metric_sum(
            &metrics,
            "quartet_fault_active",
            &[("channel", "rpc"), ("target", "broker")]
        ),
        1.0,
        "{metrics}"
    );

    clear_fault(&gw, "rpc:broker").await;
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "quartet_fault_active",
            &[("channel", "rpc"), ("target", "broker")]
        ),
        0.0
    );
    let (status, body, _) = call(&gw, &topic, 5.0).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_reset_broker_connection_answers_503_and_heals_when_removed() {
    quartet_tests::broker_up();
    let upstream = Upstream::start("echo").await;
    let (gw, topic) = gateway("reset", &upstream).await;
    let (status, body, _) = call(&gw, &topic, 5.0).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    put_fault(
        &gw,
        "rpc:broker",
        json!({"connection": [{"kind": "reset"}]}),
    )
    .await;
    // The reset acts on the open connection (at the next byte, or within a second when
    // idle); calls fail with 503 and /readyz says the channel is not ready.
    eventually("calls fail with 503 under a reset", BOUND, || async {
        let (status, _, _) = call(&gw, &topic, 2.0).await;
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    let body = eventually("/readyz shows rpc not ready", BOUND, || async {
        let (status, body) = gw.admin_json("/readyz").await;
        (status == StatusCode::SERVICE_UNAVAILABLE && body["channels"]["rpc"]["state"] != "ready")
            .then_some(body)
    })
    .await;
    assert_eq!(
        body["channels"]["rpc"]["broker"]["fault"]["connection"][0]["kind"], "reset",
        "{body}"
    );
    let metrics = gw.metrics().await;
    assert!(injected(&metrics, "reset") >= 1.0, "{metrics}");

    clear_fault(&gw, "rpc:broker").await;
    let body = ready(&gw).await;
    assert!(
        body["channels"]["rpc"]["client"]["connects"].as_u64() >= Some(2),
        "{body}"
    );
    eventually("calls succeed again", BOUND, || async {
        let (status, _, _) = call(&gw, &topic, 2.0).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_stalled_broker_connection_trips_the_call_timeout() {
    quartet_tests::broker_up();
    let upstream = Upstream::start("echo").await;
    let (gw, topic) = gateway("stall", &upstream).await;
    let (status, body, _) = call(&gw, &topic, 5.0).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Nothing comes back from the broker (no confirm, no reply) until it is removed.
    put_fault(
        &gw,
        "rpc:broker",
        json!({"connection": [{"kind": "stall"}]}),
    )
    .await;
    let (status, body, took) = call(&gw, &topic, 1.0).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    // A correctness bound, not a timing assertion: the call did not hang past its
    // timeout (1 s) and the policy's total timeout (5 s).
    assert!(took < Duration::from_secs(5), "the call hung: {took:?}");
    let metrics = gw.metrics().await;
    assert!(injected(&metrics, "stall") >= 1.0, "{metrics}");

    clear_fault(&gw, "rpc:broker").await;
    eventually(
        "calls succeed again once the stall is removed",
        BOUND,
        || async {
            let (status, _, _) = call(&gw, &topic, 2.0).await;
            (status == StatusCode::OK).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn bandwidth_on_the_broker_connection_slows_a_large_call_to_its_rate() {
    quartet_tests::broker_up();
    let upstream = Upstream::start("echo").await;
    let (gw, topic) = gateway("bandwidth", &upstream).await;
    let (status, body, _) = call(&gw, &topic, 5.0).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Upstream (what Quartet writes to the broker): the call's own publish carries the
    // large argument, so it alone takes at least size / rate.
    let rate: u64 = 200 * 1024;
    put_fault(
        &gw,
        "rpc:broker",
        json!({"connection": [{"kind": "bandwidth", "rate": rate, "direction": "upstream"}]}),
    )
    .await;
    let blob = "x".repeat(100 * 1024);
    let start = Instant::now();
    let resp = client()
        .post(gw.url(&format!("/rpc/{topic}")))
        .json(&json!({"method": "echo", "args": {"blob": blob}, "timeout": 2.5}))
        .send()
        .await
        .expect("POST /rpc/{topic}");
    let took = start.elapsed();
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::OK, "{text}");
    let least = Duration::from_secs_f64(blob.len() as f64 / rate as f64);
    assert!(
        took >= least,
        "a {} byte call under {rate} B/s took {took:?}, less than {least:?}",
        blob.len()
    );
    let metrics = gw.metrics().await;
    assert!(injected(&metrics, "bandwidth") >= 1.0, "{metrics}");

    clear_fault(&gw, "rpc:broker").await;
    let (status, body, _) = call(&gw, &topic, 5.0).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn close_after_drops_the_broker_connection_with_503_and_the_client_recovers() {
    quartet_tests::broker_up();
    let upstream = Upstream::start("echo").await;
    let (gw, topic) = gateway("close_after", &upstream).await;
    let (status, body, _) = call(&gw, &topic, 5.0).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, before) = gw.admin_json("/readyz").await;
    let connects = before["channels"]["rpc"]["client"]["connects"]
        .as_u64()
        .expect("client connects");

    // A few kilobytes from the broker, then end of file: a call or two goes through, then
    // the connection is gone (and each new one is cut again while the toxic stays).
    put_fault(
        &gw,
        "rpc:broker",
        json!({"connection": [{"kind": "close_after", "bytes": 4096}]}),
    )
    .await;
    eventually(
        "a call fails with 503 once the connection is cut",
        BOUND,
        || async {
            let (status, body, _) = call(&gw, &topic, 2.0).await;
            assert!(
                status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
                "{status} {body}"
            );
            (status == StatusCode::SERVICE_UNAVAILABLE).then_some(())
        },
    )
    .await;
    let metrics = gw.metrics().await;
    assert!(injected(&metrics, "close_after") >= 1.0, "{metrics}");

    clear_fault(&gw, "rpc:broker").await;
    let body = ready(&gw).await;
    assert!(
        body["channels"]["rpc"]["client"]["connects"].as_u64() > Some(connects),
        "{body}"
    );
    eventually("calls succeed again", BOUND, || async {
        let (status, _, _) = call(&gw, &topic, 2.0).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test]
async fn broker_toxics_set_in_the_config_apply_from_the_start() {
    quartet_tests::broker_up();
    let upstream = Upstream::start("echo").await;
    let topic = format!("qt_toxic_config_{}", std::process::id());
    let cfg = format!(
        "{SERVER}\n[amqp]\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n\
         connection_name = \"quartet-toxics-config\"\n\n\
         [upstreams.echo]\nendpoints = [\"{}\"]\n\n\
         [rpc]\nbroker_fault = {{ connection = [{{ kind = \"latency\", latency = \"300ms\" }}] }}\n\n\
         [[rpc.topics]]\ntopic = \"{topic}\"\n\n\
         [[rpc.servers]]\ntopic = \"{topic}\"\nupstream = \"echo\"\n",
        upstream.url()
    );
    let gw = Gateway::start(&cfg).await;
    let ready = ready(&gw).await;
    assert_eq!(
        ready["channels"]["rpc"]["broker"]["fault"]["connection"][0]["kind"], "latency",
        "{ready}"
    );
    let (status, body, took) = call(&gw, &topic, 5.0).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        took >= Duration::from_millis(300),
        "a call under 300ms of latency took {took:?}"
    );
    // The admin API replaces or clears it like any fault.
    clear_fault(&gw, "rpc:broker").await;
    let (_, ready) = gw.admin_json("/readyz").await;
    assert!(
        ready["channels"]["rpc"]["broker"]["fault"].is_null(),
        "{ready}"
    );
}

#[tokio::test]
async fn a_delay_or_abort_on_rpc_broker_is_refused_with_400() {
    quartet_tests::broker_up();
    let upstream = Upstream::start("echo").await;
    let (gw, _topic) = gateway("refused", &upstream).await;
    for (fault, key) in [
        (json!({"delay": "100ms", "delay_percent": 100}), "delay"),
        (
            json!({"abort_status": 503, "abort_percent": 50}),
            "abort_status",
        ),
    ] {
        let resp = client()
            .put(gw.admin_url("/admin/faults/rpc:broker"))
            .json(&fault)
            .send()
            .await
            .expect("PUT /admin/faults/rpc:broker");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body: Value = resp.json().await.expect("a JSON error body");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(&format!("{key}: rpc:broker takes only connection faults")),
            "{body}"
        );
    }
    // Nothing was set.
    let (_, ready) = gw.admin_json("/readyz").await;
    assert!(
        ready["channels"]["rpc"]["broker"]["fault"].is_null(),
        "{ready}"
    );
}
