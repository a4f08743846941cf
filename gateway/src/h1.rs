//! Quartet's own HTTP/1.1 server loop for the public listener's cleartext connections.
//!
//! Why: under `bench/instructions.sh` hyper's server side was about a quarter of the
//! instructions Quartet spent per proxied request (its dispatcher state machine, a boxed
//! header-read timer per request, the response encoder's generic paths), and the REST
//! target is HAProxy's cost. This loop does the common case itself, in the connection's
//! task: an HTTP/1.1 request with no body or a `Content-Length` body of at most
//! [`MAX_BODY`] bytes, not an upgrade, no `Expect`. Anything else — HTTP/1.0, a chunked
//! or larger body, an upgrade (WebSocket), `Expect: 100-continue`, h2c by prior
//! knowledge, a head that does not parse or is too big — hands the connection, with the
//! bytes already read, to hyper for the rest of its life ([`Served::Handoff`]), so hyper
//! keeps deciding every edge case it always did (its 400s and 431s included).
//!
//! What the loop guarantees, as hyper's server did:
//! - a client has `server.header_timeout` to send a whole request head (and its body)
//!   from the moment the loop waits for it, idle keep-alive included; one timer per
//!   connection, moved only when it fires, not one per request;
//! - a client that closes its connection while its request is served cancels the request
//!   (the handler's future is dropped), as hyper does without half-close;
//! - pipelined requests are answered in order;
//! - the response is framed by its `Content-Length`, or the body's exact size, or chunked
//!   encoding; HEAD, 1xx, 204 and 304 answers carry no body; `Date` is added when missing;
//!   `Connection: close` (asked by the client, or set by the handler) ends the connection
//!   after the response;
//! - while draining, an idle connection is closed, and a busy one after its response.

use axum::body::Body;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use quartet_http::raw::RawHead;
use std::future::Future;
use std::io;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The biggest request head this loop waits for; a bigger one goes to hyper, which
/// allows more and answers 431 past its own limit.
const MAX_HEAD: usize = 64 * 1024;
/// The biggest request body this loop reads before calling the handler; a bigger one
/// goes to hyper, which streams it.
const MAX_BODY: usize = 64 * 1024;
/// The most headers a request here may have; more go to hyper.
const MAX_HEADERS: usize = 64;
/// Headers the proxy may add to a request on its way.
const ADDED_HEADERS: usize = 8;
/// How much room a read asks for.
const READ_CHUNK: usize = 8 * 1024;
/// A piece of a response body at least this big is written as it is, not copied.
const DIRECT_WRITE: usize = 16 * 1024;
/// Response bytes gathered before they are written while the body is still coming.
const WRITE_BATCH: usize = 64 * 1024;

/// How the loop left the connection.
pub(crate) enum Served {
    /// The connection is done (closed by either side, timed out, or drained).
    Closed,
    /// A request this loop does not serve: hyper takes the connection, reading `buf`
    /// (the bytes already read, from the start of that request) before the socket.
    Handoff(BytesMut),
}

/// A request head as parsed, before it becomes an `http::Request`.
struct Parsed {
    head_len: usize,
    body_len: usize,
    close: bool,
}

/// What the parser made of the buffer.
enum Parse {
    /// Not a whole head yet.
    Partial,
    /// A head this loop does not serve.
    Handoff,
    Head(Parsed),
}

/// Per-connection scratch space, reused by every request.
struct Scratch {
    /// Each header's name and where its value lies in the head.
    fields: Vec<(HeaderName, usize, usize)>,
    method: Option<Method>,
    path: (usize, usize),
    out: BytesMut,
}

/// Serves HTTP/1.1 requests on `io` with `handler` until the connection ends or a request
/// needs hyper. `draining` resolves when the server starts to drain.
pub(crate) async fn serve<H, F>(
    io: &mut TcpStream,
    mut handler: H,
    draining: impl Future<Output = ()>,
    head_timeout: Duration,
) -> Served
where
    H: FnMut(Request<Body>) -> F,
    F: Future<Output = Response<Body>>,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut scratch = Scratch {
        fields: Vec::new(),
        method: None,
        path: (0, 0),
        out: BytesMut::new(),
    };
    let timer = tokio::time::sleep(head_timeout);
    tokio::pin!(timer, draining);
    let mut timer_armed = false;
    let mut drained = false;
    loop {
        // A whole head, and the body it announces.
        let waiting_since = Instant::now();
        let parsed = loop {
            match parse(&buf, &mut scratch) {
                Parse::Head(p) if buf.len() >= p.head_len + p.body_len => break p,
                Parse::Head(_) | Parse::Partial => {}
                Parse::Handoff => return Served::Handoff(buf),
            }
            if buf.len() > MAX_HEAD + MAX_BODY {
                return Served::Handoff(buf);
            }
            if buf.capacity() - buf.len() < READ_CHUNK / 2 {
                buf.reserve(READ_CHUNK);
            }
            tokio::select! {
                biased;
                read = io.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => return Served::Closed,
                    Ok(_) => {}
                },
                () = &mut timer, if timer_armed => {
                    let deadline = waiting_since + head_timeout;
                    if Instant::now() >= deadline {
                        tracing::debug!("read header from client timeout");
                        return Served::Closed;
                    }
                    timer.as_mut().reset(deadline.into());
                },
                () = &mut draining, if !drained => {
                    drained = true;
                    if buf.is_empty() {
                        return Served::Closed;
                    }
                },
            }
            if !timer_armed {
                // Once per connection: later waits reuse it and move it only when it fires.
                timer_armed = true;
                timer.as_mut().reset((waiting_since + head_timeout).into());
            }
        };
        let Some(req) = build_request(&mut buf, &parsed, &mut scratch) else {
            let _ = io
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
            return Served::Closed;
        };
        let is_head = req.method() == Method::HEAD;

        // The handler's answer; a client that goes away meanwhile cancels it.
        let fut = handler(req);
        tokio::pin!(fut);
        let resp = loop {
            tokio::select! {
                biased;
                resp = &mut fut => break resp,
                read = io.read_buf(&mut buf), if buf.len() < MAX_HEAD => match read {
                    Ok(0) | Err(_) => return Served::Closed,
                    Ok(_) => {}
                },
            }
        };
        if !drained && futures_util::poll!(&mut draining).is_ready() {
            drained = true;
        }
        let close = parsed.close || drained;
        match write_response(io, resp, is_head, close, &mut scratch.out).await {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                let _ = io.shutdown().await;
                return Served::Closed;
            }
        }
        if scratch.out.capacity() > WRITE_BATCH * 2 {
            scratch.out = BytesMut::new();
        }
    }
}

/// Parses the head at the start of `buf`, noting names and value offsets in `scratch`.
fn parse(buf: &[u8], scratch: &mut Scratch) -> Parse {
    if buf.is_empty() {
        return Parse::Partial;
    }
    // Left uninitialized: httparse writes the ones it fills, and zeroing them all cost
    // more than the parse of a small head.
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(_) => return Parse::Handoff,
    };
    if req.version != Some(1) {
        return Parse::Handoff;
    }
    let Some(method) = req
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
    else {
        return Parse::Handoff;
    };
    let base = buf.as_ptr() as usize;
    let Some(path) = req.path else {
        return Parse::Handoff;
    };
    let path_start = path.as_ptr() as usize - base;
    scratch.fields.clear();
    let mut body_len: Option<usize> = None;
    let mut close = false;
    for h in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Parse::Handoff;
        };
        if name == http::header::CONTENT_LENGTH {
            let len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
            match (len, body_len) {
                (Some(len), None) => body_len = Some(len),
                (Some(len), Some(seen)) if len == seen => {}
                _ => return Parse::Handoff,
            }
        } else if name == http::header::TRANSFER_ENCODING
            || name == http::header::EXPECT
            || name == http::header::UPGRADE
        {
            return Parse::Handoff;
        } else if name == http::header::CONNECTION {
            close |= h
                .value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
        let start = h.value.as_ptr() as usize - base;
        scratch.fields.push((name, start, start + h.value.len()));
    }
    let body_len = body_len.unwrap_or(0);
    if body_len > MAX_BODY {
        return Parse::Handoff;
    }
    scratch.method = Some(method);
    scratch.path = (path_start, path_start + path.len());
    Parse::Head(Parsed {
        head_len,
        body_len,
        close,
    })
}

/// Takes the parsed head and its body out of `buf` as a request. `None` when the path is
/// not a valid URI (the caller answers 400, as hyper does).
fn build_request(buf: &mut BytesMut, p: &Parsed, scratch: &mut Scratch) -> Option<Request<Body>> {
    let head = buf.split_to(p.head_len).freeze();
    let body = if p.body_len == 0 {
        Body::empty()
    } else {
        Body::from(buf.split_to(p.body_len).freeze())
    };
    let uri = http::Uri::from_maybe_shared(head.slice(scratch.path.0..scratch.path.1)).ok()?;
    // Room for what the proxy adds (`X-Forwarded-*`, the request id, a token's
    // headers), so its inserts do not regrow the map.
    let mut map = http::HeaderMap::with_capacity(scratch.fields.len() + ADDED_HEADERS);
    for (name, start, end) in scratch.fields.drain(..) {
        // httparse admits the bytes a `HeaderValue` admits, so this does not fail.
        let value = HeaderValue::from_maybe_shared(head.slice(start..end)).ok()?;
        map.append(name, value);
    }
    let mut req = Request::new(body);
    *req.method_mut() = scratch.method.take()?;
    *req.uri_mut() = uri;
    *req.headers_mut() = map;
    Some(req)
}

/// How a response body is delimited on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Writes `resp`; `Ok(true)` when the connection may carry another request.
async fn write_response(
    io: &mut TcpStream,
    resp: Response<Body>,
    is_head: bool,
    mut close: bool,
    out: &mut BytesMut,
) -> io::Result<bool> {
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");

    let bodiless = is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut framing = None;
    let mut has_date = false;
    for (name, value) in &parts.headers {
        if *name == http::header::CONTENT_LENGTH {
            if let Some(len) = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                framing.get_or_insert(Framing::Length(len));
            }
        } else if *name == http::header::TRANSFER_ENCODING {
            let chunked = value
                .as_bytes()
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            framing = Some(if chunked {
                Framing::Chunked
            } else {
                Framing::UntilClose
            });
        } else if *name == http::header::DATE {
            has_date = true;
        } else if *name == http::header::CONNECTION {
            close |= value
                .as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // A proxied response's upstream headers, as one block (quartet_http::raw).
    let raw = parts.extensions.get::<RawHead>();
    if let Some(raw) = raw {
        if let Some(len) = raw.content_length() {
            framing.get_or_insert(Framing::Length(len));
        }
        has_date |= raw.has_date();
        out.extend_from_slice(raw.block());
        if let Some(id) = raw.request_id() {
            out.extend_from_slice(quartet_http::proxy::REQUEST_ID.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    let framing = if bodiless {
        Framing::None
    } else if let Some(framing) = framing {
        framing
    } else if let Some(len) = http_body::Body::size_hint(&body).exact() {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa_u64(len, &mut [0u8; 20]));
        out.extend_from_slice(b"\r\n");
        Framing::Length(len)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    if !has_date {
        out.extend_from_slice(b"date: ");
        date::with(|d| out.extend_from_slice(d));
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");

    if framing == Framing::None {
        io.write_all(out).await?;
        return Ok(!close);
    }
    let mut written: u64 = 0;
    let mut complete = false;
    loop {
        // What the body has at once goes out with the head; the rest as it comes.
        let frame = match futures_util::FutureExt::now_or_never(body.frame()) {
            Some(frame) => frame,
            None => {
                if !out.is_empty() {
                    io.write_all(out).await?;
                    out.clear();
                }
                body.frame().await
            }
        };
        let frame = match frame {
            None => {
                complete = true;
                break;
            }
            Some(Ok(frame)) => frame,
            Some(Err(err)) => {
                tracing::debug!(error = %err, "response body failed; closing the connection");
                break;
            }
        };
        match frame.into_data() {
            Ok(data) => {
                if data.is_empty() {
                    continue;
                }
                let mut data = &data[..];
                let mut over = false;
                if let Framing::Length(len) = framing {
                    let room = len - written;
                    if data.len() as u64 > room {
                        // room < data.len(), so it fits a usize.
                        data = &data[..room as usize];
                        over = true;
                    }
                    written += data.len() as u64;
                }
                if framing == Framing::Chunked {
                    hex_len(data.len(), out);
                }
                if data.len() >= DIRECT_WRITE {
                    // A big piece is written from where it is, not copied behind the head.
                    if !out.is_empty() {
                        io.write_all(out).await?;
                        out.clear();
                    }
                    io.write_all(data).await?;
                } else {
                    out.extend_from_slice(data);
                }
                if framing == Framing::Chunked {
                    out.extend_from_slice(b"\r\n");
                }
                if over {
                    tracing::debug!("response body longer than its Content-Length");
                    break;
                }
            }
            Err(frame) => {
                if let (Framing::Chunked, Ok(trailers)) = (framing, frame.into_trailers()) {
                    out.extend_from_slice(b"0\r\n");
                    for (name, value) in &trailers {
                        out.extend_from_slice(name.as_str().as_bytes());
                        out.extend_from_slice(b": ");
                        out.extend_from_slice(value.as_bytes());
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b"\r\n");
                    io.write_all(out).await?;
                    out.clear();
                    return Ok(!close);
                }
            }
        }
        if out.len() >= WRITE_BATCH {
            io.write_all(out).await?;
            out.clear();
        }
    }
    let ok = match framing {
        Framing::Length(len) => complete && written == len,
        Framing::Chunked => {
            if complete {
                out.extend_from_slice(b"0\r\n\r\n");
            }
            complete
        }
        Framing::UntilClose => {
            close = true;
            complete
        }
        Framing::None => complete,
    };
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    Ok(ok && !close)
}

/// A chunk's size line: `n` in hexadecimal and CRLF.
fn hex_len(n: usize, out: &mut BytesMut) {
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.put_u8(b"0123456789abcdef"[(n >> (i * 4)) & 0xf]);
    }
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, in `buf`.
fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// The `Date` header's value, made at most once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
    }

    pub(super) fn with(f: impl FnOnce(&[u8])) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != secs {
                let text = httpdate::fmt_http_date(now);
                if text.len() == 29 {
                    c.1.copy_from_slice(text.as_bytes());
                    c.0 = secs;
                }
            }
            f(&c.1)
        });
    }
}

/// The bytes read before a handoff, then the socket: what hyper reads from.
pub(crate) struct Rewind {
    pre: Bytes,
    io: TcpStream,
}

impl Rewind {
    pub(crate) fn new(pre: BytesMut, io: TcpStream) -> Self {
        Self {
            pre: pre.freeze(),
            io,
        }
    }
}

impl tokio::io::AsyncRead for Rewind {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            let chunk = self.pre.split_to(n);
            buf.put_slice(&chunk);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Rewind {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> Scratch {
        Scratch {
            fields: Vec::new(),
            method: None,
            path: (0, 0),
            out: BytesMut::new(),
        }
    }

    fn parse_str(s: &str) -> Parse {
        parse(s.as_bytes(), &mut scratch())
    }

    #[test]
    fn serves_plain_requests_and_hands_off_the_rest() {
        assert!(matches!(
            parse_str("GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Parse::Head(Parsed {
                body_len: 0,
                close: false,
                ..
            })
        ));
        assert!(matches!(
            parse_str("POST / HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"),
            Parse::Head(Parsed {
                body_len: 5,
                close: true,
                ..
            })
        ));
        assert!(matches!(
            parse_str("GET / HTTP/1.1\r\nHost: a\r\n"),
            Parse::Partial
        ));
        for handoff in [
            "GET / HTTP/1.0\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n",
            "\x16\x03\x01garbage\r\n\r\n",
        ] {
            assert!(matches!(parse_str(handoff), Parse::Handoff), "{handoff:?}");
        }
    }

    #[test]
    fn builds_the_request_and_leaves_what_follows() {
        let mut s = scratch();
        let mut buf = BytesMut::from(
            &b"POST /v1/x?y=1 HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nX-A: 2\r\nContent-Length: 3\r\n\r\nabcGET"[..],
        );
        let Parse::Head(p) = parse(&buf, &mut s) else {
            panic!("not a head")
        };
        let req = build_request(&mut buf, &p, &mut s).expect("a request");
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri(), "/v1/x?y=1");
        assert_eq!(req.headers().get_all("x-a").iter().count(), 2);
        assert_eq!(&buf[..], b"GET");
    }

    #[test]
    fn chunk_sizes_in_hex() {
        for (n, want) in [
            (0, "0\r\n"),
            (9, "9\r\n"),
            (255, "ff\r\n"),
            (4096, "1000\r\n"),
        ] {
            let mut out = BytesMut::new();
            hex_len(n, &mut out);
            assert_eq!(&out[..], want.as_bytes());
        }
    }

    #[test]
    fn numbers_in_decimal() {
        assert_eq!(itoa_u64(0, &mut [0; 20]), b"0");
        assert_eq!(itoa_u64(1234567890, &mut [0; 20]), b"1234567890");
        assert_eq!(itoa_u64(u64::MAX, &mut [0; 20]), b"18446744073709551615");
    }

    #[test]
    fn the_date_is_an_http_date() {
        let mut got = Vec::new();
        date::with(|d| got.extend_from_slice(d));
        let text = std::str::from_utf8(&got).expect("ascii");
        assert!(httpdate::parse_http_date(text).is_ok(), "{text}");
    }
}
