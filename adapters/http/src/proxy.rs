//! What a reverse proxy does to headers on the way in and out, and the tunnel of an
//! upgraded connection (WebSocket).
//!
//! # Upgrades (WebSocket), for the gateway
//!
//! 1. Before the request enters the stack, take the client's upgrade:
//!    `let client_upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));`
//!    ([`prepare_request`] keeps `Upgrade` and sets `Connection: upgrade` on such a
//!    request; do not buffer or replay its body, it has none).
//! 2. Send it through the stack as any request. The upstream connection is HTTP/1.1 (an
//!    upgrade does not work over HTTP/2; an upstream with `http2 = true` cannot upgrade).
//! 3. When the answer is `101 Switching Protocols`, take the upstream's upgrade:
//!    `let upstream_upgrade = hyper::upgrade::on(&mut resp);`, then
//!    `tokio::spawn(tunnel(client_upgrade, upstream_upgrade));` and return the 101
//!    ([`prepare_response`] leaves its `Connection`/`Upgrade` alone) to the client. The
//!    client's upgrade completes once hyper has written the 101; [`tunnel`] then copies
//!    bytes both ways until either side closes.
//! 4. Any other answer: drop `client_upgrade`, return the response as usual.

use crate::classify::CallInfo;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;

/// Facts about the client connection the forwarded headers need.
#[derive(Clone, Debug)]
pub struct Forwarded {
    /// The client's address as `X-Forwarded-For` writes it (see [`client_ip_value`]).
    pub client_ip: http::HeaderValue,
    /// `"http"` or `"https"`.
    pub proto: &'static str,
}

/// The client's IP as a header value, made once per connection: cloning it for each
/// request is a reference count, where formatting the address was an allocation.
pub fn client_ip_value(addr: SocketAddr) -> http::HeaderValue {
    let text = addr.ip().to_string();
    http::HeaderValue::from_maybe_shared(bytes::Bytes::from(text))
        .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"))
}

pub const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-openstack-request-id");

// Names built once: a `&str` name is parsed again on every map operation.
const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: http::HeaderName = http::HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: http::HeaderName = http::HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: http::HeaderName = http::HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 7.6.1), besides those `Connection` names: the first
/// names [`Present`] looks for.
static HOP_BY_HOP: &[http::HeaderName] = SCANNED.split_at(9).0;

/// Which of the header names a reverse proxy reads are among a request's: one pass over
/// the names the request has (a handful), where a lookup per name hashes the name and
/// probes the map, and most of them (`Upgrade`, `TE`, `X-Forwarded-For`, the request id,
/// a `GET`'s `Content-Length`) find nothing. Valid while the map is not changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Present(u32);

/// The names [`Present`] looks for, the hop-by-hop ones ([`HOP_BY_HOP`]) first.
static SCANNED: [http::HeaderName; 15] = [
    http::header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::header::HOST,
    http::header::CONTENT_LENGTH,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    REQUEST_ID,
];

impl Present {
    const CONNECTION: u32 = 1 << 0;
    const TE: u32 = 1 << 5;
    const UPGRADE: u32 = 1 << 8;
    const HOP_BY_HOP: u32 = (1 << 9) - 1;
    const HOST: u32 = 1 << 9;
    const CONTENT_LENGTH: u32 = 1 << 10;
    const X_FORWARDED_FOR: u32 = 1 << 11;
    const PROXY_FIELDS: u32 = 0b1111 << 11;
    const REQUEST_ID: u32 = 1 << 14;

    /// The names of `headers` among those a proxy reads.
    pub fn of(headers: &http::HeaderMap) -> Self {
        let mut bits = 0;
        for name in headers.keys() {
            if let Some(i) = SCANNED.iter().position(|n| n == name) {
                bits |= 1 << i;
            }
        }
        Self(bits)
    }

    fn has(self, bits: u32) -> bool {
        self.0 & bits != 0
    }

    /// Whether the request has a `Host` field.
    pub fn host(self) -> bool {
        self.has(Self::HOST)
    }

    /// Whether the request has a `Content-Length` field.
    pub fn content_length(self) -> bool {
        self.has(Self::CONTENT_LENGTH)
    }

    /// [`is_upgrade`], answered without a lookup when either field is missing.
    pub fn is_upgrade<B>(self, req: &http::Request<B>) -> bool {
        self.0 & (Self::UPGRADE | Self::CONNECTION) == Self::UPGRADE | Self::CONNECTION
            && is_upgrade(req)
    }
}

/// The client's `X-OpenStack-Request-ID` when it is a valid `req-<uuid>` (as
/// oslo.middleware accepts it: any UUID version, in its lowercase hyphenated form), else a
/// new `req-<uuid4>`. A header value, so that the request and the response share it.
pub fn request_id(headers: &http::HeaderMap) -> http::HeaderValue {
    request_id_of(headers, Present::of(headers))
}

/// [`request_id`] of a request whose names [`Present`] has read.
pub fn request_id_of(headers: &http::HeaderMap, present: Present) -> http::HeaderValue {
    if !present.has(Present::REQUEST_ID) {
        return new_request_id();
    }
    match headers.get(REQUEST_ID) {
        Some(v) if v.to_str().is_ok_and(is_valid_request_id) => v.clone(),
        _ => new_request_id(),
    }
}

/// A new `req-<uuid4>`. The random bits come from the thread's RNG (`rand`), not from
/// `Uuid::new_v4`, which asks the kernel (a `getrandom` system call) for each id.
fn new_request_id() -> http::HeaderValue {
    let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    let mut out = [0u8; 40];
    out[..4].copy_from_slice(b"req-");
    id.hyphenated().encode_lower(&mut out[4..]);
    // `req-` and a hyphenated UUID are visible ASCII.
    http::HeaderValue::from_bytes(&out).unwrap_or_else(|_| http::HeaderValue::from_static("req-"))
}

/// The text of a request id made by [`request_id`] (always visible ASCII).
pub fn request_id_str(id: &http::HeaderValue) -> &str {
    id.to_str().unwrap_or("-")
}

/// `req-` followed by a UUID in lowercase hyphenated form.
pub fn is_valid_request_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("req-") else {
        return false;
    };
    rest.len() == 36
        && rest.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

/// Removes hop-by-hop headers (except `Upgrade`/`Connection: upgrade` on an upgrade
/// request), and sets `X-Forwarded-For` (appended), `-Proto`, `-Host`, and the request id.
///
/// `TE: trailers` is kept (HTTP/2 allows it, gRPC needs it); any other `TE` goes.
/// `X-Forwarded-Host` is the client's `Host`, or the URI's authority (an HTTP/2 client's
/// `:authority`).
///
/// The four set headers go into the call's [`CallInfo`] as [`ProxyHeaders`] when the
/// request has one (every request of the REST channel), and the client's own fields of
/// those names leave the map: the sender writes them (the rule of
/// `quartet_policies::head`). A request without a `CallInfo` gets them in its map.
pub fn prepare_request<B>(
    req: &mut http::Request<B>,
    fwd: &Forwarded,
    request_id: &http::HeaderValue,
) {
    let present = Present::of(req.headers());
    prepare_request_of(req, fwd, request_id, present);
}

/// [`prepare_request`] of a request whose names [`Present`] has read (and that has not
/// changed since).
pub fn prepare_request_of<B>(
    req: &mut http::Request<B>,
    fwd: &Forwarded,
    request_id: &http::HeaderValue,
    present: Present,
) {
    let upgrade = present.is_upgrade(req);
    let te_trailers = present.has(Present::TE)
        && req
            .headers()
            .get_all(http::header::TE)
            .iter()
            .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case("trailers")));
    let upgrade_value = if upgrade {
        req.headers().get(http::header::UPGRADE).cloned()
    } else {
        None
    };
    let host = if present.host() {
        req.headers().get(http::header::HOST).cloned()
    } else {
        None
    };
    let forwarded_host = host.or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
    });

    let headers = req.headers_mut();
    if present.has(Present::HOP_BY_HOP) {
        remove_hop_by_hop(headers, present.0 & Present::HOP_BY_HOP);
    }
    if te_trailers {
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
    if upgrade {
        if let Some(v) = upgrade_value {
            headers.insert(http::header::UPGRADE, v);
        }
        headers.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
    }

    let set = ProxyHeaders {
        forwarded_for: if present.has(Present::X_FORWARDED_FOR) {
            forwarded_for(headers, fwd)
        } else {
            fwd.client_ip.clone()
        },
        proto: fwd.proto,
        host: forwarded_host,
        request_id: request_id.clone(),
    };
    match req.extensions().get::<Arc<CallInfo>>().cloned() {
        Some(call) => {
            if present.has(Present::PROXY_FIELDS) {
                remove_proxy_fields(req.headers_mut());
            }
            call.set_proxy_headers(set);
        }
        None => set.apply(req.headers_mut()),
    }
}

/// `X-Forwarded-For`: what the client sent, then the client's address. Most clients send
/// none, and then the value made once per connection is the whole header.
fn forwarded_for(headers: &http::HeaderMap, fwd: &Forwarded) -> http::HeaderValue {
    let mut sent = headers.get_all(X_FORWARDED_FOR).iter().peekable();
    if sent.peek().is_none() {
        return fwd.client_ip.clone();
    }
    let mut xff: Vec<u8> = Vec::new();
    for v in sent {
        let v = v.as_bytes().trim_ascii();
        if !v.is_empty() {
            xff.extend_from_slice(v);
            xff.extend_from_slice(b", ");
        }
    }
    xff.extend_from_slice(fwd.client_ip.as_bytes());
    // Valid header bytes, ", " and an IP make a valid header value.
    http::HeaderValue::from_bytes(&xff).unwrap_or_else(|_| fwd.client_ip.clone())
}

/// Takes the client's fields named as one of [`ProxyHeaders`] out of `headers`: one pass
/// over the names the request has (a handful), not a lookup per name.
fn remove_proxy_fields(headers: &mut http::HeaderMap) {
    let is_ours = |name: &http::HeaderName| {
        name.as_str().starts_with("x-")
            && (*name == X_FORWARDED_FOR
                || *name == X_FORWARDED_PROTO
                || *name == X_FORWARDED_HOST
                || *name == REQUEST_ID)
    };
    if !headers.keys().any(is_ours) {
        return;
    }
    for name in [
        X_FORWARDED_FOR,
        X_FORWARDED_PROTO,
        X_FORWARDED_HOST,
        REQUEST_ID,
    ] {
        headers.remove(name);
    }
}

/// The headers a reverse proxy sets on a request, kept with the call's facts
/// ([`CallInfo::proxy_headers`]) rather than inserted into its map one by one: made once
/// per call (every attempt and the retry's copy share them), written by the sender.
#[derive(Clone, Debug)]
pub struct ProxyHeaders {
    forwarded_for: http::HeaderValue,
    proto: &'static str,
    host: Option<http::HeaderValue>,
    request_id: http::HeaderValue,
}

impl ProxyHeaders {
    fn fields(&self) -> [(&'static str, Option<&[u8]>); 4] {
        [
            ("x-forwarded-for", Some(self.forwarded_for.as_bytes())),
            ("x-forwarded-proto", Some(self.proto.as_bytes())),
            ("x-forwarded-host", self.host.as_ref().map(|h| h.as_bytes())),
            ("x-openstack-request-id", Some(self.request_id.as_bytes())),
        ]
    }

    /// The HTTP/1.1 lines' length.
    pub fn wire_len(&self) -> usize {
        self.fields()
            .iter()
            .filter_map(|(name, value)| Some(name.len() + value.as_ref()?.len() + 4))
            .sum()
    }

    /// Writes the headers as HTTP/1.1 lines.
    pub fn write(&self, out: &mut Vec<u8>) {
        for (name, value) in self.fields() {
            if let Some(value) = value {
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// Sets the headers in `headers`, replacing any of the same names (and removing an
    /// `X-Forwarded-Host` when there is no host to forward).
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        headers.insert(X_FORWARDED_FOR, self.forwarded_for.clone());
        headers.insert(
            X_FORWARDED_PROTO,
            http::HeaderValue::from_static(self.proto),
        );
        match &self.host {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST, host.clone());
            }
            None => {
                headers.remove(X_FORWARDED_HOST);
            }
        }
        set_request_id(headers, &self.request_id);
    }
}

/// What a sender that writes the head from the map calls first (hyper's client): the
/// call's [`ProxyHeaders`], if any, set in `headers`.
pub fn apply_proxy_headers(extensions: &http::Extensions, headers: &mut http::HeaderMap) {
    if let Some(set) = extensions
        .get::<Arc<CallInfo>>()
        .and_then(|call| call.proxy_headers())
    {
        set.apply(headers);
    }
}

/// Removes hop-by-hop headers from the upstream's response (except on a 101) and sets the
/// request id.
pub fn prepare_response<B>(resp: &mut http::Response<B>, request_id: &http::HeaderValue) {
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        let present = Present::of(resp.headers()).0 & Present::HOP_BY_HOP;
        if present != 0 {
            remove_hop_by_hop(resp.headers_mut(), present);
        }
    }
    // A proxied response's upstream headers are a block (`crate::raw`): the id goes with
    // it, and the map, which holds only what the proxy added, gets none.
    if let Some(raw) = resp.extensions_mut().get_mut::<crate::raw::RawHead>() {
        raw.set_request_id(request_id.clone());
        resp.headers_mut().remove(REQUEST_ID);
        return;
    }
    set_request_id(resp.headers_mut(), request_id);
}

/// Whether the request asks for a protocol upgrade (WebSocket): an HTTP/1.1 request with
/// an `Upgrade` header and the token `upgrade` in `Connection`.
pub fn is_upgrade<B>(req: &http::Request<B>) -> bool {
    req.version() == http::Version::HTTP_11
        && req.headers().contains_key(http::header::UPGRADE)
        && req
            .headers()
            .get_all(http::header::CONNECTION)
            .iter()
            .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case("upgrade")))
}

/// Copies bytes both ways between an upgraded client connection and an upgraded upstream
/// connection until either side closes (see the module docs for the whole flow). Errors
/// are logged, never raised.
pub async fn tunnel(client: OnUpgrade, upstream: OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete; no tunnel");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((sent, received)) => tracing::debug!(sent, received, "tunnel closed"),
        Err(e) => tracing::debug!(error = %e, "tunnel ended with an error"),
    }
}

fn set_request_id(headers: &mut http::HeaderMap, request_id: &http::HeaderValue) {
    headers.insert(REQUEST_ID, request_id.clone());
}

/// Whether `name` is one of the hop-by-hop headers a proxy never passes on.
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| h.as_str().eq_ignore_ascii_case(name))
}

/// Removes the hop-by-hop fields whose bits ([`Present`]'s, [`HOP_BY_HOP`]'s order) are
/// in `present`, and those `Connection` names. Most messages have none or
/// only `Connection` (and `Keep-Alive`): only those are looked up.
fn remove_hop_by_hop(headers: &mut http::HeaderMap, present: u32) {
    // `Connection` (bit 0) names more headers to remove; `close` and `keep-alive` are
    // the usual ones, and `keep-alive` is in the list already.
    if present & 1 != 0 {
        let mut close = false;
        let mut named: Vec<http::HeaderName> = Vec::new();
        for t in headers
            .get_all(http::header::CONNECTION)
            .iter()
            .flat_map(tokens)
        {
            if t.eq_ignore_ascii_case("close") {
                close = true;
            } else if !t.eq_ignore_ascii_case("keep-alive") {
                named.extend(http::HeaderName::from_bytes(t.as_bytes()).ok());
            }
        }
        if close {
            // Looked up by `&str`: no name is allocated for it.
            headers.remove("close");
        }
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// The comma-separated tokens of a header value (none when it is not visible ASCII).
fn tokens(value: &http::HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONNECTION, HOST, TE, UPGRADE};

    fn fwd() -> Forwarded {
        Forwarded {
            client_ip: client_ip_value("192.0.2.7:51000".parse().unwrap()),
            proto: "https",
        }
    }

    fn get(headers: &[(&str, &str)]) -> http::Request<()> {
        let mut b = http::Request::get("/v2/servers");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    const ID: &str = "req-3f1c2a7e-9b4d-4c1e-8a2f-0123456789ab";

    fn id() -> http::HeaderValue {
        http::HeaderValue::from_static(ID)
    }

    #[test]
    fn request_id_kept_only_when_valid() {
        let mut h = http::HeaderMap::new();
        h.insert(REQUEST_ID, ID.parse().unwrap());
        assert_eq!(request_id(&h), ID);
        let any_version = "req-3f1c2a7e-9b4d-1c1e-8a2f-0123456789ab";
        h.insert(REQUEST_ID, any_version.parse().unwrap());
        assert_eq!(request_id(&h), any_version);

        for bad in [
            "3f1c2a7e-9b4d-4c1e-8a2f-0123456789ab",
            "req-3F1C2A7E-9B4D-4C1E-8A2F-0123456789AB",
            "req-3f1c2a7e9b4d4c1e8a2f0123456789ab",
            "req-{3f1c2a7e-9b4d-4c1e-8a2f-0123456789ab}",
            "req-3f1c2a7e-9b4d-4c1e-8a2f-0123456789a",
            "req-3f1c2a7e-9b4d-4c1e-8a2f-0123456789abc",
            "req-3f1c2a7e-9b4d-4c1e-8a2f-0123456789ag",
            "req-3f1c2a7e-9b4d-4c1e-8a2f0-123456789ab",
            "req-not-a-uuid",
            "req-",
            "",
        ] {
            assert!(!is_valid_request_id(bad), "{bad}");
            h.insert(REQUEST_ID, bad.parse().unwrap());
            let id = request_id(&h);
            assert_ne!(id, bad);
            assert!(is_valid_request_id(request_id_str(&id)), "{id:?}");
        }
        let fresh = request_id(&http::HeaderMap::new());
        let fresh = request_id_str(&fresh).to_owned();
        assert!(is_valid_request_id(&fresh), "{fresh}");
        assert_eq!(
            uuid::Uuid::parse_str(&fresh[4..])
                .unwrap()
                .get_version_num(),
            4
        );
        assert_ne!(fresh, request_id_str(&request_id(&http::HeaderMap::new())));
    }

    #[test]
    fn removes_hop_by_hop_and_the_headers_connection_names() {
        let mut req = get(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "x-other"),
            ("x-secret", "1"),
            ("x-other", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic Zm9v"),
            ("proxy-authenticate", "Basic"),
            ("te", "gzip"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-auth-token", "kept"),
            ("host", "api.example"),
        ]);
        prepare_request(&mut req, &fwd(), &id());
        let h = req.headers();
        for gone in [
            "connection",
            "x-secret",
            "x-other",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "proxy-authenticate",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(!h.contains_key(gone), "{gone} should be removed");
        }
        assert_eq!(h["x-auth-token"], "kept");
        assert_eq!(h[HOST], "api.example");
        assert_eq!(h[REQUEST_ID], ID);
    }

    #[test]
    fn keeps_te_trailers_only() {
        let mut req = get(&[("te", "trailers, deflate")]);
        prepare_request(&mut req, &fwd(), &id());
        assert_eq!(req.headers()[TE], "trailers");
        let mut req = get(&[("te", "deflate;q=0.5")]);
        prepare_request(&mut req, &fwd(), &id());
        assert!(!req.headers().contains_key(TE));
    }

    #[test]
    fn upgrade_request_keeps_upgrade() {
        let mut req = get(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("keep-alive", "timeout=5"),
        ]);
        assert!(is_upgrade(&req));
        prepare_request(&mut req, &fwd(), &id());
        let h = req.headers();
        assert_eq!(h[UPGRADE], "websocket");
        assert_eq!(h[CONNECTION], "upgrade");
        assert_eq!(h.get_all(CONNECTION).iter().count(), 1);
        assert!(!h.contains_key("keep-alive"));
        assert_eq!(h["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
    }

    #[test]
    fn present_names_answer_as_the_lookups_do() {
        let cases: &[&[(&str, &str)]] = &[
            &[],
            &[("host", "api:8774")],
            &[("Host", "a"), ("Content-Length", "3"), ("TE", "trailers")],
            &[("connection", "Upgrade"), ("upgrade", "websocket")],
            &[("upgrade", "websocket")],
            &[("connection", "upgrade")],
            &[
                ("x-forwarded-for", "10.0.0.1"),
                ("x-forwarded-proto", "https"),
            ],
            &[
                ("x-forwarded-host", "h"),
                ("x-openstack-request-id", "req-x"),
            ],
            &[
                ("keep-alive", "5"),
                ("proxy-connection", "x"),
                ("trailer", "t"),
            ],
            &[
                ("transfer-encoding", "chunked"),
                ("proxy-authorization", "b"),
            ],
            &[("x-auth-token", "t"), ("accept", "*/*")],
        ];
        for headers in cases {
            let req = get(headers);
            let present = Present::of(req.headers());
            for (i, name) in SCANNED.iter().enumerate() {
                assert_eq!(
                    present.has(1 << i),
                    req.headers().contains_key(name),
                    "{name} in {headers:?}"
                );
            }
            assert_eq!(present.is_upgrade(&req), is_upgrade(&req), "{headers:?}");
            assert_eq!(present.host(), req.headers().contains_key("host"));
        }
    }

    #[test]
    fn a_request_id_is_looked_up_only_when_present() {
        let valid = "req-3f1b2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d";
        let req = get(&[("x-openstack-request-id", valid)]);
        let id = request_id_of(req.headers(), Present::of(req.headers()));
        assert_eq!(id, valid);
        let req = get(&[("host", "a")]);
        let id = request_id_of(req.headers(), Present::of(req.headers()));
        assert!(is_valid_request_id(request_id_str(&id)));
    }

    #[test]
    fn detects_upgrades() {
        assert!(is_upgrade(&get(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket")
        ])));
        assert!(!is_upgrade(&get(&[("upgrade", "websocket")])));
        assert!(!is_upgrade(&get(&[("connection", "upgrade")])));
        assert!(!is_upgrade(&get(&[
            ("connection", "keep-alive"),
            ("upgrade", "websocket")
        ])));
        let mut h2 = get(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        *h2.version_mut() = http::Version::HTTP_2;
        assert!(!is_upgrade(&h2));
    }

    #[test]
    fn sets_forwarded_headers() {
        let mut req = get(&[("host", "api.example:8080")]);
        prepare_request(&mut req, &fwd(), &id());
        let h = req.headers();
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "api.example:8080");
    }

    #[test]
    fn appends_to_x_forwarded_for() {
        let mut req = get(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", "198.51.100.2, 198.51.100.3"),
            ("x-forwarded-proto", "http"),
        ]);
        let v6 = Forwarded {
            client_ip: client_ip_value("[2001:db8::1]:443".parse().unwrap()),
            proto: "http",
        };
        prepare_request(&mut req, &v6, &id());
        let h = req.headers();
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(
            h["x-forwarded-for"],
            "203.0.113.1, 198.51.100.2, 198.51.100.3, 2001:db8::1"
        );
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    #[test]
    fn a_call_keeps_the_proxy_headers_for_its_sender() {
        let headers = [
            ("host", "api.example:8080"),
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-host", "spoofed.example"),
            ("x-openstack-request-id", "req-not-a-uuid"),
            ("accept", "application/json"),
        ];
        // Without a `CallInfo` the map gets them; with one, its sender writes them.
        let mut plain = get(&headers);
        prepare_request(&mut plain, &fwd(), &id());
        let mut req = get(&headers);
        let call = Arc::new(CallInfo::default());
        req.extensions_mut().insert(call.clone());
        prepare_request(&mut req, &fwd(), &id());

        let h = req.headers();
        for gone in ["x-forwarded-for", "x-forwarded-host", REQUEST_ID.as_str()] {
            assert!(!h.contains_key(gone), "{gone} left in the map");
        }
        assert_eq!(h["accept"], "application/json");
        let set = call.proxy_headers().expect("set with the call");
        let mut wire = Vec::new();
        set.write(&mut wire);
        assert_eq!(wire.len(), set.wire_len());
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            format!(
                "x-forwarded-for: 203.0.113.1, 192.0.2.7\r\nx-forwarded-proto: https\r\n\
                 x-forwarded-host: api.example:8080\r\nx-openstack-request-id: {ID}\r\n"
            )
        );

        // What a sender that writes from the map (hyper) sees is what the map got.
        let mut applied = req.headers().clone();
        apply_proxy_headers(req.extensions(), &mut applied);
        assert_eq!(applied, *plain.headers());
    }

    #[test]
    fn forwarded_host_of_an_http2_client_is_its_authority() {
        let mut req = http::Request::get("https://api.example/v3/auth/tokens")
            .version(http::Version::HTTP_2)
            .body(())
            .unwrap();
        prepare_request(&mut req, &fwd(), &id());
        assert_eq!(req.headers()["x-forwarded-host"], "api.example");
    }

    #[test]
    fn prepares_responses() {
        let mut resp = http::Response::builder()
            .status(200)
            .header("connection", "close, x-internal")
            .header("x-internal", "1")
            .header("close", "a header the connection names")
            .header("keep-alive", "timeout=5")
            .header("transfer-encoding", "chunked")
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        prepare_response(&mut resp, &id());
        let h = resp.headers();
        for gone in [
            "connection",
            "x-internal",
            "close",
            "keep-alive",
            "transfer-encoding",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h[REQUEST_ID], ID);

        let mut switching = http::Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        prepare_response(&mut switching, &id());
        assert_eq!(switching.headers()[CONNECTION], "upgrade");
        assert_eq!(switching.headers()[UPGRADE], "websocket");
        assert_eq!(switching.headers()[REQUEST_ID], ID);
    }
}
