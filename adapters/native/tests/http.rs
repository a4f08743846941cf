//! The `http` driver against a real local HTTP server (hyper): templates, authentication,
//! status mapping, TLS verification. Retries and the breaker in front of it are the
//! gateway's stack, tested in `gateway/tests/native_stack.rs`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use quartet_native::drivers::http::HttpDriver;
use quartet_native::spec::{DriverSettings, DriverSpec};
use quartet_native::{Driver, DriverError, ErrorKind};
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

mod vendor;

use vendor::{answer, http_driver, start, Backend};

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
