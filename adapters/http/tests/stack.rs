//! The REST stack's lower half assembled as the gateway's `stack.rs` does it (endpoint ->
//! per-try timeout -> breaker, boxed; balancer; retry), against real servers.

mod common;

use bytes::Bytes;
use common::{closed_port, spec, Upstream};
use http_body_util::BodyExt;
use quartet_http::balance::{Balancer, EndpointSlot, EndpointStack};
use quartet_http::body::{buffer_for_replay, full, ProxyBody};
use quartet_http::classify::{CallInfo, HttpClassify, HttpReplay};
use quartet_http::client::HttpClient;
use quartet_http::endpoint::EndpointService;
use quartet_http::error::ConnectError;
use quartet_http::spec::BalanceStrategy;
use quartet_http::BoxError;
use quartet_policies::breaker::{BreakerHandle, BreakerState, CircuitBreakerLayer};
use quartet_policies::error::TimeoutKind;
use quartet_policies::metrics::Metrics;
use quartet_policies::retry::budget::Budget;
use quartet_policies::retry::RetryLayer;
use quartet_policies::spec::{BreakerSpec, RetrySpec};
use quartet_policies::timeout::TimeoutLayer;
use quartet_policies::Target;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

struct Stack {
    svc: BoxCloneSyncService<http::Request<ProxyBody>, http::Response<ProxyBody>, BoxError>,
    balancer: Balancer,
    breakers: Vec<BreakerHandle>,
}

fn build(urls: &[String], breaker: BreakerSpec, idempotent_route: bool) -> Stack {
    let target = Target::new("rest", "compute");
    let metrics = Metrics::new();
    let client = HttpClient::new(&spec(urls.to_vec())).unwrap();
    let mut breakers = Vec::new();
    let slots = urls
        .iter()
        .map(|url| {
            let ep = EndpointService::new(url, client.clone()).unwrap();
            let handle = BreakerHandle::new(
                target.clone(),
                &ep.authority(),
                breaker.clone(),
                metrics.clone(),
            );
            breakers.push(handle.clone());
            let service = EndpointStack::boxing(
                ServiceBuilder::new()
                    .layer(CircuitBreakerLayer::new(handle.clone(), HttpClassify))
                    .layer(TimeoutLayer::new(
                        Duration::from_secs(10),
                        TimeoutKind::PerTry,
                    ))
                    .service(ep.clone()),
            );
            EndpointSlot {
                name: ep.authority(),
                service,
                breaker: Some(handle),
                healthy: Arc::new(AtomicBool::new(true)),
                in_flight: Arc::default(),
            }
        })
        .collect();
    let balancer = Balancer::new(target.clone(), BalanceStrategy::RoundRobin, slots);
    let retry = RetrySpec {
        backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
        ..RetrySpec::default()
    };
    let svc = BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(RetryLayer::new(
                &retry,
                Arc::new(Budget::new(&retry)),
                HttpClassify,
                HttpReplay { idempotent_route },
                target,
                metrics,
            ))
            .service(balancer.clone()),
    );
    Stack {
        svc,
        balancer,
        breakers,
    }
}

async fn post(
    stack: &Stack,
    body: ProxyBody,
    limit: usize,
) -> (Result<http::Response<ProxyBody>, BoxError>, Arc<CallInfo>) {
    let info = Arc::new(CallInfo::default());
    let mut req = http::Request::post("/v2/servers").body(body).unwrap();
    req.extensions_mut().insert(info.clone());
    let req = buffer_for_replay(req, limit).await.unwrap();
    (stack.svc.clone().oneshot(req).await, info)
}

#[tokio::test]
async fn a_refused_connection_is_retried_elsewhere_even_for_a_post() {
    let up = Upstream::start().await;
    let urls = vec![
        format!("http://127.0.0.1:{}", closed_port().await),
        up.url("http", ""),
    ];
    let stack = build(&urls, BreakerSpec::default(), false);
    let (resp, info) = post(&stack, full(Bytes::from_static(b"{\"server\":{}}")), 1024).await;
    let resp = resp.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "{\"server\":{}}"
    );
    assert_eq!(info.attempts.load(Ordering::Relaxed), 2);
    assert_eq!(*info.tried.lock().unwrap(), [0, 1]);
    assert_eq!(
        info.endpoint.lock().unwrap().as_deref(),
        Some(format!("127.0.0.1:{}", up.addr.port()).as_str())
    );
}

#[tokio::test]
async fn a_body_over_the_replay_limit_is_not_retried() {
    let up = Upstream::start().await;
    let urls = vec![
        format!("http://127.0.0.1:{}", closed_port().await),
        up.url("http", ""),
    ];
    let stack = build(&urls, BreakerSpec::default(), true);
    let (resp, info) = post(&stack, full(Bytes::from(vec![b'x'; 100])), 10).await;
    let err = resp.expect_err("the first endpoint refuses, and the body cannot be replayed");
    assert!(err.is::<ConnectError>(), "{err}");
    assert_eq!(info.attempts.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn an_open_breaker_takes_its_endpoint_out_of_rotation() {
    let up = Upstream::start().await;
    let urls = vec![
        format!("http://127.0.0.1:{}", closed_port().await),
        up.url("http", ""),
    ];
    let breaker = BreakerSpec {
        consecutive_failures: 1,
        open_for: Duration::from_secs(600),
        ..BreakerSpec::default()
    };
    let stack = build(&urls, breaker, false);
    let (resp, _) = post(&stack, full(Bytes::from_static(b"1")), 1024).await;
    assert_eq!(resp.unwrap().status(), 200);
    assert_eq!(stack.breakers[0].state(), BreakerState::Open);
    for _ in 0..5 {
        let (resp, info) = post(&stack, full(Bytes::from_static(b"2")), 1024).await;
        assert_eq!(resp.unwrap().status(), 200);
        assert_eq!(info.attempts.load(Ordering::Relaxed), 1);
        assert_eq!(*info.tried.lock().unwrap(), [1]);
    }
    let eps = stack.balancer.endpoints();
    assert_eq!(eps[0].breaker, Some(BreakerState::Open));
    assert_eq!(eps[1].breaker, Some(BreakerState::Closed));
    assert!(eps.iter().all(|e| e.in_flight == 0));
    assert!(stack.balancer.is_ready());
}
