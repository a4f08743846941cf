//! The endpoint service, the client and the health checks against real local servers.

mod common;

use bytes::Bytes;
use common::{closed_port, spec, tls_pair, wait_until, TempFile, Upstream};
use http_body_util::BodyExt;
use quartet_http::body::{full, ProxyBody};
use quartet_http::classify::HttpClassify;
use quartet_http::client::HttpClient;
use quartet_http::endpoint::EndpointService;
use quartet_http::error::{ConnectError, UpstreamError};
use quartet_http::spec::HealthSpec;
use quartet_policies::classify::{Class, Classify};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

fn endpoint(url: &str, spec: &quartet_http::spec::UpstreamSpec) -> EndpointService {
    EndpointService::new(url, HttpClient::new(spec).unwrap()).unwrap()
}

async fn send(
    ep: &EndpointService,
    req: http::Request<ProxyBody>,
) -> Result<http::Response<ProxyBody>, quartet_http::BoxError> {
    ep.clone().oneshot(req).await
}

fn seen(resp: &http::Response<ProxyBody>, what: &str) -> String {
    resp.headers()[format!("x-seen-{what}").as_str()]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn joins_the_base_path_and_keeps_the_host() {
    let up = Upstream::start().await;
    let url = up.url("http", "/base/");
    let ep = endpoint(&url, &spec(vec![url.clone()]));
    assert_eq!(ep.authority(), format!("127.0.0.1:{}", up.addr.port()));

    let req = http::Request::post("/v2/servers?limit=1")
        .header("host", "api.example")
        .body(full(Bytes::from_static(b"hello")))
        .unwrap();
    let resp = send(&ep, req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(seen(&resp, "path"), "/base/v2/servers?limit=1");
    assert_eq!(seen(&resp, "host"), "api.example");
    assert_eq!(seen(&resp, "version"), "HTTP/1.1");
    assert_eq!(HttpClassify.classify(&Ok(resp)), Class::Success);
}

#[tokio::test]
async fn an_http2_client_request_goes_out_as_http1_with_its_authority_as_host() {
    let up = Upstream::start().await;
    let url = up.url("http", "");
    let ep = endpoint(&url, &spec(vec![url.clone()]));
    let req = http::Request::get("https://api.example/v3/auth/tokens")
        .version(http::Version::HTTP_2)
        .body(quartet_http::body::empty())
        .unwrap();
    let resp = send(&ep, req).await.unwrap();
    assert_eq!(seen(&resp, "path"), "/v3/auth/tokens");
    assert_eq!(seen(&resp, "host"), "api.example");
    assert_eq!(seen(&resp, "version"), "HTTP/1.1");
}

#[tokio::test]
async fn streams_the_response_body() {
    let up = Upstream::start().await;
    let url = up.url("http", "");
    let ep = endpoint(&url, &spec(vec![url.clone()]));
    let req = http::Request::put("/x")
        .body(full(Bytes::from(vec![b'z'; 100_000])))
        .unwrap();
    let resp = send(&ep, req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 100_000);
}

#[tokio::test]
async fn a_5xx_is_sent() {
    let up = Upstream::start().await;
    let url = up.url("http", "");
    let ep = endpoint(&url, &spec(vec![url.clone()]));
    let req = http::Request::get("/status/503")
        .body(quartet_http::body::empty())
        .unwrap();
    let resp = send(&ep, req).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(HttpClassify.classify(&Ok(resp)), Class::Sent);
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error_not_sent() {
    let url = format!("http://127.0.0.1:{}", closed_port().await);
    let ep = endpoint(&url, &spec(vec![url.clone()]));
    let req = http::Request::get("/")
        .body(quartet_http::body::empty())
        .unwrap();
    let result = send(&ep, req).await;
    let err = result.as_ref().expect_err("connection refused");
    let connect = err.downcast_ref::<ConnectError>().expect("a ConnectError");
    assert_eq!(connect.endpoint, ep.authority());
    assert_eq!(HttpClassify.classify(&result), Class::NotSent);
}

#[tokio::test]
async fn a_connection_closed_before_the_answer_is_an_upstream_error_sent() {
    // A server that reads the request and closes without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let url = format!("http://{addr}");
    let ep = endpoint(&url, &spec(vec![url.clone()]));
    let req = http::Request::get("/")
        .body(quartet_http::body::empty())
        .unwrap();
    let result = send(&ep, req).await;
    let err = result.as_ref().expect_err("closed");
    assert!(err.is::<UpstreamError>(), "{err:?}");
    assert_eq!(HttpClassify.classify(&result), Class::Sent);
    server.abort();
}

#[tokio::test]
async fn https_with_a_ca_file_speaks_h2_by_alpn() {
    let (ca_pem, acceptor) = tls_pair();
    let ca = TempFile::new("ca.pem", ca_pem.as_bytes());
    let up = Upstream::start_tls(acceptor).await;
    let url = format!("https://localhost:{}/api", up.addr.port());
    let mut s = spec(vec![url.clone()]);
    s.ca_file = Some(ca.0.clone());
    let ep = endpoint(&url, &s);
    let req = http::Request::get("/x")
        .header("host", "api.example")
        .body(quartet_http::body::empty())
        .unwrap();
    let resp = send(&ep, req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(seen(&resp, "version"), "HTTP/2.0");
    assert_eq!(seen(&resp, "path"), "/api/x");
    assert_eq!(
        seen(&resp, "authority"),
        format!("localhost:{}", up.addr.port())
    );
}

#[tokio::test]
async fn an_unknown_ca_is_a_connect_error() {
    let (_ca_pem, acceptor) = tls_pair();
    let (other_ca, _) = tls_pair();
    let ca = TempFile::new("other-ca.pem", other_ca.as_bytes());
    let up = Upstream::start_tls(acceptor).await;
    let url = format!("https://localhost:{}", up.addr.port());
    let mut s = spec(vec![url.clone()]);
    s.ca_file = Some(ca.0.clone());
    let ep = endpoint(&url, &s);
    let req = http::Request::get("/")
        .body(quartet_http::body::empty())
        .unwrap();
    let result = send(&ep, req).await;
    assert!(result.as_ref().err().unwrap().is::<ConnectError>());
    assert_eq!(HttpClassify.classify(&result), Class::NotSent);
}

#[tokio::test]
async fn http2_true_speaks_h2c_by_prior_knowledge() {
    let up = Upstream::start().await;
    let url = up.url("http", "");
    let mut s = spec(vec![url.clone()]);
    s.http2 = true;
    let ep = endpoint(&url, &s);
    let req = http::Request::get("/h2c")
        .header("host", "api.example")
        .body(quartet_http::body::empty())
        .unwrap();
    let resp = send(&ep, req).await.unwrap();
    assert_eq!(seen(&resp, "version"), "HTTP/2.0");
    assert_eq!(seen(&resp, "path"), "/h2c");
    // HTTP/2 must not carry a Host that differs from :authority.
    assert_eq!(seen(&resp, "host"), "");
    assert_eq!(seen(&resp, "authority"), ep.authority());
}

#[tokio::test]
async fn bad_ca_files_name_the_key() {
    let mut s = spec(vec!["https://localhost:1".into()]);
    s.ca_file = Some(std::env::temp_dir().join("quartet-no-such-ca.pem"));
    let err = HttpClient::new(&s).err().expect("missing file");
    assert_eq!(err.key, "ca_file");

    let garbage = TempFile::new("garbage.pem", b"not a certificate\n");
    s.ca_file = Some(garbage.0.clone());
    let err = HttpClient::new(&s).err().expect("no certificate");
    assert_eq!(err.key, "ca_file");
    assert!(err.to_string().contains("no certificate"), "{err}");
}

#[tokio::test]
async fn health_checks_take_a_stopped_endpoint_out_and_put_it_back() {
    let up = Upstream::start().await;
    let port = up.addr.port();
    let down_url = format!("http://127.0.0.1:{}", closed_port().await);
    let url = up.url("http", "/base");
    let client = HttpClient::new(&spec(vec![url.clone()])).unwrap();
    let flag = Arc::new(AtomicBool::new(true));
    let down_flag = Arc::new(AtomicBool::new(true));
    let health = HealthSpec {
        path: "/healthcheck".into(),
        interval: Duration::from_millis(20),
        timeout: Duration::from_secs(2),
        unhealthy_threshold: 2,
        healthy_threshold: 2,
    };
    let checks = quartet_http::health::spawn(
        &health,
        client,
        vec![
            (url.parse().unwrap(), flag.clone()),
            (down_url.parse().unwrap(), down_flag.clone()),
        ],
    );
    wait_until("the closed port is unhealthy", || {
        let f = down_flag.clone();
        async move { !f.load(Ordering::Relaxed) }
    })
    .await;
    assert!(
        flag.load(Ordering::Relaxed),
        "the live endpoint stays healthy"
    );

    up.stop().await;
    wait_until("the stopped endpoint is unhealthy", || {
        let f = flag.clone();
        async move { !f.load(Ordering::Relaxed) }
    })
    .await;

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let _up = Upstream::on(listener, None);
    wait_until("the restarted endpoint is healthy", || {
        let f = flag.clone();
        async move { f.load(Ordering::Relaxed) }
    })
    .await;
    assert!(!down_flag.load(Ordering::Relaxed));
    drop(checks);
}

#[tokio::test]
async fn a_failing_status_is_a_failed_check() {
    let up = Upstream::start().await;
    let url = up.url("http", "");
    let client = HttpClient::new(&spec(vec![url.clone()])).unwrap();
    let flag = Arc::new(AtomicBool::new(true));
    let health = HealthSpec {
        path: "/status/503".into(),
        interval: Duration::from_millis(20),
        timeout: Duration::from_secs(2),
        unhealthy_threshold: 1,
        healthy_threshold: 1,
    };
    let _checks =
        quartet_http::health::spawn(&health, client, vec![(url.parse().unwrap(), flag.clone())]);
    wait_until("a 503 makes it unhealthy", || {
        let f = flag.clone();
        async move { !f.load(Ordering::Relaxed) }
    })
    .await;
}

#[tokio::test]
async fn https_with_http2_true_insists_on_h2() {
    let (ca_pem, acceptor) = tls_pair();
    let ca = TempFile::new("ca-h2.pem", ca_pem.as_bytes());
    let up = Upstream::start_tls(acceptor).await;
    let url = format!("https://127.0.0.1:{}", up.addr.port());
    let mut s = spec(vec![url.clone()]);
    s.ca_file = Some(ca.0.clone());
    s.http2 = true;
    let ep = endpoint(&url, &s);
    let req = http::Request::get("/")
        .body(quartet_http::body::empty())
        .unwrap();
    let resp = send(&ep, req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(seen(&resp, "version"), "HTTP/2.0");
}
