//! `kind = "http"`: a vendor's REST API (a storage array's, an SDN controller's).
//!
//! Each operation is a method, a path template and a body template from the config;
//! `{var}` is replaced by the call's argument `var` (URL-encoded in paths). Requests go out
//! with the HTTP adapter's pooled client (`quartet_http`), which verifies TLS certificates
//! against the system's roots or the configured `ca_file`, always.
//!
//! How answers are classified:
//!
//! | answer | error |
//! | --- | --- |
//! | 2xx | none: the body, as JSON when it parses (`null` when empty) |
//! | 1xx, 3xx (redirects are not followed) | `Permanent`: the API is not where the config says |
//! | cannot connect | `Transient`, nothing sent |
//! | reset or broken mid-exchange, 5xx, 408, 429 | `Transient`, sent |
//! | 401, 403 | `Permanent`: our credentials are wrong, the caller cannot fix that |
//! | 404 | `NotFound` |
//! | 409 | `Conflict` |
//! | any other 4xx | `InvalidInput` |

use crate::driver::{args_object, Driver, Operation};
use crate::error::{ConfigError, DriverError};
use crate::spec::{HttpAuth, HttpDriverSpec};
use base64::Engine;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use http_body_util::BodyExt;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use quartet_http::client::HttpClient;
use quartet_http::endpoint::EndpointService;
use quartet_http::error::{ConnectError, UpstreamError};
use quartet_http::spec::{BalanceStrategy, UpstreamSpec};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use tower::ServiceExt;

/// What stays as it is in a path value: RFC 3986's unreserved characters. Everything else,
/// `/`, `?`, `#` and `%` included, is encoded, so a value is always one path segment.
const PATH_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A string with `{var}` placeholders.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    Var(String),
}

impl Template {
    /// Parses `"/volumes/{id}/snapshots"`. A placeholder is `{` then 1 to 64 letters,
    /// digits or `_`, then `}`; a lone `{` or `}` is an error.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = s;
        while let Some(i) = rest.find(['{', '}']) {
            text.push_str(&rest[..i]);
            if rest[i..].starts_with('}') {
                return Err(format!("unmatched '}}' in {s:?}"));
            }
            let after = &rest[i + 1..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in {s:?}"))?;
            let name = &after[..end];
            if name.is_empty()
                || name.len() > 64
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(format!(
                    "placeholder {{{name}}} in {s:?} must be 1 to 64 letters, digits or '_'"
                ));
            }
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Var(name.to_string()));
            rest = &after[end + 1..];
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Self { parts })
    }

    /// The one variable when the template is exactly `{var}`.
    fn sole_var(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Var(name)] => Some(name),
            _ => None,
        }
    }

    /// Renders with each value passed through `encode`.
    fn render(
        &self,
        args: &Map<String, Value>,
        encode: impl Fn(&str) -> String,
    ) -> Result<String, DriverError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(name) => out.push_str(&encode(&scalar_text(args, name)?)),
            }
        }
        Ok(out)
    }
}

/// The text of a scalar argument (string, number, boolean).
fn scalar_text(args: &Map<String, Value>, name: &str) -> Result<String, DriverError> {
    match args.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::Bool(b)) => Ok(b.to_string()),
        Some(_) => Err(DriverError::invalid(format!(
            "argument {name} must be a string, a number or a boolean"
        ))),
        None => Err(DriverError::invalid(format!("argument {name} is required"))),
    }
}

/// Checks every string of a body template parses as a [`Template`].
pub(crate) fn check_body_template(body: &Value) -> Result<(), String> {
    match body {
        Value::String(s) => Template::parse(s).map(|_| ()),
        Value::Array(items) => items.iter().try_for_each(check_body_template),
        Value::Object(map) => map.values().try_for_each(check_body_template),
        _ => Ok(()),
    }
}

/// Fills a body template: a string that is exactly `{var}` becomes the argument's JSON
/// value, of any type; other strings get their placeholders replaced by text.
fn render_body(template: &Value, args: &Map<String, Value>) -> Result<Value, DriverError> {
    Ok(match template {
        Value::String(s) => {
            let t = Template::parse(s)
                .map_err(|m| DriverError::permanent(format!("bad body template: {m}"), None))?;
            match t.sole_var() {
                Some(name) => args
                    .get(name)
                    .cloned()
                    .ok_or_else(|| DriverError::invalid(format!("argument {name} is required")))?,
                None => Value::String(t.render(args, |v| v.to_string())?),
            }
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render_body(v, args))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_body(v, args)?)))
                .collect::<Result<_, DriverError>>()?,
        ),
        other => other.clone(),
    })
}

struct HttpOperation {
    method: http::Method,
    path: Template,
    body: Option<Value>,
}

pub struct HttpDriver {
    endpoint: EndpointService,
    headers: http::HeaderMap,
    operations: Vec<Operation>,
    ops: BTreeMap<String, HttpOperation>,
    max_response_bytes: usize,
}

impl HttpDriver {
    /// Builds the pooled client (TLS roots loaded here) and parses the templates.
    pub fn new(spec: &HttpDriverSpec) -> Result<Self, ConfigError> {
        spec.validate()?;
        let upstream = UpstreamSpec {
            endpoints: vec![spec.base_url.clone()],
            balance: BalanceStrategy::default(),
            health: None,
            http2: false,
            ca_file: spec.ca_file.clone(),
            connect_timeout: spec.connect_timeout,
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 32,
        };
        let client = HttpClient::new(&upstream).map_err(|e| ConfigError::new(e.key, e.message))?;
        let endpoint = EndpointService::new(&spec.base_url, client)
            .map_err(|e| ConfigError::new("base_url", e.message))?;

        let mut headers = http::HeaderMap::new();
        let header = |name: &str, value: &str, key: &str| {
            let n = http::HeaderName::try_from(name)
                .map_err(|_| ConfigError::new(key, "is not a valid header name"))?;
            let v = http::HeaderValue::try_from(value)
                .map_err(|_| ConfigError::new(key, "is not a valid header value"))?;
            Ok::<_, ConfigError>((n, v))
        };
        for (name, value) in &spec.headers {
            let (n, v) = header(name, value, &format!("headers.{name}"))?;
            headers.insert(n, v);
        }
        match &spec.auth {
            Some(HttpAuth::Header(a)) => {
                let (n, mut v) = header(&a.header, &a.value, "auth")?;
                v.set_sensitive(true);
                headers.insert(n, v);
            }
            Some(HttpAuth::Basic(b)) => {
                let token = base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", b.username, b.password));
                let (n, mut v) = header("authorization", &format!("Basic {token}"), "auth")?;
                v.set_sensitive(true);
                headers.insert(n, v);
            }
            None => {}
        }
        headers.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );

        let mut ops = BTreeMap::new();
        let mut operations = Vec::new();
        for (name, op) in &spec.operations {
            let key = |k: &str| format!("operations.{name}.{k}");
            let method = http::Method::from_bytes(op.method.as_bytes())
                .map_err(|_| ConfigError::new(key("method"), "is not an HTTP method"))?;
            let path = Template::parse(&op.path).map_err(|m| ConfigError::new(key("path"), m))?;
            let idempotent = op.idempotent.unwrap_or(matches!(
                method,
                http::Method::GET | http::Method::HEAD | http::Method::PUT | http::Method::DELETE
            ));
            operations.push(Operation::new(name.clone(), idempotent));
            ops.insert(
                name.clone(),
                HttpOperation {
                    method,
                    path,
                    body: op.body.clone(),
                },
            );
        }
        Ok(Self {
            endpoint,
            headers,
            operations,
            ops,
            max_response_bytes: spec.max_response_bytes,
        })
    }

    fn request(
        &self,
        operation: &str,
        args: &Value,
    ) -> Result<http::Request<quartet_http::ProxyBody>, DriverError> {
        let op = self
            .ops
            .get(operation)
            .ok_or_else(|| DriverError::invalid(format!("operation {operation} is not defined")))?;
        let args = args_object(args)?;
        let path = op
            .path
            .render(args, |v| utf8_percent_encode(v, PATH_VALUE).to_string())?;
        let uri = http::Uri::try_from(path.as_str())
            .map_err(|e| DriverError::invalid(format!("the path is not valid: {e}")))?;
        let mut builder = http::Request::builder().method(op.method.clone()).uri(uri);
        if let Some(h) = builder.headers_mut() {
            h.extend(self.headers.clone());
        }
        let body = match &op.body {
            Some(template) => {
                let body = render_body(template, args)?;
                let bytes = serde_json::to_vec(&body)
                    .map_err(|e| DriverError::invalid(format!("cannot encode the body: {e}")))?;
                builder = builder.header(http::header::CONTENT_TYPE, "application/json");
                quartet_http::body::full(Bytes::from(bytes))
            }
            None => quartet_http::body::empty(),
        };
        builder
            .body(body)
            .map_err(|e| DriverError::invalid(format!("cannot build the request: {e}")))
    }

    async fn send(&self, operation: &str, args: Value) -> Result<Value, DriverError> {
        let req = self.request(operation, &args)?;
        let resp = send_request(self.endpoint.clone(), req)
            .await
            .map_err(send_error)?;
        let status = resp.status();
        let limited = http_body_util::Limited::new(resp.into_body(), self.max_response_bytes);
        let body = collect(limited)
            .await
            .map_err(|e| body_error(e, self.max_response_bytes))?;
        classify_status(status, &body)?;
        Ok(body_value(&body))
    }
}

/// The request's response future, typed here: inside `send`'s future, the compiler cannot
/// prove the service's error type for every lifetime.
fn send_request(
    endpoint: EndpointService,
    req: http::Request<quartet_http::ProxyBody>,
) -> BoxFuture<'static, Result<http::Response<quartet_http::ProxyBody>, quartet_http::BoxError>> {
    Box::pin(endpoint.oneshot(req))
}

fn collect(
    body: http_body_util::Limited<quartet_http::ProxyBody>,
) -> BoxFuture<'static, Result<Bytes, quartet_http::BoxError>> {
    Box::pin(body.collect().map(|r| r.map(|c| c.to_bytes())))
}

fn send_error(e: quartet_http::BoxError) -> DriverError {
    if e.is::<ConnectError>() {
        DriverError::transient_not_sent("cannot connect to the backend", Some(e))
    } else if e.is::<UpstreamError>() {
        DriverError::transient_sent("the request to the backend failed", Some(e))
    } else {
        DriverError::transient_sent("the backend failed", Some(e))
    }
}

fn body_error(e: quartet_http::BoxError, limit: usize) -> DriverError {
    if e.is::<http_body_util::LengthLimitError>() {
        DriverError::permanent(
            format!("the backend's answer is larger than {limit} bytes"),
            Some(e),
        )
    } else {
        DriverError::transient_sent("reading the backend's answer failed", Some(e))
    }
}

/// A short, printable excerpt of an error body for messages.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

/// Maps an answer's status to the driver's error kinds (see the module docs).
fn classify_status(status: http::StatusCode, body: &[u8]) -> Result<(), DriverError> {
    let code = status.as_u16();
    let what = || format!("the backend answered {status}: {}", excerpt(body));
    match code {
        404 => Err(DriverError::not_found(format!(
            "the backend's resource ({status})"
        ))),
        409 => Err(DriverError::conflict(what())),
        401 | 403 => Err(DriverError::permanent(what(), None)),
        408 | 429 => Err(DriverError::transient_sent(what(), None)),
        400..=499 => Err(DriverError::invalid(what())),
        500..=599 => Err(DriverError::transient_sent(what(), None)),
        200..=299 => Ok(()),
        _ => Err(DriverError::permanent(
            format!("the backend answered an unexpected {status}"),
            None,
        )),
    }
}

/// A body as JSON when it parses, as a string otherwise; `null` when empty.
fn body_value(body: &[u8]) -> Value {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

impl Driver for HttpDriver {
    fn kind(&self) -> &'static str {
        "http"
    }
    fn operations(&self) -> &[Operation] {
        &self.operations
    }
    fn call<'a>(
        &'a self,
        operation: &'a str,
        args: Value,
    ) -> BoxFuture<'a, Result<Value, DriverError>> {
        Box::pin(self.send(operation, args))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn parses_templates() {
        let t = Template::parse("/volumes/{id}/snap_{sid}").expect("parse");
        assert_eq!(
            t.parts,
            vec![
                Part::Text("/volumes/".into()),
                Part::Var("id".into()),
                Part::Text("/snap_".into()),
                Part::Var("sid".into()),
            ]
        );
        for bad in ["/a/{", "/a/}", "/a/{}", "/a/{b-c}", "/a/{{b}}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn path_values_are_one_encoded_segment() {
        let t = Template::parse("/volumes/{id}").expect("parse");
        let a = args(json!({"id": "../admin?x=1#f /%"}));
        let out = t
            .render(&a, |v| utf8_percent_encode(v, PATH_VALUE).to_string())
            .expect("render");
        assert_eq!(out, "/volumes/..%2Fadmin%3Fx%3D1%23f%20%2F%25");
        let a = args(json!({"id": 7}));
        assert_eq!(t.render(&a, |v| v.to_string()).expect("n"), "/volumes/7");
        let missing = t
            .render(&Map::new(), |v| v.to_string())
            .expect_err("missing");
        assert!(matches!(missing, DriverError::InvalidInput { .. }));
        let object = t
            .render(&args(json!({"id": {"a": 1}})), |v| v.to_string())
            .expect_err("object");
        assert!(matches!(object, DriverError::InvalidInput { .. }));
    }

    #[test]
    fn body_templates_keep_types() {
        let template = json!({
            "name": "{id}",
            "size": "{size_gb}",
            "label": "vol-{id}-{size_gb}",
            "tags": ["{id}", 1, null],
            "fixed": true
        });
        let a = args(json!({"id": "v1", "size_gb": 3}));
        assert_eq!(
            render_body(&template, &a).expect("render"),
            json!({
                "name": "v1",
                "size": 3,
                "label": "vol-v1-3",
                "tags": ["v1", 1, null],
                "fixed": true
            })
        );
        assert!(render_body(&template, &args(json!({"id": "v1"}))).is_err());
        assert!(check_body_template(&json!({"a": ["{ok}", "{bad"]})).is_err());
    }

    #[test]
    fn statuses_map_to_kinds() {
        let kind = |code: u16| {
            classify_status(http::StatusCode::from_u16(code).expect("status"), b"x")
                .err()
                .map(|e| e.kind())
        };
        use crate::error::ErrorKind::*;
        assert_eq!(kind(200), None);
        assert_eq!(kind(204), None);
        assert_eq!(kind(301), Some(Permanent));
        assert_eq!(kind(404), Some(NotFound));
        assert_eq!(kind(409), Some(Conflict));
        assert_eq!(kind(400), Some(InvalidInput));
        assert_eq!(kind(422), Some(InvalidInput));
        assert_eq!(kind(401), Some(Permanent));
        assert_eq!(kind(429), Some(Transient));
        assert_eq!(kind(500), Some(Transient));
        assert_eq!(kind(503), Some(Transient));
    }
}
