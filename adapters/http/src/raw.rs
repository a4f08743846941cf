//! A response's header block kept as bytes on its way from the upstream to the client.
//!
//! Why: a proxied response's headers are read by nobody between Quartet's upstream
//! exchange ([`crate::h1`]) and the client; turning them into a `HeaderMap` (a name
//! lookup, a value check and a hash insert per header) and back into bytes was about a
//! tenth of the instructions of a proxied request. A REST endpoint built with
//! [`crate::endpoint::EndpointService::raw_response_heads`] leaves them as one block:
//! the response's `HeaderMap` holds only what the proxy adds, and a [`RawHead`]
//! extension holds the upstream's headers, hop-by-hop ones and the request id already
//! left out (what `proxy::prepare_response` would have removed or replaced).
//!
//! The one rule, as for a request's `AddedHeaders`: whoever writes the response honours
//! the extension. Quartet's HTTP/1.1 server loop writes the block after the map's
//! headers, then the request id the proxy set ([`RawHead::request_id`]); before hyper
//! writes a response (HTTP/2, TLS, a connection hyper serves), [`RawHead::apply`] moves
//! both into the map. The request id rides here rather than in the map so that a proxied
//! response needs no map at all (its first insert is two allocations and a hash).

use crate::h1::Framing;
use bytes::{Bytes, BytesMut};

/// The upstream's header lines (`name: value\r\n` each), minus hop-by-hop headers and
/// `X-OpenStack-Request-ID`.
#[derive(Clone, Debug)]
pub struct RawHead {
    block: Bytes,
    content_length: Option<u64>,
    has_date: bool,
    /// The `X-OpenStack-Request-ID` to send with the block (`proxy::prepare_response`).
    request_id: Option<http::HeaderValue>,
}

impl RawHead {
    /// The block of a response head parsed by httparse, whose body is framed as
    /// `framing` (a body that will be framed again, chunked or until close, loses its
    /// `Content-Length`).
    pub(crate) fn from_fields(fields: &[httparse::Header<'_>], framing: Framing) -> Self {
        let size: usize = fields
            .iter()
            .map(|h| h.name.len() + h.value.len() + 4)
            .sum();
        let mut block = BytesMut::with_capacity(size);
        let mut content_length = None;
        let mut has_date = false;
        let keep_length = matches!(framing, Framing::Length(_) | Framing::None);
        // Usually `Connection` says only `keep-alive`: then it names nothing to remove.
        let names_more = connection_tokens(fields).any(|t| !t.eq_ignore_ascii_case(b"keep-alive"));
        for h in fields {
            let name = h.name;
            if crate::proxy::is_hop_by_hop(name)
                || name.eq_ignore_ascii_case(crate::proxy::REQUEST_ID.as_str())
                || (names_more
                    && connection_tokens(fields).any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
            {
                continue;
            }
            if name.eq_ignore_ascii_case("content-length") {
                if !keep_length || content_length.is_some() {
                    continue;
                }
                content_length = first_number(h.value);
            } else if name.eq_ignore_ascii_case("date") {
                has_date = true;
            }
            block.extend_from_slice(name.as_bytes());
            block.extend_from_slice(b": ");
            block.extend_from_slice(h.value);
            block.extend_from_slice(b"\r\n");
        }
        Self {
            block: block.freeze(),
            content_length,
            has_date,
            request_id: None,
        }
    }

    /// The header lines, each ending in CRLF (no empty line after them).
    pub fn block(&self) -> &[u8] {
        &self.block
    }

    /// The `Content-Length` the block carries.
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// Whether the block carries a `Date`.
    pub fn has_date(&self) -> bool {
        self.has_date
    }

    /// The `X-OpenStack-Request-ID` to write after the block.
    pub fn request_id(&self) -> Option<&http::HeaderValue> {
        self.request_id.as_ref()
    }

    pub(crate) fn set_request_id(&mut self, id: http::HeaderValue) {
        self.request_id = Some(id);
    }

    /// Moves a response's raw headers into its `HeaderMap` (after the ones it has), for
    /// a writer that only knows the map.
    pub fn apply<B>(resp: &mut http::Response<B>) {
        let Some(raw) = resp.extensions_mut().remove::<RawHead>() else {
            return;
        };
        let headers = resp.headers_mut();
        for line in raw.block.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
            // The block was made from a head httparse accepted: both are valid.
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name),
                http::HeaderValue::from_bytes(value),
            ) {
                headers.append(name, value);
            }
        }
        if let Some(id) = raw.request_id {
            headers.insert(crate::proxy::REQUEST_ID, id);
        }
    }
}

/// The tokens of the head's `Connection` headers. A header they name is hop-by-hop too
/// (`close` included, as `proxy::prepare_response` removes a header named `close`).
fn connection_tokens<'a>(fields: &'a [httparse::Header<'a>]) -> impl Iterator<Item = &'a [u8]> {
    fields
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The first number of a `Content-Length` value (`7` of `7, 7`).
fn first_number(value: &[u8]) -> Option<u64> {
    let first = value.split(|b| *b == b',').next()?.trim_ascii();
    std::str::from_utf8(first).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(pairs: &[(&'static str, &'static str)], framing: Framing) -> RawHead {
        let fields: Vec<_> = pairs
            .iter()
            .map(|(name, value)| httparse::Header {
                name,
                value: value.as_bytes(),
            })
            .collect();
        RawHead::from_fields(&fields, framing)
    }

    #[test]
    fn leaves_out_hop_by_hop_headers_and_the_request_id() {
        let raw = head(
            &[
                ("Server", "nginx"),
                ("Date", "Thu, 26 Nov 2026 10:00:00 GMT"),
                ("Content-Length", "5"),
                ("Connection", "keep-alive, X-Private"),
                ("Keep-Alive", "timeout=5"),
                ("X-Private", "1"),
                ("X-OpenStack-Request-ID", "req-upstream"),
                ("Set-Cookie", "a=1"),
                ("Set-Cookie", "b=2"),
            ],
            Framing::Length(5),
        );
        assert_eq!(
            std::str::from_utf8(raw.block()).unwrap(),
            "Server: nginx\r\nDate: Thu, 26 Nov 2026 10:00:00 GMT\r\nContent-Length: 5\r\n\
             Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
        );
        assert_eq!(raw.content_length(), Some(5));
        assert!(raw.has_date());
    }

    #[test]
    fn a_body_framed_again_loses_its_length() {
        let raw = head(
            &[("Transfer-Encoding", "chunked"), ("Content-Length", "3")],
            Framing::Chunked,
        );
        assert_eq!(raw.block(), b"");
        assert_eq!(raw.content_length(), None);
        assert!(!raw.has_date());
    }

    #[test]
    fn apply_moves_the_block_into_the_map() {
        let raw = head(
            &[
                ("Content-Type", "application/json"),
                ("X-A", "1"),
                ("x-a", "2"),
            ],
            Framing::None,
        );
        let mut resp = http::Response::new(());
        resp.headers_mut().insert(
            crate::proxy::REQUEST_ID,
            http::HeaderValue::from_static("req-1"),
        );
        resp.extensions_mut().insert(raw);
        RawHead::apply(&mut resp);
        assert!(resp.extensions().get::<RawHead>().is_none());
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.headers().get_all("x-a").iter().count(), 2);
        assert_eq!(resp.headers()[crate::proxy::REQUEST_ID], "req-1");
    }

    #[test]
    fn the_request_id_rides_with_the_block() {
        let mut resp = http::Response::new(());
        resp.extensions_mut()
            .insert(head(&[("Content-Type", "text/plain")], Framing::None));
        let id = http::HeaderValue::from_static("req-2");
        crate::proxy::prepare_response(&mut resp, &id);
        // The map stays empty: the id is the block's, for whoever writes it.
        assert!(resp.headers().is_empty());
        let raw = resp.extensions().get::<RawHead>().unwrap();
        assert_eq!(raw.request_id(), Some(&id));
        RawHead::apply(&mut resp);
        assert_eq!(resp.headers()[crate::proxy::REQUEST_ID], "req-2");
        assert_eq!(
            resp.headers()
                .get_all(crate::proxy::REQUEST_ID)
                .iter()
                .count(),
            1
        );

        // Without a block, the map gets it.
        let mut plain = http::Response::new(());
        crate::proxy::prepare_response(&mut plain, &id);
        assert_eq!(plain.headers()[crate::proxy::REQUEST_ID], "req-2");
    }
}
