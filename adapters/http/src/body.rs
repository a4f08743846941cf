//! The body type that flows through the REST channel, and the bounded replay buffer.

use crate::error::BodyError;
use crate::BoxError;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, BodyStream, Empty, Full, StreamBody};

/// Request and response bodies between the client, the stack and the upstream: streamed.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Marks a request whose whole body was buffered, so it can be sent again.
#[derive(Clone, Debug)]
pub struct Buffered(pub Bytes);

/// A body of these bytes (empty bytes: an empty body).
pub fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Reads up to `limit` bytes of the request body. When the whole body fits, the request
/// gets a [`Buffered`] extension and a full body, so retries can replay it; otherwise the
/// bytes read are put back in front of the rest of the stream and nothing is buffered.
///
/// A `Content-Length` (or a body size hint) above `limit` means nothing is read at all. A
/// body with trailers is never buffered (its trailers are passed on as they came). An
/// error while reading is a [`BodyError`].
pub async fn buffer_for_replay(
    req: http::Request<ProxyBody>,
    limit: usize,
) -> Result<http::Request<ProxyBody>, BoxError> {
    let (mut parts, mut body) = req.into_parts();
    if content_length(&parts.headers).is_some_and(|n| n > limit as u64)
        || body.size_hint().lower() > limit as u64
    {
        return Ok(http::Request::from_parts(parts, body));
    }
    let mut buf = BytesMut::new();
    loop {
        match body.frame().await {
            None => {
                let bytes = buf.freeze();
                parts.extensions.insert(Buffered(bytes.clone()));
                return Ok(http::Request::from_parts(parts, full(bytes)));
            }
            Some(Err(source)) => return Err(BodyError { source }.into()),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    buf.extend_from_slice(&data);
                    if buf.len() > limit {
                        let body = prepend(vec![Frame::data(buf.freeze())], body);
                        return Ok(http::Request::from_parts(parts, body));
                    }
                }
                Err(trailers) => {
                    let mut read = Vec::with_capacity(2);
                    if !buf.is_empty() {
                        read.push(Frame::data(buf.freeze()));
                    }
                    read.push(trailers);
                    return Ok(http::Request::from_parts(parts, prepend(read, body)));
                }
            },
        }
    }
}

/// The frames already read, then the rest of `body`, as one streamed body.
fn prepend(read: Vec<Frame<Bytes>>, rest: ProxyBody) -> ProxyBody {
    let head = futures_util::stream::iter(read.into_iter().map(Ok::<_, BoxError>));
    StreamBody::new(head.chain(BodyStream::new(rest))).boxed_unsync()
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}
