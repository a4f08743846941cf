//! The edge: the ONE place where any error becomes a response. Errors are typed at the
//! leaves (the policy layers, the HTTP adapter, the gateway's own checks), boxed on their
//! way up, and mapped here by walking the source chain for a type we know. Internal
//! details are logged once; the client gets Keystone's error body with a generic message.

use crate::rpc::{RpcFailed, UnknownTopic};
use axum::body::Body;
use http::{header, HeaderValue, Response, StatusCode};
use quartet_amqp::RpcError;
use quartet_http::error::{BodyError, ConnectError, UpstreamError};
use quartet_policies::error::{
    BreakerOpen, Elapsed, FaultAbort, NoEndpoint, Overloaded, RateLimited,
};
use std::error::Error as StdError;
use std::time::Duration;

/// No route matches the request's path and host. Edge: 404.
#[derive(Debug, thiserror::Error)]
#[error("no route for this path")]
pub struct NoRoute;

/// The request body is larger than `server.max_body_bytes`. Edge: 413.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// The admin API refused a request without the right bearer token. Edge: 401.
#[derive(Debug, thiserror::Error)]
#[error("admin token missing or wrong")]
pub struct Unauthorized;

/// A request the admin API cannot act on. Edge: 400 with the message (it names the key).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BadRequest {
    pub message: String,
}

/// The admin API knows no such target. Edge: 404.
#[derive(Debug, thiserror::Error)]
#[error("no target named {target:?}")]
pub struct UnknownTarget {
    pub target: String,
}

/// What the edge decided for an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    pub status: StatusCode,
    /// Safe to send to the client: never carries internal details.
    pub message: String,
    /// `Retry-After` in whole seconds.
    pub retry_after: Option<u64>,
    /// A remote exception's `{class, module, message}` (RPC channel), added to the body.
    pub remote: Option<serde_json::Value>,
}

fn edge(status: StatusCode, message: &str) -> Edge {
    Edge {
        status,
        message: message.to_string(),
        retry_after: None,
        remote: None,
    }
}

/// The RPC channel's errors (quartet-amqp's [`RpcError`]), with what the topic's config
/// says about a remote exception (`rpc`: the [`RpcFailed`] wrapper, when found above it).
fn rpc_edge(e: &RpcError, rpc: Option<&RpcFailed>) -> Edge {
    let unavailable = |message: &str| Edge {
        retry_after: Some(1),
        ..edge(StatusCode::SERVICE_UNAVAILABLE, message)
    };
    match e {
        RpcError::Remote(f) => {
            let status = rpc
                .and_then(|r| r.remote_status)
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let traceback = rpc.is_some_and(|r| r.expose_traceback);
            Edge {
                remote: Some(crate::rpc::remote_edge(f, traceback)),
                ..edge(status, &format!("remote method raised {}", f.class))
            }
        }
        RpcError::Timeout { .. } => edge(StatusCode::GATEWAY_TIMEOUT, "no rpc reply in time"),
        RpcError::NotConnected(_) => unavailable("rpc channel not connected to the broker"),
        RpcError::Disconnected(_) => unavailable("broker connection lost during the rpc"),
        RpcError::Unroutable { .. } => unavailable("no rpc server listens on this topic"),
        RpcError::BadReply(_) => edge(
            StatusCode::BAD_GATEWAY,
            "the rpc reply could not be decoded",
        ),
        RpcError::InvalidRequest { reason, .. } => edge(
            StatusCode::BAD_REQUEST,
            &format!("invalid rpc request: {reason}"),
        ),
        // Refused, Publish, Unconfirmed, Exchange, Shutdown and what comes later.
        _ => unavailable("the broker did not take the message"),
    }
}

fn secs_ceil(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

/// Maps an error to its status by the first type in its source chain that we know.
pub fn classify(err: &(dyn StdError + 'static)) -> Edge {
    // A body over the limit is the client's doing, whatever the layer that hit it (the
    // upstream client wraps it in its own send error): look for it first.
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(b) = e.downcast_ref::<BodyTooLarge>() {
            return edge(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body larger than {} bytes", b.limit),
            );
        }
        if e.is::<http_body_util::LengthLimitError>() {
            return edge(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
        }
        cur = e.source();
    }
    let mut upstream_side = false;
    let mut rpc: Option<&RpcFailed> = None;
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<RpcFailed>() {
            rpc = Some(r);
        }
        if let Some(r) = e.downcast_ref::<RpcError>() {
            return rpc_edge(r, rpc);
        }
        if let Some(t) = e.downcast_ref::<UnknownTopic>() {
            return edge(StatusCode::NOT_FOUND, &t.to_string());
        }
        if e.is::<Elapsed>() {
            return edge(StatusCode::GATEWAY_TIMEOUT, "upstream timed out");
        }
        if let Some(b) = e.downcast_ref::<BreakerOpen>() {
            return Edge {
                retry_after: Some(secs_ceil(b.retry_after)),
                ..edge(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream unavailable (circuit breaker open)",
                )
            };
        }
        if e.is::<Overloaded>() {
            return Edge {
                retry_after: Some(1),
                ..edge(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many requests in flight",
                )
            };
        }
        if let Some(r) = e.downcast_ref::<RateLimited>() {
            return Edge {
                retry_after: Some(secs_ceil(r.retry_after)),
                ..edge(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded")
            };
        }
        if e.is::<NoEndpoint>() {
            return edge(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream endpoint",
            );
        }
        if let Some(f) = e.downcast_ref::<FaultAbort>() {
            let status = f
                .status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return edge(status, "fault injected");
        }
        if e.is::<NoRoute>() {
            return edge(StatusCode::NOT_FOUND, "no route for this path");
        }
        if let Some(r) = e.downcast_ref::<crate::identity::Refused>() {
            return refused_edge(r);
        }
        if e.is::<Unauthorized>() {
            return edge(StatusCode::UNAUTHORIZED, "admin token missing or wrong");
        }
        if let Some(b) = e.downcast_ref::<BadRequest>() {
            return edge(StatusCode::BAD_REQUEST, &b.message);
        }
        if let Some(u) = e.downcast_ref::<UnknownTarget>() {
            return edge(StatusCode::NOT_FOUND, &u.to_string());
        }
        if let Some(edge) = native_edge(e) {
            return edge;
        }
        if e.is::<BodyError>() {
            return edge(StatusCode::BAD_REQUEST, "request body could not be read");
        }
        if e.is::<ConnectError>() {
            return edge(StatusCode::BAD_GATEWAY, "upstream unreachable");
        }
        if e.is::<UpstreamError>() {
            return edge(StatusCode::BAD_GATEWAY, "upstream request failed");
        }
        if e.is::<hyper::Error>() || e.is::<hyper_util::client::legacy::Error>() {
            upstream_side = true;
        }
        cur = e.source();
    }
    if upstream_side {
        edge(StatusCode::BAD_GATEWAY, "upstream request failed")
    } else {
        edge(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

/// The guard's refusals (`crate::identity::Refused`), with keystonemiddleware's and
/// Keystone's messages.
fn refused_edge(r: &crate::identity::Refused) -> Edge {
    use crate::identity::Refused;
    match r {
        Refused::Unauthorized { .. } => edge(
            StatusCode::UNAUTHORIZED,
            "The request you have made requires authentication.",
        ),
        Refused::Forbidden { rule } => edge(
            StatusCode::FORBIDDEN,
            &format!("You are not authorized to perform the requested action: {rule}."),
        ),
        Refused::Unavailable => edge(
            StatusCode::SERVICE_UNAVAILABLE,
            "The Keystone service is temporarily unavailable.",
        ),
    }
}

/// The native channel's errors (`quartet_native` and `crate::native`), if `e` is one.
/// A caller's error (invalid input, not found, conflict) is told to the caller; a
/// backend's error is not: its details are logged.
fn native_edge(e: &(dyn StdError + 'static)) -> Option<Edge> {
    use quartet_native::{DriverError, UnknownDriver, UnknownOperation};
    if let Some(d) = e.downcast_ref::<DriverError>() {
        return Some(match d {
            DriverError::InvalidInput { .. } => edge(StatusCode::BAD_REQUEST, &d.to_string()),
            DriverError::NotFound { .. } => edge(StatusCode::NOT_FOUND, &d.to_string()),
            DriverError::Conflict { .. } => edge(StatusCode::CONFLICT, &d.to_string()),
            DriverError::Permanent { .. } => {
                edge(StatusCode::INTERNAL_SERVER_ERROR, "driver backend failed")
            }
            DriverError::Transient { .. } => {
                edge(StatusCode::BAD_GATEWAY, "driver backend temporarily failed")
            }
        });
    }
    if e.is::<UnknownDriver>() || e.is::<UnknownOperation>() || e.is::<crate::native::UnknownJob>()
    {
        return Some(edge(StatusCode::NOT_FOUND, &e.to_string()));
    }
    if e.is::<crate::native::DriverNotReady>() {
        return Some(edge(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()));
    }
    if e.is::<crate::native::JobsUnavailable>() || e.is::<quartet_native::jobs::JobsError>() {
        return Some(Edge {
            retry_after: Some(1),
            ..edge(StatusCode::SERVICE_UNAVAILABLE, "jobs store unavailable")
        });
    }
    None
}

/// The Keystone error body for a status and a message.
pub fn error_body(status: StatusCode, message: &str) -> Response<Body> {
    error_body_with(status, message, None)
}

/// The Keystone error body, plus `"remote"` (a remote exception) when given.
pub fn error_body_with(
    status: StatusCode,
    message: &str,
    remote: Option<&serde_json::Value>,
) -> Response<Body> {
    let mut body = serde_json::json!({
        "error": {
            "code": status.as_u16(),
            "title": status.canonical_reason().unwrap_or("Error"),
            "message": message,
        }
    });
    if let Some(remote) = remote {
        body["remote"] = remote.clone();
    }
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The error chain as one line, for the log.
pub struct Chain<'a>(pub &'a (dyn StdError + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}

/// The guard's refusal in `err`'s chain, if any.
fn find_refused<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a crate::identity::Refused> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<crate::identity::Refused>() {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

/// THE edge function: logs the error once and turns it into the client's response.
pub fn into_response(err: &(dyn StdError + 'static), request_id: Option<&str>) -> Response<Body> {
    let edge = classify(err);
    let rid = request_id.unwrap_or("-");
    if edge.status.is_server_error() {
        tracing::warn!(request_id = rid, status = edge.status.as_u16(), error = %Chain(err), "request failed");
    } else {
        tracing::debug!(request_id = rid, status = edge.status.as_u16(), error = %Chain(err), "request refused");
    }
    let mut resp = error_body_with(edge.status, &edge.message, edge.remote.as_ref());
    if let Some(secs) = edge.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(www) = find_refused(err).and_then(crate::identity::Refused::www_authenticate) {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, www.clone());
    }
    if let Some(rid) = request_id.and_then(|r| HeaderValue::from_str(r).ok()) {
        resp.headers_mut()
            .insert(quartet_http::proxy::REQUEST_ID, rid);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use quartet_policies::error::TimeoutKind;
    use quartet_policies::BoxError;

    /// Wraps an error the way layers and hyper do, to check the chain is walked.
    #[derive(Debug, thiserror::Error)]
    #[error("wrapped")]
    struct Wrapped(#[source] BoxError);

    fn status_of(e: BoxError) -> (u16, Option<u64>) {
        let edge = classify(e.as_ref());
        (edge.status.as_u16(), edge.retry_after)
    }

    #[test]
    fn mapping_table() {
        let io = || -> BoxError { Box::new(std::io::Error::other("refused")) };
        let cases: Vec<(BoxError, u16, Option<u64>)> = vec![
            (
                Box::new(Elapsed {
                    kind: TimeoutKind::Total,
                    after: Duration::from_secs(1),
                }),
                504,
                None,
            ),
            (
                Box::new(Elapsed {
                    kind: TimeoutKind::PerTry,
                    after: Duration::from_secs(1),
                }),
                504,
                None,
            ),
            (
                Box::new(BreakerOpen {
                    target: "rest:a".into(),
                    retry_after: Duration::from_millis(1500),
                }),
                503,
                Some(2),
            ),
            (
                Box::new(BreakerOpen {
                    target: "rest:a".into(),
                    retry_after: Duration::ZERO,
                }),
                503,
                Some(1),
            ),
            (Box::new(Overloaded { limit: 3 }), 503, Some(1)),
            (
                Box::new(RateLimited {
                    retry_after: Duration::from_millis(10),
                }),
                429,
                Some(1),
            ),
            (
                Box::new(NoEndpoint {
                    target: "rest:a".into(),
                }),
                503,
                None,
            ),
            (
                Box::new(FaultAbort {
                    status: Some(418),
                    message: "x".into(),
                }),
                418,
                None,
            ),
            (
                Box::new(FaultAbort {
                    status: None,
                    message: "x".into(),
                }),
                500,
                None,
            ),
            (
                Box::new(ConnectError {
                    endpoint: "127.0.0.1:1".into(),
                    source: io(),
                }),
                502,
                None,
            ),
            (
                Box::new(UpstreamError {
                    endpoint: "127.0.0.1:1".into(),
                    source: io(),
                }),
                502,
                None,
            ),
            (Box::new(BodyTooLarge { limit: 10 }), 413, None),
            (Box::new(NoRoute), 404, None),
            (Box::new(BodyError { source: io() }), 400, None),
            (Box::new(Unauthorized), 401, None),
            (io(), 500, None),
            // Found under a wrapper: the chain is walked.
            (
                Box::new(Wrapped(Box::new(Overloaded { limit: 1 }))),
                503,
                Some(1),
            ),
        ];
        for (err, status, retry_after) in cases {
            let shown = err.to_string();
            assert_eq!(status_of(err), (status, retry_after), "{shown}");
        }
    }

    #[test]
    fn rpc_errors_map_by_kind_and_remote_status() {
        use quartet_amqp::RemoteFailure;
        let remote = || RpcError::Remote(Box::new(RemoteFailure::new("NotFound", "nova", "x")));
        let wrapped = |remote_status, source: BoxError| -> BoxError {
            Box::new(RpcFailed {
                topic: "compute".into(),
                remote_status,
                expose_traceback: false,
                source,
            })
        };
        assert_eq!(status_of(wrapped(None, Box::new(remote()))), (500, None));
        assert_eq!(
            status_of(wrapped(Some(404), Box::new(remote()))),
            (404, None)
        );
        let edge = classify(wrapped(Some(404), Box::new(remote())).as_ref());
        assert_eq!(
            edge.remote,
            Some(serde_json::json!({"class": "NotFound", "module": "nova", "message": "x"}))
        );
        let timeout = RpcError::Timeout {
            msg_id: "m".into(),
            after: Duration::from_secs(1),
            monitor: false,
        };
        assert_eq!(status_of(wrapped(None, Box::new(timeout))), (504, None));
        assert_eq!(
            status_of(wrapped(None, Box::new(RpcError::NotConnected(None)))),
            (503, Some(1))
        );
        let unroutable = RpcError::Unroutable {
            exchange: "openstack".into(),
            routing_key: "t".into(),
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
        };
        assert_eq!(status_of(Box::new(unroutable)), (503, Some(1)));
        // The stack's own refusals above the adapter keep their meaning.
        let open = BreakerOpen {
            target: "rpc:compute".into(),
            retry_after: Duration::from_secs(3),
        };
        assert_eq!(status_of(wrapped(None, Box::new(open))), (503, Some(3)));
        let unknown = crate::rpc::UnknownTopic { topic: "x".into() };
        assert_eq!(status_of(Box::new(unknown)), (404, None));
    }

    #[tokio::test]
    async fn body_over_the_limit_is_413_even_inside_an_upstream_error() {
        use http_body_util::{BodyExt, Full, Limited};
        let too_big = Limited::new(Full::new(bytes::Bytes::from_static(b"0123456789")), 4)
            .collect()
            .await
            .unwrap_err();
        let err: BoxError = Box::new(UpstreamError {
            endpoint: "127.0.0.1:1".into(),
            source: Box::new(Wrapped(too_big)),
        });
        assert_eq!(status_of(err), (413, None));
    }

    #[tokio::test]
    async fn body_is_keystone_shaped_and_hides_details() {
        let err = ConnectError {
            endpoint: "10.1.2.3:8774".into(),
            source: Box::new(std::io::Error::other("secret detail")),
        };
        let resp = into_response(&err, Some("req-x"));
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(resp.headers()["x-openstack-request-id"], "req-x");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"code": 502, "title": "Bad Gateway", "message": "upstream unreachable"}})
        );
    }

    #[test]
    fn retry_after_header_is_set() {
        let err = RateLimited {
            retry_after: Duration::from_millis(2100),
        };
        let resp = into_response(&err, None);
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
    }
}
