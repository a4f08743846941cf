//! What a reverse proxy does to headers on the way in and out.

use std::net::SocketAddr;

/// Facts about the client connection the forwarded headers need.
#[derive(Clone, Debug)]
pub struct Forwarded {
    pub client_addr: SocketAddr,
    /// `"http"` or `"https"`.
    pub proto: &'static str,
}

pub const REQUEST_ID: &str = "x-openstack-request-id";

/// The client's `X-OpenStack-Request-ID` when it is a valid `req-<uuid4>`, else a new one.
pub fn request_id(headers: &http::HeaderMap) -> String {
    let _ = headers;
    todo!("request id")
}

/// Removes hop-by-hop headers (except `Upgrade`/`Connection: upgrade` on an upgrade
/// request), sets `X-Forwarded-For` (appended), `-Proto`, `-Host`, and the request id.
pub fn prepare_request<B>(req: &mut http::Request<B>, fwd: &Forwarded, request_id: &str) {
    let _ = (req, fwd, request_id);
    todo!("prepare_request")
}

/// Removes hop-by-hop headers from the upstream's response (except on a 101) and sets the
/// request id.
pub fn prepare_response<B>(resp: &mut http::Response<B>, request_id: &str) {
    let _ = (resp, request_id);
    todo!("prepare_response")
}

/// Whether the request asks for a protocol upgrade (WebSocket).
pub fn is_upgrade<B>(req: &http::Request<B>) -> bool {
    let _ = req;
    todo!("is_upgrade")
}
