//! The REST channel end to end: the `quartet` binary in front of real upstream servers.
//!
//! Each test writes its own config, starts its own gateway and upstreams on port 0, and
//! asserts on what clients and upstreams saw: statuses, bodies, headers and hit counts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use quartet_tests::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A policy with no retries and a breaker that never trips in a short test.
const PLAIN_POLICY: &str = r#"
[policies.plain]
timeout = "20s"
per_try_timeout = "20s"
retry = { attempts = 1 }
breaker = { consecutive_failures = 1000, failure_rate = 1.0, min_calls = 1000 }
"#;

fn plain_route(prefix: &str, upstream: &str) -> String {
    route_toml(prefix, upstream, "strip_prefix = true\npolicy = \"plain\"")
}

/// One upstream `svc` behind `/svc` (prefix stripped), with the plain policy.
async fn one_upstream(extra_server: &str) -> (Gateway, Upstream) {
    let up = Upstream::start("svc").await;
    let config = format!(
        "{SERVER}{extra_server}\n{PLAIN_POLICY}{}{}",
        upstream_toml("svc", &[up.url()], ""),
        plain_route("/svc", "svc")
    );
    (Gateway::start(&config).await, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_requests_and_strips_the_prefix_only_when_asked() {
    let up = Upstream::start("svc").await;
    let config = format!(
        "{SERVER}{PLAIN_POLICY}{}{}{}",
        upstream_toml("svc", &[up.url()], ""),
        plain_route("/strip", "svc"),
        route_toml("/keep", "svc", "policy = \"plain\""),
    );
    let gw = Gateway::start(&config).await;
    let http = client();

    let e = echo(
        http.get(gw.url("/strip/v2/items?limit=5&marker=x"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(e["method"], "GET");
    assert_eq!(
        e["path"], "/v2/items",
        "strip_prefix = true removes the prefix: {e}"
    );
    assert_eq!(
        e["query"], "limit=5&marker=x",
        "the query passes unchanged: {e}"
    );

    let e = echo(http.get(gw.url("/keep/v2/items")).send().await.unwrap()).await;
    assert_eq!(
        e["path"], "/keep/v2/items",
        "strip_prefix defaults to false: {e}"
    );

    let body = b"{\"server\": {\"name\": \"vm-1\"}}".to_vec();
    let e = echo(
        http.post(gw.url("/strip/servers"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(e["method"], "POST");
    assert_eq!(e["body_len"], body.len());
    assert_eq!(
        e["body_fnv"],
        Fnv::of(&body).to_string(),
        "the body arrives intact"
    );
    assert_eq!(echoed_header(&e, "content-type"), Some("application/json"));

    let resp = http
        .get(gw.url("/strip/x?status=404"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::NOT_FOUND,
        "an upstream's own status passes through"
    );
    assert_eq!(up.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_bodies_larger_than_the_replay_buffer_both_ways() {
    const SIZE: usize = 8 * 1024 * 1024;
    const FIRST: usize = 256 * 1024;
    let up = Arc::new(Upstream::start("blobs").await);
    // Retries are on (PUT and GET are idempotent) with a 64 KiB replay buffer: an 8 MiB body
    // must stream through, not be buffered for replay.
    let config = format!(
        r#"{SERVER}
[policies.streaming]
timeout = "60s"
per_try_timeout = "60s"
retry = {{ attempts = 3, backoff = "10ms", max_backoff = "50ms", buffer_limit = 65536 }}
{}{}"#,
        upstream_toml("blobs", &[up.url()], ""),
        route_toml(
            "/blobs",
            "blobs",
            "strip_prefix = true\npolicy = \"streaming\""
        ),
    );
    let gw = Gateway::start(&config).await;

    // Up: send 256 KiB, then hold the rest back until the upstream has seen the first bytes.
    // A gateway that buffered the whole request body would never pass them on.
    let stalled = Arc::new(AtomicBool::new(false));
    let stream = futures_util::stream::unfold(0usize, {
        let up = up.clone();
        let stalled = stalled.clone();
        move |offset| {
            let up = up.clone();
            let stalled = stalled.clone();
            async move {
                if offset >= SIZE {
                    return None;
                }
                if offset == FIRST
                    && tokio::time::timeout(WAIT, up.upload_started())
                        .await
                        .is_err()
                {
                    stalled.store(true, Ordering::SeqCst);
                    let err = std::io::Error::other("the upstream never saw the first bytes");
                    return Some((Err(err), SIZE));
                }
                let n = if offset == 0 {
                    FIRST
                } else {
                    CHUNK.min(SIZE - offset)
                };
                Some((
                    Ok::<_, std::io::Error>(Bytes::from(pattern(offset, n))),
                    offset + n,
                ))
            }
        }
    });
    let resp = bounded(
        "an 8 MiB streamed upload",
        client()
            .put(gw.url("/blobs/object?upload_gate=1"))
            .body(reqwest::Body::wrap_stream(stream))
            .send(),
    )
    .await;
    assert!(
        !stalled.load(Ordering::SeqCst),
        "the gateway held back the first {FIRST} bytes of the request body: it buffers request \
         bodies instead of streaming them"
    );
    let e = echo(resp.expect("the upload")).await;
    assert_eq!(e["body_len"], SIZE, "the whole upload arrived: {e}");
    assert_eq!(
        e["body_fnv"],
        pattern_fnv(SIZE).to_string(),
        "the upload arrived intact"
    );

    // Down: the upstream sends 64 KiB and waits until the client has it before sending more.
    let mut resp = bounded(
        "the response head and first chunk of an 8 MiB download (a gateway that buffers \
         whole responses never sends them)",
        client()
            .get(gw.url("/blobs/object?gate=1&size=8388608"))
            .send(),
    )
    .await
    .expect("the download");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut fnv = Fnv::default();
    let mut received = 0usize;
    let first = bounded("the first chunk of the download", resp.chunk())
        .await
        .expect("read the download")
        .expect("a first chunk");
    received += first.len();
    fnv.update(&first);
    up.open_download_gate();
    while let Some(chunk) = bounded("the rest of the download", resp.chunk())
        .await
        .expect("read the download")
    {
        received += chunk.len();
        fnv.update(&chunk);
    }
    assert_eq!(received, SIZE, "the whole download arrived");
    assert_eq!(fnv.0, pattern_fnv(SIZE), "the download arrived intact");
}

const RETRY_POLICY: &str = r#"
[policies.retrying]
timeout = "20s"
per_try_timeout = "10s"
retry = { attempts = 3, backoff = "5ms", max_backoff = "20ms", budget = 0.5, min_per_second = 100 }
breaker = { consecutive_failures = 1000, failure_rate = 1.0, min_calls = 1000 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_an_idempotent_get_on_the_second_endpoint() {
    let bad = Upstream::start("bad").await;
    let good = Upstream::start("good").await;
    bad.fail_with(503);
    let config = format!(
        "{SERVER}{RETRY_POLICY}{}{}{}{}",
        upstream_toml(
            "flaky",
            &[bad.url(), good.url()],
            "balance = \"round_robin\""
        ),
        route_toml(
            "/flaky",
            "flaky",
            "strip_prefix = true\npolicy = \"retrying\""
        ),
        // Each endpoint has a base path of its own: a retry is rewritten for the
        // endpoint it goes to, not for the one that failed.
        upstream_toml(
            "half_closed",
            &[
                format!("{}/gone", closed_port_url()),
                format!("{}/base", good.url())
            ],
            "balance = \"round_robin\""
        ),
        route_toml(
            "/closed",
            "half_closed",
            "strip_prefix = true\npolicy = \"retrying\""
        ),
    );
    let gw = Gateway::start(&config).await;
    let http = client();

    for i in 0..6 {
        let e = echo(
            http.get(gw.url(&format!("/flaky/item/{i}")))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            e["server"], "good",
            "request {i} answered by the healthy endpoint"
        );
    }
    assert!(
        bad.hits() >= 1,
        "round robin sent some first tries to the failing endpoint"
    );
    assert_eq!(
        good.hits(),
        6,
        "each GET reached the healthy endpoint exactly once"
    );

    const REQUEST_ID: &str = "req-3f1b2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d";
    for i in 0..6 {
        let e = echo(
            http.get(gw.url(&format!("/closed/item/{i}")))
                .header("x-custom", "kept")
                .header("x-openstack-request-id", REQUEST_ID)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            e["server"], "good",
            "request {i} retried past the closed port"
        );
        // Whichever attempt reached it, the request is the client's, rewritten once.
        assert_eq!(e["path"], format!("/base/item/{i}"), "{e}");
        assert_eq!(echoed_header(&e, "x-custom"), Some("kept"), "{e}");
        assert_eq!(
            echoed_header(&e, "x-openstack-request-id"),
            Some(REQUEST_ID)
        );
        assert_eq!(
            echoed_header(&e, "x-forwarded-for"),
            Some("127.0.0.1"),
            "{e}"
        );
        assert!(echoed_header(&e, "host").is_some(), "{e}");
    }

    let retries = metric_sum(&gw.metrics().await, "quartet_retries_total", &[]);
    assert!(
        retries >= 2.0,
        "quartet_retries_total counts the retries, got {retries}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn does_not_retry_a_post_unless_the_route_is_idempotent() {
    let up = Upstream::start("orders").await;
    up.fail_with(503);
    let config = format!(
        "{SERVER}{RETRY_POLICY}{}{}{}",
        upstream_toml("orders", &[up.url()], ""),
        route_toml(
            "/orders",
            "orders",
            "strip_prefix = true\npolicy = \"retrying\""
        ),
        route_toml(
            "/replayable",
            "orders",
            "strip_prefix = true\npolicy = \"retrying\"\nidempotent = true"
        ),
    );
    let gw = Gateway::start(&config).await;
    let http = client();

    let resp = http
        .post(gw.url("/orders/new"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "the upstream's 503 reaches the client"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["server"], "orders",
        "it is the upstream's own answer: {body}"
    );
    assert_eq!(up.hits(), 1, "a POST is sent once, never retried");

    // A route marked idempotent may replay its (small, buffered) body.
    up.fail_next(1, 503);
    let before = up.hits();
    let e = echo(
        http.post(gw.url("/replayable/new"))
            .body("{\"a\": 1}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(e["body_len"], 8, "the replayed body arrived whole: {e}");
    assert_eq!(up.hits() - before, 2, "one failure, one retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_fails_fast_probes_half_open_and_closes() {
    let up = Upstream::start("brittle").await;
    let config = format!(
        r#"{SERVER}
[policies.brittle]
timeout = "10s"
per_try_timeout = "5s"
retry = {{ attempts = 1 }}
breaker = {{ consecutive_failures = 3, failure_rate = 1.0, window = "10s", min_calls = 1000, open_for = "1s", half_open_probes = 1 }}
{}{}"#,
        upstream_toml("brittle", &[up.url()], ""),
        route_toml(
            "/brittle",
            "brittle",
            "strip_prefix = true\npolicy = \"brittle\""
        ),
    );
    let gw = Gateway::start(&config).await;
    let http = client();
    let post = || http.post(gw.url("/brittle/op")).body("x").send();
    let up = &up;

    // Closed: failures reach the upstream until three in a row trip the breaker.
    up.fail_with(503);
    for i in 0..3 {
        let resp = post().await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            body["server"], "brittle",
            "failure {i} came from the upstream: {body}"
        );
    }
    assert_eq!(up.hits(), 3);

    // Open: answered at once by the gateway, the upstream untouched.
    for _ in 0..3 {
        expect_gateway_error_retry_after(post().await.unwrap(), 503).await;
    }
    assert_eq!(up.hits(), 3, "an open breaker does not touch the upstream");
    let states = gw.breaker_states("brittle").await;
    assert!(
        states.iter().any(|s| s == "open"),
        "GET /admin/breakers shows the breaker open, got {states:?}"
    );
    let metrics = gw.metrics().await;
    assert!(
        !metric_samples(&metrics, "quartet_breaker_state").is_empty(),
        "/metrics has quartet_breaker_state:\n{metrics}"
    );

    // Half-open after open_for: one probe goes through; it fails, so the breaker opens again.
    eventually(
        "a half-open probe to reach the upstream",
        WAIT,
        || async move {
            let resp = post().await.unwrap();
            (up.hits() == 4).then_some(resp)
        },
    )
    .await;
    expect_gateway_error_retry_after(post().await.unwrap(), 503).await;
    assert_eq!(up.hits(), 4, "a failed probe opens the breaker again");

    // The upstream recovers: the next probe succeeds and the breaker closes.
    up.recover();
    eventually(
        "a successful probe after the upstream recovered",
        WAIT,
        || async move {
            let resp = post().await.unwrap();
            (resp.status() == StatusCode::OK).then_some(())
        },
    )
    .await;
    for _ in 0..5 {
        echo(post().await.unwrap()).await;
    }
    let states = gw.breaker_states("brittle").await;
    assert!(
        states.iter().all(|s| s == "closed") && !states.is_empty(),
        "the breaker is closed again, got {states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_forces_a_breaker_open_and_closes_it() {
    let (gw, up) = one_upstream("").await;
    let http = client();
    echo(http.get(gw.url("/svc/a")).send().await.unwrap()).await;

    let resp = http
        .post(gw.admin_url("/admin/breakers/svc"))
        .json(&json!({"state": "forced_open"}))
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "POST /admin/breakers/svc forced_open: {}",
        resp.status()
    );
    expect_gateway_error_retry_after(http.get(gw.url("/svc/a")).send().await.unwrap(), 503).await;
    assert_eq!(
        up.hits(),
        1,
        "a forced-open breaker does not touch the upstream"
    );
    let states = gw.breaker_states("svc").await;
    assert!(states.iter().any(|s| s == "forced_open"), "got {states:?}");

    let resp = http
        .post(gw.admin_url("/admin/breakers/svc"))
        .json(&json!({"state": "closed"}))
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "POST /admin/breakers/svc closed: {}",
        resp.status()
    );
    echo(http.get(gw.url("/svc/a")).send().await.unwrap()).await;
    assert_eq!(up.hits(), 2);

    let resp = http
        .post(gw.admin_url("/admin/breakers/nosuchtarget"))
        .json(&json!({"state": "closed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::NOT_FOUND,
        "an unknown target is a 404"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_and_total_timeout_both_give_504() {
    let up = Upstream::start("slow").await;
    let config = format!(
        r#"{SERVER}
[policies.per_try]
timeout = "20s"
per_try_timeout = "300ms"
retry = {{ attempts = 2, backoff = "5ms", max_backoff = "10ms" }}
breaker = {{ consecutive_failures = 1000, failure_rate = 1.0, min_calls = 1000 }}

[policies.total]
timeout = "300ms"
per_try_timeout = "20s"
retry = {{ attempts = 1 }}
breaker = {{ consecutive_failures = 1000, failure_rate = 1.0, min_calls = 1000 }}
{}{}{}"#,
        upstream_toml("slow", &[up.url()], ""),
        route_toml(
            "/per-try",
            "slow",
            "strip_prefix = true\npolicy = \"per_try\""
        ),
        route_toml("/total", "slow", "strip_prefix = true\npolicy = \"total\""),
    );
    let gw = Gateway::start(&config).await;
    let http = client();

    // The upstream holds these requests and never answers.
    expect_gateway_error(
        http.get(gw.url("/per-try/x?hold=1")).send().await.unwrap(),
        504,
    )
    .await;
    assert!(up.hits() >= 1);
    expect_gateway_error(
        http.get(gw.url("/total/x?hold=1")).send().await.unwrap(),
        504,
    )
    .await;
    // The gateway still answers promptly served requests on the same routes.
    echo(http.get(gw.url("/per-try/fast")).send().await.unwrap()).await;
    echo(http.get(gw.url("/total/fast")).send().await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_load_evenly() {
    let ups = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let urls: Vec<String> = ups.iter().map(Upstream::url).collect();
    let config = format!(
        "{SERVER}{PLAIN_POLICY}{}{}",
        upstream_toml("pool", &urls, "balance = \"round_robin\""),
        plain_route("/pool", "pool"),
    );
    let gw = Gateway::start(&config).await;
    let http = client();
    for _ in 0..30 {
        echo(http.get(gw.url("/pool/x")).send().await.unwrap()).await;
    }
    let hits: Vec<usize> = ups.iter().map(Upstream::hits).collect();
    assert_eq!(
        hits,
        vec![10, 10, 10],
        "round robin over 3 endpoints, 30 requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_spreads_concurrent_load_over_all_endpoints() {
    let ups = Arc::new([
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ]);
    let urls: Vec<String> = ups.iter().map(Upstream::url).collect();
    let config = format!(
        "{SERVER}{PLAIN_POLICY}{}{}",
        upstream_toml("pool", &urls, "balance = \"p2c\""),
        plain_route("/pool", "pool"),
    );
    let gw = Gateway::start(&config).await;
    let http = client();
    let mut pending = Vec::new();
    for i in 0..30 {
        let req = http.get(gw.url(&format!("/pool/{i}?hold=1"))).send();
        pending.push(tokio::spawn(req));
    }
    let held = {
        let ups = ups.clone();
        eventually("30 requests held by the upstreams", WAIT, move || {
            let ups = ups.clone();
            async move {
                let held: Vec<usize> = ups.iter().map(Upstream::holding).collect();
                (held.iter().sum::<usize>() == 30).then_some(held)
            }
        })
        .await
    };
    for up in ups.iter() {
        up.release(30);
    }
    for p in pending {
        echo(p.await.unwrap().unwrap()).await;
    }
    assert!(
        held.iter().all(|&n| n > 0),
        "least-outstanding (p2c) gives every endpoint some of 30 concurrent requests: {held:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_an_endpoint_out_and_back() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let config = format!(
        "{SERVER}{PLAIN_POLICY}{}{}",
        upstream_toml(
            "pool",
            &[a.url(), b.url()],
            "balance = \"round_robin\"\nhealth = { path = \"/health\", interval = \"100ms\", timeout = \"1s\", unhealthy_threshold = 1, healthy_threshold = 1 }"
        ),
        plain_route("/pool", "pool"),
    );
    let gw = &Gateway::start(&config).await;
    let http = &client();
    let (a, b) = (&a, &b);
    eventually("health checks on both endpoints", WAIT, || async move {
        (a.health_hits() > 0 && b.health_hits() > 0).then_some(())
    })
    .await;

    a.set_health(503);
    let checks = a.health_hits();
    eventually(
        "two more health checks of the failing endpoint",
        WAIT,
        || async move { (a.health_hits() >= checks + 2).then_some(()) },
    )
    .await;
    let before = a.hits();
    for _ in 0..10 {
        let e = echo(http.get(gw.url("/pool/x")).send().await.unwrap()).await;
        assert_eq!(
            e["server"], "b",
            "an endpoint failing its health check gets no requests"
        );
    }
    assert_eq!(a.hits(), before);

    a.set_health(0);
    eventually(
        "the recovered endpoint to get requests again",
        WAIT,
        || async move {
            let e = echo(http.get(gw.url("/pool/x")).send().await.unwrap()).await;
            (e["server"] == "a").then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    use tokio_tungstenite::tungstenite::Message;
    let (gw, up) = one_upstream("").await;
    let (mut ws, resp) = bounded(
        "the WebSocket handshake through the gateway",
        tokio_tungstenite::connect_async(format!("ws://{}/svc/console/ws", gw.public)),
    )
    .await
    .expect("a WebSocket upgrade through the gateway");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);

    for text in ["hello", "second message", &"x".repeat(100_000)] {
        ws.send(Message::text(text)).await.unwrap();
        let got = bounded("a WebSocket echo", ws.next())
            .await
            .expect("an echo")
            .unwrap();
        assert_eq!(got.into_text().unwrap().as_str(), text);
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let got = bounded("a binary echo", ws.next())
        .await
        .expect("an echo")
        .unwrap();
    assert_eq!(got.into_data().to_vec(), vec![0u8, 1, 2, 255]);
    ws.close(None).await.unwrap();
    assert_eq!(up.hits(), 1, "one upgrade request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_by_prior_knowledge_and_http2_upstreams() {
    let up = Upstream::start("svc").await;
    let config = format!(
        "{SERVER}{PLAIN_POLICY}{}{}{}{}",
        upstream_toml("h1", &[up.url()], "http2 = false"),
        plain_route("/h1", "h1"),
        upstream_toml("h2", &[up.url()], "http2 = true"),
        plain_route("/h2", "h2"),
    );
    let gw = Gateway::start(&config).await;

    let h2c = h2c_client();
    let resp = h2c
        .get(gw.url("/h1/x"))
        .send()
        .await
        .expect("an h2c request");
    assert_eq!(
        resp.version(),
        http::Version::HTTP_2,
        "the public listener speaks h2c"
    );
    let e = echo(resp).await;
    assert_eq!(
        e["version"], "HTTP/1.1",
        "http2 = false: HTTP/1.1 to the upstream"
    );

    let body = pattern(0, 300_000);
    let resp = h2c
        .post(gw.url("/h2/upload"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let e = echo(resp).await;
    assert_eq!(
        e["version"], "HTTP/2.0",
        "http2 = true: HTTP/2 to the upstream"
    );
    assert_eq!(e["body_fnv"], Fnv::of(&body).to_string());

    let resp = client().get(gw.url("/h2/x")).send().await.unwrap();
    assert_eq!(
        resp.version(),
        http::Version::HTTP_11,
        "HTTP/1.1 clients still work"
    );
    echo(resp).await;

    // 8 MiB each way over HTTP/2 on both sides: flow control windows must keep moving.
    const SIZE: usize = 8 * 1024 * 1024;
    let big = pattern(0, SIZE);
    let e = echo(
        bounded(
            "an 8 MiB h2c upload",
            h2c.put(gw.url("/h2/big")).body(big).send(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(e["body_len"], SIZE);
    assert_eq!(e["body_fnv"], pattern_fnv(SIZE).to_string());
    let resp = bounded(
        "an 8 MiB h2c download",
        h2c.get(gw.url("/h2/big?size=8388608")).send(),
    )
    .await
    .unwrap();
    let body = bounded("the 8 MiB h2c body", resp.bytes()).await.unwrap();
    assert_eq!(body.len(), SIZE);
    assert_eq!(Fnv::of(&body), pattern_fnv(SIZE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_with_alpn_and_an_https_upstream_verified_by_ca_file() {
    let dir = tempdir();
    let pki = Pki::generate(dir.path());
    let plain = Upstream::start("plain").await;
    let secure = Upstream::start_tls("secure", &pki).await;
    let config = format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
tls = {{ cert = "{}", key = "{}" }}
{PLAIN_POLICY}{}{}{}{}{}{}{}{}"#,
        toml_path(&pki.cert_path),
        toml_path(&pki.key_path),
        upstream_toml("plain", &[plain.url()], ""),
        plain_route("/plain", "plain"),
        upstream_toml(
            "secure",
            &[secure.url()],
            &format!("ca_file = \"{}\"", toml_path(&pki.ca_path))
        ),
        plain_route("/secure", "secure"),
        upstream_toml("untrusted", &[secure.url()], ""),
        plain_route("/untrusted", "untrusted"),
        upstream_toml(
            "secure_h2",
            &[secure.url()],
            &format!("http2 = true\nca_file = \"{}\"", toml_path(&pki.ca_path))
        ),
        plain_route("/secure-h2", "secure_h2"),
    );
    let gw = Gateway::start_in(dir, &config).await;
    let url = |path: &str| format!("https://localhost:{}{path}", gw.public.port());

    let resp = tls_client(&pki, gw.public, false)
        .get(url("/plain/x"))
        .send()
        .await
        .expect("HTTPS to the gateway");
    assert_eq!(
        resp.version(),
        http::Version::HTTP_2,
        "h2 negotiated by ALPN"
    );
    let e = echo(resp).await;
    assert_eq!(echoed_header(&e, "x-forwarded-proto"), Some("https"));

    let resp = tls_client(&pki, gw.public, true)
        .get(url("/plain/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_11, "http/1.1 by ALPN");
    echo(resp).await;

    let e = echo(
        tls_client(&pki, gw.public, true)
            .get(url("/secure/y"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        e["server"], "secure",
        "the https:// upstream, verified with ca_file"
    );
    assert_eq!(e["path"], "/y");

    let e = echo(
        tls_client(&pki, gw.public, true)
            .get(url("/secure-h2/z"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        e["version"], "HTTP/2.0",
        "http2 = true on an https:// upstream: h2 by ALPN"
    );

    let resp = tls_client(&pki, gw.public, true)
        .get(url("/untrusted/y"))
        .send()
        .await
        .unwrap();
    expect_gateway_error(resp, 502).await;
    assert_eq!(
        secure.hits(),
        2,
        "no request went to an upstream whose certificate is not trusted"
    );

    // A WebSocket over the TLS listener (wss://), as browser consoles use it.
    let tls = pki.connect(gw.public, &[b"http/1.1"]).await;
    let ws_url = format!("wss://localhost:{}/plain/console/ws", gw.public.port());
    let (mut ws, _) = bounded(
        "a wss:// handshake through the gateway",
        tokio_tungstenite::client_async(ws_url, tls),
    )
    .await
    .expect("a WebSocket upgrade over TLS");
    ws.send(tokio_tungstenite::tungstenite::Message::text("over tls"))
        .await
        .unwrap();
    let got = bounded("a wss echo", ws.next())
        .await
        .expect("an echo")
        .unwrap();
    assert_eq!(got.into_text().unwrap().as_str(), "over tls");

    let plain_http = client().get(gw.url("/plain/x")).send().await;
    assert!(
        plain_http
            .map(|r| r.status().is_client_error())
            .unwrap_or(true),
        "plain HTTP to the TLS listener is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_removed_and_forwarded_headers_set() {
    let (gw, _up) = one_upstream("").await;
    let resp = raw_http1(
        gw.public,
        "GET /svc/x?hop=1 HTTP/1.1\r\n\
         Host: public.example.test\r\n\
         Connection: close, x-custom-hop\r\n\
         X-Custom-Hop: secret\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
         Proxy-Connection: keep-alive\r\n\
         X-End-To-End: kept\r\n\
         \r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let e = resp.json();
    for name in [
        "x-custom-hop",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert_eq!(
            echoed_header(&e, name),
            None,
            "hop-by-hop {name} must not reach the upstream: {e}"
        );
    }
    if let Some(conn) = echoed_header(&e, "connection") {
        assert!(
            !conn.contains("x-custom-hop"),
            "the client's Connection header was forwarded: {conn}"
        );
    }
    assert_eq!(echoed_header(&e, "x-end-to-end"), Some("kept"));
    assert_eq!(echoed_header(&e, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(echoed_header(&e, "x-forwarded-proto"), Some("http"));
    assert_eq!(
        echoed_header(&e, "x-forwarded-host"),
        Some("public.example.test")
    );

    for name in ["x-upstream-hop", "keep-alive", "proxy-connection"] {
        assert_eq!(
            resp.header(name),
            None,
            "hop-by-hop {name} must not reach the client: {resp:?}"
        );
    }
    if let Some(conn) = resp.header("connection") {
        assert!(
            !conn.contains("x-upstream-hop"),
            "the upstream's Connection header was forwarded: {conn}"
        );
    }
    assert_eq!(resp.header("x-upstream-end-to-end"), Some("kept"));

    // A client's own X-Forwarded-For is extended with the address the gateway saw.
    let resp = raw_http1(
        gw.public,
        "GET /svc/x HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 203.0.113.7\r\nConnection: close\r\n\r\n",
    )
    .await;
    let e = resp.json();
    let xff = echoed_header(&e, "x-forwarded-for")
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        xff.rsplit(',').next().map(str::trim),
        Some("127.0.0.1"),
        "X-Forwarded-For: {xff}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_kept_when_valid_generated_otherwise_and_returned() {
    const HEADER: &str = "x-openstack-request-id";
    const VALID: &str = "req-3f1b2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d";
    let (gw, _up) = one_upstream("").await;
    let http = client();
    let returned = |resp: &reqwest::Response| {
        resp.headers()
            .get(HEADER)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no {HEADER} on the response: {:?}", resp.headers()))
    };

    // oslo.middleware accepts any lower-case hex UUID form, not only version 4.
    let resp = http
        .get(gw.url("/svc/x"))
        .header(HEADER, "req-3f1b2c4d-5e6f-1a7b-8c9d-0e1f2a3b4c5d")
        .send()
        .await
        .unwrap();
    assert_eq!(returned(&resp), "req-3f1b2c4d-5e6f-1a7b-8c9d-0e1f2a3b4c5d");

    let resp = http
        .get(gw.url("/svc/x"))
        .header(HEADER, VALID)
        .send()
        .await
        .unwrap();
    assert_eq!(returned(&resp), VALID, "a valid id is returned as sent");
    let e = echo(resp).await;
    assert_eq!(
        echoed_header(&e, HEADER),
        Some(VALID),
        "a valid id reaches the upstream as sent"
    );

    // Valid means oslo.middleware's `^req-[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-
    // [a-f0-9]{12}$` (lower-case hex, any UUID version), so real OpenStack clients interoperate.
    for invalid in [
        "req-not-a-uuid",
        "3f1b2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
        "req-3F1B2C4D-5E6F-4A7B-8C9D-0E1F2A3B4C5D",
        "req-3f1b2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d-extra",
    ] {
        let resp = http
            .get(gw.url("/svc/x"))
            .header(HEADER, invalid)
            .send()
            .await
            .unwrap();
        let id = returned(&resp);
        assert!(
            is_request_id(&id) && id != invalid,
            "{invalid:?} replaced by a fresh id, got {id:?}"
        );
        let e = echo(resp).await;
        assert_eq!(
            echoed_header(&e, HEADER),
            Some(id.as_str()),
            "the upstream got the same fresh id"
        );
    }

    let mut seen = Vec::new();
    for _ in 0..2 {
        let resp = http.get(gw.url("/svc/x")).send().await.unwrap();
        let id = returned(&resp);
        assert!(
            is_request_id(&id),
            "a generated id is req-<uuid4>, got {id:?}"
        );
        let e = echo(resp).await;
        assert_eq!(echoed_header(&e, HEADER), Some(id.as_str()));
        seen.push(id);
    }
    assert_ne!(seen[0], seen[1], "each request gets its own id");

    // The gateway's own errors carry an id too.
    let resp = http.get(gw.url("/nowhere")).send().await.unwrap();
    assert!(is_request_id(&returned(&resp)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injected_at_run_time_takes_effect_is_removed_and_shows_in_metrics() {
    let up = Upstream::start("faulty").await;
    let config = format!(
        "{SERVER}{PLAIN_POLICY}{}{}",
        upstream_toml("faulty", &[up.url()], ""),
        plain_route("/faulty", "faulty"),
    );
    let gw = Gateway::start(&config).await;
    let http = client();
    echo(http.get(gw.url("/faulty/x")).send().await.unwrap()).await;

    let resp = http
        .put(gw.admin_url("/admin/faults/faulty"))
        .json(&json!({"abort_status": 503, "abort_percent": 100}))
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "PUT /admin/faults/faulty: {}",
        resp.status()
    );
    for _ in 0..3 {
        expect_gateway_error(http.get(gw.url("/faulty/x")).send().await.unwrap(), 503).await;
    }
    assert_eq!(
        up.hits(),
        1,
        "an injected abort does not reach the upstream"
    );
    let (status, list) = gw.admin_json("/admin/faults").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        list.as_array()
            .is_some_and(|l| l.iter().any(|f| f["target"] == "faulty")),
        "GET /admin/faults lists the fault: {list}"
    );
    let resp = http
        .put(gw.admin_url("/admin/faults/faulty"))
        .json(&json!({"abort_status": 503, "abort_percent": 150}))
        .send()
        .await
        .unwrap();
    expect_gateway_error(resp, 400).await;

    let resp = http
        .delete(gw.admin_url("/admin/faults/faulty"))
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "DELETE /admin/faults/faulty: {}",
        resp.status()
    );
    for _ in 0..3 {
        echo(http.get(gw.url("/faulty/x")).send().await.unwrap()).await;
    }
    assert_eq!(up.hits(), 4);
    let (_, list) = gw.admin_json("/admin/faults").await;
    assert!(
        !list.to_string().contains("\"faulty\""),
        "a deleted fault is no longer listed: {list}"
    );

    let metrics = gw.metrics().await;
    let samples: Vec<_> = metric_samples(&metrics, "quartet_requests_total")
        .into_iter()
        .filter(|(l, _)| {
            l.get("channel").map(String::as_str) == Some("rest")
                && l.get("target").map(String::as_str) == Some("faulty")
        })
        .collect();
    let total: f64 = samples.iter().map(|(_, v)| v).sum();
    assert!(
        total >= 7.0,
        "quartet_requests_total counts all 7 requests to target faulty, got {total}:\n{metrics}"
    );
    let outcomes: std::collections::BTreeSet<_> = samples
        .iter()
        .filter_map(|(l, _)| l.get("outcome"))
        .collect();
    let fault_metric = metrics
        .lines()
        .any(|l| !l.starts_with('#') && l.contains("fault") && l.contains("faulty"));
    assert!(
        outcomes.len() >= 2 || fault_metric,
        "the injected faults are visible in /metrics (an outcome of their own or a fault metric):\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_from_the_config_aborts_a_share_of_requests() {
    // Faults are per target (the upstream), so each policy gets its own upstream.
    let up = Upstream::start("svc").await;
    let other = Upstream::start("other").await;
    let config = format!(
        r#"{SERVER}
[policies.chaos]
retry = {{ attempts = 1 }}
fault = {{ abort_status = 500, abort_percent = 100 }}

[policies.half]
retry = {{ attempts = 1 }}
breaker = {{ consecutive_failures = 1000, failure_rate = 1.0, min_calls = 1000 }}
fault = {{ abort_status = 500, abort_percent = 50 }}
{}{}{}{}"#,
        upstream_toml("svc", &[up.url()], ""),
        upstream_toml("other", &[other.url()], ""),
        route_toml("/chaos", "svc", "strip_prefix = true\npolicy = \"chaos\""),
        route_toml("/half", "other", "strip_prefix = true\npolicy = \"half\""),
    );
    let gw = Gateway::start(&config).await;
    let http = client();
    for _ in 0..3 {
        let resp = http.get(gw.url("/chaos/x")).send().await.unwrap();
        expect_gateway_error(resp, 500).await;
    }
    assert_eq!(up.hits(), 0);

    // 50%: over 60 requests both outcomes appear (all alike has odds of 2 in 2^60).
    let (mut aborted, mut passed) = (0, 0);
    for _ in 0..60 {
        let resp = http.get(gw.url("/half/x")).send().await.unwrap();
        match resp.status().as_u16() {
            500 => aborted += 1,
            200 => passed += 1,
            other => panic!("unexpected status {other} with a 50% abort fault"),
        }
    }
    assert!(
        aborted > 0 && passed > 0,
        "abort_percent = 50: {aborted} aborted, {passed} passed"
    );
    assert_eq!(
        other.hits(),
        passed,
        "only the requests not aborted reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_small_bodies_but_never_retries_bodies_over_the_buffer_limit() {
    let up = Upstream::start("objects").await;
    let config = format!(
        r#"{SERVER}
[policies.replay]
timeout = "20s"
per_try_timeout = "10s"
retry = {{ attempts = 3, backoff = "5ms", max_backoff = "20ms", budget = 0.5, min_per_second = 100, buffer_limit = 65536 }}
breaker = {{ consecutive_failures = 1000, failure_rate = 1.0, min_calls = 1000 }}
{}{}"#,
        upstream_toml("objects", &[up.url()], ""),
        route_toml(
            "/objects",
            "objects",
            "strip_prefix = true\npolicy = \"replay\""
        ),
    );
    let gw = Gateway::start(&config).await;
    let http = client();

    // PUT is idempotent: a 1 KiB body fits the replay buffer and is sent again.
    up.fail_next(1, 503);
    let small = pattern(0, 1024);
    let e = echo(
        http.put(gw.url("/objects/a"))
            .body(small.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        e["body_fnv"],
        Fnv::of(&small).to_string(),
        "the replayed body is intact"
    );
    assert_eq!(up.hits(), 2, "one failure, one replay");

    // A 256 KiB streamed body is over the 64 KiB buffer: it cannot be replayed.
    up.fail_next(1, 503);
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..4)
        .map(|i| Ok(Bytes::from(pattern(i * CHUNK, CHUNK))))
        .collect();
    let resp = http
        .put(gw.url("/objects/b"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "the upstream's 503 is final"
    );
    assert_eq!(
        up.hits(),
        3,
        "a body larger than buffer_limit is never retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after() {
    let up = Upstream::start("svc").await;
    let config = format!(
        r#"{SERVER}
[policies.limited]
retry = {{ attempts = 1 }}
rate_limit = {{ per_second = 1, burst = 2 }}
{}{}"#,
        upstream_toml("svc", &[up.url()], ""),
        route_toml(
            "/limited",
            "svc",
            "strip_prefix = true\npolicy = \"limited\""
        ),
    );
    let gw = Gateway::start(&config).await;
    let http = client();
    for ok in 0..50 {
        let resp = http.get(gw.url("/limited/x")).send().await.unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            expect_gateway_error_retry_after(resp, 429).await;
            assert_eq!(
                up.hits(),
                ok,
                "a rate-limited request does not reach the upstream"
            );
            assert!(ok >= 1, "the burst lets the first requests through");
            return;
        }
        echo(resp).await;
    }
    panic!("50 requests in a row at 1/s with a burst of 2 were never rate limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulkhead_full_answers_503_at_once() {
    let up = Upstream::start("svc").await;
    let config = format!(
        r#"{SERVER}
[policies.narrow]
retry = {{ attempts = 1 }}
concurrency = 1
{}{}"#,
        upstream_toml("svc", &[up.url()], ""),
        route_toml("/narrow", "svc", "strip_prefix = true\npolicy = \"narrow\""),
    );
    let gw = Gateway::start(&config).await;
    let http = client();
    let first = tokio::spawn(http.get(gw.url("/narrow/slow?hold=1")).send());
    let up = &up;
    eventually("the first request to be in flight", WAIT, || async move {
        (up.holding() == 1).then_some(())
    })
    .await;

    expect_gateway_error_retry_after(http.get(gw.url("/narrow/x")).send().await.unwrap(), 503)
        .await;
    assert_eq!(
        up.hits(),
        1,
        "the rejected request never reached the upstream"
    );

    up.release(1);
    echo(first.await.unwrap().unwrap()).await;
    echo(http.get(gw.url("/narrow/x")).send().await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_max_body_bytes_answers_413() {
    let (gw, up) = one_upstream("max_body_bytes = 1024").await;
    let http = client();
    let resp = http
        .post(gw.url("/svc/upload"))
        .body(vec![b'a'; 4096])
        .send()
        .await
        .unwrap();
    expect_gateway_error(resp, 413).await;
    assert_eq!(up.hits(), 0);
    let e = echo(
        http.post(gw.url("/svc/upload"))
            .body(vec![b'a'; 512])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(e["body_len"], 512);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_answers_404_and_dead_upstream_502() {
    let up_url = closed_port_url();
    let config = format!(
        "{SERVER}{PLAIN_POLICY}{}{}",
        upstream_toml("dead", &[up_url], ""),
        plain_route("/dead", "dead"),
    );
    let gw = Gateway::start(&config).await;
    let http = client();
    expect_gateway_error(http.get(gw.url("/nothing/here")).send().await.unwrap(), 404).await;
    expect_gateway_error(http.get(gw.url("/dead/x")).send().await.unwrap(), 502).await;
    expect_gateway_error(
        http.post(gw.url("/dead/x")).body("x").send().await.unwrap(),
        502,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_then_prefix() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let config = format!(
        "{SERVER}{PLAIN_POLICY}{}{}{}{}",
        upstream_toml("a", &[a.url()], ""),
        upstream_toml("b", &[b.url()], ""),
        route_toml("/", "a", "host = \"alpha.test\"\npolicy = \"plain\""),
        route_toml("/", "b", "policy = \"plain\""),
    );
    let gw = Gateway::start(&config).await;
    for (host, server) in [("alpha.test", "a"), ("beta.test", "b")] {
        let resp = raw_http1(
            gw.public,
            &format!("GET /v1/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.json()["server"], server, "Host: {host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_reports_health_readiness_metrics_and_breakers() {
    let (gw, _up) = one_upstream("").await;
    let http = client();
    echo(http.get(gw.url("/svc/x")).send().await.unwrap()).await;

    let (status, body) = gw.admin_json("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");

    let (status, body) = gw.admin_json("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready", "{body}");
    assert!(
        body["channels"]["rest"].is_object(),
        "/readyz shows the rest channel: {body}"
    );
    assert!(
        body["channels"]["rest"].to_string().contains("svc"),
        "/readyz shows the state of each target of the rest channel: {body}"
    );

    let metrics = gw.metrics().await;
    let ok = metric_sum(
        &metrics,
        "quartet_requests_total",
        &[("channel", "rest"), ("target", "svc")],
    );
    assert!(
        ok >= 1.0,
        "quartet_requests_total{{channel=\"rest\",target=\"svc\"}} counts the request:\n{metrics}"
    );

    let (status, body) = gw.admin_json("/admin/breakers").await;
    assert_eq!(status, StatusCode::OK);
    let list = body
        .as_array()
        .or_else(|| body["breakers"].as_array())
        .expect("a list of breakers");
    let svc = list
        .iter()
        .find(|b| b["target"] == "svc")
        .unwrap_or_else(|| panic!("no breaker for target svc: {body}"));
    assert_eq!(svc["channel"], "rest");
    assert_eq!(svc["state"], "closed");
    assert!(
        svc["endpoint"].is_string(),
        "each breaker names its endpoint: {svc}"
    );

    // The admin API is not on the public listener.
    let resp = http.get(gw.url("/admin/breakers")).send().await.unwrap();
    assert_ne!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuses_pooled_connections_to_upstreams() {
    let (gw, _up) = one_upstream("").await;
    let http = client();
    let mut peers = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let e = echo(http.get(gw.url("/svc/x")).send().await.unwrap()).await;
        peers.insert(e["peer"].as_str().unwrap().to_string());
    }
    assert!(
        peers.len() <= 2,
        "10 sequential requests should reuse pooled upstream connections, saw {} client ports: {peers:?}",
        peers.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_breaker_ejects_the_endpoint_and_the_balancer_skips_it() {
    let bad = Upstream::start("bad").await;
    let good = Upstream::start("good").await;
    bad.fail_with(503);
    let config = format!(
        r#"{SERVER}
[policies.eject]
retry = {{ attempts = 1 }}
breaker = {{ consecutive_failures = 2, failure_rate = 1.0, min_calls = 1000, open_for = "60s" }}
{}{}"#,
        upstream_toml(
            "pool",
            &[bad.url(), good.url()],
            "balance = \"round_robin\""
        ),
        route_toml("/pool", "pool", "strip_prefix = true\npolicy = \"eject\""),
    );
    let gw = Gateway::start(&config).await;
    let http = client();
    // POSTs are never retried, so each one lands on exactly one endpoint.
    let gw_ref = &gw;
    let http_ref = &http;
    let bad_ref = &bad;
    eventually(
        "the failing endpoint's breaker to open after 2 failures",
        WAIT,
        || async move {
            let _ = http_ref
                .post(gw_ref.url("/pool/x"))
                .body("x")
                .send()
                .await
                .unwrap();
            (bad_ref.hits() >= 2).then_some(())
        },
    )
    .await;
    assert_eq!(bad.hits(), 2);
    for _ in 0..10 {
        let e = echo(http.post(gw.url("/pool/x")).body("x").send().await.unwrap()).await;
        assert_eq!(
            e["server"], "good",
            "the balancer skips the ejected endpoint"
        );
    }
    assert_eq!(
        bad.hits(),
        2,
        "no request goes to an endpoint whose breaker is open"
    );
    let states = gw.breaker_states("pool").await;
    assert_eq!(states.len(), 2, "one breaker per endpoint: {states:?}");
    assert!(
        states.iter().any(|s| s == "open") && states.iter().any(|s| s == "closed"),
        "{states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_trips_on_a_rate_of_slow_calls() {
    let up = Upstream::start("sluggish").await;
    let config = format!(
        r#"{SERVER}
[policies.sluggish]
retry = {{ attempts = 1 }}
breaker = {{ consecutive_failures = 1000, failure_rate = 1.0, window = "30s", min_calls = 4, slow_call_duration = "50ms", slow_call_rate = 0.5, open_for = "60s" }}
{}{}"#,
        upstream_toml("sluggish", &[up.url()], ""),
        route_toml(
            "/s",
            "sluggish",
            "strip_prefix = true\npolicy = \"sluggish\""
        ),
    );
    let gw = Gateway::start(&config).await;
    let http = client();
    // Slow but successful answers: the breaker counts them as slow calls.
    for _ in 0..4 {
        echo(http.get(gw.url("/s/x?delay_ms=300")).send().await.unwrap()).await;
    }
    expect_gateway_error_retry_after(http.get(gw.url("/s/x")).send().await.unwrap(), 503).await;
    assert_eq!(
        up.hits(),
        4,
        "the open breaker kept the fifth request off the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_disables_a_breaker() {
    let up = Upstream::start("svc").await;
    let config = format!(
        r#"{SERVER}
[policies.touchy]
retry = {{ attempts = 1 }}
breaker = {{ consecutive_failures = 2, min_calls = 1000, open_for = "60s" }}
{}{}"#,
        upstream_toml("svc", &[up.url()], ""),
        route_toml("/svc", "svc", "strip_prefix = true\npolicy = \"touchy\""),
    );
    let gw = Gateway::start(&config).await;
    let http = client();
    echo(http.get(gw.url("/svc/x")).send().await.unwrap()).await;
    let resp = http
        .post(gw.admin_url("/admin/breakers/svc"))
        .json(&json!({"state": "disabled"}))
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "POST disabled: {}",
        resp.status()
    );
    up.fail_with(500);
    for _ in 0..6 {
        let resp = http.post(gw.url("/svc/x")).body("x").send().await.unwrap();
        assert_eq!(
            resp.status(),
            500,
            "a disabled breaker never opens: failures reach the upstream"
        );
    }
    assert_eq!(up.hits(), 7);
    let states = gw.breaker_states("svc").await;
    assert!(
        !states.is_empty() && states.iter().all(|s| s == "disabled"),
        "the breaker shows disabled: {states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_max_body_bytes_answers_413() {
    let (gw, _up) = one_upstream("max_body_bytes = 1024").await;
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        (0..8).map(|_| Ok(Bytes::from(vec![b'z'; 512]))).collect();
    let resp = client()
        .post(gw.url("/svc/upload"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("the gateway answers a streamed body over the limit");
    expect_gateway_error(resp, 413).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_one_line_per_request_without_secrets() {
    const ID: &str = "req-0b5d6a3e-9c1f-4e2d-8a7b-6c5d4e3f2a1b";
    let (mut gw, _up) = one_upstream("").await;
    let resp = client()
        .get(gw.url("/svc/x"))
        .header("x-openstack-request-id", ID)
        .header("x-auth-token", "gAAAAAtoken-secret-123")
        .header("authorization", "Bearer bearer-secret-456")
        .send()
        .await
        .unwrap();
    echo(resp).await;
    let line = gw
        .process
        .wait_for_log(0, "an access log line with the request id", |l| {
            l.contains(ID)
        })
        .await;
    assert!(
        line.contains("200"),
        "the access log line has the status: {line}"
    );
    assert!(
        line.contains("svc"),
        "the access log line names the upstream: {line}"
    );
    let log = gw.log().text();
    for secret in ["gAAAAAtoken-secret-123", "bearer-secret-456"] {
        assert!(!log.contains(secret), "a token reached the logs: {secret}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_writes_one_json_object_per_line() {
    const ID: &str = "req-1c2d3e4f-5a6b-4c7d-9e8f-0a1b2c3d4e5f";
    let (mut gw, _up) = one_upstream("log_format = \"json\"").await;
    let resp = client()
        .get(gw.url("/svc/x"))
        .header("x-openstack-request-id", ID)
        .send()
        .await
        .unwrap();
    echo(resp).await;
    let line = gw
        .process
        .wait_for_log(0, "a JSON access log line with the request id", |l| {
            l.contains(ID)
        })
        .await;
    let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
        panic!("log_format = \"json\": the access line is not JSON ({e}): {line}")
    });
    assert!(value.is_object());
    for line in gw
        .log()
        .lines()
        .iter()
        .filter(|l| !l.starts_with("[stderr]"))
    {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "every stdout line is JSON with log_format = \"json\": {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_http_semantics_through_unchanged() {
    let (gw, _up) = one_upstream("").await;
    let http = client();

    // HEAD: the head of the answer, no body.
    let resp = http.head(gw.url("/svc/x")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.bytes().await.unwrap().is_empty(),
        "a HEAD answer has no body"
    );

    // An encoded slash stays encoded; repeated headers all arrive.
    let e = echo(
        http.get(gw.url("/svc/images/a%2Fb%20c?name=x%26y"))
            .header("x-multi", "one")
            .header("x-multi", "two")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        e["path"], "/images/a%2Fb%20c",
        "the path is passed on as sent: {e}"
    );
    assert_eq!(e["query"], "name=x%26y");
    assert_eq!(
        echoed_header(&e, "x-multi"),
        Some("one, two"),
        "both x-multi values: {e}"
    );

    // Expect: 100-continue, as curl sends for uploads: the client gets its 100 and goes on.
    let response = bounded("an Expect: 100-continue exchange", async {
        let mut stream = tokio::net::TcpStream::connect(gw.public).await.unwrap();
        stream
            .write_all(
                b"PUT /svc/upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\
                  Expect: 100-continue\r\nConnection: close\r\n\r\n",
            )
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        assert!(
            head.starts_with("HTTP/1.1 100"),
            "expected 100 Continue first, got {head:?}"
        );
        stream.write_all(b"hello").await.unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        String::from_utf8_lossy(&rest).to_string()
    })
    .await;
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "then the upstream's 200: {response}"
    );
    assert!(
        response.contains("\"body_len\":5"),
        "the body followed the 100: {response}"
    );
}

/// Writes `request` on a new connection to the public listener and reads until the
/// gateway closes it.
async fn raw_exchange(gw: &Gateway, request: &[u8]) -> String {
    until_closed(gw, "a raw HTTP/1.1 exchange", request).await
}

/// Quartet's own HTTP/1.1 loop (plain requests) and hyper (everything else) on one
/// connection: pipelined requests, a switch to hyper mid-connection, HEAD, a bad head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_pipelining_handoff_head_and_bad_heads() {
    let (gw, up) = one_upstream("").await;

    // Two requests in one write: two answers, in order.
    let both = raw_exchange(
        &gw,
        b"GET /svc/first HTTP/1.1\r\nHost: h\r\n\r\n\
          GET /svc/second HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(both.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{both}");
    let (first, second) = (both.find("/first"), both.find("/second"));
    assert!(
        first.is_some() && second.is_some() && first < second,
        "answers in request order: {both}"
    );
    assert!(both.contains("connection: close\r\n"), "{both}");

    // A plain GET, then a chunked POST on the same connection (hyper serves that one).
    let mixed = raw_exchange(
        &gw,
        b"GET /svc/plain HTTP/1.1\r\nHost: h\r\n\r\n\
          POST /svc/chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\
          Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(mixed.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{mixed}");
    assert!(
        mixed.contains("\"body_len\":5"),
        "the chunked body arrived: {mixed}"
    );
    assert_eq!(up.hits(), 4, "every request reached the upstream once");

    // HEAD: the head with its length, and no body after it.
    let head = raw_exchange(
        &gw,
        b"HEAD /svc/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.ends_with("\r\n\r\n"),
        "no body after a HEAD answer: {head:?}"
    );

    // A request with a body sent in pieces waits for all of it.
    let pieces = bounded("a body in two writes", async {
        let mut stream = tokio::net::TcpStream::connect(gw.public).await.unwrap();
        stream
            .write_all(b"PUT /svc/u HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhello")
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        stream.write_all(b"world").await.unwrap();
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.unwrap();
        String::from_utf8_lossy(&all).to_string()
    })
    .await;
    assert!(pieces.contains("\"body_len\":10"), "{pieces}");

    // Not HTTP: hyper's 400, and the gateway goes on serving.
    let bad = raw_exchange(&gw, b"NOT HTTP AT ALL\r\n\r\n").await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad:?}");
    let resp = client().get(gw.url("/svc/after")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_stops_a_retry_storm() {
    let up = Upstream::start("down").await;
    up.fail_with(503);
    // No share of traffic and no floor: the budget allows no retry at all.
    let config = format!(
        r#"{SERVER}
[policies.stingy]
retry = {{ attempts = 3, backoff = "5ms", max_backoff = "10ms", budget = 0.0, min_per_second = 0 }}
breaker = {{ consecutive_failures = 1000, failure_rate = 1.0, min_calls = 1000 }}
{}{}"#,
        upstream_toml("down", &[up.url()], ""),
        route_toml("/down", "down", "strip_prefix = true\npolicy = \"stingy\""),
    );
    let gw = Gateway::start(&config).await;
    let http = client();
    for _ in 0..5 {
        let resp = http.get(gw.url("/down/x")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(
        up.hits(),
        5,
        "an exhausted budget allows no retries: one try per request"
    );
    let metrics = gw.metrics().await;
    let exhausted = metric_sum(&metrics, "quartet_retry_budget_exhausted_total", &[]);
    assert!(
        exhausted >= 1.0,
        "quartet_retry_budget_exhausted_total counts it:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_durations_in_flight_and_breaker_transitions() {
    let up = Upstream::start("svc").await;
    let config = format!(
        r#"{SERVER}
[policies.watched]
retry = {{ attempts = 1 }}
breaker = {{ consecutive_failures = 1, min_calls = 1000, open_for = "60s" }}
{}{}"#,
        upstream_toml("svc", &[up.url()], ""),
        route_toml("/svc", "svc", "strip_prefix = true\npolicy = \"watched\""),
    );
    let gw = Gateway::start(&config).await;
    let http = client();
    let target = [("target", "svc")];

    // In flight: a held request shows as 1, and as 0 once it is done.
    let held = tokio::spawn(http.get(gw.url("/svc/x?hold=1")).send());
    let gw_ref = &gw;
    eventually(
        "quartet_in_flight to show the held request",
        WAIT,
        || async move {
            let m = gw_ref.metrics().await;
            (metric_sum(&m, "quartet_in_flight", &target) >= 1.0).then_some(())
        },
    )
    .await;
    up.release(1);
    echo(held.await.unwrap().unwrap()).await;
    eventually("quartet_in_flight back to 0", WAIT, || async move {
        let m = gw_ref.metrics().await;
        (metric_sum(&m, "quartet_in_flight", &target) == 0.0).then_some(())
    })
    .await;

    let metrics = gw.metrics().await;
    let observed = metric_sum(&metrics, "quartet_request_duration_seconds_count", &target);
    assert!(
        observed >= 1.0,
        "the duration histogram observed the request:\n{metrics}"
    );
    assert!(
        !metric_samples(&metrics, "quartet_request_duration_seconds_bucket").is_empty(),
        "the duration histogram has buckets"
    );

    // One failure trips the breaker: a transition is counted and the state gauge moves.
    let before = metric_sum(&metrics, "quartet_breaker_transitions_total", &target);
    up.fail_with(500);
    let resp = http.post(gw.url("/svc/x")).body("x").send().await.unwrap();
    assert_eq!(resp.status(), 500);
    expect_gateway_error_retry_after(
        http.post(gw.url("/svc/x")).body("x").send().await.unwrap(),
        503,
    )
    .await;
    let metrics = gw.metrics().await;
    let after = metric_sum(&metrics, "quartet_breaker_transitions_total", &target);
    assert!(
        after > before,
        "quartet_breaker_transitions_total counts closed -> open:\n{metrics}"
    );
}

/// Sends `request` on a new connection and reads until the gateway closes it (or resets
/// it), within [`bounded`]'s limit; what was read.
async fn until_closed(gw: &Gateway, what: &str, request: &[u8]) -> String {
    bounded(what, async {
        let mut stream = tokio::net::TcpStream::connect(gw.public).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut all = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&chunk[..n]),
            }
        }
        String::from_utf8_lossy(&all).to_string()
    })
    .await
}

/// `server.header_timeout`: a client that does not finish its request head in time is
/// disconnected, on Quartet's own HTTP/1.1 loop (a partial head, an idle keep-alive
/// connection) and on hyper's (after a request hyper served); one that does is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timeout_closes_slow_and_idle_clients() {
    let (gw, up) = one_upstream("header_timeout = \"300ms\"\n").await;

    // A head that never ends.
    let partial = until_closed(
        &gw,
        "a partial head timed out",
        b"GET /svc/slow HTTP/1.1\r\nHo",
    )
    .await;
    assert!(partial.is_empty(), "no answer to half a head: {partial:?}");

    // A served request, then silence: the idle connection is closed too.
    let idle = until_closed(
        &gw,
        "an idle keep-alive connection timed out",
        b"GET /svc/once HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await;
    assert!(idle.starts_with("HTTP/1.1 200 OK\r\n"), "{idle}");
    assert_eq!(idle.matches("HTTP/1.1 200").count(), 1, "{idle}");

    // hyper's connections: a chunked request (hyper serves it), then half a head.
    let handed = until_closed(
        &gw,
        "a partial head on hyper's loop timed out",
        b"POST /svc/chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\nGET /svc/never HTTP/1.1\r\nHo",
    )
    .await;
    assert!(handed.starts_with("HTTP/1.1 200 OK\r\n"), "{handed}");
    assert!(handed.contains("\"body_len\":5"), "{handed}");
    assert_eq!(handed.matches("HTTP/1.1 200").count(), 1, "{handed}");
    assert_eq!(up.hits(), 2, "the half heads never reached the upstream");

    // A client sending in time is served, and the gateway goes on.
    let resp = client().get(gw.url("/svc/after")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// A client that goes away while its request is at the upstream cancels the request: the
/// gateway drops the upstream exchange (the upstream sees its connection close) instead
/// of waiting out the timeouts for nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_cancels_its_request() {
    // An upstream that reads a request and never answers; it reports the request's
    // arrival and the end of its connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    let upstream = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let (arrived_tx, closed_tx) = (arrived_tx.clone(), closed_tx.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            seen.extend_from_slice(&chunk[..n]);
                            if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                                let _ = arrived_tx.send(());
                                seen.clear();
                            }
                        }
                    }
                }
                let _ = closed_tx.send(());
            });
        }
    });
    // Timeouts far longer than the test: only the client's leaving can end the request.
    let config = format!(
        r#"{SERVER}
[policies.patient]
timeout = "300s"
per_try_timeout = "300s"
retry = {{ attempts = 1 }}
[upstreams.mute]
endpoints = ["http://{addr}"]
{}"#,
        route_toml("/mute", "mute", "strip_prefix = true\npolicy = \"patient\"")
    );
    let gw = Gateway::start(&config).await;

    // Twice: after the first cancel the gateway goes on serving (and cancelling).
    for path in ["/mute/x", "/mute/y"] {
        let mut stream = tokio::net::TcpStream::connect(gw.public).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        bounded("the request reached the upstream", arrived.recv())
            .await
            .unwrap();
        drop(stream);
        bounded(
            "the gateway closed the upstream connection of the cancelled request",
            closed.recv(),
        )
        .await
        .unwrap();
    }
    upstream.abort();
}
