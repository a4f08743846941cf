//! PostgreSQL wire protocol (version 3.0): framing and the few messages Quartet reads or
//! writes itself.
//!
//! A message after startup is `tag: u8, len: i32 (itself included), body`. The startup
//! phase has no tag: `len: i32, code: i32, ...` where `code` is the protocol version or one
//! of the request codes (SSL, GSS encryption, cancel).
//!
//! Frames are found in a `BytesMut` read buffer and split off without copying
//! ([`FrameScanner`] finds a run of complete frames so the proxy can forward all of them
//! with one `split_to`). Everything here is total: any input yields a value or an error,
//! never a panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The protocol version Quartet speaks: 3.0.
pub const PROTOCOL_3_0: i32 = 196_608;
/// `SSLRequest` code.
pub const SSL_REQUEST: i32 = 80_877_103;
/// `GSSENCRequest` code.
pub const GSSENC_REQUEST: i32 = 80_877_104;
/// `CancelRequest` code.
pub const CANCEL_REQUEST: i32 = 80_877_102;
/// PostgreSQL's own limit for a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: usize = 10_000;

/// A protocol violation by the peer. The proxy answers it with SQLSTATE 08P01 and ends
/// that one connection.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("message length {len} is invalid")]
    BadLength { len: i64 },
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("unsupported protocol version {major}.{minor}")]
    Version { major: u16, minor: u16 },
    #[error("malformed {what} message")]
    Malformed { what: &'static str },
    #[error("unexpected message type {tag:?}")]
    Unexpected { tag: char },
}

/// What a client can open a connection with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupFrame {
    Ssl,
    GssEnc,
    Cancel { pid: i32, key: i32 },
    Startup { params: StartupParams },
}

/// A startup message's parameters, checked once (each name and value NUL-terminated, the
/// list ended by an empty name, all of it UTF-8) and kept as one text of names and values
/// joined by NULs, with the places where each ends: two allocations per login, where a
/// pair of `String`s per parameter was eight to twelve (callgrind: 1,400 fewer
/// instructions for a `-C` connection, 26,261 before).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StartupParams {
    text: Box<str>,
    /// Where each name and each value ends in `text` (a NUL's place, or the end).
    ends: Vec<u32>,
}

impl StartupParams {
    /// The parameters in the order the client sent them.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        // A NUL is one byte, so each cut is at a character boundary.
        let field = |start: usize, end: u32| self.text.get(start..end as usize).unwrap_or("");
        self.ends.chunks_exact(2).scan(0, move |start, pair| {
            let name = field(*start, pair[0]);
            let value = field(pair[0] as usize + 1, pair[1]);
            *start = pair[1] as usize + 1;
            Some((name, value))
        })
    }

    /// The value of the first parameter named `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// Checks the pairs at the front of `body` and keeps them; what follows the empty name
    /// that ends them is ignored.
    fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        let malformed = ProtocolError::Malformed { what: "startup" };
        // `MAX_STARTUP_LEN` keeps every place within `u32`.
        let place = |at: usize| u32::try_from(at).map_err(|_| malformed.clone());
        // Room for libpq's usual four parameters without growing.
        let mut ends = Vec::with_capacity(8);
        let mut at = 0;
        loop {
            let name_len = memchr::memchr(0, &body[at..]).ok_or(malformed.clone())?;
            if name_len == 0 {
                break;
            }
            at += name_len;
            ends.push(place(at)?);
            at += 1;
            at += memchr::memchr(0, &body[at..]).ok_or(malformed.clone())?;
            ends.push(place(at)?);
            at += 1;
        }
        // Without the last value's NUL (the one before the empty name), if any.
        let text = std::str::from_utf8(&body[..at.saturating_sub(1)]).map_err(|_| malformed)?;
        Ok(Self {
            text: text.into(),
            ends,
        })
    }
}

/// Tries to take one startup-phase frame from `buf`. `Ok(None)`: more bytes needed.
pub fn decode_startup(buf: &mut BytesMut) -> Result<Option<StartupFrame>, ProtocolError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 {
        return Err(ProtocolError::BadLength { len: len.into() });
    }
    let len = len as usize;
    if len > MAX_STARTUP_LEN {
        return Err(ProtocolError::TooLarge {
            len,
            max: MAX_STARTUP_LEN,
        });
    }
    if buf.len() < len {
        return Ok(None);
    }
    // Read in place, then dropped from the buffer: splitting the frame off would make
    // the buffer shared (an allocation) for bytes looked at once.
    let code = i32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body = &buf[8..len];
    let frame = match code {
        SSL_REQUEST if len == 8 => Ok(Some(StartupFrame::Ssl)),
        GSSENC_REQUEST if len == 8 => Ok(Some(StartupFrame::GssEnc)),
        CANCEL_REQUEST if len == 16 => Ok(Some(StartupFrame::Cancel {
            pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
            key: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
        })),
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => Err(ProtocolError::Malformed {
            what: "startup request",
        }),
        PROTOCOL_3_0 => {
            StartupParams::parse(body).map(|params| Some(StartupFrame::Startup { params }))
        }
        other => Err(ProtocolError::Version {
            major: (other >> 16) as u16,
            minor: (other & 0xffff) as u16,
        }),
    };
    buf.advance(len);
    frame
}

/// Takes a NUL-terminated UTF-8 string from the front of `body`.
pub fn take_cstr<'a>(body: &mut &'a [u8]) -> Option<&'a str> {
    let end = body.iter().position(|b| *b == 0)?;
    let s = std::str::from_utf8(&body[..end]).ok()?;
    *body = &body[end + 1..];
    Some(s)
}

fn take_i32(body: &mut &[u8]) -> Option<i32> {
    if body.len() < 4 {
        return None;
    }
    let v = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    *body = &body[4..];
    Some(v)
}

fn take_i16(body: &mut &[u8]) -> Option<i16> {
    if body.len() < 2 {
        return None;
    }
    let v = i16::from_be_bytes([body[0], body[1]]);
    *body = &body[2..];
    Some(v)
}

/// The header of one complete tagged frame at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Whole frame size, tag and length included.
    pub size: usize,
}

/// Looks at the frame at `buf[at..]`: `Ok(None)` when it is not complete yet.
pub fn peek_frame(buf: &[u8], at: usize, max: usize) -> Result<Option<Header>, ProtocolError> {
    let rest = buf.get(at..).unwrap_or(&[]);
    if rest.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
    if len < 4 {
        return Err(ProtocolError::BadLength { len: len.into() });
    }
    let size = len as usize + 1;
    if size > max {
        return Err(ProtocolError::TooLarge { len: size, max });
    }
    if rest.len() < size {
        return Ok(None);
    }
    Ok(Some(Header { tag: rest[0], size }))
}

/// Splits one complete frame off the front of `buf`.
pub fn next_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, ProtocolError> {
    match peek_frame(buf, 0, max)? {
        None => Ok(None),
        Some(h) => {
            let bytes = buf.split_to(h.size).freeze();
            Ok(Some(Frame { tag: h.tag, bytes }))
        }
    }
}

/// One whole frame, tag and length included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub bytes: Bytes,
}

impl Frame {
    pub fn body(&self) -> &[u8] {
        self.bytes.get(5..).unwrap_or(&[])
    }
}

/// Builds a tagged frame from a body.
pub fn frame(tag: u8, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(body.len() + 5);
    b.put_u8(tag);
    b.put_i32(body.len() as i32 + 4);
    b.put_slice(body);
    b.freeze()
}

fn frame_with(tag: u8, f: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut b = BytesMut::with_capacity(64);
    b.put_u8(tag);
    b.put_i32(0);
    f(&mut b);
    let len = (b.len() - 1) as i32;
    b[1..5].copy_from_slice(&len.to_be_bytes());
    b.freeze()
}

fn put_cstr(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

/// Severity of an `ErrorResponse` Quartet writes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// `ErrorResponse` with severity, SQLSTATE and message.
pub fn error_response(severity: Severity, code: &str, message: &str) -> Bytes {
    frame_with(b'E', |b| {
        b.put_u8(b'S');
        put_cstr(b, severity.as_str());
        b.put_u8(b'V');
        put_cstr(b, severity.as_str());
        b.put_u8(b'C');
        put_cstr(b, code);
        b.put_u8(b'M');
        put_cstr(b, message);
        b.put_u8(0);
    })
}

/// The fields of an `ErrorResponse` or `NoticeResponse` body Quartet looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

pub fn parse_error(body: &[u8]) -> Result<ErrorFields, ProtocolError> {
    let bad = ProtocolError::Malformed {
        what: "error response",
    };
    let mut fields = ErrorFields::default();
    let mut rest = body;
    loop {
        let (&kind, tail) = rest.split_first().ok_or(bad.clone())?;
        rest = tail;
        if kind == 0 {
            return Ok(fields);
        }
        let value = take_cstr(&mut rest).ok_or(bad.clone())?;
        match kind {
            b'S' if fields.severity.is_empty() => fields.severity = value.to_string(),
            b'V' => fields.severity = value.to_string(),
            b'C' => fields.code = value.to_string(),
            b'M' => fields.message = value.to_string(),
            _ => {}
        }
    }
}

pub fn auth_ok() -> Bytes {
    frame(b'R', &0i32.to_be_bytes())
}

pub fn auth_md5(salt: [u8; 4]) -> Bytes {
    frame_with(b'R', |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    })
}

pub fn auth_sasl(mechanisms: &[&str]) -> Bytes {
    frame_with(b'R', |b| {
        b.put_i32(10);
        for m in mechanisms {
            put_cstr(b, m);
        }
        b.put_u8(0);
    })
}

pub fn auth_sasl_continue(data: &[u8]) -> Bytes {
    frame_with(b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    })
}

pub fn auth_sasl_final(data: &[u8]) -> Bytes {
    frame_with(b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    })
}

pub fn backend_key_data(pid: i32, key: i32) -> Bytes {
    frame_with(b'K', |b| {
        b.put_i32(pid);
        b.put_i32(key);
    })
}

pub fn parameter_status(name: &str, value: &str) -> Bytes {
    frame_with(b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    })
}

pub fn ready_for_query(status: u8) -> Bytes {
    frame(b'Z', &[status])
}

pub fn query(sql: &str) -> Bytes {
    frame_with(b'Q', |b| put_cstr(b, sql))
}

pub fn terminate() -> Bytes {
    frame(b'X', &[])
}

/// `PasswordMessage` (also used for md5 and cleartext answers).
pub fn password_message(password: &str) -> Bytes {
    frame_with(b'p', |b| put_cstr(b, password))
}

pub fn sasl_initial_response(mechanism: &str, data: &[u8]) -> Bytes {
    frame_with(b'p', |b| {
        put_cstr(b, mechanism);
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    })
}

pub fn sasl_response(data: &[u8]) -> Bytes {
    frame(b'p', data)
}

pub fn startup_message(params: &[(&str, &str)]) -> Bytes {
    let mut b = BytesMut::with_capacity(128);
    b.put_i32(0);
    b.put_i32(PROTOCOL_3_0);
    for (k, v) in params {
        put_cstr(&mut b, k);
        put_cstr(&mut b, v);
    }
    b.put_u8(0);
    let len = b.len() as i32;
    b[0..4].copy_from_slice(&len.to_be_bytes());
    b.freeze()
}

/// `SSLRequest`: asks a server for TLS before the startup message.
pub fn ssl_request() -> Bytes {
    let mut b = BytesMut::with_capacity(8);
    b.put_i32(8);
    b.put_i32(SSL_REQUEST);
    b.freeze()
}

pub fn cancel_request(pid: i32, key: i32) -> Bytes {
    let mut b = BytesMut::with_capacity(16);
    b.put_i32(16);
    b.put_i32(CANCEL_REQUEST);
    b.put_i32(pid);
    b.put_i32(key);
    b.freeze()
}

/// An `Authentication*` request from a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    Ok,
    Cleartext,
    Md5 { salt: [u8; 4] },
    Sasl { mechanisms: Vec<String> },
    SaslContinue { data: Bytes },
    SaslFinal { data: Bytes },
    Other { code: i32 },
}

pub fn parse_auth(frame: &Frame) -> Result<AuthRequest, ProtocolError> {
    let bad = ProtocolError::Malformed {
        what: "authentication",
    };
    let mut body = frame.body();
    let code = take_i32(&mut body).ok_or(bad.clone())?;
    Ok(match code {
        0 => AuthRequest::Ok,
        3 => AuthRequest::Cleartext,
        5 => {
            let salt: [u8; 4] = body
                .get(..4)
                .ok_or(bad.clone())?
                .try_into()
                .map_err(|_| bad)?;
            AuthRequest::Md5 { salt }
        }
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let m = take_cstr(&mut body).ok_or(bad.clone())?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m.to_string());
            }
            AuthRequest::Sasl { mechanisms }
        }
        11 => AuthRequest::SaslContinue {
            data: frame.bytes.slice(9..),
        },
        12 => AuthRequest::SaslFinal {
            data: frame.bytes.slice(9..),
        },
        code => AuthRequest::Other { code },
    })
}

/// `BackendKeyData` body.
pub fn parse_backend_key(frame: &Frame) -> Result<(i32, i32), ProtocolError> {
    let mut body = frame.body();
    let bad = ProtocolError::Malformed {
        what: "backend key data",
    };
    let pid = take_i32(&mut body).ok_or(bad.clone())?;
    let key = take_i32(&mut body).ok_or(bad)?;
    Ok((pid, key))
}

/// `ParameterStatus` body.
pub fn parse_parameter_status(frame: &Frame) -> Result<(String, String), ProtocolError> {
    let mut body = frame.body();
    let bad = ProtocolError::Malformed {
        what: "parameter status",
    };
    let k = take_cstr(&mut body).ok_or(bad.clone())?;
    let v = take_cstr(&mut body).ok_or(bad)?;
    Ok((k.to_string(), v.to_string()))
}

/// `ReadyForQuery` status: `I` idle, `T` in a transaction, `E` in a failed transaction.
pub fn parse_ready(frame: &Frame) -> Result<u8, ProtocolError> {
    match frame.body() {
        [s @ (b'I' | b'T' | b'E')] => Ok(*s),
        _ => Err(ProtocolError::Malformed {
            what: "ready for query",
        }),
    }
}

/// The client's `SASLInitialResponse`: mechanism and data.
pub fn parse_sasl_initial(body: &[u8]) -> Result<(&str, &[u8]), ProtocolError> {
    let bad = ProtocolError::Malformed {
        what: "sasl initial response",
    };
    let mut rest = body;
    let mech = take_cstr(&mut rest).ok_or(bad.clone())?;
    let len = take_i32(&mut rest).ok_or(bad.clone())?;
    if len < 0 || len as usize != rest.len() {
        return Err(bad);
    }
    Ok((mech, rest))
}

/// The client's md5 or cleartext `PasswordMessage`.
pub fn parse_password(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut rest = body;
    let s = take_cstr(&mut rest).ok_or(ProtocolError::Malformed { what: "password" })?;
    Ok(s)
}

/// `Parse`: statement name, then the rest of the body (query, parameter types), kept
/// as bytes so it can be sent again under another name.
pub fn parse_parse(body: &[u8]) -> Result<(&str, &[u8]), ProtocolError> {
    let bad = ProtocolError::Malformed { what: "parse" };
    let mut rest = body;
    let name = take_cstr(&mut rest).ok_or(bad.clone())?;
    let mut check = rest;
    take_cstr(&mut check).ok_or(bad.clone())?;
    let n = take_i16(&mut check).ok_or(bad.clone())?;
    if n < 0 || check.len() != n as usize * 4 {
        return Err(bad);
    }
    Ok((name, rest))
}

/// Builds a `Parse` with `name` and the query/parameter part of another.
pub fn build_parse(name: &str, rest: &[u8]) -> Bytes {
    frame_with(b'P', |b| {
        put_cstr(b, name);
        b.put_slice(rest);
    })
}

/// `Bind`: portal, statement, then the rest.
pub fn parse_bind(body: &[u8]) -> Result<(&str, &str, &[u8]), ProtocolError> {
    let bad = ProtocolError::Malformed { what: "bind" };
    let mut rest = body;
    let portal = take_cstr(&mut rest).ok_or(bad.clone())?;
    let stmt = take_cstr(&mut rest).ok_or(bad)?;
    Ok((portal, stmt, rest))
}

pub fn build_bind(portal: &str, stmt: &str, rest: &[u8]) -> Bytes {
    frame_with(b'B', |b| {
        put_cstr(b, portal);
        put_cstr(b, stmt);
        b.put_slice(rest);
    })
}

/// `Describe` or `Close`: kind (`S` statement or `P` portal) and name.
pub fn parse_target<'a>(
    body: &'a [u8],
    what: &'static str,
) -> Result<(u8, &'a str), ProtocolError> {
    let bad = ProtocolError::Malformed { what };
    let (&kind, mut rest) = body.split_first().ok_or(bad.clone())?;
    if kind != b'S' && kind != b'P' {
        return Err(bad);
    }
    let name = take_cstr(&mut rest).ok_or(bad.clone())?;
    if !rest.is_empty() {
        return Err(bad);
    }
    Ok((kind, name))
}

pub fn build_target(tag: u8, kind: u8, name: &str) -> Bytes {
    frame_with(tag, |b| {
        b.put_u8(kind);
        put_cstr(b, name);
    })
}

/// Whether a client may send this tag after startup.
pub fn is_frontend_tag(tag: u8) -> bool {
    matches!(
        tag,
        b'B' | b'C'
            | b'd'
            | b'c'
            | b'f'
            | b'D'
            | b'E'
            | b'H'
            | b'F'
            | b'P'
            | b'p'
            | b'Q'
            | b'S'
            | b'X'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_roundtrip() {
        let msg = startup_message(&[("user", "app"), ("database", "test")]);
        let mut buf = BytesMut::from(&msg[..]);
        let f = decode_startup(&mut buf).unwrap().unwrap();
        let StartupFrame::Startup { params } = f else {
            panic!("not a startup message: {f:?}");
        };
        assert_eq!(
            params.iter().collect::<Vec<_>>(),
            [("user", "app"), ("database", "test")]
        );
        assert_eq!(params.get("database"), Some("test"));
        assert_eq!(params.get("options"), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn startup_parameters_as_the_protocol_frames_them() {
        let parse = |body: &[u8]| StartupParams::parse(body);
        let pairs = |p: &StartupParams| {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        // No parameters at all, and an empty value.
        assert_eq!(pairs(&parse(b"\0").unwrap()), []);
        assert_eq!(
            pairs(&parse(b"user\0\0options\0-c x=1\0\0").unwrap()),
            [
                ("user".to_string(), String::new()),
                ("options".to_string(), "-c x=1".to_string())
            ]
        );
        // Bytes after the list's end are ignored, as before; not even checked as UTF-8.
        assert_eq!(
            pairs(&parse(b"user\0app\0\0\xff\xfe").unwrap()),
            [("user".to_string(), "app".to_string())]
        );
        // A name or value without its NUL, no end of the list, or bytes that are not
        // UTF-8 inside it: malformed.
        let malformed = Err(ProtocolError::Malformed { what: "startup" });
        for body in [
            &b""[..],
            b"user",
            b"user\0app",
            b"user\0app\0",
            b"user\0\xff\0\0",
            b"\xc3\0v\0\0",
        ] {
            assert_eq!(parse(body), malformed, "{body:?}");
        }
        // Multi-byte UTF-8 kept whole.
        assert_eq!(
            parse("application_name\0caf\u{e9}\0\0".as_bytes())
                .unwrap()
                .get("application_name"),
            Some("caf\u{e9}")
        );
    }

    #[test]
    fn startup_requests() {
        let mut buf = BytesMut::from(&cancel_request(7, 9)[..]);
        assert_eq!(
            decode_startup(&mut buf).unwrap(),
            Some(StartupFrame::Cancel { pid: 7, key: 9 })
        );
        let mut buf = BytesMut::new();
        buf.put_i32(8);
        buf.put_i32(SSL_REQUEST);
        assert_eq!(decode_startup(&mut buf).unwrap(), Some(StartupFrame::Ssl));
    }

    #[test]
    fn startup_rejects_huge_and_tiny_and_old() {
        let mut buf = BytesMut::from(&0x7fff_ffffi32.to_be_bytes()[..]);
        assert!(matches!(
            decode_startup(&mut buf),
            Err(ProtocolError::TooLarge { .. })
        ));
        let mut buf = BytesMut::from(&3i32.to_be_bytes()[..]);
        assert!(decode_startup(&mut buf).is_err());
        let mut buf = BytesMut::new();
        buf.put_i32(8);
        buf.put_i32(2 << 16);
        assert_eq!(
            decode_startup(&mut buf),
            Err(ProtocolError::Version { major: 2, minor: 0 })
        );
    }

    #[test]
    fn truncated_startup_waits() {
        let msg = startup_message(&[("user", "app")]);
        for cut in 0..msg.len() {
            let mut buf = BytesMut::from(&msg[..cut]);
            assert_eq!(decode_startup(&mut buf).unwrap(), None);
        }
    }

    #[test]
    fn frames_and_limits() {
        let q = query("select 1");
        let mut buf = BytesMut::from(&q[..]);
        buf.extend_from_slice(&q[..3]);
        let f = next_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(next_frame(&mut buf, 1024).unwrap(), None);
        let mut big = BytesMut::from(&b"Q\x7f\xff\xff\xff"[..]);
        assert!(matches!(
            next_frame(&mut big, 1024),
            Err(ProtocolError::TooLarge { .. })
        ));
        let mut neg = BytesMut::from(&b"Q\xff\xff\xff\xff"[..]);
        assert!(matches!(
            next_frame(&mut neg, 1024),
            Err(ProtocolError::BadLength { .. })
        ));
    }

    #[test]
    fn error_roundtrip() {
        let e = error_response(Severity::Fatal, "08P01", "bad");
        let mut buf = BytesMut::from(&e[..]);
        let f = next_frame(&mut buf, 1024).unwrap().unwrap();
        let fields = parse_error(f.body()).unwrap();
        assert_eq!(fields.code, "08P01");
        assert_eq!(fields.severity, "FATAL");
        assert_eq!(fields.message, "bad");
    }

    #[test]
    fn parse_and_bind_rewrite() {
        let mut rest = BytesMut::new();
        rest.put_slice(b"select $1\0");
        rest.put_i16(1);
        rest.put_i32(23);
        let p = build_parse("s0", &rest);
        let f = next_frame(&mut BytesMut::from(&p[..]), 1024)
            .unwrap()
            .unwrap();
        let (name, r) = parse_parse(f.body()).unwrap();
        assert_eq!(name, "s0");
        assert_eq!(r, &rest[..]);
        let b = build_bind("", "s0", b"\0\0\0\0\0\0");
        let f = next_frame(&mut BytesMut::from(&b[..]), 1024)
            .unwrap()
            .unwrap();
        let (portal, stmt, _) = parse_bind(f.body()).unwrap();
        assert_eq!((portal, stmt), ("", "s0"));
    }

    /// Random and truncated input never panics the decoders.
    #[test]
    fn fuzzish_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let samples: Vec<Bytes> = vec![
            startup_message(&[("user", "a")]),
            query("select 1"),
            error_response(Severity::Error, "42601", "x"),
            auth_sasl(&["SCRAM-SHA-256"]),
            auth_md5([1, 2, 3, 4]),
            backend_key_data(1, 2),
            parameter_status("a", "b"),
            ready_for_query(b'I'),
        ];
        for _ in 0..20_000 {
            let mut bytes: Vec<u8> = if rng.random_bool(0.5) {
                let s = &samples[rng.random_range(0..samples.len())];
                let mut v = s.to_vec();
                for _ in 0..rng.random_range(0..4) {
                    let i = rng.random_range(0..v.len());
                    v[i] = rng.random();
                }
                v.truncate(rng.random_range(0..=v.len()));
                v
            } else {
                (0..rng.random_range(0..40)).map(|_| rng.random()).collect()
            };
            let _ = decode_startup(&mut BytesMut::from(&bytes[..]));
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(f)) = next_frame(&mut buf, 1 << 20) {
                let _ = parse_error(f.body());
                let _ = parse_auth(&f);
                let _ = parse_backend_key(&f);
                let _ = parse_parameter_status(&f);
                let _ = parse_ready(&f);
                let _ = parse_parse(f.body());
                let _ = parse_bind(f.body());
                let _ = parse_target(f.body(), "describe");
                let _ = parse_sasl_initial(f.body());
                let _ = parse_password(f.body());
            }
            bytes.clear();
        }
    }
}
