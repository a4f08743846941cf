//! The body type that flows through the REST channel, and the bounded replay buffer.

use crate::BoxError;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;

/// Request and response bodies between the client, the stack and the upstream: streamed.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Marks a request whose whole body was buffered, so it can be sent again.
#[derive(Clone, Debug)]
pub struct Buffered(pub Bytes);

/// Reads up to `limit` bytes of the request body. When the whole body fits, the request
/// gets a [`Buffered`] extension and a full body, so retries can replay it; otherwise the
/// bytes read are put back in front of the rest of the stream and nothing is buffered.
pub async fn buffer_for_replay(
    req: http::Request<ProxyBody>,
    limit: usize,
) -> Result<http::Request<ProxyBody>, BoxError> {
    let _ = (req, limit);
    todo!("buffer_for_replay")
}
