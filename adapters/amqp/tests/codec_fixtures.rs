//! The codec against the messages captured from a real oslo.messaging 18.3.1 client and
//! server (tests/fixtures/, copied from the shared reference `oslo-wire/`): every one
//! decodes, re-encodes to the same message, and what we write has the captured structure.

use quartet_amqp::codec::{self, CallHeader, Context, Message, Reply, Request};
use serde_json::Value;
use std::path::PathBuf;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn body(kind: &str) -> Vec<u8> {
    std::fs::read(fixture_dir().join(format!("{kind}.body"))).expect("fixture body")
}

fn meta(kind: &str) -> Value {
    let text =
        std::fs::read_to_string(fixture_dir().join(format!("{kind}.json"))).expect("fixture json");
    serde_json::from_str(&text).expect("fixture json parses")
}

fn kinds() -> Vec<String> {
    let mut kinds: Vec<String> = std::fs::read_dir(fixture_dir())
        .expect("fixtures")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".body").map(str::to_owned)
        })
        .collect();
    kinds.sort();
    kinds
}

/// The inner message of an enveloped body, as a JSON value, plus its key order.
fn inner(body: &[u8]) -> (Value, Vec<String>) {
    let outer: Value = serde_json::from_slice(body).unwrap();
    let text = outer["oslo.message"].as_str().expect("inner is a string");
    let value: Value = serde_json::from_str(text).unwrap();
    let order = key_order(text);
    (value, order)
}

/// Top-level key order of a JSON object text (serde_json's Map sorts keys).
fn key_order(text: &str) -> Vec<String> {
    struct Keys(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((k, _)) = m.next_entry::<String, serde::de::IgnoredAny>()? {
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_str::<Keys>(text).unwrap().0
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[test]
fn there_are_fixtures_of_every_kind() {
    let kinds = kinds();
    assert!(kinds.len() >= 19, "{kinds:?}");
    for k in [
        "call-request",
        "call-reply",
        "cast-request",
        "fanout-cast-request",
        "direct-call-request",
        "versioned-call-request",
        "call-monitor-heartbeat-reply",
        "fail-value-reply",
        "no-such-method-reply",
    ] {
        assert!(kinds.iter().any(|x| x == k), "missing {k}");
    }
}

#[test]
fn every_captured_message_decodes_and_roundtrips() {
    for kind in kinds() {
        let raw = body(&kind);
        let expected = meta(&kind)["oslo_message_decoded"].clone();
        let msg = codec::decode(&raw).unwrap_or_else(|e| panic!("{kind}: {e}"));
        let reencoded = match &msg {
            Message::Request(r) => {
                assert!(kind.ends_with("-request"), "{kind} decoded as a request");
                assert_eq!(r.method, expected["method"].as_str().unwrap(), "{kind}");
                assert_eq!(Value::Object(r.args.clone()), expected["args"], "{kind}");
                assert_eq!(
                    r.unique_id.as_deref(),
                    expected["_unique_id"].as_str(),
                    "{kind}"
                );
                assert_eq!(
                    r.version.as_deref(),
                    expected.get("version").and_then(Value::as_str)
                );
                assert_eq!(
                    r.call.as_ref().map(|c| c.msg_id.as_str()),
                    expected.get("_msg_id").and_then(Value::as_str),
                    "{kind}"
                );
                let n_ctx = expected
                    .as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| k.starts_with("_context_"))
                    .count();
                assert_eq!(r.context.len(), n_ctx, "{kind}");
                assert_eq!(
                    r.context.get("roles"),
                    Some(&serde_json::json!(["member", "reader"]))
                );
                assert_eq!(codec::decode_request(&raw).unwrap(), *r);
                r.encode().unwrap()
            }
            Message::Reply(r) => {
                assert!(kind.ends_with("-reply"), "{kind} decoded as a reply");
                assert_eq!(r.msg_id, expected["_msg_id"].as_str().unwrap(), "{kind}");
                assert_eq!(r.ending, expected["ending"].as_bool().unwrap(), "{kind}");
                assert_eq!(r.result, expected["result"], "{kind}");
                assert_eq!(
                    r.failure.is_some(),
                    !expected["failure"].is_null(),
                    "{kind}"
                );
                assert_eq!(codec::decode_reply(&raw).unwrap(), *r);
                r.encode().unwrap()
            }
        };
        // encode -> decode gives the same message back
        assert_eq!(codec::decode(&reencoded).unwrap(), msg, "{kind}");
        // and the same structure: envelope, key order, key set, types
        let outer_keys = key_order(std::str::from_utf8(&reencoded).unwrap());
        assert_eq!(outer_keys, ["oslo.version", "oslo.message"], "{kind}");
        let (ours, our_order) = inner(&reencoded);
        let (theirs, their_order) = inner(&raw);
        assert_eq!(our_order, their_order, "{kind}: key order");
        for (k, v) in theirs.as_object().unwrap() {
            assert_eq!(type_name(&ours[k]), type_name(v), "{kind}: type of {k}");
        }
        assert_eq!(ours, theirs, "{kind}: inner message");
    }
}

#[test]
fn replies_without_nested_objects_reencode_byte_for_byte() {
    // Python's separators, ensure_ascii and key order are reproduced exactly; only the
    // order of keys inside `args`/`result` objects may differ (serde_json sorts them).
    for kind in [
        "call-monitor-heartbeat-reply",
        "fail-value-reply",
        "fail-custom-reply",
        "fail-expected-reply",
        "no-such-method-reply",
    ] {
        let raw = body(kind);
        let reply = codec::decode_reply(&raw).unwrap();
        assert_eq!(
            String::from_utf8(reply.encode().unwrap()).unwrap(),
            String::from_utf8(raw).unwrap(),
            "{kind}"
        );
    }
}

#[test]
fn failures_carry_class_module_message_and_traceback() {
    let cases = [
        ("fail-value-reply", "ValueError", "builtins", "boom-value"),
        (
            "fail-custom-reply",
            "GatewayDemoError",
            "__main__",
            "boom-custom",
        ),
        (
            "fail-expected-reply",
            "KeyError",
            "builtins",
            "'boom-expected'",
        ),
        (
            "no-such-method-reply",
            "NoSuchMethod",
            "oslo_messaging.rpc.dispatcher",
            "Endpoint does not support RPC method no_such_method",
        ),
    ];
    for (kind, class, module, message) in cases {
        let reply = codec::decode_reply(&body(kind)).unwrap();
        let f = reply
            .failure
            .unwrap_or_else(|| panic!("{kind}: no failure"));
        assert_eq!(
            (f.class.as_str(), f.module.as_str()),
            (class, module),
            "{kind}"
        );
        assert_eq!(f.message, message, "{kind}");
        assert!(f.tb.iter().any(|l| l.contains("Traceback")), "{kind}");
        assert!(reply.ending && reply.result.is_null());
    }
}

#[test]
fn heartbeat_and_monitor_timeout() {
    let hb = codec::decode_reply(&body("call-monitor-heartbeat-reply")).unwrap();
    assert!(hb.is_heartbeat());
    let fin = codec::decode_reply(&body("call-monitor-final-reply")).unwrap();
    assert!(fin.ending && !fin.is_heartbeat());
    let req = codec::decode_request(&body("call-monitor-request")).unwrap();
    assert_eq!(
        req.call.unwrap().call_monitor_timeout,
        Some(std::time::Duration::from_secs(2))
    );
}

#[test]
fn our_call_has_the_captured_structure() {
    // Build the captured call from its parts, as the client does, and compare.
    let raw = body("call-request");
    let captured = codec::decode_request(&raw).unwrap();
    let call = captured.call.clone().unwrap();
    let ours = Request {
        method: "echo".into(),
        args: captured.args.clone(),
        namespace: None,
        version: None,
        call: Some(CallHeader {
            msg_id: call.msg_id,
            reply_q: call.reply_q,
            call_monitor_timeout: None,
        }),
        unique_id: captured.unique_id.clone(),
        context: captured
            .context
            .iter()
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .collect::<Context>(),
    };
    let encoded = ours.encode().unwrap();
    let (a, a_order) = inner(&encoded);
    let (b, b_order) = inner(&raw);
    assert_eq!(a, b);
    assert_eq!(a_order, b_order);
    // A cast has no _msg_id, _reply_q or _timeout.
    let cast = Request { call: None, ..ours };
    let (c, _) = inner(&cast.encode().unwrap());
    let (captured_cast, _) = inner(&body("cast-request"));
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&c), keys(&captured_cast));
}

#[test]
fn reply_we_write_has_the_captured_structure() {
    let raw = body("call-reply");
    let captured = codec::decode_reply(&raw).unwrap();
    let ours = Reply {
        result: captured.result.clone(),
        failure: None,
        ending: true,
        msg_id: captured.msg_id.clone(),
        unique_id: captured.unique_id.clone(),
    };
    let (a, a_order) = inner(&ours.encode().unwrap());
    let (b, b_order) = inner(&raw);
    assert_eq!((a, a_order), (b, b_order));
}

#[test]
fn truncated_and_mangled_captures_never_panic() {
    for kind in kinds() {
        let raw = body(&kind);
        for cut in 0..raw.len() {
            let _ = codec::decode(&raw[..cut]);
        }
        // Mangle each byte in turn (a cheap, deterministic fuzz).
        for i in (0..raw.len()).step_by(7) {
            let mut m = raw.clone();
            m[i] = m[i].wrapping_add(13);
            let _ = codec::decode(&m);
        }
    }
}

#[test]
fn the_bare_1_0_form_is_accepted_for_replies_too() {
    let outer: Value = serde_json::from_slice(&body("call-reply")).unwrap();
    let inner = outer["oslo.message"].as_str().unwrap();
    let bare = codec::decode_reply(inner.as_bytes()).unwrap();
    assert_eq!(bare, codec::decode_reply(&body("call-reply")).unwrap());
}

#[test]
fn an_oslo_context_is_what_oslo_context_writes() {
    let captured = codec::decode_request(&body("call-request"))
        .unwrap()
        .context;
    let caller = codec::Caller {
        user_id: Some("4a2b6010d52842ac81b8e0ef29169188".into()),
        project_id: Some("5e78fe57e75443aca521771d2b6dd113".into()),
        domain_id: Some("default".into()),
        user_domain_id: Some("default".into()),
        project_domain_id: Some("default".into()),
        system_scope: None,
        roles: vec!["member".into(), "reader".into()],
        is_admin: false,
        is_admin_project: true,
        request_id: Some("req-6c9b4d29-e625-4a12-829e-96879ca1f886".into()),
        global_request_id: Some("req-b310750c-6e6d-439f-abab-5b6c95c1b4ba".into()),
        auth_token: Some("gAAAAAB-example-fernet-token".into()),
    };
    assert_eq!(Context::oslo(&caller), captured);
    let anonymous = Context::oslo(&codec::Caller::default());
    assert_eq!(
        anonymous.get("user_identity"),
        Some(&Value::String("- - - - -".into()))
    );
    assert_eq!(anonymous.get("auth_token"), Some(&Value::Null));
}
