//! One upstream endpoint as a tower Service: rewrites the request's URI onto the endpoint
//! and sends it with the upstream's pooled client.

use crate::body::ProxyBody;
use crate::classify::CallInfo;
use crate::client::HttpClient;
use crate::error::{BuildError, ConnectError, UpstreamError};
use crate::pool::{Direct, H1Pool, SendError};
use crate::BoxError;
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use quartet_policies::head::AddedHeaders;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

#[derive(Clone)]
pub struct EndpointService {
    base: http::Uri,
    client: HttpClient,
    /// The base path without its trailing slash (`""` for none).
    base_path: Arc<str>,
    authority: Arc<str>,
    /// `Host` for a request that has none: the authority, without the scheme's default
    /// port (as hyper-util's client writes it).
    host: http::HeaderValue,
    /// Quartet's own HTTP/1.1 pool for a plain `http://` endpoint ([`crate::pool`]);
    /// `None`: hyper-util's client (https, HTTP/2).
    h1: Option<H1Pool>,
}

impl EndpointService {
    /// Responses from a plain `http://` endpoint keep the upstream's headers as one block
    /// ([`crate::raw::RawHead`]) instead of a `HeaderMap`: for the REST channel, which
    /// passes them on unread. Whoever writes such a response honours the extension.
    pub fn raw_response_heads(mut self) -> Self {
        self.h1 = self.h1.map(H1Pool::raw_response_heads);
        self
    }

    /// `url` is `http(s)://host[:port][/base]`; a bad one is a [`BuildError`] naming
    /// `endpoints`.
    pub fn new(url: &str, client: HttpClient) -> Result<Self, BuildError> {
        let base = parse_endpoint(url)?;
        let base_path = base.path().trim_end_matches('/').into();
        let authority = authority_of(&base).into();
        let host = base.host().unwrap_or_default();
        let default_port = if base.scheme_str() == Some("https") {
            443
        } else {
            80
        };
        let host = match base.port_u16() {
            Some(port) if port != default_port => format!("{host}:{port}"),
            _ => host.to_string(),
        };
        let host = http::HeaderValue::from_str(&host).map_err(|e| BuildError {
            key: "endpoints".into(),
            message: format!("{url:?}: the host is not a valid Host header: {e}"),
        })?;
        let h1 = client.h1_pool(&base);
        Ok(Self {
            base,
            client,
            base_path,
            authority,
            host,
            h1,
        })
    }

    /// `host:port`, the endpoint's name in metrics, logs and the admin API.
    pub fn authority(&self) -> String {
        self.authority.to_string()
    }

    /// The endpoint's URL as configured (scheme, authority, base path), for the health
    /// checks.
    pub fn base(&self) -> &http::Uri {
        &self.base
    }
}

/// Parses one `endpoints` entry: scheme `http` or `https`, a host, no query.
pub fn parse_endpoint(url: &str) -> Result<http::Uri, BuildError> {
    let err = |message: String| BuildError {
        key: "endpoints".into(),
        message,
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e| err(format!("{url:?} is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        Some(other) => {
            return Err(err(format!(
                "{url:?}: scheme {other:?} is not http or https"
            )))
        }
        None => return Err(err(format!("{url:?} has no scheme (http:// or https://)"))),
    }
    match uri.authority() {
        Some(a) if !a.host().is_empty() => {
            if a.as_str().contains('@') {
                return Err(err(format!("{url:?}: user info is not supported")));
            }
        }
        _ => return Err(err(format!("{url:?} has no host"))),
    }
    if uri.query().is_some() {
        return Err(err(format!(
            "{url:?}: a query is not allowed in an endpoint"
        )));
    }
    Ok(uri)
}

/// `host:port` of an endpoint URL, with the scheme's default port when none is given.
pub(crate) fn authority_of(uri: &http::Uri) -> String {
    let host = uri.host().unwrap_or_default();
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    format!("{host}:{port}")
}

/// Joins an endpoint's base path (no trailing slash) and a request's path and query:
/// `("/api", "/v2/x?y")` -> `"/api/v2/x?y"`, `("", "")` -> `"/"`.
pub fn join_path(base_path: &str, path_and_query: &str) -> String {
    let base = base_path.trim_end_matches('/');
    let mut out = String::with_capacity(base.len() + path_and_query.len() + 1);
    out.push_str(base);
    if !path_and_query.starts_with('/') {
        out.push('/');
    }
    out.push_str(path_and_query);
    out
}

/// The request URI rewritten onto `base`: its scheme and authority, its base path in front
/// of the request's path and query.
pub(crate) fn rewrite_uri(
    base: &http::Uri,
    base_path: &str,
    uri: &http::Uri,
) -> Result<http::Uri, http::Error> {
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut parts = http::uri::Parts::default();
    parts.scheme = base.scheme().cloned();
    parts.authority = base.authority().cloned();
    parts.path_and_query = Some(join_path(base_path, pq).parse()?);
    Ok(http::Uri::from_parts(parts)?)
}

/// What the direct path changes in a request for its endpoint.
struct Rewrites {
    uri: http::Uri,
    version: http::Version,
    host_added: bool,
}

impl Rewrites {
    /// `parts` as they were before the rewrites.
    fn apply(self, mut parts: http::request::Parts) -> http::request::Parts {
        parts.uri = self.uri;
        parts.version = self.version;
        if self.host_added {
            parts.headers.remove(http::header::HOST);
        }
        parts
    }
}

/// A copy of `req`'s head with no body, and of its extensions only the headers to add
/// ([`AddedHeaders`]): the call's info is put back by whoever sends the copy, and a
/// whole copy of the extension map costs an allocation per entry.
fn copy_head(req: &http::Request<ProxyBody>) -> http::request::Parts {
    let (mut copy, ()) = http::Request::new(()).into_parts();
    copy.method = req.method().clone();
    copy.uri = req.uri().clone();
    copy.version = req.version();
    copy.headers = req.headers().clone();
    if let Some(added) = req.extensions().get::<AddedHeaders>() {
        copy.extensions.insert(added.clone());
    }
    copy
}

impl Service<http::Request<ProxyBody>> for EndpointService {
    type Response = http::Response<ProxyBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    /// Sends the request to this endpoint. The client's `Host` is kept (as Envoy does);
    /// an HTTP/2 client's `:authority` becomes `Host` when it sent none. With `http2 =
    /// true` the `Host` is removed instead, since HTTP/2 carries the endpoint's authority
    /// in `:authority` and the two must not differ (the client's host reaches the upstream
    /// in `X-Forwarded-Host`). An `https://` endpoint that picks h2 by ALPN gets the
    /// client's `Host` next to the endpoint's `:authority`: hyper and Go servers accept
    /// that; a strict server may not, then set `http2 = true`. A failure to
    /// connect is a [`ConnectError`] (nothing was sent: safe to retry), any other failure
    /// an [`UpstreamError`]. The response keeps its extensions (hyper's `OnUpgrade` for a
    /// 101 among them).
    fn call(&mut self, req: http::Request<ProxyBody>) -> Self::Future {
        // When a retry may follow, the request is kept as it came (`CallInfo::keep_request`).
        let keep = req
            .extensions()
            .get::<Arc<CallInfo>>()
            .filter(|info| info.keeps_request())
            .cloned();
        if let (Some(info), None) = (&keep, &self.h1) {
            // Another client's sender takes the request and its headers: a copy.
            info.keep_request(copy_head(&req));
        }
        let (mut parts, body) = req.into_parts();
        let endpoint = self.authority.clone();
        if self.client.is_http2_only() {
            // RFC 9113 8.3.1: a `Host` that differs from `:authority` (here the endpoint's)
            // makes the request malformed; the client's host is in `X-Forwarded-Host`.
            parts.headers.remove(http::header::HOST);
        } else if !parts.headers.contains_key(http::header::HOST) {
            if let Some(authority) = parts.uri.authority() {
                if let Ok(v) = http::HeaderValue::from_str(authority.as_str()) {
                    parts.headers.insert(http::header::HOST, v);
                }
            }
        }
        if let Some(pool) = &self.h1 {
            // Our own pool speaks to the connection directly: origin-form URI, and the
            // endpoint's `Host` when the request still has none.
            let pq = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let uri = if self.base_path.is_empty() && pq.starts_with('/') {
                match parts.uri.path_and_query() {
                    Some(p) => Ok(http::Uri::from(p.clone())),
                    None => Ok(http::Uri::from_static("/")),
                }
            } else {
                join_path(&self.base_path, pq).parse::<http::Uri>()
            };
            let uri = match uri {
                Ok(uri) => uri,
                Err(e) => return Box::pin(std::future::ready(Err(upstream_err(&endpoint, e)))),
            };
            // This endpoint's own rewrites, undone in what is kept for another attempt
            // (which may go to another endpoint).
            let undo = Rewrites {
                uri: std::mem::replace(&mut parts.uri, uri),
                version: std::mem::replace(&mut parts.version, http::Version::HTTP_11),
                host_added: match parts.headers.entry(http::header::HOST) {
                    http::header::Entry::Vacant(v) => {
                        v.insert(self.host.clone());
                        true
                    }
                    http::header::Entry::Occupied(_) => false,
                },
            };
            let pool = pool.clone();
            // Encoded here, so the future below holds the bytes and not the request.
            return match Direct::encode(http::Request::from_parts(parts, body)) {
                Ok((direct, parts)) => {
                    if let Some(info) = keep {
                        info.keep_request(undo.apply(parts));
                    }
                    Box::pin(async move { answer(&endpoint, pool.send_direct(direct).await) })
                }
                Err(req) => {
                    if let Some(info) = keep {
                        info.keep_request(undo.apply(copy_head(&req)));
                    }
                    Box::pin(async move { answer(&endpoint, pool.send_hyper(req).await) })
                }
            };
        }
        let uri = match rewrite_uri(&self.base, &self.base_path, &parts.uri) {
            Ok(uri) => uri,
            Err(e) => return Box::pin(std::future::ready(Err(upstream_err(&endpoint, e)))),
        };
        parts.uri = uri;
        parts.version = self.client.request_version();
        // hyper writes the head from the map: the added headers go in it.
        quartet_policies::head::AddedHeaders::apply_from(&mut parts.extensions, &mut parts.headers);
        crate::proxy::apply_proxy_headers(&parts.extensions, &mut parts.headers);
        let fut = self.client.send(http::Request::from_parts(parts, body));
        Box::pin(async move {
            match fut.await {
                Ok(resp) => Ok(resp.map(|b| b.map_err(BoxError::from).boxed_unsync())),
                Err(e) if e.is_connect() => Err(ConnectError {
                    endpoint: endpoint.to_string(),
                    source: e.into(),
                }
                .into()),
                Err(e) => Err(upstream_err(&endpoint, e)),
            }
        })
    }
}

/// What our own pool's exchange gave, as the stack's result.
fn answer(
    endpoint: &str,
    sent: Result<http::Response<ProxyBody>, SendError>,
) -> Result<http::Response<ProxyBody>, BoxError> {
    match sent {
        Ok(resp) => Ok(resp),
        Err(SendError::Connect(source)) => Err(ConnectError {
            endpoint: endpoint.to_string(),
            source,
        }
        .into()),
        Err(SendError::Sent(source)) => Err(upstream_err(endpoint, source)),
    }
}

fn upstream_err(endpoint: &str, source: impl Into<BoxError>) -> BoxError {
    UpstreamError {
        endpoint: endpoint.to_string(),
        source: source.into(),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_base_and_request_paths() {
        let cases = [
            ("", "/", "/"),
            ("", "", "/"),
            ("", "/v2/servers?limit=1", "/v2/servers?limit=1"),
            ("/api", "/", "/api/"),
            ("/api", "/v2/x", "/api/v2/x"),
            ("/api/", "/v2/x", "/api/v2/x"),
            ("/api", "v2/x", "/api/v2/x"),
            ("/api", "/?q=1", "/api/?q=1"),
            ("/a/b", "//c", "/a/b//c"),
        ];
        for (base, pq, want) in cases {
            assert_eq!(join_path(base, pq), want, "join_path({base:?}, {pq:?})");
        }
    }

    #[test]
    fn rewrites_onto_the_endpoint() {
        let base = parse_endpoint("https://10.0.0.1:8443/compute/").unwrap();
        let uri: http::Uri = "http://gateway.example/v2.1/servers?all_tenants=1"
            .parse()
            .unwrap();
        let out = rewrite_uri(&base, base.path().trim_end_matches('/'), &uri).unwrap();
        assert_eq!(
            out.to_string(),
            "https://10.0.0.1:8443/compute/v2.1/servers?all_tenants=1"
        );
        let origin: http::Uri = "/x".parse().unwrap();
        let out = rewrite_uri(&base, "/compute", &origin).unwrap();
        assert_eq!(out.to_string(), "https://10.0.0.1:8443/compute/x");
    }

    #[test]
    fn authority_names_the_port() {
        let cases = [
            ("http://a.example", "a.example:80"),
            ("https://a.example", "a.example:443"),
            ("http://127.0.0.1:8774/base", "127.0.0.1:8774"),
            ("http://[::1]:9000", "[::1]:9000"),
        ];
        for (url, want) in cases {
            assert_eq!(authority_of(&parse_endpoint(url).unwrap()), want, "{url}");
        }
    }

    #[test]
    fn bad_endpoints_name_the_key() {
        for url in [
            "",
            "127.0.0.1:8774",
            "ftp://host:21",
            "http://",
            "http:///path",
            "http://host:80/?q=1",
            "http://user:pw@host",
            "not a url",
        ] {
            let err = parse_endpoint(url).expect_err(url);
            assert_eq!(err.key, "endpoints", "{url}");
            assert!(err.to_string().starts_with("endpoints: "), "{err}");
        }
    }
}
