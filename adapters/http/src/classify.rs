//! How the REST channel classifies its results and replays its requests.

use crate::body::ProxyBody;
use quartet_policies::classify::{Class, Classify, Replay};
use quartet_policies::BoxError;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};

/// Per-call facts the layers below share with the access log (kept in the request's
/// extensions as `Arc<CallInfo>`, carried over to every replayed attempt).
#[derive(Debug, Default)]
pub struct CallInfo {
    /// Attempts sent (1 + retries).
    pub attempts: AtomicU32,
    /// The endpoint (authority) of the last attempt.
    pub endpoint: Mutex<Option<Arc<str>>>,
    /// Indexes of the endpoints tried, so a retry goes elsewhere when it can.
    pub tried: Mutex<Vec<usize>>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct HttpClassify;

impl<B> Classify<http::Response<B>> for HttpClassify {
    fn classify(&self, result: &Result<http::Response<B>, BoxError>) -> Class {
        let _ = result;
        todo!("classify")
    }
}

/// Replays buffered requests; `idempotent_route` is the route's `idempotent = true`.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpReplay {
    pub idempotent_route: bool,
}

impl Replay<http::Request<ProxyBody>> for HttpReplay {
    fn replay(&self, req: &http::Request<ProxyBody>) -> Option<http::Request<ProxyBody>> {
        let _ = req;
        todo!("replay")
    }
    fn idempotent(&self, req: &http::Request<ProxyBody>) -> bool {
        let _ = req;
        todo!("idempotent")
    }
}
