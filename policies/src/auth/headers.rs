//! keystonemiddleware's header rules (`auth_token/_request.py`), as data and pure
//! functions over an [`http::HeaderMap`].

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::token::{Scope, Service, TokenInfo};

pub const X_AUTH_TOKEN: &str = "x-auth-token";
pub const X_STORAGE_TOKEN: &str = "x-storage-token";
pub const X_SERVICE_TOKEN: &str = "x-service-token";
pub const X_IDENTITY_STATUS: &str = "x-identity-status";
pub const X_SERVICE_IDENTITY_STATUS: &str = "x-service-identity-status";
pub const X_SERVICE_CATALOG: &str = "x-service-catalog";
pub const X_IS_ADMIN_PROJECT: &str = "x-is-admin-project";
pub const OPENSTACK_SYSTEM_SCOPE: &str = "openstack-system-scope";
pub const CONFIRMED: &str = "Confirmed";
pub const INVALID: &str = "Invalid";

/// The ten identity headers, for the user (`X-`) and service (`X-Service-`) prefixes
/// (keystonemiddleware's `_HEADER_TEMPLATE`), in its order.
const TEMPLATE: [&str; 10] = [
    "domain-id",
    "domain-name",
    "project-id",
    "project-name",
    "project-domain-id",
    "project-domain-name",
    "user-id",
    "user-name",
    "user-domain-id",
    "user-domain-name",
];

/// The deprecated copies set for a user token: `(alias, header it copies)`.
pub const DEPRECATED_ALIASES: [(&str, &str); 5] = [
    ("x-role", "x-roles"),
    ("x-user", "x-user-name"),
    ("x-tenant-id", "x-project-id"),
    ("x-tenant-name", "x-project-name"),
    ("x-tenant", "x-project-name"),
];

/// Every header removed from a client's request before validation
/// (keystonemiddleware's `_all_auth_headers`), plus `OpenStack-System-Scope`, which
/// keystonemiddleware sets but forgets to remove.
pub const REMOVED_HEADERS: [&str; 32] = [
    X_SERVICE_CATALOG,
    X_IDENTITY_STATUS,
    X_SERVICE_IDENTITY_STATUS,
    X_IS_ADMIN_PROJECT,
    "x-role",
    "x-user",
    "x-tenant-id",
    "x-tenant-name",
    "x-tenant",
    "x-domain-id",
    "x-service-domain-id",
    "x-domain-name",
    "x-service-domain-name",
    "x-project-id",
    "x-service-project-id",
    "x-project-name",
    "x-service-project-name",
    "x-project-domain-id",
    "x-service-project-domain-id",
    "x-project-domain-name",
    "x-service-project-domain-name",
    "x-user-id",
    "x-service-user-id",
    "x-user-name",
    "x-service-user-name",
    "x-user-domain-id",
    "x-service-user-domain-id",
    "x-user-domain-name",
    "x-service-user-domain-name",
    "x-roles",
    "x-service-roles",
    OPENSTACK_SYSTEM_SCOPE,
];

/// The 401 body keystonemiddleware sends (`jsonutils.dumps` of its error dict).
pub const UNAUTHORIZED_BODY: &str = r#"{"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}}"#;

/// The 503 answer when the identity backend cannot be reached; keystonemiddleware's
/// `HTTPServiceUnavailable` message, in the same JSON error shape as the 401.
pub const UNAVAILABLE_BODY: &str = r#"{"error": {"code": 503, "title": "Service Unavailable", "message": "The Keystone service is temporarily unavailable."}}"#;

/// The `Content-Type` of both error bodies: what keystonemiddleware 13 sends (webob
/// leaves the charset off for JSON).
pub const ERROR_CONTENT_TYPE: &str = "application/json";

/// `WWW-Authenticate: Keystone uri="<www_authenticate_uri>"`.
pub fn www_authenticate(uri: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("Keystone uri=\"{uri}\"")).ok()
}

// The names above as `HeaderName`s: a lookup by `&str` parses the name on every call.
const AUTH_TOKEN: HeaderName = HeaderName::from_static(X_AUTH_TOKEN);
const STORAGE_TOKEN: HeaderName = HeaderName::from_static(X_STORAGE_TOKEN);
const SERVICE_TOKEN: HeaderName = HeaderName::from_static(X_SERVICE_TOKEN);
const IDENTITY_STATUS: HeaderName = HeaderName::from_static(X_IDENTITY_STATUS);
const SERVICE_IDENTITY_STATUS: HeaderName = HeaderName::from_static(X_SERVICE_IDENTITY_STATUS);
const SERVICE_CATALOG: HeaderName = HeaderName::from_static(X_SERVICE_CATALOG);

/// The user token: `X-Auth-Token`, else `X-Storage-Token`, whitespace stripped. An empty
/// value, or one that is not UTF-8, counts as no token.
pub fn user_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(AUTH_TOKEN)
        .or_else(|| headers.get(STORAGE_TOKEN))?;
    non_empty(value)
}

/// The service token from `X-Service-Token`, whitespace stripped.
pub fn service_token(headers: &HeaderMap) -> Option<&str> {
    non_empty(headers.get(SERVICE_TOKEN)?)
}

/// UTF-8 checked, not `to_str`'s visible ASCII, which tests a 200-byte token byte by byte
/// (a header value holds no control characters anyway). A token that is not ASCII is
/// refused by the validator, the same 401 as for no token.
fn non_empty(value: &HeaderValue) -> Option<&str> {
    let s = std::str::from_utf8(value.as_bytes()).ok()?.trim();
    (!s.is_empty()).then_some(s)
}

/// Removes every identity header a client could use to pretend to be someone.
///
/// One pass over the names the request has (a handful) rather than one lookup per name
/// of [`REMOVED_HEADERS`] (32): a request without spoofed headers costs a few byte
/// comparisons, and nothing is allocated unless a spoofed header is found.
pub fn remove_auth_headers(headers: &mut HeaderMap) {
    let spoofed = scan(headers).spoofed;
    remove(headers, spoofed);
}

/// Removes the headers [`scan`] found spoofed.
pub fn remove(headers: &mut HeaderMap, spoofed: Vec<HeaderName>) {
    for name in spoofed {
        headers.remove(name);
    }
}

/// What one pass over a request's headers finds: the spoofed identity headers, the user
/// token as sent, and whether a service token came. The cached way reads the tokens from
/// here, where [`user_token`] and [`service_token`] would each hash and look up a name.
pub struct Scan<'a> {
    pub spoofed: Vec<HeaderName>,
    /// `X-Auth-Token`, else `X-Storage-Token` (the first value of either), ASCII
    /// whitespace stripped, unchecked; empty: no token. [`user_token`] is the same
    /// token, checked as text.
    pub user: Option<&'a [u8]>,
    /// A non-empty `X-Service-Token` came.
    pub service: bool,
}

pub fn scan(headers: &HeaderMap) -> Scan<'_> {
    let mut found = Scan {
        spoofed: Vec::new(),
        user: None,
        service: false,
    };
    let (mut auth, mut storage, mut service) = (None, None, None);
    // Every value in turn, a name's values one after the other: the first value of a
    // name is the one `HeaderMap::get` gives.
    for (name, value) in headers {
        let slot = match name.as_str() {
            X_AUTH_TOKEN => &mut auth,
            X_STORAGE_TOKEN => &mut storage,
            X_SERVICE_TOKEN => &mut service,
            _ => {
                if is_removed(name) && found.spoofed.last() != Some(name) {
                    found.spoofed.push(name.clone());
                }
                continue;
            }
        };
        slot.get_or_insert_with(|| value.as_bytes().trim_ascii());
    }
    // As `user_token`: a present `X-Auth-Token` wins, even empty.
    found.user = auth.or(storage).filter(|t| !t.is_empty());
    found.service = service.is_some_and(|t| !t.is_empty());
    found
}

/// Whether `name` is one of [`REMOVED_HEADERS`]. Names are lowercase in a `HeaderName`;
/// every removed name starts with `x-` or `openstack-`, which rules out the standard
/// headers (`host`, `accept`, ...) at the first byte, and the third byte of an `x-` name
/// rules out the ones a proxied request carries anyway (`x-auth-token`,
/// `x-forwarded-*`, `x-openstack-request-id`) before the search.
fn is_removed(name: &HeaderName) -> bool {
    let name = name.as_str();
    let bytes = name.as_bytes();
    let candidate = match bytes {
        [b'x', b'-', third, ..] => REMOVED.third_bytes[usize::from(*third)],
        _ => bytes.starts_with(b"openstack-"),
    };
    candidate && REMOVED.sorted.binary_search(&name).is_ok()
}

/// [`REMOVED_HEADERS`] in order, for a binary search (five comparisons where a scan of
/// the list made up to 32), and the bytes that follow `x-` in them.
struct Removed {
    sorted: [&'static str; 32],
    third_bytes: [bool; 256],
}

static REMOVED: std::sync::LazyLock<Removed> = std::sync::LazyLock::new(|| {
    let mut sorted = REMOVED_HEADERS;
    sorted.sort_unstable();
    let mut third_bytes = [false; 256];
    for name in REMOVED_HEADERS {
        if let [b'x', b'-', third, ..] = name.as_bytes() {
            third_bytes[usize::from(*third)] = true;
        }
    }
    Removed {
        sorted,
        third_bytes,
    }
});

/// `X-Identity-Status: Confirmed | Invalid`.
pub fn set_identity_status(headers: &mut HeaderMap, valid: bool) {
    headers.insert(IDENTITY_STATUS, status(valid));
}

/// `X-Service-Identity-Status: Confirmed | Invalid`, set only when a service token came.
pub fn set_service_identity_status(headers: &mut HeaderMap, valid: bool) {
    headers.insert(SERVICE_IDENTITY_STATUS, status(valid));
}

fn status(valid: bool) -> HeaderValue {
    HeaderValue::from_static(if valid { CONFIRMED } else { INVALID })
}

/// The headers keystonemiddleware's `set_user_headers` sets for a valid user token:
/// `X-Roles`, `OpenStack-System-Scope`, the ten identity headers, `X-Is-Admin-Project`
/// and the deprecated aliases. Attributes that do not apply to the token's scope are
/// left unset (removed).
pub fn set_user_headers(headers: &mut HeaderMap, token: &TokenInfo) {
    build_user_headers(headers, token);
}

/// `X-Identity-Status: Confirmed` and the headers [`set_user_headers`] sets for `token`
/// (and `X-Service-Catalog` when `catalog`), as one block a request with this valid
/// token can point at ([`crate::head`]). The headers it would remove are not in it: every
/// one of them is among [`REMOVED_HEADERS`], gone from the request before a token is
/// looked at.
pub(crate) fn user_header_block(token: &TokenInfo, catalog: bool) -> crate::head::HeaderBlock {
    let mut built = HeaderMap::new();
    build_user_headers(&mut built, token);
    let mut pairs: Vec<(HeaderName, HeaderValue)> = vec![(IDENTITY_STATUS, status(true))];
    pairs.extend(
        user_header_names()
            .filter_map(|n| header_name(&n))
            .filter_map(|name| built.get(&name).cloned().map(|value| (name, value))),
    );
    if catalog && !token.catalog.is_empty() {
        if let Ok(value) = HeaderValue::from_bytes(v2_catalog_json(&token.catalog).as_bytes()) {
            pairs.push((SERVICE_CATALOG, value));
        }
    }
    crate::head::HeaderBlock::new(pairs)
}

/// Every header [`build_user_headers`] sets or removes.
fn user_header_names() -> impl Iterator<Item = String> {
    ["x-roles", OPENSTACK_SYSTEM_SCOPE, X_IS_ADMIN_PROJECT]
        .into_iter()
        .map(str::to_owned)
        .chain(TEMPLATE.iter().map(|suffix| format!("x-{suffix}")))
        .chain(
            DEPRECATED_ALIASES
                .iter()
                .map(|(alias, _)| (*alias).to_owned()),
        )
}

fn build_user_headers(headers: &mut HeaderMap, token: &TokenInfo) {
    set_auth_headers(headers, token, "x-");
    set(
        headers,
        X_IS_ADMIN_PROJECT,
        Some(if token.is_admin_project {
            "True"
        } else {
            "False"
        }),
    );
    for (alias, source) in DEPRECATED_ALIASES {
        let value = headers.get(source).cloned();
        match value {
            Some(v) => {
                headers.insert(alias, v);
            }
            None => {
                headers.remove(alias);
            }
        }
    }
}

/// The `X-Service-*` headers for a valid service token (`set_service_headers`). As in
/// keystonemiddleware, this also rewrites `OpenStack-System-Scope` from the service token.
pub fn set_service_headers(headers: &mut HeaderMap, token: &TokenInfo) {
    set_auth_headers(headers, token, "x-service-");
}

/// `X-Service-Catalog` in the v2 shape, or no header when the token has no catalog.
pub fn set_service_catalog_header(headers: &mut HeaderMap, token: &TokenInfo) {
    if token.catalog.is_empty() {
        headers.remove(X_SERVICE_CATALOG);
        return;
    }
    set(
        headers,
        X_SERVICE_CATALOG,
        Some(&v2_catalog_json(&token.catalog)),
    );
}

fn set_auth_headers(headers: &mut HeaderMap, token: &TokenInfo, prefix: &str) {
    let roles: Vec<&str> = token.role_names().collect();
    set(headers, &format!("{prefix}roles"), Some(&roles.join(",")));
    set(
        headers,
        OPENSTACK_SYSTEM_SCOPE,
        matches!(token.scope, Scope::System).then_some("all"),
    );
    let (domain, project) = match &token.scope {
        Scope::Domain(d) => (Some(d), None),
        Scope::Project {
            id, name, domain, ..
        } => (None, Some((id, name, domain))),
        _ => (None, None),
    };
    let values: [Option<&str>; 10] = [
        domain.map(|d| d.id.as_str()),
        domain.map(|d| d.name.as_str()),
        project.map(|p| p.0.as_str()),
        project.map(|p| p.1.as_str()),
        project.map(|p| p.2.id.as_str()),
        project.map(|p| p.2.name.as_str()),
        Some(token.user.id.as_str()),
        Some(token.user.name.as_str()),
        Some(token.user.domain.id.as_str()),
        Some(token.user.domain.name.as_str()),
    ];
    for (suffix, value) in TEMPLATE.iter().zip(values) {
        set(headers, &format!("{prefix}{suffix}"), value);
    }
}

/// Sets `name` to `value`, or removes it for `None` (webob's `headers[name] = None`).
/// A value that is not a valid header value is left out rather than sent mangled.
fn set(headers: &mut HeaderMap, name: &str, value: Option<&str>) {
    let Some(name) = header_name(name) else {
        return;
    };
    match value.and_then(header_value) {
        Some(v) => {
            headers.insert(name, v);
        }
        None => {
            headers.remove(name);
        }
    }
}

/// `name` as a `HeaderName`; for the names RequireToken sets (all in [`REMOVED_HEADERS`])
/// a static one, whose copies (one per request, and the proxy's own) count no references.
fn header_name(name: &str) -> Option<HeaderName> {
    match REMOVED_HEADERS.iter().find(|n| **n == name) {
        Some(known) => Some(HeaderName::from_static(known)),
        None => HeaderName::from_bytes(name.as_bytes()).ok(),
    }
}

/// `value` as a `HeaderValue`; the fixed ones (`True`, `False`, `all`) static, as names.
fn header_value(value: &str) -> Option<HeaderValue> {
    match value {
        "True" => Some(HeaderValue::from_static("True")),
        "False" => Some(HeaderValue::from_static("False")),
        "all" => Some(HeaderValue::from_static("all")),
        other => HeaderValue::from_bytes(other.as_bytes()).ok(),
    }
}

/// The v3 catalog converted to the v2 shape (`_normalize_catalog`), serialised as Python's
/// `json.dumps` does: `[{"type": ..., "name": ..., "endpoints": [{"region": ...,
/// "publicURL": ..., "internalURL": ..., "adminURL": ...}]}]`, one endpoint entry per
/// region, in order of first appearance.
pub fn v2_catalog_json(catalog: &[Service]) -> String {
    let mut out = String::from("[");
    for (i, service) in catalog.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str("{\"type\": ");
        py_str(&mut out, &service.kind);
        if let Some(name) = &service.name {
            out.push_str(", \"name\": ");
            py_str(&mut out, name);
        }
        // regions in order of first appearance, each with its interfaces in order.
        let mut regions: Vec<Region<'_>> = Vec::new();
        for endpoint in &service.endpoints {
            let region = endpoint.region.as_deref();
            let key = format!("{}URL", endpoint.interface.to_lowercase());
            let slot = match regions.iter().position(|(r, _)| *r == region) {
                Some(i) => i,
                None => {
                    regions.push((region, Vec::new()));
                    regions.len() - 1
                }
            };
            let urls = &mut regions[slot].1;
            match urls.iter_mut().find(|(k, _)| *k == key) {
                Some(entry) => entry.1 = &endpoint.url,
                None => urls.push((key, &endpoint.url)),
            }
        }
        out.push_str(", \"endpoints\": [");
        for (j, (region, urls)) in regions.iter().enumerate() {
            if j > 0 {
                out.push_str(", ");
            }
            out.push('{');
            let mut first = true;
            if let Some(region) = region.filter(|r| !r.is_empty()) {
                out.push_str("\"region\": ");
                py_str(&mut out, region);
                first = false;
            }
            for (key, url) in urls {
                if !first {
                    out.push_str(", ");
                }
                first = false;
                py_str(&mut out, key);
                out.push_str(": ");
                py_str(&mut out, url);
            }
            out.push('}');
        }
        out.push_str("]}");
    }
    out.push(']');
    out
}

/// One v2 endpoint entry: a region and its `(interfaceURL, url)` pairs.
type Region<'a> = (Option<&'a str>, Vec<(String, &'a str)>);

/// A JSON string as Python's `json.dumps` writes it (`ensure_ascii=True`).
fn py_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7f => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
