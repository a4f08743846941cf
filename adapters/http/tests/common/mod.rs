//! Real upstream servers on port 0 for the integration tests, and a few helpers.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use quartet_http::spec::{BalanceStrategy, UpstreamSpec};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// An upstream for tests. It answers every request with 200 (or the status of a
/// `/status/NNN` path), echoes the body, and tells in headers what it saw:
/// `x-seen-path`, `x-seen-host`, `x-seen-version`, `x-seen-xff`. Dropping it (or
/// [`Upstream::stop`]) closes the listener and every open connection.
pub struct Upstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Self {
        Self::on(TcpListener::bind("127.0.0.1:0").await.unwrap(), None)
    }

    pub async fn start_tls(acceptor: TlsAcceptor) -> Self {
        Self::on(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            Some(acceptor),
        )
    }

    pub fn on(listener: TcpListener, tls: Option<TlsAcceptor>) -> Self {
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            // The connections live in this task: aborting it closes them all.
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let tls = tls.clone();
                conns.spawn(async move {
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let svc = service_fn(echo);
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Self { addr, task }
    }

    pub fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://127.0.0.1:{}{path}", self.addr.port())
    }

    /// Stops and waits until the listener and the connections are closed.
    pub async fn stop(self) {
        self.task.abort();
        let _ = (&mut { self }.task).await;
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(req: http::Request<Incoming>) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let status = path
        .strip_prefix("/status/")
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(200);
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .unwrap_or_default()
    };
    let host = header("host");
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let xff = header("x-forwarded-for");
    let version = format!("{:?}", req.version());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Ok(http::Response::builder()
        .status(status)
        .header("x-seen-path", path)
        .header("x-seen-host", host)
        .header("x-seen-authority", authority)
        .header("x-seen-version", version)
        .header("x-seen-xff", xff)
        .body(Full::new(body))
        .unwrap())
}

/// An upstream spec with the defaults of the config file.
pub fn spec(endpoints: Vec<String>) -> UpstreamSpec {
    UpstreamSpec {
        endpoints,
        balance: BalanceStrategy::default(),
        health: None,
        http2: false,
        ca_file: None,
        connect_timeout: Duration::from_secs(5),
        pool_idle_timeout: Duration::from_secs(90),
        pool_max_idle_per_host: 8,
    }
}

/// A port on which nothing listens (bound, then released).
pub async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// A file in the temp dir, unique to this test process and `name`, removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(name: &str, contents: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!(
            "quartet-http-{}-{}-{name}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A CA and a server certificate it signed for `localhost` and 127.0.0.1: the CA's PEM,
/// and a TLS acceptor offering h2 and http/1.1 by ALPN.
pub fn tls_pair() -> (String, TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();

    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (ca.pem(), TlsAcceptor::from(Arc::new(server)))
}

/// Waits until `cond` holds, checking every few milliseconds; fails after 20 s.
pub async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
