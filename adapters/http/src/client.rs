//! The pooled upstream client (hyper-util's legacy client over rustls), one per upstream.

use crate::body::ProxyBody;
use crate::error::BuildError;
use crate::spec::UpstreamSpec;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[derive(Clone)]
pub struct HttpClient {
    pub(crate) inner: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    /// `spec.http2`: every connection speaks HTTP/2, so requests go out as HTTP/2.
    pub(crate) http2_only: bool,
    /// `connect_timeout`, `pool_idle_timeout`, `pool_max_idle_per_host`, for the pools of
    /// `http://` HTTP/1.1 endpoints (see [`crate::pool`]).
    pub(crate) pool_settings: (Duration, Duration, usize),
}

impl HttpClient {
    /// Builds the client for one upstream: pool settings, connect timeout, HTTP/2, the CA
    /// roots (`ca_file`, else the system's).
    ///
    /// ALPN offers `h2` and `http/1.1` to `https://` endpoints (only `h2` when
    /// `spec.http2`); `http://` endpoints get HTTP/1.1, or HTTP/2 by prior knowledge (h2c)
    /// when `spec.http2`. The system's roots are only loaded when an endpoint is
    /// `https://` and no `ca_file` is given; when the system has none, the Mozilla roots
    /// compiled in (webpki-roots) are used.
    pub fn new(spec: &UpstreamSpec) -> Result<Self, BuildError> {
        let roots = match &spec.ca_file {
            Some(path) => roots_from_file(path)?,
            None if spec.endpoints.iter().any(|e| e.starts_with("https:")) => {
                system_roots().as_ref().clone()
            }
            None => RootCertStore::empty(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| BuildError {
            key: "ca_file".into(),
            message: format!("no usable TLS protocol version: {e}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();

        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(spec.connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);

        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let https = if spec.http2 {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.enable_http1().enable_http2().wrap_connector(http)
        };

        let inner = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(spec.pool_idle_timeout)
            .pool_max_idle_per_host(spec.pool_max_idle_per_host)
            .http2_only(spec.http2)
            .build(https);
        Ok(Self {
            inner,
            http2_only: spec.http2,
            pool_settings: (
                spec.connect_timeout,
                spec.pool_idle_timeout,
                spec.pool_max_idle_per_host,
            ),
        })
    }

    /// Whether every request goes out as HTTP/2 (`spec.http2`).
    pub fn is_http2_only(&self) -> bool {
        self.http2_only
    }

    /// The version a request must carry for this client: HTTP/2 when the client speaks
    /// only HTTP/2, HTTP/1.1 otherwise (hyper then upgrades it to HTTP/2 on a connection
    /// that negotiated h2 by ALPN; an HTTP/2 request on an HTTP/1 connection would fail).
    pub(crate) fn request_version(&self) -> http::Version {
        if self.http2_only {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        }
    }

    /// The HTTP/1.1 pool of one `http://` endpoint (`host:port`), with this upstream's
    /// settings; `None` when requests must go through hyper-util's client (HTTP/2).
    pub(crate) fn h1_pool(&self, uri: &http::Uri) -> Option<crate::pool::H1Pool> {
        if self.http2_only || uri.scheme_str() != Some("http") {
            return None;
        }
        let (connect, idle, max_idle) = self.pool_settings;
        Some(crate::pool::H1Pool::new(
            crate::endpoint::authority_of(uri),
            connect,
            idle,
            max_idle,
        ))
    }

    /// Sends a request as it is (absolute URI). Used by the endpoint service and the
    /// health checks.
    pub(crate) fn send(
        &self,
        req: http::Request<ProxyBody>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        self.inner.request(req)
    }
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, BuildError> {
    let err = |message: String| BuildError {
        key: "ca_file".into(),
        message,
    };
    let pem =
        std::fs::read(path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("bad PEM in {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(err(format!("no certificate in {}", path.display())));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| err(format!("bad certificate in {}: {e}", path.display())))?;
    }
    Ok(roots)
}

/// The system's CA roots, loaded once per process; the compiled-in Mozilla roots when the
/// system has none.
fn system_roots() -> &'static Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        for e in &loaded.errors {
            tracing::debug!(error = %e, "skipping unreadable system CA certificates");
        }
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
        if added == 0 {
            tracing::warn!("no system CA certificates found; using the built-in Mozilla roots");
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        Arc::new(roots)
    })
}
