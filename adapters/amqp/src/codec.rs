//! oslo.messaging's wire format (RPC over RabbitMQ), as captured from oslo.messaging 18.3.1.
//!
//! A body is a two-level JSON envelope: `{"oslo.version": "2.0", "oslo.message": "<JSON
//! text>"}`, where the inner text is a request (`method`, `args`, `namespace`, `version`,
//! `_msg_id`, `_reply_q`, `_timeout`, `_unique_id`, `_context_*`) or a reply (`result`,
//! `failure`, `ending`, `_msg_id`, `_unique_id`). A failure is JSON text once more (a third
//! level): `{"class", "module", "message", "tb", "args", "kwargs"}`.
//!
//! On input the 1.0 form (the bare inner dict, no envelope) is accepted too, as oslo's
//! `deserialize_msg` does. What we write looks like what Python writes: keys in oslo's
//! order, `", "` and `": "` separators, non-ASCII escaped as `\uXXXX` (`json.dumps`'s
//! `ensure_ascii`), so a peer's logs and a packet capture read the same for both.
//!
//! Nothing here panics on bad input: every problem is a [`CodecError`].

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::io::{self, Write};
use std::time::Duration;

/// The envelope version we write (`_RPC_ENVELOPE_VERSION`).
pub const ENVELOPE_VERSION: &str = "2.0";
const VERSION_KEY: &str = "oslo.version";
const MESSAGE_KEY: &str = "oslo.message";
const CONTEXT_PREFIX: &str = "_context_";

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("body is not json")]
    Json(#[source] serde_json::Error),
    #[error("body is not a json object")]
    NotAnObject,
    #[error("unsupported envelope version {0:?}")]
    UnsupportedEnvelope(String),
    #[error("oslo.message is not a json string")]
    InnerNotString,
    #[error("oslo.message is not a json object")]
    Inner(#[source] serde_json::Error),
    #[error("field {0} is missing")]
    Missing(&'static str),
    #[error("field {field} is not {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("failure is not a json failure object")]
    Failure(#[source] serde_json::Error),
    #[error("message could not be written")]
    Encode(#[source] serde_json::Error),
}

/// The request context, `_context_<key>` on the wire, kept in the order it came in.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Context(Vec<(String, Value)>);

impl Context {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` (without the `_context_` prefix), replacing an earlier value.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Builder form of [`Context::insert`].
    pub fn with(mut self, key: impl Into<String>, value: Value) -> Self {
        self.insert(key, value);
        self
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The context as the JSON object oslo.context's `to_dict()` would give.
    pub fn to_map(&self) -> Map<String, Value> {
        self.0.iter().cloned().collect()
    }
}

/// Who is calling, for [`Context::oslo`]: what a validated Keystone token gives.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Caller {
    pub user_id: Option<String>,
    pub project_id: Option<String>,
    pub domain_id: Option<String>,
    pub user_domain_id: Option<String>,
    pub project_domain_id: Option<String>,
    /// `"all"` for a system-scoped token.
    pub system_scope: Option<String>,
    pub roles: Vec<String>,
    pub is_admin: bool,
    pub is_admin_project: bool,
    pub request_id: Option<String>,
    pub global_request_id: Option<String>,
    /// Put in `_context_auth_token` (in clear on the wire): only when the target asks.
    pub auth_token: Option<String>,
}

impl Context {
    /// The context oslo.context's `RequestContext.to_dict()` gives for `caller`: the same
    /// 17 keys in the same order (`user`, `project_id`, `system_scope`, `project`,
    /// `domain`, `user_domain`, `project_domain`, `is_admin`, `read_only`,
    /// `show_deleted`, `auth_token`, `request_id`, `global_request_id`, `resource_uuid`,
    /// `roles`, `user_identity`, `is_admin_project`).
    pub fn oslo(caller: &Caller) -> Self {
        let opt = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
        let user_identity = format!(
            "{} {} {} {} {}",
            dash(&caller.user_id),
            dash(&caller.project_id),
            dash(&caller.domain_id),
            dash(&caller.user_domain_id),
            dash(&caller.project_domain_id)
        );
        Context::new()
            .with("user", opt(&caller.user_id))
            .with("project_id", opt(&caller.project_id))
            .with("system_scope", opt(&caller.system_scope))
            .with("project", opt(&caller.project_id))
            .with("domain", opt(&caller.domain_id))
            .with("user_domain", opt(&caller.user_domain_id))
            .with("project_domain", opt(&caller.project_domain_id))
            .with("is_admin", Value::Bool(caller.is_admin))
            .with("read_only", Value::Bool(false))
            .with("show_deleted", Value::Bool(false))
            .with("auth_token", opt(&caller.auth_token))
            .with("request_id", opt(&caller.request_id))
            .with("global_request_id", opt(&caller.global_request_id))
            .with("resource_uuid", Value::Null)
            .with(
                "roles",
                Value::Array(caller.roles.iter().cloned().map(Value::String).collect()),
            )
            .with("user_identity", Value::String(user_identity))
            .with("is_admin_project", Value::Bool(caller.is_admin_project))
    }
}

impl FromIterator<(String, Value)> for Context {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Self {
        let mut ctx = Context::new();
        for (k, v) in iter {
            ctx.insert(k, v);
        }
        ctx
    }
}

/// What makes a request a call: where and how to reply.
#[derive(Clone, Debug, PartialEq)]
pub struct CallHeader {
    /// `_msg_id`: the reply echoes it.
    pub msg_id: String,
    /// `_reply_q`: the queue the reply goes to (through the default exchange).
    pub reply_q: String,
    /// `_timeout`: the call-monitor timeout (heartbeats every half of it), not the RPC
    /// timeout. `None` is `null` on the wire.
    pub call_monitor_timeout: Option<Duration>,
}

/// An RPC request: a call (with [`CallHeader`]) or a cast.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub method: String,
    /// Keyword arguments (oslo has no positional ones).
    pub args: Map<String, Value>,
    pub namespace: Option<String>,
    /// `"X.Y"`; the server treats a missing one as `"1.0"`.
    pub version: Option<String>,
    /// Present for a call, absent for a cast.
    pub call: Option<CallHeader>,
    /// `_unique_id`, for de-duplication. Always written; may be absent in 1.0 input.
    pub unique_id: Option<String>,
    pub context: Context,
}

/// One reply message: a final one (`ending: true`) or a call-monitor heartbeat.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub result: Value,
    pub failure: Option<RemoteFailure>,
    pub ending: bool,
    pub msg_id: String,
    pub unique_id: Option<String>,
}

impl Reply {
    /// A heartbeat: `{"result": null, "failure": null, "ending": false}`.
    pub fn is_heartbeat(&self) -> bool {
        !self.ending && self.result.is_null() && self.failure.is_none()
    }
}

/// An exception raised by the remote method, as oslo's `serialize_remote_exception`
/// writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteFailure {
    /// The exception's class name (`ValueError`, `NoSuchMethod`).
    pub class: String,
    /// Its module (`builtins`, `oslo_messaging.rpc.dispatcher`, `nova.exception`).
    pub module: String,
    /// `str(exc)`.
    pub message: String,
    /// Formatted traceback lines. For logs only: never show it to a client.
    #[serde(default)]
    pub tb: Vec<String>,
    #[serde(default)]
    pub args: Vec<Value>,
    #[serde(default)]
    pub kwargs: Map<String, Value>,
}

impl RemoteFailure {
    /// A failure with `args = [message]`, as Python gives for `Class(message)`.
    pub fn new(
        class: impl Into<String>,
        module: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let message = message.into();
        Self {
            class: class.into(),
            module: module.into(),
            args: vec![Value::String(message.clone())],
            message,
            tb: Vec::new(),
            kwargs: Map::new(),
        }
    }

    /// What oslo's dispatcher answers for a method no endpoint has.
    pub fn no_such_method(method: &str) -> Self {
        Self::new(
            "NoSuchMethod",
            "oslo_messaging.rpc.dispatcher",
            format!("Endpoint does not support RPC method {method}"),
        )
    }

    /// What oslo's dispatcher answers for a version no endpoint is compatible with.
    pub fn unsupported_version(version: &str, method: &str) -> Self {
        Self::new(
            "UnsupportedVersion",
            "oslo_messaging.rpc.dispatcher",
            format!("Endpoint does not support RPC version {version}. Attempted method: {method}"),
        )
    }

    /// `module.class`, the key an error mapping uses (`builtins.ValueError`).
    pub fn qualified_class(&self) -> String {
        format!("{}.{}", self.module, self.class)
    }
}

impl fmt::Display for RemoteFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}: {}", self.module, self.class, self.message)
    }
}

/// A decoded body, request or reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Request(Request),
    Reply(Reply),
}

// ---------------------------------------------------------------------------------------
// Decoding

/// A JSON object with its keys in wire order.
struct Ordered(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a json object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    entries.push((k, v));
                }
                Ok(Ordered(entries))
            }
        }
        d.deserialize_map(V)
    }
}

/// Unwraps the envelope (or takes a 1.0 bare dict as it is) and returns the inner
/// message's entries in wire order.
fn unwrap_envelope(body: &[u8]) -> Result<Vec<(String, Value)>, CodecError> {
    let outer: Value = serde_json::from_slice(body).map_err(CodecError::Json)?;
    let Value::Object(mut outer) = outer else {
        return Err(CodecError::NotAnObject);
    };
    let (Some(version), true) = (outer.get(VERSION_KEY), outer.contains_key(MESSAGE_KEY)) else {
        // 1.0: the bare dict. Parse again to keep the key order.
        let Ordered(entries) = serde_json::from_slice(body).map_err(CodecError::Json)?;
        return Ok(entries);
    };
    check_envelope_version(version)?;
    let Some(Value::String(inner)) = outer.remove(MESSAGE_KEY) else {
        return Err(CodecError::InnerNotString);
    };
    let Ordered(entries) = serde_json::from_str(&inner).map_err(CodecError::Inner)?;
    Ok(entries)
}

/// oslo's `version_is_compatible("2.0", v)`: same major, minor not above ours.
fn check_envelope_version(version: &Value) -> Result<(), CodecError> {
    let text = match version {
        Value::String(s) => s.as_str(),
        other => return Err(CodecError::UnsupportedEnvelope(other.to_string())),
    };
    let mut parts = text.split('.');
    let major = parts.next().and_then(|p| p.parse::<u32>().ok());
    let minor = parts.next().map_or(Some(0), |p| p.parse::<u32>().ok());
    match (major, minor) {
        (Some(2), Some(0)) => Ok(()),
        _ => Err(CodecError::UnsupportedEnvelope(text.to_owned())),
    }
}

/// Decodes a body that may be a request or a reply.
pub fn decode(body: &[u8]) -> Result<Message, CodecError> {
    let entries = unwrap_envelope(body)?;
    if entries.iter().any(|(k, _)| k == "method") {
        request_from(entries).map(Message::Request)
    } else {
        reply_from(entries).map(Message::Reply)
    }
}

/// Decodes a request (call or cast).
pub fn decode_request(body: &[u8]) -> Result<Request, CodecError> {
    request_from(unwrap_envelope(body)?)
}

/// Decodes a reply (final or heartbeat).
pub fn decode_reply(body: &[u8]) -> Result<Reply, CodecError> {
    reply_from(unwrap_envelope(body)?)
}

fn opt_string(v: Value, field: &'static str) -> Result<Option<String>, CodecError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        _ => Err(CodecError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

fn seconds(v: Value, field: &'static str) -> Result<Option<Duration>, CodecError> {
    let wrong = CodecError::WrongType {
        field,
        expected: "a number of seconds",
    };
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_f64()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .map(Some)
            .ok_or(wrong),
        _ => Err(wrong),
    }
}

fn request_from(entries: Vec<(String, Value)>) -> Result<Request, CodecError> {
    let mut method = None;
    let mut args = None;
    let mut namespace = None;
    let mut version = None;
    let mut msg_id = None;
    let mut reply_q = None;
    let mut timeout = None;
    let mut unique_id = None;
    let mut context = Context::new();
    for (key, value) in entries {
        match key.as_str() {
            "method" => method = opt_string(value, "method")?,
            "args" => match value {
                Value::Object(m) => args = Some(m),
                Value::Null => args = Some(Map::new()),
                _ => {
                    return Err(CodecError::WrongType {
                        field: "args",
                        expected: "an object",
                    })
                }
            },
            "namespace" => namespace = opt_string(value, "namespace")?,
            "version" => version = opt_string(value, "version")?,
            "_msg_id" => msg_id = opt_string(value, "_msg_id")?,
            "_reply_q" => reply_q = opt_string(value, "_reply_q")?,
            "_timeout" => timeout = seconds(value, "_timeout")?,
            "_unique_id" => unique_id = opt_string(value, "_unique_id")?,
            _ => {
                if let Some(k) = key.strip_prefix(CONTEXT_PREFIX) {
                    context.insert(k, value);
                }
                // Other keys are ignored, as oslo's dispatcher ignores them.
            }
        }
    }
    let method = method.ok_or(CodecError::Missing("method"))?;
    let call = match (msg_id, reply_q) {
        (Some(msg_id), Some(reply_q)) => Some(CallHeader {
            msg_id,
            reply_q,
            call_monitor_timeout: timeout,
        }),
        (Some(_), None) => return Err(CodecError::Missing("_reply_q")),
        (None, _) => None,
    };
    Ok(Request {
        method,
        args: args.unwrap_or_default(),
        namespace,
        version,
        call,
        unique_id,
        context,
    })
}

fn reply_from(entries: Vec<(String, Value)>) -> Result<Reply, CodecError> {
    let mut result = Value::Null;
    let mut failure = None;
    let mut ending = None;
    let mut msg_id = None;
    let mut unique_id = None;
    for (key, value) in entries {
        match key.as_str() {
            "result" => result = value,
            "failure" => failure = decode_failure(value)?,
            "ending" => match value {
                Value::Bool(b) => ending = Some(b),
                Value::Null => ending = Some(false),
                _ => {
                    return Err(CodecError::WrongType {
                        field: "ending",
                        expected: "a boolean",
                    })
                }
            },
            "_msg_id" => msg_id = opt_string(value, "_msg_id")?,
            "_unique_id" => unique_id = opt_string(value, "_unique_id")?,
            _ => {}
        }
    }
    Ok(Reply {
        result,
        failure,
        // Very old servers sent a result without `ending`, then an `ending` marker.
        ending: ending.unwrap_or(false),
        msg_id: msg_id.ok_or(CodecError::Missing("_msg_id"))?,
        unique_id,
    })
}

fn decode_failure(value: Value) -> Result<Option<RemoteFailure>, CodecError> {
    match value {
        Value::Null => Ok(None),
        // 2.0: JSON text of the failure object.
        Value::String(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(CodecError::Failure),
        // Tolerate an object written by a peer that skipped the extra encoding.
        obj @ Value::Object(_) => serde_json::from_value(obj)
            .map(Some)
            .map_err(CodecError::Failure),
        _ => Err(CodecError::WrongType {
            field: "failure",
            expected: "a json string",
        }),
    }
}

// ---------------------------------------------------------------------------------------
// Encoding

/// serde_json output that looks like Python's `json.dumps` defaults: `", "` and `": "`
/// separators, non-ASCII escaped as `\uXXXX`.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        if fragment.is_ascii() {
            return w.write_all(fragment.as_bytes());
        }
        let mut buf = [0u16; 2];
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                for unit in c.encode_utf16(&mut buf) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

fn to_python_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    value.serialize(&mut ser).map_err(CodecError::Encode)?;
    Ok(out)
}

/// Serializes entries in the given order.
struct OrderedRef<'a>(&'a [(&'a str, &'a Value)]);

impl Serialize for OrderedRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

fn envelope(inner: &[u8]) -> Result<Vec<u8>, CodecError> {
    // `inner` came from serde_json, so it is UTF-8.
    let inner = std::str::from_utf8(inner).map_err(|_| CodecError::InnerNotString)?;
    let inner = Value::String(inner.to_owned());
    let version = Value::String(ENVELOPE_VERSION.to_owned());
    to_python_json(&OrderedRef(&[
        (VERSION_KEY, &version),
        (MESSAGE_KEY, &inner),
    ]))
}

fn seconds_value(d: Duration) -> Value {
    if d.subsec_nanos() == 0 {
        Value::from(d.as_secs())
    } else {
        serde_json::Number::from_f64(d.as_secs_f64()).map_or(Value::Null, Value::Number)
    }
}

impl Request {
    /// The enveloped body, keys in oslo's order: `method`, `args`, `namespace`,
    /// `version`, `_msg_id`, `_reply_q`, `_timeout`, `_unique_id`, `_context_*`.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let method = Value::String(self.method.clone());
        let args = Value::Object(self.args.clone());
        let namespace = self.namespace.clone().map(Value::String);
        let version = self.version.clone().map(Value::String);
        let call = self.call.as_ref().map(|c| {
            (
                Value::String(c.msg_id.clone()),
                Value::String(c.reply_q.clone()),
                c.call_monitor_timeout.map_or(Value::Null, seconds_value),
            )
        });
        let unique_id = self.unique_id.clone().map(Value::String);
        let context_keys: Vec<String> = self
            .context
            .0
            .iter()
            .map(|(k, _)| format!("{CONTEXT_PREFIX}{k}"))
            .collect();

        let mut entries: Vec<(&str, &Value)> = Vec::with_capacity(8 + context_keys.len());
        entries.push(("method", &method));
        entries.push(("args", &args));
        if let Some(ns) = &namespace {
            entries.push(("namespace", ns));
        }
        if let Some(v) = &version {
            entries.push(("version", v));
        }
        if let Some((msg_id, reply_q, timeout)) = &call {
            entries.push(("_msg_id", msg_id));
            entries.push(("_reply_q", reply_q));
            entries.push(("_timeout", timeout));
        }
        if let Some(u) = &unique_id {
            entries.push(("_unique_id", u));
        }
        for (key, (_, value)) in context_keys.iter().zip(&self.context.0) {
            entries.push((key, value));
        }
        envelope(&to_python_json(&OrderedRef(&entries))?)
    }
}

impl Reply {
    /// The enveloped body, keys in oslo's order: `result`, `failure`, `ending`, `_msg_id`,
    /// `_unique_id`.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let failure = match &self.failure {
            None => Value::Null,
            Some(f) => {
                let text = to_python_json(f)?;
                Value::String(String::from_utf8(text).map_err(|_| CodecError::InnerNotString)?)
            }
        };
        let ending = Value::Bool(self.ending);
        let msg_id = Value::String(self.msg_id.clone());
        let unique_id = self.unique_id.clone().map(Value::String);
        let mut entries: Vec<(&str, &Value)> = vec![
            ("result", &self.result),
            ("failure", &failure),
            ("ending", &ending),
            ("_msg_id", &msg_id),
        ];
        if let Some(u) = &unique_id {
            entries.push(("_unique_id", u));
        }
        envelope(&to_python_json(&OrderedRef(&entries))?)
    }
}

/// A fresh uuid4 in hex, as oslo makes `_msg_id`, `_unique_id` and reply queue names.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roundtrip_request(req: &Request) -> Request {
        decode_request(&req.encode().unwrap()).unwrap()
    }

    #[test]
    fn request_roundtrip_keeps_everything() {
        let req = Request {
            method: "echo".into(),
            args: json!({"x": 1, "s": "é✓"}).as_object().unwrap().clone(),
            namespace: Some("baseapi".into()),
            version: Some("1.2".into()),
            call: Some(CallHeader {
                msg_id: new_id(),
                reply_q: format!("reply_{}", new_id()),
                call_monitor_timeout: Some(Duration::from_millis(2500)),
            }),
            unique_id: Some(new_id()),
            context: Context::new()
                .with("user", json!("u"))
                .with("roles", json!(["a"])),
        };
        assert_eq!(roundtrip_request(&req), req);
    }

    #[test]
    fn non_ascii_is_escaped_like_python() {
        let req = Request {
            method: "m".into(),
            args: json!({"s": "é😀"}).as_object().unwrap().clone(),
            namespace: None,
            version: None,
            call: None,
            unique_id: None,
            context: Context::new(),
        };
        let body = String::from_utf8(req.encode().unwrap()).unwrap();
        assert!(body.is_ascii());
        assert!(body.contains(r#"\\u00e9\\ud83d\\ude00"#), "{body}");
    }

    #[test]
    fn bare_dict_is_accepted() {
        let body = br#"{"method": "ping", "args": {}, "_unique_id": "u", "_context_user": "x"}"#;
        let req = decode_request(body).unwrap();
        assert_eq!(req.method, "ping");
        assert_eq!(req.context.get("user"), Some(&json!("x")));
        assert!(req.call.is_none());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let cases: &[&[u8]] = &[
            b"",
            b"not json",
            b"[1, 2]",
            br#"{"oslo.version": "3.0", "oslo.message": "{}"}"#,
            br#"{"oslo.version": "2.1", "oslo.message": "{}"}"#,
            br#"{"oslo.version": 2, "oslo.message": "{}"}"#,
            br#"{"oslo.version": "2.0", "oslo.message": {"method": "x"}}"#,
            br#"{"oslo.version": "2.0", "oslo.message": "not json"}"#,
            br#"{"oslo.version": "2.0", "oslo.message": "[1]"}"#,
            br#"{"oslo.version": "2.0", "oslo.message": "{\"args\": {}}"}"#,
            br#"{"method": 3}"#,
            br#"{"method": "x", "args": [1]}"#,
            br#"{"method": "x", "_msg_id": "m"}"#,
            br#"{"method": "x", "_msg_id": "m", "_reply_q": "q", "_timeout": "2"}"#,
            br#"{"method": "x", "_msg_id": "m", "_reply_q": "q", "_timeout": -1}"#,
        ];
        for body in cases {
            assert!(
                decode_request(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let replies: &[&[u8]] = &[
            br#"{"result": 1}"#,
            br#"{"result": 1, "_msg_id": 5}"#,
            br#"{"result": 1, "_msg_id": "m", "ending": "yes"}"#,
            br#"{"result": null, "_msg_id": "m", "failure": "not json"}"#,
            br#"{"result": null, "_msg_id": "m", "failure": "{\"class\": \"X\"}"}"#,
            br#"{"result": null, "_msg_id": "m", "failure": 7}"#,
        ];
        for body in replies {
            assert!(
                decode_reply(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn heartbeat_is_recognised() {
        let hb = Reply {
            result: Value::Null,
            failure: None,
            ending: false,
            msg_id: "m".into(),
            unique_id: Some("u".into()),
        };
        assert!(hb.is_heartbeat());
        assert!(decode_reply(&hb.encode().unwrap()).unwrap().is_heartbeat());
    }

    #[test]
    fn call_monitor_timeout_is_written_as_python_numbers() {
        assert_eq!(seconds_value(Duration::from_secs(2)), json!(2));
        assert_eq!(seconds_value(Duration::from_millis(1500)), json!(1.5));
    }
}
