//! How the REST channel classifies its results and replays its requests.

use crate::body::{empty, full, ProxyBody};
use crate::error::ConnectError;
use bytes::Bytes;
use quartet_policies::classify::{classify_policy_error, Class, Classify, Replay};
use quartet_policies::BoxError;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

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
    /// Indexes of the endpoints tried, so a retry goes elsewhere when it can (kept only
    /// when the upstream has more than one endpoint).
    pub tried: Mutex<Vec<usize>>,
    /// The whole request body, when the replay buffer held it
    /// ([`buffer_for_replay`](crate::body::buffer_for_replay)): every attempt can send
    /// it. Kept here rather than as an extension of its own, so a request and each copy
    /// of it carry one extension for all the per-call facts.
    buffered: OnceLock<Bytes>,
    /// The headers the proxy sets on the request (`X-Forwarded-*`, the request id),
    /// which whoever sends the request writes ([`crate::proxy::prepare_request`]).
    proxy_headers: OnceLock<crate::proxy::ProxyHeaders>,
    /// Set by [`HttpReplay::replay`] before an attempt that a retry may follow: the
    /// endpoint keeps the request it sends ([`CallInfo::keep_request`]).
    keep_next: AtomicBool,
    /// The head of the last attempt's request, as it came to the endpoint, for the next
    /// attempt ([`HttpReplay::again`]). Kept, not copied before every attempt: almost
    /// no request is retried.
    kept: Mutex<Option<http::request::Parts>>,
}

impl CallInfo {
    /// The whole request body, if it was buffered.
    pub fn buffered(&self) -> Option<&Bytes> {
        self.buffered.get()
    }

    /// Records the whole request body (the first time only: a call has one body).
    pub fn set_buffered(&self, bytes: Bytes) {
        let _ = self.buffered.set(bytes);
    }

    /// The headers the proxy sets on the call's request, once set.
    pub fn proxy_headers(&self) -> Option<&crate::proxy::ProxyHeaders> {
        self.proxy_headers.get()
    }

    /// Records the proxy's headers (the first time only: a call is prepared once).
    pub fn set_proxy_headers(&self, headers: crate::proxy::ProxyHeaders) {
        let _ = self.proxy_headers.set(headers);
    }

    /// Whether whoever sends the request should keep its head for another attempt.
    pub fn keeps_request(&self) -> bool {
        self.keep_next.load(Ordering::Relaxed)
    }

    /// Keeps the head of the request being sent (as it came to the endpoint, before the
    /// endpoint's own rewrites) for the next attempt.
    pub fn keep_request(&self, mut parts: http::request::Parts) {
        // Not this info itself: it would hold itself.
        parts.extensions.remove::<Arc<CallInfo>>();
        *self.kept.lock().unwrap_or_else(|e| e.into_inner()) = Some(parts);
    }
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

/// What [`HttpReplay::replay`] keeps for another attempt: the call's info, in which the
/// endpoint that sends the request keeps its head. Dropped without
/// [`HttpReplay::again`] (no retry after all), it lets the head go at once.
#[derive(Debug)]
pub struct KeptRequest(Arc<CallInfo>);

impl Drop for KeptRequest {
    fn drop(&mut self) {
        self.0.keep_next.store(false, Ordering::Relaxed);
        let head = self.0.kept.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(head);
    }
}

impl Replay<http::Request<ProxyBody>> for HttpReplay {
    type Kept = KeptRequest;

    /// The request's shared `Arc<CallInfo>`, told to keep the request's head when it is
    /// sent; `None` when the body was not buffered (see
    /// [`buffer_for_replay`](crate::body::buffer_for_replay)).
    fn replay(&self, req: &http::Request<ProxyBody>) -> Option<KeptRequest> {
        let info = req.extensions().get::<Arc<CallInfo>>()?;
        info.buffered()?;
        info.keep_next.store(true, Ordering::Relaxed);
        Some(KeptRequest(info.clone()))
    }

    /// The kept head (the same method, URI, version, headers and extensions, the info
    /// put back among them) with the buffered bytes as its body. `None` when no head was
    /// kept: the attempt ended before an endpoint sent it.
    fn again(&self, kept: KeptRequest) -> Option<http::Request<ProxyBody>> {
        let info = &kept.0;
        info.keep_next.store(false, Ordering::Relaxed);
        let mut parts = info.kept.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        let buffered = info.buffered()?;
        // An empty body (most requests) boxes nothing.
        let body = if buffered.is_empty() {
            empty()
        } else {
            full(buffered.clone())
        };
        parts.extensions.insert(info.clone());
        Some(http::Request::from_parts(parts, body))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::UpstreamError;
    use http_body_util::BodyExt;
    use quartet_policies::error::{
        BreakerOpen, Elapsed, FaultAbort, NoEndpoint, Overloaded, RateLimited, TimeoutKind,
    };
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    fn status(code: u16) -> Result<http::Response<()>, BoxError> {
        Ok(http::Response::builder().status(code).body(()).unwrap())
    }

    fn err(
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Result<http::Response<()>, BoxError> {
        Err(Box::new(e))
    }

    #[test]
    fn classifies_results() {
        let c = HttpClassify;
        let table: Vec<(Result<http::Response<()>, BoxError>, Class)> = vec![
            (status(200), Class::Success),
            (status(204), Class::Success),
            (status(301), Class::Success),
            (status(404), Class::Success),
            (status(429), Class::Success),
            (status(499), Class::Success),
            (status(500), Class::Sent),
            (status(501), Class::Sent),
            (status(503), Class::Sent),
            (status(599), Class::Sent),
            (
                err(ConnectError {
                    endpoint: "a:1".into(),
                    source: "refused".into(),
                }),
                Class::NotSent,
            ),
            (
                err(UpstreamError {
                    endpoint: "a:1".into(),
                    source: "reset".into(),
                }),
                Class::Sent,
            ),
            (
                err(Elapsed {
                    kind: TimeoutKind::PerTry,
                    after: Duration::from_secs(1),
                }),
                Class::Sent,
            ),
            (
                err(Elapsed {
                    kind: TimeoutKind::Total,
                    after: Duration::from_secs(1),
                }),
                Class::Local,
            ),
            (
                err(BreakerOpen {
                    target: "rest:a".into(),
                    retry_after: Duration::from_secs(1),
                }),
                Class::Local,
            ),
            (
                err(NoEndpoint {
                    target: "rest:a".into(),
                }),
                Class::Local,
            ),
            (err(Overloaded { limit: 1 }), Class::Local),
            (
                err(RateLimited {
                    retry_after: Duration::from_secs(1),
                }),
                Class::Local,
            ),
            (
                err(FaultAbort {
                    status: Some(503),
                    message: "x".into(),
                }),
                Class::Local,
            ),
            (Err("something else".into()), Class::Sent),
        ];
        for (result, want) in table {
            let got = c.classify(&result);
            assert_eq!(got, want, "{:?}", result.as_ref().map(|r| r.status()));
        }
    }

    #[tokio::test]
    async fn replay_keeps_a_buffered_request_and_sends_it_again() {
        use quartet_policies::head::AddedHeaders;
        let info = Arc::new(CallInfo::default());
        info.attempts.store(1, Ordering::Relaxed);
        let mut req = http::Request::put("http://gw/v2/servers/1?x=y")
            .version(http::Version::HTTP_2)
            .header("x-auth-token", "t")
            .header("content-type", "application/json")
            .body(full(bytes::Bytes::from_static(b"{\"a\":1}")))
            .unwrap();
        info.set_buffered(Bytes::from_static(b"{\"a\":1}"));
        req.extensions_mut().insert(info.clone());
        struct NoHeaders(quartet_policies::head::HeaderBlock);
        impl quartet_policies::head::HoldsHeaderBlocks for NoHeaders {
            fn header_block(&self, _: usize) -> &quartet_policies::head::HeaderBlock {
                &self.0
            }
        }
        let block = Arc::new(NoHeaders(Default::default()));
        req.extensions_mut().insert(AddedHeaders::new(block, 0));
        let (method, uri, headers) = (
            req.method().clone(),
            req.uri().clone(),
            req.headers().clone(),
        );

        let replay = HttpReplay::default();
        assert!(
            !info.keeps_request(),
            "nothing is kept unless a retry may follow"
        );
        let kept = replay.replay(&req).expect("buffered");
        assert!(Arc::ptr_eq(&kept.0, &info));
        assert!(
            info.keeps_request(),
            "the endpoint is told to keep the request"
        );
        // What the endpoint does with the request it sends.
        info.keep_request(req.into_parts().0);
        // The kept head does not hold the info that holds it (a cycle, never freed when
        // no retry takes the head out): only `info` and `kept` count.
        assert_eq!(Arc::strong_count(&info), 2);

        let copy = replay.again(kept).expect("kept");
        assert!(
            !info.keeps_request(),
            "the next attempt keeps only if asked again"
        );
        assert!(copy.extensions().get::<AddedHeaders>().is_some());
        assert_eq!(copy.method(), method);
        assert_eq!(copy.uri(), &uri);
        assert_eq!(copy.version(), http::Version::HTTP_2);
        assert_eq!(copy.headers(), &headers);
        let shared = copy.extensions().get::<Arc<CallInfo>>().unwrap();
        assert!(Arc::ptr_eq(shared, &info));
        assert_eq!(shared.attempts.load(Ordering::Relaxed), 1);
        assert_eq!(shared.buffered().unwrap(), "{\"a\":1}");
        let body = copy.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "{\"a\":1}");
        assert_eq!(Arc::strong_count(&info), 1);
    }

    #[test]
    fn no_second_attempt_when_no_endpoint_kept_the_request() {
        let info = Arc::new(CallInfo::default());
        info.set_buffered(Bytes::new());
        let mut req = http::Request::get("/").body(crate::body::empty()).unwrap();
        req.extensions_mut().insert(info.clone());
        let replay = HttpReplay::default();
        let kept = replay.replay(&req).expect("buffered");
        assert!(replay.again(kept).is_none());

        // Kept, then no retry: the head goes with what the retry layer kept.
        let kept = replay.replay(&req).expect("buffered");
        info.keep_request(req.into_parts().0);
        drop(kept);
        assert!(!info.keeps_request());
        assert!(info.kept.lock().unwrap().is_none());
        assert_eq!(Arc::strong_count(&info), 1);
    }

    #[test]
    fn no_replay_without_a_buffer() {
        let req = http::Request::get("/").body(crate::body::empty()).unwrap();
        assert!(HttpReplay::default().replay(&req).is_none());
    }

    #[test]
    fn idempotent_methods() {
        let plain = HttpReplay::default();
        let marked = HttpReplay {
            idempotent_route: true,
        };
        for (method, idempotent) in [
            ("GET", true),
            ("HEAD", true),
            ("OPTIONS", true),
            ("TRACE", true),
            ("PUT", true),
            ("DELETE", true),
            ("POST", false),
            ("PATCH", false),
            ("CONNECT", false),
        ] {
            let req = http::Request::builder()
                .method(method)
                .uri("/")
                .body(crate::body::empty())
                .unwrap();
            assert_eq!(plain.idempotent(&req), idempotent, "{method}");
            assert!(marked.idempotent(&req), "{method} on a marked route");
        }
    }
}
