//! Component tests: the assembled public and admin routers driven with `oneshot` (no
//! gateway socket), against real upstream servers on port 0.

mod common;

use axum::body::Body;
use common::*;
use http::{Method, Request, StatusCode};
use serde_json::json;
use std::sync::atomic::Ordering;
use tower::ServiceExt;

#[tokio::test]
async fn proxies_with_strip_prefix_forwarded_headers_and_request_id() {
    let up = Upstream::start().await;
    let app = build_app(&format!(
        r#"
[upstreams.a]
endpoints = ["{}"]
[[routes]]
prefix = "/a"
upstream = "a"
strip_prefix = true
"#,
        up.url()
    ));
    let rid = "req-3f0a5a3e-9c1b-4d57-8e2f-6a0f1d2b3c4d";
    let resp = app
        .router
        .clone()
        .oneshot(
            Request::get("/a/servers/detail?limit=1")
                .header("host", "gw.example.com")
                .header("x-openstack-request-id", rid)
                .header("connection", "keep-alive, x-secret-hop")
                .header("x-secret-hop", "1")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // As the server's writers do: a proxied response's request id rides with its raw
    // header block (quartet_http::raw).
    let mut resp = resp;
    quartet_http::raw::RawHead::apply(&mut resp);
    assert_eq!(resp.headers()["x-openstack-request-id"], rid);
    let seen = json_body(resp).await;
    assert_eq!(seen["path"], "/servers/detail");
    assert_eq!(seen["query"], "limit=1");
    assert_eq!(seen["headers"]["x-forwarded-host"], "gw.example.com");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http");
    assert!(seen["headers"]["x-forwarded-for"].is_string(), "{seen}");
    assert_eq!(seen["headers"]["x-openstack-request-id"], rid);
    assert!(seen["headers"].get("x-secret-hop").is_none(), "{seen}");

    // An invalid client request id is replaced by a fresh one, sent both ways.
    let resp = app
        .router
        .clone()
        .oneshot(
            Request::get("/a/x")
                .header("x-openstack-request-id", "nope")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut resp = resp;
    quartet_http::raw::RawHead::apply(&mut resp);
    let sent_back = resp.headers()["x-openstack-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        sent_back.starts_with("req-") && sent_back.len() == 40,
        "{sent_back}"
    );
    let seen = json_body(resp).await;
    assert_eq!(
        seen["headers"]["x-openstack-request-id"],
        sent_back.as_str()
    );
}

#[tokio::test]
async fn no_route_is_404_with_the_keystone_body() {
    let up = Upstream::start().await;
    let app = build_app(&one_route(&up, "/compute", ""));
    for path in ["/", "/computex", "/image/x"] {
        let resp = app
            .router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert!(resp.headers().contains_key("x-openstack-request-id"));
        let body = json_body(resp).await;
        assert_eq!(body["error"]["code"], 404);
        assert_eq!(body["error"]["title"], "Not Found");
    }
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn host_routes_win_over_hostless_ones() {
    let a = Upstream::start().await;
    let b = Upstream::start().await;
    let app = build_app(&format!(
        r#"
[upstreams.a]
endpoints = ["{}"]
[upstreams.b]
endpoints = ["{}"]
[[routes]]
prefix = "/"
upstream = "a"
[[routes]]
prefix = "/v1"
host = "api.example.com"
upstream = "b"
"#,
        a.url(),
        b.url()
    ));
    let get = |host: &'static str| {
        app.router.clone().oneshot(
            Request::get("/v1/x")
                .header("host", host)
                .body(Body::empty())
                .unwrap(),
        )
    };
    assert_eq!(get("api.example.com:8080").await.unwrap().status(), 200);
    assert_eq!(get("other.example.com").await.unwrap().status(), 200);
    assert_eq!(b.hits.load(Ordering::SeqCst), 1);
    assert_eq!(a.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bodies_over_max_body_bytes_are_413() {
    let up = Upstream::start().await;
    let app = build_app(&format!(
        "[server]\nmax_body_bytes = 1000\n{}",
        one_route(&up, "/a", "")
    ));
    // Declared too large: refused before anything is read or sent.
    let resp = app
        .router
        .clone()
        .oneshot(
            Request::post("/a/upload")
                .header("content-length", "5000")
                .body(Body::from(vec![b'x'; 5000]))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(json_body(resp).await["error"]["code"], 413);
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);

    // Streamed with no length: stopped once it grows past the limit.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..10)
        .map(|_| Ok(bytes::Bytes::from(vec![b'y'; 500])))
        .collect();
    let resp = app
        .router
        .clone()
        .oneshot(
            Request::post("/a/upload")
                .body(Body::from_stream(futures_util::stream::iter(chunks)))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);

    // Under the limit: passes.
    let resp = app
        .router
        .clone()
        .oneshot(
            Request::post("/a/upload")
                .body(Body::from(vec![b'z'; 999]))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(json_body(resp).await["body_len"], 999);
}

#[tokio::test]
async fn streams_a_body_larger_than_the_replay_buffer_both_ways() {
    let up = Upstream::start().await;
    let app = build_app(&format!(
        "[policies.default.retry]\nbuffer_limit = 1024\n{}",
        one_route(&up, "/a", "")
    ));
    let big = vec![b'q'; 3 * 1024 * 1024];
    let resp = app
        .router
        .clone()
        .oneshot(
            Request::post("/a/mirror")
                .body(Body::from(big.clone()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(body.len(), big.len());
}

#[tokio::test]
async fn connect_failures_are_retried_on_another_endpoint() {
    let up = Upstream::start().await;
    let dead = dead_url().await;
    let app = build_app(&format!(
        r#"
[upstreams.a]
endpoints = ["{dead}", "{}"]
balance = "round_robin"
[[routes]]
prefix = "/a"
upstream = "a"
"#,
        up.url()
    ));
    // POST too: a connection never established is always safe to retry.
    for method in [Method::GET, Method::POST, Method::GET, Method::POST] {
        let resp = app
            .router
            .clone()
            .oneshot(
                Request::builder()
                    .method(method.clone())
                    .uri("/a/x")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{method}");
    }
    assert_eq!(up.hits.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_post_that_failed_upstream_is_not_retried_but_a_get_is() {
    let up = Upstream::start().await;
    let app = build_app(&one_route(&up, "/a", ""));
    let resp = app
        .router
        .clone()
        .oneshot(Request::post("/a/status/500").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);

    let resp = app
        .router
        .clone()
        .oneshot(Request::get("/a/status/500").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(up.hits.load(Ordering::SeqCst), 1 + 3);
}

#[tokio::test]
async fn an_idempotent_route_retries_posts() {
    let up = Upstream::start().await;
    let app = build_app(&one_route(&up, "/a", "idempotent = true"));
    let resp = app
        .router
        .clone()
        .oneshot(
            Request::post("/a/status/503")
                .body(Body::from("payload"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(up.hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn timeouts_are_504() {
    let up = Upstream::start().await;
    let app = build_app(&format!(
        "[policies.default]\ntimeout = \"2s\"\nper_try_timeout = \"100ms\"\nretry = {{ attempts = 1 }}\n{}",
        one_route(&up, "/a", "")
    ));
    let resp = app
        .router
        .clone()
        .oneshot(Request::get("/a/slow/3000").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    let body = json_body(resp).await;
    assert_eq!(body["error"]["message"], "upstream timed out");

    let app = build_app(&format!(
        "[policies.default]\ntimeout = \"150ms\"\nper_try_timeout = \"5s\"\n{}",
        one_route(&up, "/a", "")
    ));
    let resp = app
        .router
        .clone()
        .oneshot(Request::get("/a/slow/3000").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    let dead = dead_url().await;
    let app = build_app(&format!(
        "[upstreams.a]\nendpoints = [\"{dead}\"]\n[[routes]]\nprefix = \"/a\"\nupstream = \"a\"\n"
    ));
    let resp = app
        .router
        .clone()
        .oneshot(Request::get("/a/x").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let body = json_body(resp).await;
    assert_eq!(body["error"]["message"], "upstream unreachable");
}

#[tokio::test]
async fn the_breaker_opens_and_answers_503_at_once() {
    let up = Upstream::start().await;
    let app = build_app(&format!(
        r#"
[policies.default]
retry = {{ attempts = 1 }}
breaker = {{ consecutive_failures = 2, open_for = "30s" }}
{}"#,
        one_route(&up, "/a", "")
    ));
    for _ in 0..2 {
        let resp = app
            .router
            .clone()
            .oneshot(Request::get("/a/status/500").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 500);
    }
    let resp = app
        .router
        .clone()
        .oneshot(Request::get("/a/status/500").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    assert_eq!(up.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_bulkhead_refuses_at_once_when_full() {
    let up = Upstream::start().await;
    let app = build_app(&format!(
        "[policies.default]\nconcurrency = 1\n{}",
        one_route(&up, "/a", "")
    ));
    let slow = tokio::spawn(
        app.router
            .clone()
            .oneshot(Request::get("/a/slow/1500").body(Body::empty()).unwrap()),
    );
    wait_until(|| up.hits.load(Ordering::SeqCst) == 1).await;
    let resp = app
        .router
        .clone()
        .oneshot(Request::get("/a/x").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);
}

#[tokio::test]
async fn the_rate_limit_answers_429() {
    let up = Upstream::start().await;
    let app = build_app(&format!(
        "[policies.default]\nrate_limit = {{ per_second = 1, burst = 2 }}\n{}",
        one_route(&up, "/a", "")
    ));
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let resp = app
            .router
            .clone()
            .oneshot(Request::get("/a/x").body(Body::empty()).unwrap())
            .await
            .unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(resp.headers().contains_key("retry-after"));
        }
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
}

#[tokio::test]
async fn a_fault_from_the_config_applies() {
    let up = Upstream::start().await;
    let app = build_app(&format!(
        "[policies.default]\nfault = {{ abort_status = 418, abort_percent = 100.0 }}\n{}",
        one_route(&up, "/a", "")
    ));
    let resp = app
        .router
        .clone()
        .oneshot(Request::get("/a/x").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 418);
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_injected_delay_counts_against_the_total_timeout() {
    // A delay stands for a slow backend: longer than the total timeout, the client gets
    // 504 after the timeout, and the upstream is never called.
    let up = Upstream::start().await;
    let app = build_app(&format!(
        "[policies.default]\ntimeout = \"150ms\"\nfault = {{ delay = \"30s\", delay_percent = 100.0 }}\n{}",
        one_route(&up, "/a", "")
    ));
    let resp = app
        .router
        .clone()
        .oneshot(Request::get("/a/x").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
}

// ---- admin API ----------------------------------------------------------------------

#[tokio::test]
async fn admin_health_ready_and_metrics() {
    let up = Upstream::start().await;
    let (app, admin) = build_admin(&one_route(&up, "/a", ""));
    app.router
        .clone()
        .oneshot(Request::get("/a/x").body(Body::empty()).unwrap())
        .await
        .unwrap();

    let (status, body) = admin_call(&admin, Method::GET, "/healthz", None, None).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));

    let (status, body) = admin_call(&admin, Method::GET, "/readyz", None, None).await;
    assert_eq!(status, 200);
    let authority = up.addr.to_string();
    assert_eq!(
        body,
        json!({"status": "ready", "channels": {"rest": {"state": "ready", "targets": {"a": {
            "endpoints": [{"endpoint": authority, "healthy": true, "breaker": "closed", "in_flight": 0}],
            "fault": null,
        }}}}})
    );

    let resp = admin
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = String::from_utf8(
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains(r#"quartet_requests_total{channel="rest",outcome="success",target="a"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn admin_breakers() {
    let up = Upstream::start().await;
    let (app, admin) = build_admin(&one_route(&up, "/a", ""));
    let (status, body) = admin_call(&admin, Method::GET, "/admin/breakers", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(body[0]["target"], "a");
    assert_eq!(body[0]["state"], "closed");

    let (status, body) = admin_call(
        &admin,
        Method::POST,
        "/admin/breakers/a",
        Some(json!({"state": "forced_open"})),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body[0]["state"], "forced_open");
    let resp = app
        .router
        .clone()
        .oneshot(Request::get("/a/x").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));

    let path = format!("/admin/breakers/rest:a?endpoint={}", up.addr);
    let (status, body) = admin_call(
        &admin,
        Method::POST,
        &path,
        Some(json!({"state": "closed"})),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body[0]["state"], "closed");

    let (status, body) = admin_call(
        &admin,
        Method::POST,
        "/admin/breakers/nope",
        Some(json!({"state": "closed"})),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], 404);

    let (status, body) = admin_call(
        &admin,
        Method::POST,
        "/admin/breakers/a",
        Some(json!({"state": "ajar"})),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], 400);
}

#[tokio::test]
async fn admin_faults_take_effect_and_go_away() {
    let up = Upstream::start().await;
    let (app, admin) = build_admin(&one_route(&up, "/a", ""));
    let get = || {
        app.router
            .clone()
            .oneshot(Request::get("/a/x").body(Body::empty()).unwrap())
    };

    let (status, body) = admin_call(
        &admin,
        Method::PUT,
        "/admin/faults/a",
        Some(json!({"abort_status": 503, "abort_percent": 150.0})),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("abort_percent"),
        "{body}"
    );

    let (status, _) = admin_call(
        &admin,
        Method::PUT,
        "/admin/faults/a",
        Some(json!({"abort_status": 503, "abort_percnt": 100.0})),
        None,
    )
    .await;
    assert_eq!(status, 400);

    let (status, body) = admin_call(
        &admin,
        Method::PUT,
        "/admin/faults/a",
        Some(json!({"abort_status": 503, "abort_percent": 100.0})),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["target"], "a");
    assert_eq!(body[0]["channel"], "rest");
    assert_eq!(get().await.unwrap().status(), 503);
    let (_, faults) = admin_call(&admin, Method::GET, "/admin/faults", None, None).await;
    assert_eq!(faults[0]["target"], "a");
    assert_eq!(faults[0]["fault"]["abort_status"], 503);
    let (_, ready) = admin_call(&admin, Method::GET, "/readyz", None, None).await;
    assert_eq!(
        ready["channels"]["rest"]["targets"]["a"]["fault"]["abort_percent"],
        100.0
    );

    let (status, _) = admin_call(&admin, Method::DELETE, "/admin/faults/a", None, None).await;
    assert_eq!(status, 204);
    assert_eq!(get().await.unwrap().status(), 200);
    let (_, faults) = admin_call(&admin, Method::GET, "/admin/faults", None, None).await;
    assert_eq!(faults, json!([]));

    let (status, _) = admin_call(&admin, Method::DELETE, "/admin/faults/zzz", None, None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn admin_token_is_required_when_set() {
    let up = Upstream::start().await;
    let (_app, admin) = build_admin(&format!(
        "[server]\nadmin_listen = \"0.0.0.0:0\"\nadmin_token = \"s3cret\"\n{}",
        one_route(&up, "/a", "")
    ));
    let (status, body) = admin_call(&admin, Method::GET, "/healthz", None, None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], 401);
    let (status, _) = admin_call(&admin, Method::GET, "/metrics", None, Some("wrong")).await;
    assert_eq!(status, 401);
    let (status, _) = admin_call(&admin, Method::GET, "/healthz", None, Some("s3cret")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn health_checks_show_on_readyz_and_keep_traffic_off_a_dead_endpoint() {
    let up = Upstream::start().await;
    let dead = dead_url().await;
    let (app, admin) = build_admin(&format!(
        r#"
[upstreams.a]
endpoints = ["{dead}", "{}"]
balance = "round_robin"
health = {{ path = "/healthcheck", interval = "50ms", timeout = "1s", unhealthy_threshold = 1 }}
[[routes]]
prefix = "/a"
upstream = "a"
"#,
        up.url()
    ));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, ready) = admin_call(&admin, Method::GET, "/readyz", None, None).await;
        // Endpoint health is reported, it does not make the channel not ready.
        assert_eq!(status, 200);
        let eps = &ready["channels"]["rest"]["targets"]["a"]["endpoints"];
        if eps[0]["healthy"] == json!(false) && eps[1]["healthy"] == json!(true) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{ready}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let before = up.hits.load(Ordering::SeqCst);
    for _ in 0..4 {
        let resp = app
            .router
            .clone()
            .oneshot(Request::get("/a/x").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // The live endpoint got the 4 requests (plus any health checks meanwhile).
    assert!(up.hits.load(Ordering::SeqCst) >= before + 4);
    // The dead endpoint's breaker saw nothing: the balancer skipped it.
    let (_, breakers) = admin_call(&admin, Method::GET, "/admin/breakers", None, None).await;
    assert_eq!(breakers[0]["consecutive_failures"], 0, "{breakers}");
}
