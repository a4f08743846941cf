//! The harness tested on its own, with no gateway: the upstream servers, the TLS material
//! and the raw HTTP reader. When a gateway test fails, these passing says the fault is not
//! in the test servers.

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use quartet_tests::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_echoes_counts_and_fails_on_demand() {
    let up = Upstream::start("direct").await;
    let http = client();
    let e = echo(
        http.post(format!("{}/p/q?x=1", up.url()))
            .body("abc")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(e["server"], "direct");
    assert_eq!(e["path"], "/p/q");
    assert_eq!(e["query"], "x=1");
    assert_eq!(e["body_len"], 3);
    assert_eq!(e["body_fnv"], Fnv::of(b"abc").to_string());
    assert_eq!(e["version"], "HTTP/1.1");

    up.fail_next(2, 503);
    for _ in 0..2 {
        let resp = http.get(up.url()).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    echo(http.get(up.url()).send().await.unwrap()).await;
    up.fail_with(500);
    assert_eq!(http.get(up.url()).send().await.unwrap().status(), 500);
    up.recover();
    assert_eq!(
        http.get(format!("{}/x?status=418", up.url()))
            .send()
            .await
            .unwrap()
            .status(),
        418
    );
    assert_eq!(up.hits(), 6);

    assert_eq!(
        http.get(format!("{}/health", up.url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    up.set_health(503);
    assert_eq!(
        http.get(format!("{}/health", up.url()))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(up.health_hits(), 2);
    assert_eq!(up.hits(), 6, "health checks are counted apart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_holds_streams_and_speaks_h2c() {
    let up = Upstream::start("direct").await;
    let held = tokio::spawn(client().get(format!("{}/h?hold=1", up.url())).send());
    let upr = &up;
    eventually("a held request", WAIT, || async move {
        (upr.holding() == 1).then_some(())
    })
    .await;
    up.release(1);
    echo(held.await.unwrap().unwrap()).await;

    let mut resp = client()
        .get(format!("{}/s?size=300000&gate=1", up.url()))
        .send()
        .await
        .unwrap();
    let first = resp.chunk().await.unwrap().unwrap();
    up.open_download_gate();
    let mut fnv = Fnv::default();
    fnv.update(&first);
    let mut n = first.len();
    while let Some(c) = resp.chunk().await.unwrap() {
        n += c.len();
        fnv.update(&c);
    }
    assert_eq!(n, 300_000);
    assert_eq!(fnv.0, pattern_fnv(300_000));

    let resp = h2c_client().get(up.url()).send().await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(echo(resp).await["version"], "HTTP/2.0");

    // A chunked response read raw.
    let raw = raw_http1(
        up.addr,
        "GET /r?size=100000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw.status, 200);
    assert_eq!(raw.body, pattern(0, 100_000));
    let raw = raw_http1(
        up.addr,
        "GET /r?hop=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw.header("x-upstream-end-to-end"), Some("kept"));
    let e: Value = raw.json();
    assert_eq!(e["headers"]["host"], "x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_echoes_websocket_messages() {
    use tokio_tungstenite::tungstenite::Message;
    let up = Upstream::start("direct").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/console/ws", up.addr))
        .await
        .unwrap();
    ws.send(Message::text("ping")).await.unwrap();
    let got = ws.next().await.unwrap().unwrap();
    assert_eq!(got.into_text().unwrap().as_str(), "ping");
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstream_is_trusted_through_the_test_ca_with_alpn() {
    let dir = tempdir();
    let pki = Pki::generate(dir.path());
    let up = Upstream::start_tls("secure", &pki).await;
    assert!(up.url().starts_with("https://127.0.0.1:"));
    let url = format!("https://localhost:{}/t", up.addr.port());
    let resp = tls_client(&pki, up.addr, false)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    echo(resp).await;
    let resp = tls_client(&pki, up.addr, true)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_11);
    echo(resp).await;
    // By IP address, as an `https://127.0.0.1:PORT` endpoint is written.
    let ca = reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap();
    let by_ip = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .build()
        .unwrap();
    echo(by_ip.get(format!("{}/t", up.url())).send().await.unwrap()).await;
    // And not trusted without the CA.
    let untrusting = reqwest::Client::builder().no_proxy().build().unwrap();
    assert!(untrusting
        .get(format!("{}/t", up.url()))
        .send()
        .await
        .is_err());
}

#[test]
fn request_id_and_metric_helpers() {
    assert!(is_request_id("req-3f1b2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"));
    assert!(!is_request_id("req-3f1b2c4d-5e6f-1a7b-8c9d-0e1f2a3b4c5d"));
    assert!(!is_request_id("req-not-a-uuid"));
    assert!(!is_request_id("3f1b2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"));
    let text = "# HELP x y\n\
        quartet_requests_total{channel=\"rest\",target=\"a\",outcome=\"success\"} 3\n\
        quartet_requests_total{channel=\"rest\",target=\"a\",outcome=\"failure\"} 2\n\
        quartet_requests_total{channel=\"rest\",target=\"b\",outcome=\"success\"} 7\n\
        quartet_requests_total_other 100\n\
        quartet_retries_total 4\n";
    assert_eq!(
        metric_sum(text, "quartet_requests_total", &[("target", "a")]),
        5.0
    );
    assert_eq!(metric_sum(text, "quartet_requests_total", &[]), 12.0);
    assert_eq!(metric_sum(text, "quartet_retries_total", &[]), 4.0);
    assert_eq!(
        strip_ansi("\u{1b}[3mpublic\u{1b}[0m\u{1b}[2m=\u{1b}[0m1"),
        "public=1"
    );
}
