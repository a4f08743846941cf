//! Quartet's HTTP/1.1 client exchange, driven in the request's own task.
//!
//! Why: with hyper's `client::conn`, every upstream connection has its own task, and a
//! request travels to it over a channel, its response head comes back over a oneshot and
//! its body over another channel: three or more task wake-ups and their bookkeeping per
//! request, which `bench/cpu.sh` showed as most of the user CPU Quartet spent beyond
//! HAProxy. Here the task serving the client writes the request to the upstream socket,
//! reads the answer and streams the body itself. [`crate::pool`] uses it for requests
//! whose body is already in memory (the replay buffer) and that are not upgrades; other
//! requests (a streamed body, a WebSocket upgrade) keep hyper's connection.
//!
//! The exchange follows RFC 9112:
//! - the request goes out with its own `Content-Length` (the length of the bytes held)
//!   and no `Transfer-Encoding`;
//! - 1xx answers other than 101 are skipped; a 101 to a request that asked for no upgrade
//!   is an error;
//! - the body's length comes from (6.3): HEAD, 204 and 304 have none; a
//!   `Transfer-Encoding` ending in `chunked` is decoded (trailers included); another
//!   `Transfer-Encoding`, or neither header, reads until the upstream closes; otherwise
//!   `Content-Length` (all its values must agree);
//! - the connection is reused only when both sides keep it alive, the body was read to
//!   its end, and nothing followed it.

use crate::raw::RawHead;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http_body::{Frame, SizeHint};
use std::io;
use std::mem::MaybeUninit;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most a response head (status line and headers, or a chunked body's trailers) may
/// take; hyper's client allows about as much.
pub(crate) const MAX_HEAD: usize = 256 * 1024;
/// The most headers a response head may have.
const MAX_HEADERS: usize = 128;
/// How much is read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// What went wrong in an exchange the upstream may have seen.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("the upstream closed the connection before answering")]
    ClosedBeforeAnswer,
    #[error("the upstream closed the connection in the middle of the body")]
    ClosedMidBody,
    #[error("the upstream's response head is not valid HTTP/1.1: {0}")]
    BadHead(String),
    #[error("the upstream's response head is over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the upstream's chunked body is malformed: {0}")]
    BadChunk(&'static str),
    #[error(
        "the upstream answered 101 Switching Protocols to a request that asked for no upgrade"
    )]
    UnexpectedUpgrade,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// One upstream connection: the socket and the bytes read from it but not yet used.
pub(crate) struct Conn {
    io: TcpStream,
    buf: BytesMut,
    /// Scratch space of [`Conn::parse_head`]: each header's name and where its value
    /// lies in the head.
    fields: Vec<(HeaderName, usize, usize)>,
}

impl Conn {
    pub(crate) fn new(io: TcpStream) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            fields: Vec::new(),
        }
    }

    /// Whether an idle connection can take a request: the upstream has not closed it and
    /// has sent nothing unasked. Costs one non-blocking read when the socket may be
    /// readable.
    pub(crate) fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Writes the whole request. An error means the upstream cannot have received all of
    /// it, so it cannot have acted on it.
    pub(crate) async fn write_request(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await
    }

    /// Reads until a whole response head is in the buffer (1xx answers skipped).
    pub(crate) async fn read_head(
        &mut self,
        method: &http::Method,
        raw: bool,
    ) -> Result<Head, H1Error> {
        loop {
            if let Some(head) = self.parse_head(method, raw)? {
                return Ok(head);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(H1Error::HeadTooLarge);
            }
            self.buf.reserve(READ_CHUNK);
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(H1Error::ClosedBeforeAnswer);
            }
        }
    }

    /// A final response head when the buffer holds one, consumed from the buffer. With
    /// `raw`, the headers stay one block of bytes ([`RawHead`]) instead of a map.
    fn parse_head(&mut self, method: &http::Method, raw: bool) -> Result<Option<Head>, H1Error> {
        loop {
            if self.buf.is_empty() {
                return Ok(None);
            }
            // Left uninitialized: zeroing 128 headers (4 KiB) for every response was half
            // of this function's instructions (bench/instructions.sh).
            let mut headers = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut []);
            let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut resp,
                &self.buf,
                &mut headers,
            ) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(e) => return Err(H1Error::BadHead(e.to_string())),
            };
            let code = resp.code.unwrap_or(0);
            if code == 101 {
                return Err(H1Error::UnexpectedUpgrade);
            }
            if (100..200).contains(&code) {
                // An interim answer (100 Continue, 103 Early Hints): the final one follows.
                self.buf.advance(len);
                continue;
            }
            let status = http::StatusCode::from_u16(code)
                .map_err(|_| H1Error::BadHead(format!("status {code}")))?;
            let version = if resp.version == Some(0) {
                http::Version::HTTP_10
            } else {
                http::Version::HTTP_11
            };
            let framing = framing(method, status, resp.headers)?;
            let keep_alive = keep_alive(version, resp.headers) && framing.reusable();
            if raw {
                let raw = RawHead::from_fields(resp.headers, framing.kind);
                self.buf.advance(len);
                return Ok(Some(Head {
                    status,
                    version,
                    headers: http::HeaderMap::new(),
                    raw: Some(raw),
                    framing: framing.kind,
                    keep_alive,
                }));
            }
            // Names now, values as offsets into the buffer, so they can share its bytes
            // once the head is split off.
            let base = self.buf.as_ptr() as usize;
            // The connection's scratch list: no allocation per response once it has grown.
            let mut fields = std::mem::take(&mut self.fields);
            fields.clear();
            for h in resp.headers.iter() {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| H1Error::BadHead(format!("header name {:?}", h.name)))?;
                let start = h.value.as_ptr() as usize - base;
                fields.push((name, start, start + h.value.len()));
            }
            let head = self.buf.split_to(len).freeze();
            // Room for the request id the proxy adds, so that insert does not regrow it.
            let mut map = http::HeaderMap::with_capacity(fields.len() + 2);
            for (name, start, end) in fields.drain(..) {
                let value = HeaderValue::from_maybe_shared(head.slice(start..end))
                    .map_err(|_| H1Error::BadHead(format!("the value of {name}")))?;
                map.append(name, value);
            }
            self.fields = fields;
            return Ok(Some(Head {
                status,
                version,
                headers: map,
                raw: None,
                framing: framing.kind,
                keep_alive,
            }));
        }
    }

    /// Fills the buffer with what the socket has (at least one byte, or 0 at its end).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
            self.buf.reserve(READ_CHUNK);
        }
        loop {
            match self.io.try_read_buf(&mut self.buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.io.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// The bytes already read beyond the head.
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes `n` buffered bytes (at most [`Conn::buffered`]).
    pub(crate) fn take(&mut self, n: usize) -> Bytes {
        self.buf.split_to(n).freeze()
    }
}

/// A response head, read and checked.
pub(crate) struct Head {
    pub status: http::StatusCode,
    pub version: http::Version,
    /// Empty when the head was read `raw`.
    pub headers: http::HeaderMap,
    pub raw: Option<RawHead>,
    pub framing: Framing,
    /// Whether the connection may carry another request once the body is read.
    pub keep_alive: bool,
}

/// How the body of a response is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

struct Decided {
    kind: Framing,
    /// False when the head leaves doubt about where the body ends for the next response.
    reusable_framing: bool,
}

impl Decided {
    fn reusable(&self) -> bool {
        self.reusable_framing && self.kind != Framing::UntilClose
    }
}

/// RFC 9112 6.3, for a response to `method`.
fn framing(
    method: &http::Method,
    status: http::StatusCode,
    headers: &[httparse::Header<'_>],
) -> Result<Decided, H1Error> {
    let plain = |kind| {
        Ok(Decided {
            kind,
            reusable_framing: true,
        })
    };
    if method == http::Method::HEAD
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED
    {
        return plain(Framing::None);
    }
    let named = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let has_length = named("content-length").next().is_some();
    let mut codings = named("transfer-encoding")
        .flat_map(|v| v.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .peekable();
    if codings.peek().is_some() {
        let chunked_last = codings
            .last()
            .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        return Ok(Decided {
            kind: if chunked_last {
                Framing::Chunked
            } else {
                Framing::UntilClose
            },
            // Both headers: the length is ignored, and the connection closed after (6.3.3).
            reusable_framing: !has_length,
        });
    }
    if has_length {
        let mut length: Option<u64> = None;
        for value in named("content-length") {
            for part in value.split(|b| *b == b',') {
                let part = part.trim_ascii();
                let n = std::str::from_utf8(part)
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| H1Error::BadHead("Content-Length is not a number".into()))?;
                if length.is_some_and(|l| l != n) {
                    return Err(H1Error::BadHead("Content-Length values disagree".into()));
                }
                length = Some(n);
            }
        }
        return plain(match length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        });
    }
    plain(Framing::UntilClose)
}

/// Whether the upstream keeps the connection open after this response.
fn keep_alive(version: http::Version, headers: &[httparse::Header<'_>]) -> bool {
    let mut close = false;
    let mut keep = false;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
    {
        for token in h.value.split(|b| *b == b',') {
            let token = token.trim_ascii();
            close |= token.eq_ignore_ascii_case(b"close");
            keep |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    !close && (version == http::Version::HTTP_11 || keep)
}

/// Serializes a request head and its whole body into `out`: origin-form target, the
/// request's headers (with `Transfer-Encoding` and `Content-Length` replaced by the
/// length of `body`), then the body.
pub(crate) fn encode_request(
    out: &mut Vec<u8>,
    method: &http::Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    added: &[u8],
    proxy: Option<&crate::proxy::ProxyHeaders>,
    body: &[u8],
) {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    // The whole message at once: a token header alone is longer than a guess per header,
    // and growing the buffer copies it.
    let fields: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let proxy_len = proxy.map_or(0, |p| p.wire_len());
    out.reserve(target.len() + fields + added.len() + proxy_len + body.len() + 64);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // Headers a layer added as a prepared block (`quartet_policies::head`), and the
    // proxy's own (`crate::proxy::ProxyHeaders`).
    out.extend_from_slice(added);
    if let Some(proxy) = proxy {
        proxy.write(out);
    }
    // As hyper does: a length for any body, and `0` where a body is expected.
    let expects_body = matches!(
        *method,
        http::Method::POST | http::Method::PUT | http::Method::PATCH
    );
    if !body.is_empty() || expects_body {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Where a chunked body's decoder is.
#[derive(Clone, Copy, Debug)]
enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields up to an empty line.
    Trailers,
}

/// The state of a body being read from a connection.
#[derive(Debug)]
pub(crate) enum Reading {
    Length(u64),
    Chunked(ChunkState),
    UntilClose,
}

#[derive(Debug)]
pub(crate) struct ChunkState(Chunk);

impl Reading {
    pub(crate) fn new(framing: Framing) -> Option<Self> {
        match framing {
            Framing::None => None,
            Framing::Length(n) => Some(Reading::Length(n)),
            Framing::Chunked => Some(Reading::Chunked(ChunkState(Chunk::Size))),
            Framing::UntilClose => Some(Reading::UntilClose),
        }
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self {
            Reading::Length(n) => SizeHint::with_exact(*n),
            _ => SizeHint::default(),
        }
    }
}

/// What one step of reading a body gave.
pub(crate) enum Step {
    /// A frame; `true` when it was the body's last.
    Frame(Frame<Bytes>, bool),
    /// The body ended with no further frame.
    End,
}

/// Reads the next frame of a body in `state` from `conn`.
pub(crate) fn poll_body(
    conn: &mut Conn,
    state: &mut Reading,
    cx: &mut Context<'_>,
) -> Poll<Result<Step, H1Error>> {
    loop {
        match state {
            Reading::Length(left) => {
                if conn.buffered() > 0 {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(conn.buffered());
                    *left -= n as u64;
                    return Poll::Ready(Ok(Step::Frame(Frame::data(conn.take(n)), *left == 0)));
                }
                if ready!(conn.poll_fill(cx))? == 0 {
                    return Poll::Ready(Err(H1Error::ClosedMidBody));
                }
            }
            Reading::UntilClose => {
                if conn.buffered() > 0 {
                    let n = conn.buffered();
                    return Poll::Ready(Ok(Step::Frame(Frame::data(conn.take(n)), false)));
                }
                if ready!(conn.poll_fill(cx))? == 0 {
                    return Poll::Ready(Ok(Step::End));
                }
            }
            Reading::Chunked(ChunkState(chunk)) => {
                if let Some(step) = decode_chunk(conn, chunk)? {
                    return Poll::Ready(Ok(step));
                }
                if conn.buffered() > MAX_HEAD {
                    return Poll::Ready(Err(H1Error::BadChunk("a line is too long")));
                }
                if ready!(conn.poll_fill(cx))? == 0 {
                    return Poll::Ready(Err(H1Error::ClosedMidBody));
                }
            }
        }
    }
}

/// Advances a chunked body as far as the buffer allows; `None`: more bytes are needed.
fn decode_chunk(conn: &mut Conn, chunk: &mut Chunk) -> Result<Option<Step>, H1Error> {
    loop {
        match *chunk {
            Chunk::Size => {
                let Some(line) = take_line(&mut conn.buf)? else {
                    return Ok(None);
                };
                // chunk-size [ BWS ";" chunk-ext ]
                let size = line
                    .split(|b| *b == b';')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
                    return Err(H1Error::BadChunk("a chunk size is not hexadecimal"));
                }
                let size = std::str::from_utf8(size)
                    .ok()
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                    .ok_or(H1Error::BadChunk("a chunk size is out of range"))?;
                *chunk = if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(left) => {
                if conn.buffered() == 0 {
                    return Ok(None);
                }
                let n = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(conn.buffered());
                let rest = left - n as u64;
                *chunk = if rest == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(rest)
                };
                return Ok(Some(Step::Frame(Frame::data(conn.take(n)), false)));
            }
            Chunk::DataEnd => {
                if conn.buffered() < 2 {
                    return Ok(None);
                }
                if &conn.buf[..2] != b"\r\n" {
                    return Err(H1Error::BadChunk("a chunk's data does not end with CRLF"));
                }
                conn.buf.advance(2);
                *chunk = Chunk::Size;
            }
            Chunk::Trailers => {
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let (len, trailers) = match httparse::parse_headers(&conn.buf, &mut fields) {
                    Ok(httparse::Status::Complete((len, fields))) => {
                        let mut map = http::HeaderMap::new();
                        for f in fields.iter() {
                            let name = HeaderName::from_bytes(f.name.as_bytes())
                                .map_err(|_| H1Error::BadChunk("a trailer's name is invalid"))?;
                            let value = HeaderValue::from_bytes(f.value)
                                .map_err(|_| H1Error::BadChunk("a trailer's value is invalid"))?;
                            map.append(name, value);
                        }
                        (len, map)
                    }
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(_) => return Err(H1Error::BadChunk("the trailers are malformed")),
                };
                conn.buf.advance(len);
                return Ok(Some(if trailers.is_empty() {
                    Step::End
                } else {
                    Step::Frame(Frame::trailers(trailers), true)
                }));
            }
        }
    }
}

/// One CRLF-terminated line taken off the front of `buf` (without its CRLF).
fn take_line(buf: &mut BytesMut) -> Result<Option<Bytes>, H1Error> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(at) => {
            let line = buf.split_to(at).freeze();
            buf.advance(2);
            Ok(Some(line))
        }
        None if buf.len() > 4096 => Err(H1Error::BadChunk("a chunk-size line is too long")),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    fn fields<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<httparse::Header<'a>> {
        pairs
            .iter()
            .map(|(name, value)| httparse::Header {
                name,
                value: value.as_bytes(),
            })
            .collect()
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let ok = http::StatusCode::OK;
        let get = http::Method::GET;
        let f = |m: &http::Method, s, h: &[(&str, &str)]| {
            framing(m, s, &fields(h)).map(|d| (d.kind, d.reusable()))
        };
        assert_eq!(
            f(&http::Method::HEAD, ok, &[("content-length", "10")]).unwrap(),
            (Framing::None, true)
        );
        assert_eq!(
            f(&get, http::StatusCode::NO_CONTENT, &[]).unwrap(),
            (Framing::None, true)
        );
        assert_eq!(
            f(
                &get,
                http::StatusCode::NOT_MODIFIED,
                &[("content-length", "5")]
            )
            .unwrap(),
            (Framing::None, true)
        );
        assert_eq!(
            f(&get, ok, &[("content-length", "10")]).unwrap(),
            (Framing::Length(10), true)
        );
        assert_eq!(
            f(&get, ok, &[("content-length", "0")]).unwrap(),
            (Framing::None, true)
        );
        assert_eq!(
            f(&get, ok, &[("content-length", "7, 7")]).unwrap(),
            (Framing::Length(7), true)
        );
        assert!(f(&get, ok, &[("content-length", "7, 8")]).is_err());
        assert!(f(&get, ok, &[("content-length", "-1")]).is_err());
        assert!(f(&get, ok, &[("content-length", "+1")]).is_err());
        assert_eq!(
            f(&get, ok, &[("transfer-encoding", "gzip, chunked")]).unwrap(),
            (Framing::Chunked, true)
        );
        assert_eq!(
            f(
                &get,
                ok,
                &[("transfer-encoding", "chunked"), ("content-length", "3")]
            )
            .unwrap(),
            (Framing::Chunked, false)
        );
        assert_eq!(
            f(&get, ok, &[("transfer-encoding", "gzip")]).unwrap(),
            (Framing::UntilClose, false)
        );
        assert_eq!(f(&get, ok, &[]).unwrap(), (Framing::UntilClose, false));
    }

    #[test]
    fn keep_alive_by_version_and_connection() {
        let v11 = http::Version::HTTP_11;
        let v10 = http::Version::HTTP_10;
        assert!(keep_alive(v11, &fields(&[])));
        assert!(!keep_alive(v11, &fields(&[("connection", "close")])));
        assert!(!keep_alive(
            v11,
            &fields(&[("connection", "Keep-Alive, Close")])
        ));
        assert!(!keep_alive(v10, &fields(&[])));
        assert!(keep_alive(v10, &fields(&[("connection", "keep-alive")])));
    }

    #[test]
    fn requests_carry_their_own_length() {
        let mut out = Vec::new();
        let headers = map(&[
            ("host", "a"),
            ("content-length", "99"),
            ("transfer-encoding", "chunked"),
            ("x-a", "1"),
        ]);
        encode_request(
            &mut out,
            &http::Method::POST,
            &"/p?q=1".parse().unwrap(),
            &headers,
            b"x-roles: admin\r\n",
            None,
            b"hey",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: a\r\nx-a: 1\r\nx-roles: admin\r\ncontent-length: 3\r\n\r\nhey"
        );
        let mut out = Vec::new();
        encode_request(
            &mut out,
            &http::Method::GET,
            &"/".parse().unwrap(),
            &map(&[]),
            b"",
            None,
            b"",
        );
        assert_eq!(String::from_utf8(out).unwrap(), "GET / HTTP/1.1\r\n\r\n");
        let mut out = Vec::new();
        encode_request(
            &mut out,
            &http::Method::PUT,
            &"/x".parse().unwrap(),
            &map(&[]),
            b"",
            None,
            b"",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "PUT /x HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
        );
    }
}
