//! The body type that flows through the REST channel, and the bounded replay buffer.

use crate::classify::CallInfo;
use crate::error::BodyError;
use crate::BoxError;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, BodyStream, Empty, Full, StreamBody};
use std::sync::Arc;

/// Request and response bodies between the client, the stack and the upstream: streamed.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

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
/// gets a full body and its [`CallInfo`] (the `Arc<CallInfo>` extension, added when
/// missing) holds the bytes, so retries can replay it; otherwise the bytes read are put
/// back in front of the rest of the stream and nothing is buffered.
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
                parts
                    .extensions
                    .get_or_insert_with(|| Arc::new(CallInfo::default()))
                    .set_buffered(bytes.clone());
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

/// What [`buffer_for_replay`] makes of a request whose body has already ended (no body,
/// or `Content-Length: 0`), without reading or waiting: the request, its empty body kept
/// for replay. `Err(req)`, unchanged, when there is a body to read.
#[allow(clippy::result_large_err)] // the request is handed back, as `Direct::encode` does
pub fn buffer_ended(
    mut req: http::Request<ProxyBody>,
) -> Result<http::Request<ProxyBody>, http::Request<ProxyBody>> {
    if !req.body().is_end_stream() {
        return Err(req);
    }
    req.extensions_mut()
        .get_or_insert_with(|| Arc::new(CallInfo::default()))
        .set_buffered(Bytes::new());
    Ok(req)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The bytes the request's `CallInfo` holds for replay, if any.
    fn buffered(req: &http::Request<ProxyBody>) -> Option<Bytes> {
        req.extensions()
            .get::<Arc<CallInfo>>()
            .and_then(|info| info.buffered().cloned())
    }

    /// A body of these chunks, streamed one frame at a time with no size hint.
    fn chunks(parts: &[&'static str]) -> ProxyBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    fn post(body: ProxyBody) -> http::Request<ProxyBody> {
        http::Request::post("/x").body(body).unwrap()
    }

    async fn read_all(body: ProxyBody) -> Bytes {
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_body_that_fits_is_buffered() {
        let req = buffer_for_replay(post(chunks(&["ab", "cd", "ef"])), 6)
            .await
            .unwrap();
        assert_eq!(buffered(&req).unwrap(), "abcdef");
        assert_eq!(req.body().size_hint().exact(), Some(6));
        assert_eq!(read_all(req.into_body()).await, "abcdef");

        let req = buffer_for_replay(post(empty()), 0).await.unwrap();
        assert_eq!(buffered(&req).unwrap(), "");

        // A request that has its CallInfo already keeps it, and it gets the bytes.
        let info = Arc::new(CallInfo::default());
        let mut req = post(chunks(&["xy"]));
        req.extensions_mut().insert(info.clone());
        let req = buffer_for_replay(req, 6).await.unwrap();
        assert!(Arc::ptr_eq(
            req.extensions().get::<Arc<CallInfo>>().unwrap(),
            &info
        ));
        assert_eq!(info.buffered().unwrap(), "xy");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_streams_on_in_order() {
        let req = buffer_for_replay(post(chunks(&["ab", "cd", "ef", "gh"])), 3)
            .await
            .unwrap();
        assert!(buffered(&req).is_none());
        assert_eq!(read_all(req.into_body()).await, "abcdefgh");
    }

    #[tokio::test]
    async fn a_content_length_over_the_limit_is_not_read() {
        let polled = Arc::new(AtomicBool::new(false));
        let flag = polled.clone();
        let stream = futures_util::stream::once(async move {
            flag.store(true, Ordering::SeqCst);
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"0123456789")))
        });
        let req = http::Request::post("/x")
            .header("content-length", "10")
            .body(StreamBody::new(stream).boxed_unsync())
            .unwrap();
        let req = buffer_for_replay(req, 4).await.unwrap();
        assert!(!polled.load(Ordering::SeqCst));
        assert!(buffered(&req).is_none());
        assert_eq!(read_all(req.into_body()).await, "0123456789");
    }

    #[tokio::test]
    async fn trailers_are_passed_on_unbuffered() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", "abc".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"data"))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
        let req = buffer_for_replay(post(body), 100).await.unwrap();
        assert!(buffered(&req).is_none());
        let collected = req.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-checksum"], "abc");
        assert_eq!(collected.to_bytes(), "data");
    }

    #[tokio::test]
    async fn a_failing_body_is_a_body_error() {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"da"))),
            Err("client reset".into()),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
        let err = buffer_for_replay(post(body), 100).await.unwrap_err();
        assert!(err.is::<BodyError>(), "{err}");
    }
}
