//! How the REST channel classifies its results and replays its requests.

use crate::body::{full, Buffered, ProxyBody};
use crate::error::ConnectError;
use quartet_policies::classify::{classify_policy_error, Class, Classify, Replay};
use quartet_policies::BoxError;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};

/// Per-call facts the layers below share with the access log (kept in the request's
/// extensions as `Arc<CallInfo>`, carried over to every replayed attempt).
///
/// The [`Balancer`](crate::balance::Balancer) updates it once per attempt it sends:
/// `attempts += 1`, the endpoint's name, its index in `tried`. Replaying a request does
/// not touch it (an attempt refused before an endpoint was chosen is not counted).
#[derive(Debug, Default)]
pub struct CallInfo {
    /// Attempts sent (1 + retries).
    pub attempts: AtomicU32,
    /// The endpoint (authority) of the last attempt.
    pub endpoint: Mutex<Option<Arc<str>>>,
    /// Indexes of the endpoints tried, so a retry goes elsewhere when it can.
    pub tried: Mutex<Vec<usize>>,
}

/// Results of the REST channel: a status of 500 to 599 is a [`Class::Sent`] failure, any
/// other status (the client's 4xx included) a success. Errors: the policy layers' own
/// first, then [`ConnectError`] (nothing sent) and [`UpstreamError`](crate::error::UpstreamError) (maybe sent); an
/// unknown error counts as sent, the safe assumption.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpClassify;

impl<B> Classify<http::Response<B>> for HttpClassify {
    fn classify(&self, result: &Result<http::Response<B>, BoxError>) -> Class {
        match result {
            Ok(resp) if resp.status().is_server_error() => Class::Sent,
            Ok(_) => Class::Success,
            Err(err) => {
                if let Some(class) = classify_policy_error(err) {
                    class
                } else if err.is::<ConnectError>() {
                    Class::NotSent
                } else {
                    // An `UpstreamError`, or an error we do not know: it may have been
                    // sent, the safe assumption.
                    Class::Sent
                }
            }
        }
    }
}

/// Replays buffered requests; `idempotent_route` is the route's `idempotent = true`.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpReplay {
    pub idempotent_route: bool,
}

impl Replay<http::Request<ProxyBody>> for HttpReplay {
    /// A copy with the same method, URI, version, headers and extensions (the shared
    /// `Arc<CallInfo>` and [`Buffered`] among them) and the buffered bytes as its body;
    /// `None` when the body was not buffered (see
    /// [`buffer_for_replay`](crate::body::buffer_for_replay)).
    fn replay(&self, req: &http::Request<ProxyBody>) -> Option<http::Request<ProxyBody>> {
        let Buffered(bytes) = req.extensions().get::<Buffered>()?;
        let mut copy = http::Request::new(full(bytes.clone()));
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        Some(copy)
    }

    /// GET, HEAD, OPTIONS, TRACE, PUT and DELETE (RFC 9110 9.2.2), or any method on a
    /// route marked idempotent.
    fn idempotent(&self, req: &http::Request<ProxyBody>) -> bool {
        use http::Method;
        self.idempotent_route
            || matches!(
                *req.method(),
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::TRACE
                    | Method::PUT
                    | Method::DELETE
            )
    }
}
