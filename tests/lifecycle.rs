//! Signals: SIGHUP reloads the config file (a bad one is refused, a good one swapped in
//! without dropping in-flight requests); SIGTERM drains in-flight requests and exits 0.

use std::net::SocketAddr;

use http::StatusCode;
use quartet_tests::*;

fn config(grace: &str, up: &Upstream, prefixes: &[&str]) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ngrace_period = {grace:?}\n\n\
         [policies.plain]\ntimeout = \"60s\"\nper_try_timeout = \"60s\"\nretry = {{ attempts = 1 }}\n{}",
        upstream_toml("svc", &[up.url()], "")
    );
    for prefix in prefixes {
        text.push_str(&route_toml(
            prefix,
            "svc",
            "strip_prefix = true\npolicy = \"plain\"",
        ));
    }
    text
}

/// Starts a request the upstream holds, and waits until it is in flight there.
async fn in_flight(
    gw: &Gateway,
    up: &Upstream,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let before = up.holding();
    let request = tokio::spawn(client().get(gw.url("/a/slow?hold=1")).send());
    eventually("a request in flight at the upstream", WAIT, || async move {
        (up.holding() > before).then_some(())
    })
    .await;
    request
}

async fn status(url: String) -> StatusCode {
    client()
        .get(url)
        .send()
        .await
        .expect("a request to the gateway")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_good_config_without_dropping_in_flight_requests() {
    let up = Upstream::start("svc").await;
    let mut gw = Gateway::start(&config("30s", &up, &["/a"])).await;
    assert_eq!(
        status(gw.url("/b/x")).await,
        StatusCode::NOT_FOUND,
        "no /b route yet"
    );
    let request = in_flight(&gw, &up).await;

    // The new config adds a route, and a target whose new policy aborts every request.
    let reloaded = format!(
        "{}\n[policies.chaos]\nretry = {{ attempts = 1 }}\n\
         fault = {{ abort_status = 418, abort_percent = 100 }}\n{}{}",
        config("30s", &up, &["/a", "/b"]),
        upstream_toml("svc_c", &[up.url()], ""),
        route_toml("/c", "svc_c", "strip_prefix = true\npolicy = \"chaos\""),
    );
    gw.rewrite_config(&reloaded);
    gw.process.signal("HUP");
    let gw_ref = &gw;
    eventually(
        "the reloaded config's new route /b to answer",
        WAIT,
        || async move { (status(gw_ref.url("/b/x")).await == StatusCode::OK).then_some(()) },
    )
    .await;
    assert_eq!(
        status(gw.url("/a/x")).await,
        StatusCode::OK,
        "the old route still works"
    );
    assert_eq!(
        status(gw.url("/c/x")).await,
        StatusCode::IM_A_TEAPOT,
        "the reloaded config's new policy applies"
    );

    up.release(1);
    let resp = bounded("the in-flight request", request).await.unwrap();
    echo(resp.expect("the in-flight request survived the reload")).await;
    assert!(
        gw.process.try_exit().is_none(),
        "quartet keeps running after a reload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_refuses_a_bad_config_and_keeps_serving_the_old_one() {
    let up = Upstream::start("svc").await;
    let mut gw = Gateway::start(&config("30s", &up, &["/a"])).await;
    assert_eq!(status(gw.url("/a/x")).await, StatusCode::OK);

    let mark = gw.log().len();
    gw.rewrite_config("[server]\nlisten = \"127.0.0.1:0\"\nthis is not toml\n");
    gw.process.signal("HUP");
    gw.process
        .wait_for_log(mark, "an error about the refused config", |line| {
            let l = line.to_ascii_lowercase();
            (l.contains("reload") || l.contains("config"))
                && ["error", "refus", "invalid", "fail", "keep"]
                    .iter()
                    .any(|w| l.contains(w))
        })
        .await;
    assert_eq!(
        status(gw.url("/a/x")).await,
        StatusCode::OK,
        "the old config keeps serving"
    );
    assert!(
        gw.process.try_exit().is_none(),
        "a bad reload does not stop quartet"
    );

    // A bad reload leaves reloading working.
    gw.rewrite_config(&config("30s", &up, &["/a", "/b"]));
    gw.process.signal("HUP");
    let gw_ref = &gw;
    eventually("a later good reload to take effect", WAIT, || async move {
        (status(gw_ref.url("/b/x")).await == StatusCode::OK).then_some(())
    })
    .await;
}

/// True once new connections to `addr` are refused or no longer served.
async fn stopped_accepting(addr: SocketAddr) -> bool {
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(0)
        .timeout(std::time::Duration::from_secs(2))
        .build()
        .expect("a client");
    match fresh.get(format!("http://{addr}/a/x")).send().await {
        Err(_) => true,
        Ok(resp) => resp.status() == StatusCode::SERVICE_UNAVAILABLE,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    let up = Upstream::start("svc").await;
    let mut gw = Gateway::start(&config("30s", &up, &["/a"])).await;
    let request = in_flight(&gw, &up).await;

    let mark = gw.log().len();
    gw.process.signal("TERM");
    let public = gw.public;
    let log = gw.log().clone();
    eventually(
        "quartet to start draining (new connections refused, or a log line)",
        WAIT,
        || {
            let log = log.clone();
            async move {
                let said = log.since(mark).iter().any(|l| {
                    let l = l.to_ascii_lowercase();
                    l.contains("drain")
                        || l.contains("shutdown")
                        || l.contains("shutting down")
                        || l.contains("sigterm")
                });
                (said || stopped_accepting(public).await).then_some(())
            }
        },
    )
    .await;
    assert!(
        gw.process.try_exit().is_none(),
        "quartet waits for the in-flight request before exiting"
    );

    up.release(1);
    let resp = bounded("the in-flight request", request).await.unwrap();
    echo(resp.expect("the in-flight request completed during the drain")).await;
    let status = gw.process.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(0), "quartet exits 0 after draining");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_up_on_a_hung_request_after_the_grace_period() {
    let up = Upstream::start("svc").await;
    let mut gw = Gateway::start(&config("500ms", &up, &["/a"])).await;
    let request = in_flight(&gw, &up).await;
    gw.process.signal("TERM");
    let status = gw.process.wait_exit(WAIT).await;
    assert_eq!(
        status.code(),
        Some(0),
        "quartet exits 0 once the grace period is over"
    );
    drop(request);
}
