//! The pooled upstream client (hyper-util's legacy client over rustls), one per upstream.

use crate::body::ProxyBody;
use crate::error::BuildError;
use crate::spec::UpstreamSpec;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

#[derive(Clone)]
pub struct HttpClient {
    pub(crate) inner: Client<HttpsConnector<HttpConnector>, ProxyBody>,
}

impl HttpClient {
    /// Builds the client for one upstream: pool settings, connect timeout, HTTP/2, the CA
    /// roots (`ca_file`, else the system's).
    pub fn new(spec: &UpstreamSpec) -> Result<Self, BuildError> {
        let _ = spec;
        todo!("client")
    }
}
