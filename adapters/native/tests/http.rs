//! The `http` driver against a real local HTTP server (hyper): templates, authentication,
//! status mapping, retries, and the breaker opening on a failing backend and closing after
//! it recovers.

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use quartet_native::drivers::http::HttpDriver;
use quartet_native::spec::{DriverSettings, DriverSpec};
use quartet_native::{driver_stack, Driver, DriverError, DriverInstance, ErrorKind, NativeCall};
use quartet_policies::breaker::BreakerState;
use quartet_policies::error::BreakerOpen;
use quartet_policies::metrics::Metrics;
use quartet_policies::spec::{BreakerSpec, PolicySpec, RetrySpec};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::{Service, ServiceExt};

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    auth: Option<String>,
    body: Value,
}

#[derive(Clone, Default)]
struct Backend {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// 0: answer by route; otherwise this status for everything.
    force: Arc<AtomicU16>,
}

impl Backend {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
    fn hits(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }
}

/// A vendor API: volumes under `/api/v1`, token `secret` in `X-Auth-Token` (or basic
/// `admin:pw`).
async fn answer(backend: Backend, req: hyper::Request<hyper::body::Incoming>) -> (u16, Value) {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let auth = req
        .headers()
        .get("x-auth-token")
        .or_else(|| req.headers().get("authorization"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    backend.seen.lock().expect("lock").push(Seen {
        method: method.clone(),
        path: path.clone(),
        auth: auth.clone(),
        body: body.clone(),
    });
    let forced = backend.force.load(Ordering::SeqCst);
    if forced != 0 {
        return (forced, json!({"error": "forced"}));
    }
    let authorised = matches!(auth.as_deref(), Some("secret") | Some("Basic YWRtaW46cHc="));
    if !authorised {
        return (401, json!({"error": "who are you"}));
    }
    match (method.as_str(), path.as_str()) {
        ("POST", "/api/v1/volumes") => (201, json!({"created": body})),
        ("GET", "/api/v1/volumes/missing") => (404, json!({"error": "no such volume"})),
        ("DELETE", "/api/v1/volumes/busy") => (409, json!({"error": "has snapshots"})),
        ("GET", "/api/v1/bad") => (400, json!({"error": "bad request"})),
        ("GET", "/api/v1/flaky") | ("POST", "/api/v1/flaky") => (503, json!({"error": "busy"})),
        ("GET", "/api/v1/text") => (200, Value::String("plain".into())),
        ("GET", p) if p.starts_with("/api/v1/volumes/") => (200, json!({"path": p})),
        _ => (404, json!({"error": "no route"})),
    }
}

/// Serves `backend` on `listener` until the returned set is dropped (which also drops every
/// open connection: the server is really gone).
fn serve(listener: TcpListener, backend: Backend) -> JoinSet<()> {
    let mut set = JoinSet::new();
    set.spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let backend = backend.clone();
            conns.spawn(async move {
                let svc = service_fn(move |req| {
                    let backend = backend.clone();
                    async move {
                        let (status, body) = answer(backend, req).await;
                        let bytes = match &body {
                            Value::String(s) => Bytes::from(s.clone()),
                            other => Bytes::from(other.to_string()),
                        };
                        hyper::Response::builder()
                            .status(status)
                            .body(Full::new(bytes))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    set
}

/// A CA and a server certificate it signed for `localhost`: the CA's PEM and an acceptor.
fn tls_pair() -> (String, tokio_rustls::TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
    let params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca).expect("cert");
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .expect("server config");
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    (ca.pem(), tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

/// Serves `backend` over TLS on `listener` until the returned set is dropped.
fn serve_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    backend: Backend,
) -> JoinSet<()> {
    let mut set = JoinSet::new();
    set.spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, backend) = (acceptor.clone(), backend.clone());
            conns.spawn(async move {
                // A client that refuses the certificate ends the handshake here.
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = service_fn(move |req| {
                    let backend = backend.clone();
                    async move {
                        let (status, body) = answer(backend, req).await;
                        hyper::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from(body.to_string())))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    set
}

fn spec_toml(addr: SocketAddr, auth: &str) -> String {
    format!(
        r#"
name = "array"
kind = "http"
base_url = "http://{addr}/api/v1"
auth = {auth}
connect_timeout = "2s"

[operations.create_volume]
method = "POST"
path = "/volumes"
body = {{ name = "{{id}}", size = "{{size_gb}}", label = "vol-{{id}}", tags = ["{{id}}"] }}

[operations.get_volume]
method = "GET"
path = "/volumes/{{id}}"

[operations.delete_volume]
method = "DELETE"
path = "/volumes/{{id}}"

[operations.bad]
method = "GET"
path = "/bad"

[operations.text]
method = "GET"
path = "/text"

[operations.flaky_get]
method = "GET"
path = "/flaky"

[operations.flaky_post]
method = "POST"
path = "/flaky"
"#
    )
}

fn http_driver(addr: SocketAddr, auth: &str) -> HttpDriver {
    let spec: DriverSpec = toml::from_str(&spec_toml(addr, auth)).expect("spec parses");
    let DriverSettings::Http(http) = &spec.settings else {
        panic!("an http spec");
    };
    HttpDriver::new(http).expect("driver")
}

async fn start() -> (SocketAddr, Backend, JoinSet<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let backend = Backend::default();
    let server = serve(listener, backend.clone());
    (addr, backend, server)
}

#[tokio::test]
async fn operations_map_to_requests_and_statuses_to_kinds() {
    let (addr, backend, _server) = start().await;
    let d = http_driver(addr, r#"{ header = "X-Auth-Token", value = "secret" }"#);

    let out = d
        .call("create_volume", json!({"id": "v1", "size_gb": 2}))
        .await
        .expect("create");
    assert_eq!(
        out,
        json!({"created": {"name": "v1", "size": 2, "label": "vol-v1", "tags": ["v1"]}})
    );
    let seen = backend.seen();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/api/v1/volumes");
    assert_eq!(seen[0].auth.as_deref(), Some("secret"));
    assert_eq!(seen[0].body["size"], 2);

    // Path values are encoded: one segment, whatever they hold.
    let out = d
        .call("get_volume", json!({"id": "a/../b?c=d#e f"}))
        .await
        .expect("get");
    assert_eq!(
        out,
        json!({"path": "/api/v1/volumes/a%2F..%2Fb%3Fc%3Dd%23e%20f"})
    );

    let out = d.call("text", json!({})).await.expect("text");
    assert_eq!(out, json!("plain"));

    let kind = |r: Result<Value, DriverError>| r.expect_err("an error").kind();
    assert_eq!(
        kind(d.call("get_volume", json!({"id": "missing"})).await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(d.call("delete_volume", json!({"id": "busy"})).await),
        ErrorKind::Conflict
    );
    assert_eq!(
        kind(d.call("bad", json!({})).await),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        kind(d.call("flaky_get", json!({})).await),
        ErrorKind::Transient
    );
    // A missing argument is refused before anything is sent.
    let before = backend.hits();
    assert_eq!(
        kind(d.call("get_volume", json!({})).await),
        ErrorKind::InvalidInput
    );
    assert_eq!(backend.hits(), before);

    // Wrong credentials: the backend's problem as far as the caller can tell.
    let wrong = http_driver(addr, r#"{ header = "X-Auth-Token", value = "nope" }"#);
    assert_eq!(
        kind(wrong.call("get_volume", json!({"id": "v1"})).await),
        ErrorKind::Permanent
    );
    // Basic authentication.
    let basic = http_driver(addr, r#"{ username = "admin", password = "pw" }"#);
    basic
        .call("get_volume", json!({"id": "v1"}))
        .await
        .expect("basic auth accepted");
}

#[tokio::test]
async fn idempotent_operations_are_retried_others_are_not() {
    let (addr, backend, _server) = start().await;
    let d = http_driver(addr, r#"{ header = "X-Auth-Token", value = "secret" }"#);
    let instance = DriverInstance::new("array", None, Arc::new(d));
    let policy = PolicySpec {
        retry: RetrySpec {
            attempts: 3,
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            ..RetrySpec::default()
        },
        breaker: BreakerSpec {
            consecutive_failures: 100,
            failure_rate: 2.0,
            ..BreakerSpec::default()
        },
        ..PolicySpec::default()
    };
    let stack = driver_stack(&instance, &policy, Metrics::new());
    stack
        .service
        .clone()
        .oneshot(NativeCall::new("flaky_get", json!({})))
        .await
        .expect_err("503");
    assert_eq!(backend.hits(), 3, "GET: three attempts");
    stack
        .service
        .clone()
        .oneshot(NativeCall::new("flaky_post", json!({})))
        .await
        .expect_err("503");
    assert_eq!(backend.hits(), 4, "POST: one attempt");
}

#[tokio::test]
async fn the_breaker_opens_on_a_failing_backend_and_closes_after_it_recovers() {
    let (addr, backend, server) = start().await;
    backend.force.store(500, Ordering::SeqCst);
    let d = http_driver(addr, r#"{ header = "X-Auth-Token", value = "secret" }"#);
    let instance = DriverInstance::new("array", None, Arc::new(d));
    let policy = PolicySpec {
        retry: RetrySpec {
            attempts: 1,
            ..RetrySpec::default()
        },
        breaker: BreakerSpec {
            consecutive_failures: 3,
            failure_rate: 2.0,
            open_for: Duration::from_millis(200),
            half_open_probes: 1,
            ..BreakerSpec::default()
        },
        ..PolicySpec::default()
    };
    let stack = driver_stack(&instance, &policy, Metrics::new());
    let call = || NativeCall::new("get_volume", json!({"id": "v1"}));

    // 1. The backend answers 500: three failures open the breaker.
    for _ in 0..3 {
        let err = stack
            .service
            .clone()
            .oneshot(call())
            .await
            .expect_err("500");
        let kind = quartet_native::error::find_driver_error(&*err).map(DriverError::kind);
        assert_eq!(kind, Some(ErrorKind::Transient));
    }
    assert_eq!(backend.hits(), 3);
    assert_eq!(stack.breaker.state(), BreakerState::Open);

    // 2. Open: refused at once, on the first poll, nothing sent.
    let mut svc = stack.service.clone();
    svc.ready().await.expect("ready");
    let refused = svc
        .call(call())
        .now_or_never()
        .expect("answered without waiting")
        .expect_err("refused");
    assert!(refused.is::<BreakerOpen>(), "{refused}");
    assert_eq!(backend.hits(), 3);

    // 3. The backend stops: a probe after `open_for` cannot connect, and the breaker
    //    opens again.
    drop(server);
    let mut probe_failed = false;
    for _ in 0..250 {
        match stack.service.clone().oneshot(call()).await {
            Err(e) if e.is::<BreakerOpen>() => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                let d = quartet_native::error::find_driver_error(&*e).expect("driver error");
                assert_eq!(d.kind(), ErrorKind::Transient);
                probe_failed = true;
                break;
            }
            Ok(v) => panic!("the backend is down, yet: {v}"),
        }
    }
    assert!(probe_failed, "a probe reached the stopped backend");
    assert_eq!(stack.breaker.state(), BreakerState::Open);

    // 4. The backend comes back on the same address and answers: a probe succeeds and the
    //    breaker closes.
    let listener = TcpListener::bind(addr).await.expect("rebind");
    let healthy = Backend::default();
    let _server = serve(listener, healthy.clone());
    let mut recovered = None;
    for _ in 0..500 {
        match stack.service.clone().oneshot(call()).await {
            Ok(v) => {
                recovered = Some(v);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert_eq!(recovered, Some(json!({"path": "/api/v1/volumes/v1"})));
    assert_eq!(stack.breaker.state(), BreakerState::Closed);
    stack
        .service
        .clone()
        .oneshot(call())
        .await
        .expect("closed: calls pass");
}

#[tokio::test]
async fn tls_certificates_are_verified() {
    let (ca_pem, acceptor) = tls_pair();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).expect("write ca");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let backend = Backend::default();
    let _server = serve_tls(listener, acceptor, backend.clone());

    let spec = |ca: Option<&std::path::Path>| {
        let ca_line = ca
            .map(|p| format!("ca_file = {:?}\n", p.display().to_string()))
            .unwrap_or_default();
        let text = format!(
            "name = \"array\"\nkind = \"http\"\nbase_url = \"https://localhost:{port}/api/v1\"\n\
             auth = {{ header = \"X-Auth-Token\", value = \"secret\" }}\n{ca_line}\
             [operations.get_volume]\nmethod = \"GET\"\npath = \"/volumes/{{id}}\"\n"
        );
        let spec: DriverSpec = toml::from_str(&text).expect("spec parses");
        let DriverSettings::Http(http) = spec.settings else {
            panic!("an http spec");
        };
        HttpDriver::new(&http).expect("driver")
    };

    // No ca_file: the system's roots do not know this CA, and the call is refused before
    // any request is sent.
    let err = spec(None)
        .call("get_volume", json!({"id": "v1"}))
        .await
        .expect_err("untrusted certificate");
    assert!(
        matches!(err, DriverError::Transient { sent: false, .. }),
        "{err}"
    );
    assert_eq!(backend.hits(), 0);

    // With the CA named, the same server is trusted.
    let out = spec(Some(&ca_file))
        .call("get_volume", json!({"id": "v1"}))
        .await
        .expect("trusted");
    assert_eq!(out, json!({"path": "/api/v1/volumes/v1"}));
    assert_eq!(backend.hits(), 1);
}
