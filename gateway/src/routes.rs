//! The public router: every request goes to the fallback handler, which matches the route
//! table, checks the body size, prepares the request as a reverse proxy does, calls the
//! route's policy stack and streams the answer back. `Upgrade` (WebSocket) requests get a
//! tunnel once the upstream answers 101.

use crate::error::{self, BodyTooLarge, NoRoute};
use crate::stack::{Built, Route};
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::Router;
use futures_util::future::BoxFuture;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::upgrade::OnUpgrade;
use quartet_http::body::{buffer_ended, buffer_for_replay};
use quartet_http::classify::CallInfo;
use quartet_http::proxy::{self, Forwarded};
use quartet_http::ProxyBody;
use quartet_policies::BoxError;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Facts about the client connection. The server loop hands them to [`serve`] with each
/// request, and sets them as a request extension where something else reads them (the
/// routers, and the token guard on a TLS connection).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub tls: bool,
    /// The client's IP as `X-Forwarded-For` writes it, made once per connection.
    pub client_ip: http::HeaderValue,
}

impl ConnInfo {
    pub fn new(remote: SocketAddr, tls: bool) -> Self {
        Self {
            remote,
            tls,
            client_ip: proxy::client_ip_value(remote),
        }
    }
}

/// The public router of one built config.
pub fn app(state: Arc<Built>) -> Router {
    Router::new()
        .merge(crate::native::router())
        .fallback(handle)
        .with_state(state)
}

/// Whether `prefix` (without trailing slash) matches `path` on a segment boundary.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
        None => false,
    }
}

/// The first route (host-specific first, then longest prefix) matching `host` and `path`.
pub fn find_route<'a>(routes: &'a [Route], host: Option<&str>, path: &str) -> Option<&'a Route> {
    find_route_index(routes, host, path).map(|i| &routes[i])
}

/// Where in `routes` [`find_route`]'s route is.
fn find_route_index(routes: &[Route], host: Option<&str>, path: &str) -> Option<usize> {
    // Normalized only when a route names a host (most configs have none).
    let mut normalized: Option<Option<String>> = None;
    routes.iter().position(|r| {
        let host_ok = match &r.host {
            None => true,
            Some(want) => normalized
                .get_or_insert_with(|| host.map(crate::config::normalize_host))
                .as_ref()
                .is_some_and(|got| want == got),
        };
        host_ok && prefix_matches(&r.prefix, path)
    })
}

/// `path` without `prefix` (which matched it); never empty.
pub fn strip_path<'a>(prefix: &str, path: &'a str) -> &'a str {
    match path.strip_prefix(prefix) {
        Some("") | None => "/",
        Some(rest) => rest,
    }
}

fn strip_uri(uri: &http::Uri, prefix: &str) -> Result<http::Uri, http::Error> {
    let path = strip_path(prefix, uri.path());
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse()?);
    Ok(http::Uri::from_parts(parts)?)
}

fn request_host<B>(req: &Request<B>, present: proxy::Present) -> Option<&str> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str());
    }
    if !present.host() {
        return None;
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
}

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn client_facts<B>(req: &Request<B>) -> ConnInfo {
    if let Some(info) = req.extensions().get::<ConnInfo>() {
        return info.clone();
    }
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    ConnInfo::new(remote, false)
}

/// What the access log line reports besides the request and the status.
#[derive(Default)]
struct Facts {
    /// The index of the request's route in the built routes.
    route: Option<usize>,
    call: Option<Arc<CallInfo>>,
}

/// Whether a request must go through the router (the native routes) rather than
/// straight to [`serve`], its fallback.
pub fn needs_router(path: &str) -> bool {
    path.starts_with("/native/")
}

fn handle(
    State(built): State<Arc<Built>>,
    req: Request<Body>,
) -> impl Future<Output = Response<Body>> + Send + 'static {
    let conn = client_facts(&req);
    serve(built, req, conn)
}

/// Serves one request of the public listener that is not a native one: the RPC bridge,
/// the identity API, or a REST route.
///
/// Everything up to the call of the route's stack is done here, before the future is
/// made: the future holds only what the answer and the access line need, not the request
/// (a future is moved and polled once per request, and an `async fn` keeps its arguments
/// and each of their moves).
pub fn serve(
    built: Arc<Built>,
    req: Request<Body>,
    conn: ConnInfo,
) -> impl Future<Output = Response<Body>> + Send + 'static {
    let start = Instant::now();
    // One pass over the request's header names, for the lookups below that would find
    // nothing (the headers are not changed until `prepare_request_of` has run).
    let present = proxy::Present::of(req.headers());
    let request_id = proxy::request_id_of(req.headers(), present);
    // The access line's method and path, taken only when the line is written.
    let access = tracing::enabled!(target: "quartet::access", tracing::Level::INFO)
        .then(|| (req.method().clone(), req.uri().path().to_string()));
    let mut facts = Facts::default();
    let started = match crate::rpc::intercept(&built, req, &request_id) {
        Ok(answer) => Started::Answer(answer),
        Err(req) => forward(&built, req, conn, &request_id, present, &mut facts)
            .unwrap_or_else(|err| Started::Done(Err(err))),
    };
    async move {
        let result = match started {
            Started::Done(result) => result,
            Started::Answer(answer) => answer.await,
            Started::Proxied { call, upgrade } => answered(call.await, upgrade, &request_id),
        };
        let rid = proxy::request_id_str(&request_id);
        let resp = match result {
            Ok(resp) => resp,
            Err(err) => error::into_response(err.as_ref(), Some(rid)),
        };
        if let Some((method, path)) = access {
            log_access(&built, &facts, rid, &method, &path, &resp, start);
        }
        resp
    }
}

/// A request's answer as [`forward`] leaves it.
enum Started {
    /// Known before anything was sent.
    Done(Result<Response<Body>, BoxError>),
    /// The identity API's or the RPC bridge's.
    Answer(crate::rpc::Answer),
    /// The route's stack called; the client's side of an upgrade, if it asked for one.
    Proxied {
        call: BoxFuture<'static, Result<Response<ProxyBody>, BoxError>>,
        upgrade: Option<OnUpgrade>,
    },
}

fn log_access(
    built: &Built,
    facts: &Facts,
    rid: &str,
    method: &http::Method,
    path: &str,
    resp: &Response<Body>,
    start: Instant,
) {
    let (attempts, endpoint) = match &facts.call {
        Some(call) => (
            call.attempts.load(Ordering::Relaxed),
            call.endpoint.lock().ok().and_then(|e| e.clone()),
        ),
        None => (0, None),
    };
    let upstream = facts
        .route
        .and_then(|i| built.rest.routes.get(i))
        .map(|r| r.upstream.as_str());
    tracing::info!(
        target: "quartet::access",
        request_id = rid,
        method = %method,
        path = path,
        status = resp.status().as_u16(),
        duration_ms = start.elapsed().as_micros() as f64 / 1000.0,
        upstream = upstream.unwrap_or("-"),
        endpoint = endpoint.as_deref().unwrap_or("-"),
        attempts,
        "request"
    );
}

/// The identity API's answer, or the request prepared as a reverse proxy does and the
/// route's stack called with it.
fn forward(
    built: &Arc<Built>,
    mut req: Request<Body>,
    conn: ConnInfo,
    request_id: &http::HeaderValue,
    present: proxy::Present,
    facts: &mut Facts,
) -> Result<Started, BoxError> {
    let host = request_host(&req, present);
    if crate::identity::serves_v3(built, host, req.uri().path()) {
        let built = built.clone();
        return Ok(Started::Answer(Box::pin(async move {
            crate::identity::serve_v3(&built, req).await
        })));
    }
    let index = find_route_index(&built.rest.routes, host, req.uri().path()).ok_or(NoRoute)?;
    let route = &built.rest.routes[index];
    facts.route = Some(index);

    let limit = built.config.server.max_body_bytes;
    if present.content_length() && content_length(&req).is_some_and(|len| len > limit) {
        return Err(BodyTooLarge { limit }.into());
    }

    // Taken before the request is sent on: the client's side of a WebSocket upgrade.
    let upgrade = present
        .is_upgrade(&req)
        .then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    if route.strip_prefix {
        parts.uri = strip_uri(&parts.uri, &route.prefix)?;
    }
    // The call's facts, shared by every attempt (and by the replay buffer, which keeps
    // the body in it): the one extension the stack reads.
    let call = Arc::new(CallInfo::default());
    parts.extensions.insert(call.clone());
    facts.call = Some(call);
    // The body streams through; `Limited` stops a chunked body that grows past the limit.
    let body = limited(body, usize::try_from(limit).unwrap_or(usize::MAX));
    let mut req = Request::from_parts(parts, body);
    let fwd = Forwarded {
        client_ip: conn.client_ip,
        proto: if conn.tls { "https" } else { "http" },
    };
    proxy::prepare_request_of(&mut req, &fwd, request_id, present);

    // An upgrade has no body and is never replayed (its connection is taken over). A
    // body that has ended (most requests) is kept for replay at once; any other is read
    // first.
    let call = if upgrade.is_some() {
        route.service.call(req)
    } else {
        match buffer_ended(req) {
            Ok(req) => route.service.call(req),
            Err(req) => {
                let (service, limit) = (route.service.clone(), route.policy.retry.buffer_limit);
                Box::pin(async move { service.call(buffer_for_replay(req, limit).await?).await })
            }
        }
    };
    Ok(Started::Proxied { call, upgrade })
}

/// The proxied answer as the client gets it: the tunnel started on a 101, the request id
/// set, hop-by-hop headers gone.
fn answered(
    result: Result<Response<ProxyBody>, BoxError>,
    upgrade: Option<OnUpgrade>,
    request_id: &http::HeaderValue,
) -> Result<Response<Body>, BoxError> {
    let mut resp = result?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client) = upgrade {
            let upstream = hyper::upgrade::on(&mut resp);
            tokio::spawn(proxy::tunnel(client, upstream));
        }
    }
    proxy::prepare_response(&mut resp, request_id);
    Ok(resp.map(Body::new))
}

/// The client's body as the stack's body type, failing once it grows past `limit`.
fn limited(body: Body, limit: usize) -> ProxyBody {
    Limited::new(body, limit).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use quartet_policies::spec::PolicySpec;

    fn route(prefix: &str, host: Option<&str>, upstream: &str) -> Route {
        let svc = tower::service_fn(|_req: Request<ProxyBody>| async {
            Ok::<_, BoxError>(Response::new(ProxyBody::default()))
        });
        Route {
            prefix: crate::config::normalize_prefix(prefix).to_string(),
            host: host.map(crate::config::normalize_host),
            strip_prefix: false,
            upstream: upstream.to_string(),
            policy: PolicySpec::default(),
            service: crate::stack::RestService::boxing(svc),
        }
    }

    fn sorted(mut routes: Vec<Route>) -> Vec<Route> {
        routes.sort_by_key(|r| (r.host.is_none(), std::cmp::Reverse(r.prefix.len())));
        routes
    }

    fn pick(routes: &[Route], host: Option<&str>, path: &str) -> Option<String> {
        find_route(routes, host, path).map(|r| r.upstream.clone())
    }

    #[test]
    fn prefix_matches_on_segment_boundary() {
        assert!(prefix_matches("/compute", "/compute"));
        assert!(prefix_matches("/compute", "/compute/"));
        assert!(prefix_matches("/compute", "/compute/servers"));
        assert!(!prefix_matches("/compute", "/computex"));
        assert!(!prefix_matches("/compute", "/"));
        assert!(prefix_matches("", "/anything"));
        assert!(prefix_matches("", "/"));
    }

    #[test]
    fn longest_prefix_wins_and_host_routes_first() {
        let routes = sorted(vec![
            route("/", None, "root"),
            route("/compute", None, "compute"),
            route("/compute/v2.1", None, "compute21"),
            route("/compute", Some("API.example.com"), "compute-api"),
            route("/compute/", None, "dup-ignored"),
        ]);
        assert_eq!(
            pick(&routes, None, "/compute/v2.1/servers").as_deref(),
            Some("compute21")
        );
        assert_eq!(
            pick(&routes, None, "/compute/v2/servers").as_deref(),
            Some("compute")
        );
        assert_eq!(pick(&routes, None, "/computex").as_deref(), Some("root"));
        assert_eq!(pick(&routes, None, "/image").as_deref(), Some("root"));
        // The host-specific route wins even over a longer host-less prefix; port ignored.
        assert_eq!(
            pick(&routes, Some("api.example.com:8443"), "/compute/v2.1/x").as_deref(),
            Some("compute-api")
        );
        assert_eq!(
            pick(&routes, Some("other.example.com"), "/compute/x").as_deref(),
            Some("compute")
        );
    }

    #[test]
    fn no_route_is_none() {
        let routes = sorted(vec![route("/compute", None, "compute")]);
        assert!(pick(&routes, None, "/image").is_none());
        assert!(pick(&routes, None, "/").is_none());
    }

    #[test]
    fn strip_prefix_keeps_the_query_and_never_leaves_an_empty_path() {
        let u: http::Uri = "/demo/x/y?a=1".parse().unwrap();
        assert_eq!(strip_uri(&u, "/demo").unwrap(), "/x/y?a=1");
        let u: http::Uri = "/demo?a=1".parse().unwrap();
        assert_eq!(strip_uri(&u, "/demo").unwrap(), "/?a=1");
        let u: http::Uri = "http://h:1/demo/".parse().unwrap();
        assert_eq!(strip_uri(&u, "/demo").unwrap(), "http://h:1/");
        assert_eq!(strip_path("", "/a"), "/a");
    }
}
