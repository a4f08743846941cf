//! One upstream endpoint as a tower Service: rewrites the request's URI onto the endpoint
//! and sends it with the upstream's pooled client.

use crate::body::ProxyBody;
use crate::client::HttpClient;
use crate::error::BuildError;
use crate::BoxError;
use futures_util::future::BoxFuture;
use std::task::{Context, Poll};
use tower::Service;

#[derive(Clone)]
pub struct EndpointService {
    base: http::Uri,
    client: HttpClient,
}

impl EndpointService {
    pub fn new(url: &str, client: HttpClient) -> Result<Self, BuildError> {
        let _ = (url, client);
        todo!("endpoint")
    }
    /// `host:port`, the endpoint's name in metrics, logs and the admin API.
    pub fn authority(&self) -> String {
        todo!("endpoint")
    }
}

impl Service<http::Request<ProxyBody>> for EndpointService {
    type Response = http::Response<ProxyBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<ProxyBody>) -> Self::Future {
        let _ = (&self.base, &self.client, req);
        todo!("endpoint")
    }
}
