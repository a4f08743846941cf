//! Header rules, cache and middleware, with the token bodies captured from a real
//! Keystone (`shared/reference/keystone-samples`, copied into `tests/data`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use serde_json::{json, Value};
use tower::{Layer, Service, ServiceExt};

use super::*;
use crate::head::AddedHeaders;

const VALIDATE_BODY: &str =
    include_str!("../../tests/data/keystone-jws-validate-response-body.json");
const ISSUE_BODY: &str = include_str!("../../tests/data/keystone-jws-issue-response-body.json");

fn sample(text: &str) -> TokenInfo {
    TokenInfo::from_keystone_body(&serde_json::from_str::<Value>(text).unwrap()).unwrap()
}

fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

fn far_future(mut info: TokenInfo) -> TokenInfo {
    info.expires_at = SystemTime::now() + Duration::from_secs(3600);
    info
}

#[test]
fn keystone_body_round_trip() {
    let info = sample(VALIDATE_BODY);
    assert_eq!(info.user.name, "demo");
    assert_eq!(info.project_id(), Some("5e78fe57e75443aca521771d2b6dd113"));
    assert_eq!(time::format(info.expires_at), "2026-11-26T03:57:18.000000Z");
    assert_eq!(info.audit_ids, vec!["buVxW-0yQo6kUO7k7xOczw"]);
    assert!(info.is_admin_project);
    let again = TokenInfo::from_keystone_body(&info.to_keystone_body(true)).unwrap();
    assert_eq!(again, info);
    let original: Value = serde_json::from_str(VALIDATE_BODY).unwrap();
    let rendered = info.to_keystone_body(true);
    assert_eq!(rendered["token"]["user"], original["token"]["user"]);
    assert_eq!(rendered["token"]["project"], original["token"]["project"]);
    assert_eq!(rendered["token"]["roles"], original["token"]["roles"]);
    assert_eq!(rendered["token"]["catalog"], original["token"]["catalog"]);
    assert!(info.to_keystone_body(false)["token"]
        .get("catalog")
        .is_none());
}

#[test]
fn iso_times() {
    let t = time::parse("2015-11-07T02:58:43.578887Z").unwrap();
    assert_eq!(time::format(t), "2015-11-07T02:58:43.578887Z");
    assert_eq!(
        time::format(time::from_epoch_secs(1795665438)),
        "2026-11-26T03:57:18.000000Z"
    );
    assert!(time::parse("2015-13-07T02:58:43Z").is_none());
    assert!(time::parse("yesterday").is_none());
}

#[test]
fn tokens_are_trimmed_and_an_empty_or_non_utf8_one_is_no_token() {
    let mut h = HeaderMap::new();
    h.insert("x-storage-token", HeaderValue::from_static("  storage \t"));
    assert_eq!(headers::user_token(&h), Some("storage"));
    h.insert("x-auth-token", HeaderValue::from_static(" "));
    assert_eq!(headers::user_token(&h), None, "an empty X-Auth-Token wins");
    h.insert(
        "x-auth-token",
        HeaderValue::from_bytes(b"tok\xe9n").unwrap(),
    );
    assert_eq!(headers::user_token(&h), None);
    h.insert(
        "x-auth-token",
        HeaderValue::from_bytes("tok\u{e9}n".as_bytes()).unwrap(),
    );
    assert_eq!(headers::user_token(&h), Some("tok\u{e9}n"));
    h.insert("x-service-token", HeaderValue::from_static("\tsvc"));
    assert_eq!(headers::service_token(&h), Some("svc"));
}

#[test]
fn one_scan_finds_what_the_lookups_find() {
    let cases: &[&[(&str, &str)]] = &[
        &[],
        &[("x-auth-token", " a ")],
        &[("x-storage-token", "s")],
        &[("x-auth-token", ""), ("x-storage-token", "s")],
        &[("x-auth-token", "first"), ("x-auth-token", "second")],
        &[("x-service-token", " "), ("x-auth-token", "a")],
        &[
            ("x-service-token", "svc"),
            ("x-roles", "admin"),
            ("x-roles", "more"),
        ],
        &[
            ("x-user-id", "u"),
            ("accept", "*/*"),
            ("openstack-system-scope", "all"),
        ],
    ];
    for headers_of_case in cases {
        let mut h = HeaderMap::new();
        for (name, value) in *headers_of_case {
            h.append(*name, HeaderValue::from_static(value));
        }
        let found = headers::scan(&h);
        let what = format!("{headers_of_case:?}");
        assert_eq!(
            found.user.map(|t| std::str::from_utf8(t).unwrap()),
            headers::user_token(&h),
            "{what}"
        );
        assert_eq!(
            found.service,
            headers::service_token(&h).is_some(),
            "{what}"
        );
        let mut expected: Vec<_> = h
            .keys()
            .filter(|n| headers::REMOVED_HEADERS.contains(&n.as_str()))
            .cloned()
            .collect();
        expected.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let mut spoofed = found.spoofed.clone();
        spoofed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        assert_eq!(spoofed, expected, "{what}");
    }
}

#[test]
fn removes_every_spoofable_header() {
    let mut h = HeaderMap::new();
    for name in headers::REMOVED_HEADERS {
        h.insert(name, HeaderValue::from_static("spoofed"));
    }
    h.insert("X-Auth-Token", HeaderValue::from_static("t"));
    h.insert("x-service-token", HeaderValue::from_static("s"));
    h.insert("x-other", HeaderValue::from_static("kept"));
    // What a proxied request carries besides, and names a prefix away from removed ones.
    for kept in [
        "x-forwarded-for",
        "x-openstack-request-id",
        "x-user-ids",
        "x-rolez",
        "openstack-api-version",
    ] {
        h.insert(kept, HeaderValue::from_static("kept"));
    }
    headers::remove_auth_headers(&mut h);
    assert_eq!(h.len(), 8, "{h:?}");
    for name in [
        "X-Service-Catalog",
        "X-Identity-Status",
        "X-Service-Identity-Status",
        "X-Is-Admin-Project",
        "X-Role",
        "X-User",
        "X-Tenant-Id",
        "X-Tenant-Name",
        "X-Tenant",
        "X-Roles",
        "X-Service-Roles",
        "OpenStack-System-Scope",
        "X-User-Id",
        "X-Service-User-Domain-Name",
        "X-Project-Domain-Name",
        "X-Service-Domain-Id",
    ] {
        assert!(
            headers::REMOVED_HEADERS.contains(&name.to_lowercase().as_str()),
            "{name}"
        );
    }
}

#[test]
fn user_headers_for_a_project_token() {
    let info = sample(ISSUE_BODY);
    let mut h = HeaderMap::new();
    h.insert("x-domain-id", HeaderValue::from_static("stale"));
    headers::set_identity_status(&mut h, true);
    headers::set_user_headers(&mut h, &info);
    headers::set_service_catalog_header(&mut h, &info);
    assert_eq!(get(&h, "X-Identity-Status"), Some("Confirmed"));
    assert_eq!(get(&h, "X-Roles"), Some("manager,reader,member,admin"));
    assert_eq!(get(&h, "X-Role"), Some("manager,reader,member,admin"));
    assert_eq!(
        get(&h, "X-User-Id"),
        Some("875c1b1a98e54605bc6b408f272c8133")
    );
    assert_eq!(get(&h, "X-User-Name"), Some("admin"));
    assert_eq!(get(&h, "X-User"), Some("admin"));
    assert_eq!(get(&h, "X-User-Domain-Id"), Some("default"));
    assert_eq!(get(&h, "X-User-Domain-Name"), Some("Default"));
    assert_eq!(
        get(&h, "X-Project-Id"),
        Some("0a8f612af06942c2a1b931e64d5aba60")
    );
    assert_eq!(
        get(&h, "X-Tenant-Id"),
        Some("0a8f612af06942c2a1b931e64d5aba60")
    );
    assert_eq!(get(&h, "X-Project-Name"), Some("admin"));
    assert_eq!(get(&h, "X-Tenant-Name"), Some("admin"));
    assert_eq!(get(&h, "X-Tenant"), Some("admin"));
    assert_eq!(get(&h, "X-Project-Domain-Id"), Some("default"));
    assert_eq!(get(&h, "X-Project-Domain-Name"), Some("Default"));
    assert_eq!(get(&h, "X-Is-Admin-Project"), Some("True"));
    assert_eq!(
        get(&h, "X-Domain-Id"),
        None,
        "no value for attributes outside the scope"
    );
    assert_eq!(get(&h, "X-Domain-Name"), None);
    assert_eq!(get(&h, "OpenStack-System-Scope"), None);
    assert_eq!(
        get(&h, "X-Service-Catalog"),
        Some(
            r#"[{"type": "identity", "name": "keystone", "endpoints": [{"region": "RegionOne", "publicURL": "http://127.0.0.1:5001/v3", "internalURL": "http://127.0.0.1:5001/v3", "adminURL": "http://127.0.0.1:5001/v3"}]}]"#
        )
    );
}

#[test]
fn user_headers_for_domain_and_system_tokens() {
    let mut info = sample(VALIDATE_BODY);
    info.scope = Scope::Domain(IdName::new("d1", "Dom"));
    info.catalog.clear();
    let mut h = HeaderMap::new();
    h.insert("x-service-catalog", HeaderValue::from_static("stale"));
    headers::set_user_headers(&mut h, &info);
    headers::set_service_catalog_header(&mut h, &info);
    assert_eq!(get(&h, "X-Domain-Id"), Some("d1"));
    assert_eq!(get(&h, "X-Domain-Name"), Some("Dom"));
    assert_eq!(get(&h, "X-Project-Id"), None);
    assert_eq!(get(&h, "X-Tenant-Id"), None);
    assert_eq!(get(&h, "X-Service-Catalog"), None);

    info.scope = Scope::System;
    info.is_admin_project = false;
    let mut h = HeaderMap::new();
    headers::set_user_headers(&mut h, &info);
    assert_eq!(get(&h, "OpenStack-System-Scope"), Some("all"));
    assert_eq!(get(&h, "X-Domain-Id"), None);
    assert_eq!(get(&h, "X-Is-Admin-Project"), Some("False"));
}

#[test]
fn service_headers() {
    let mut service = sample(VALIDATE_BODY);
    service.user.name = "nova".into();
    let mut h = HeaderMap::new();
    headers::set_service_headers(&mut h, &service);
    assert_eq!(get(&h, "X-Service-User-Name"), Some("nova"));
    assert_eq!(
        get(&h, "X-Service-Project-Id"),
        Some("5e78fe57e75443aca521771d2b6dd113")
    );
    assert_eq!(get(&h, "X-Service-Roles"), Some("member,reader"));
    assert_eq!(get(&h, "X-User-Name"), None);
    assert_eq!(get(&h, "X-Tenant"), None);
}

#[test]
fn v2_catalog_groups_regions() {
    let catalog = vec![super::Service {
        id: "s".into(),
        kind: "compute".into(),
        name: None,
        endpoints: vec![
            Endpoint {
                id: "1".into(),
                interface: "public".into(),
                region: Some("R1".into()),
                url: "http://a".into(),
            },
            Endpoint {
                id: "2".into(),
                interface: "Internal".into(),
                region: Some("R2".into()),
                url: "http://b\u{e9}".into(),
            },
            Endpoint {
                id: "3".into(),
                interface: "admin".into(),
                region: None,
                url: "http://c".into(),
            },
        ],
    }];
    assert_eq!(
        headers::v2_catalog_json(&catalog),
        r#"[{"type": "compute", "endpoints": [{"region": "R1", "publicURL": "http://a"}, {"region": "R2", "internalURL": "http://b\u00e9"}, {"adminURL": "http://c"}]}]"#
    );
}

#[test]
fn credentials_for_access_rules() {
    let info = sample(VALIDATE_BODY);
    let rule = crate::access::Rule::parse("role:member and project_id:%(project_id)s").unwrap();
    let target =
        crate::access::Target::new().with("project_id", "5e78fe57e75443aca521771d2b6dd113");
    assert!(rule.evaluate(&info.credentials(), &target));
    let other = crate::access::Target::new().with("project_id", "x");
    assert!(!rule.evaluate(&info.credentials(), &other));
}

/// A validator answering from a table, counting its calls, optionally slow.
struct Table {
    answers: Mutex<HashMap<String, Result<TokenInfo, ValidateError>>>,
    calls: AtomicUsize,
    delay: Duration,
}

impl Table {
    fn new(delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            answers: Mutex::new(HashMap::new()),
            calls: AtomicUsize::new(0),
            delay,
        })
    }
    fn set(&self, token: &str, answer: Result<TokenInfo, ValidateError>) {
        self.answers.lock().unwrap().insert(token.into(), answer);
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Table {
    async fn answer(&self, token: &str, allow_expired: bool) -> Result<TokenInfo, ValidateError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let answer = self.answers.lock().unwrap().get(token).cloned();
        match answer.unwrap_or(Err(InvalidReason::NotFound.into())) {
            // As a real backend: an expired token is refused unless allow_expired.
            Ok(info) if !allow_expired && info.is_expired(SystemTime::now()) => {
                Err(InvalidReason::Expired.into())
            }
            other => other,
        }
    }
}

impl Validator for Table {
    fn validate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenInfo, ValidateError>> {
        Box::pin(self.answer(token, false))
    }

    fn validate_allow_expired<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<TokenInfo, ValidateError>> {
        Box::pin(self.answer(token, true))
    }
}

#[tokio::test(start_paused = true)]
async fn cache_ttl_and_expiry() {
    let table = Table::new(Duration::ZERO);
    let mut info = sample(VALIDATE_BODY);
    info.expires_at = SystemTime::now() + Duration::from_secs(600);
    table.set("long", Ok(info.clone()));
    info.expires_at = SystemTime::now() + Duration::from_secs(30);
    table.set("short", Ok(info));
    let cache = TokenCache::default();
    let v: Arc<dyn Validator> = table.clone();

    assert!(cache.get_or_validate("long", v.clone()).await.is_ok());
    assert!(cache.get_or_validate("long", v.clone()).await.is_ok());
    assert_eq!(table.calls(), 1, "second call is a cache hit");
    tokio::time::advance(Duration::from_secs(301)).await;
    assert!(cache.get_or_validate("long", v.clone()).await.is_ok());
    assert_eq!(table.calls(), 2, "the ttl (300 s) ran out");

    assert!(cache.get_or_validate("short", v.clone()).await.is_ok());
    assert_eq!(table.calls(), 3);
    tokio::time::advance(Duration::from_secs(31)).await;
    assert!(
        cache.lookup("short", tokio::time::Instant::now()).is_none(),
        "never past expires_at"
    );
}

#[tokio::test(start_paused = true)]
async fn cache_remembers_invalid_briefly_and_unavailable_never() {
    let table = Table::new(Duration::ZERO);
    table.set(
        "down",
        Err(ValidateError::unavailable(std::io::Error::other(
            "connection refused",
        ))),
    );
    let cache = TokenCache::default();
    let v: Arc<dyn Validator> = table.clone();
    let err = cache.get_or_validate("bad", v.clone()).await.unwrap_err();
    assert_eq!(err.reason(), Some(InvalidReason::NotFound));
    cache.get_or_validate("bad", v.clone()).await.unwrap_err();
    assert_eq!(table.calls(), 1);
    tokio::time::advance(Duration::from_secs(11)).await;
    cache.get_or_validate("bad", v.clone()).await.unwrap_err();
    assert_eq!(table.calls(), 2);

    assert!(cache
        .get_or_validate("down", v.clone())
        .await
        .unwrap_err()
        .is_unavailable());
    assert!(cache
        .get_or_validate("down", v.clone())
        .await
        .unwrap_err()
        .is_unavailable());
    assert_eq!(table.calls(), 4, "unavailable answers are not cached");
}

#[tokio::test(start_paused = true)]
async fn cache_single_flight() {
    let table = Table::new(Duration::from_millis(100));
    table.set("t", Ok(far_future(sample(VALIDATE_BODY))));
    let cache = Arc::new(TokenCache::default());
    let v: Arc<dyn Validator> = table.clone();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (cache, v) = (cache.clone(), v.clone());
            tokio::spawn(async move { cache.get_or_validate("t", v).await })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().is_ok());
    }
    assert_eq!(
        table.calls(),
        1,
        "fifty concurrent requests, one backend call"
    );
    assert_eq!(cache.len(), 1);
    cache.invalidate("t");
    assert!(cache.is_empty());
}

#[tokio::test(start_paused = true)]
async fn cached_answers_without_asking_and_front_copies_follow_revocation() {
    let table = Table::new(Duration::ZERO);
    table.set("t", Ok(far_future(sample(VALIDATE_BODY))));
    let cache = TokenCache::default();
    let v: Arc<dyn Validator> = table.clone();
    assert!(cache.cached("t").is_none(), "nothing cached yet");
    assert!(cache.cached("bad").is_none());
    cache.get_or_validate("t", v.clone()).await.unwrap();
    cache.get_or_validate("bad", v.clone()).await.unwrap_err();
    // The second hit is served from this thread's copy: the same facts, another Arc.
    let shared = cache.get_or_validate("t", v.clone()).await.unwrap();
    let front = cache.cached("t").unwrap().unwrap();
    assert_eq!(*front, *shared);
    assert!(Arc::ptr_eq(&front, &cache.cached("t").unwrap().unwrap()));
    assert_eq!(
        cache.cached("bad").unwrap().unwrap_err().reason(),
        Some(InvalidReason::NotFound)
    );
    assert_eq!(table.calls(), 2);

    // A revocation reaches the copy at once.
    cache.invalidate("t");
    assert!(cache.cached("t").is_none());
    cache.get_or_validate("t", v.clone()).await.unwrap();
    assert_eq!(table.calls(), 3);
    cache.get_or_validate("t", v.clone()).await.unwrap();
    cache.clear();
    assert!(cache.cached("t").is_none(), "clear reaches the copy too");

    // An explicit insert replaces the answer everywhere.
    cache.get_or_validate("t", v.clone()).await.unwrap();
    cache.get_or_validate("t", v.clone()).await.unwrap();
    cache.insert(
        "t",
        Err(InvalidReason::Revoked.into()),
        tokio::time::Instant::now(),
        SystemTime::now(),
    );
    assert_eq!(
        cache.cached("t").unwrap().unwrap_err().reason(),
        Some(InvalidReason::Revoked)
    );

    // Never past the deadline of the shared entry (the TTL).
    cache.invalidate("t");
    cache.get_or_validate("t", v.clone()).await.unwrap();
    cache.get_or_validate("t", v.clone()).await.unwrap();
    tokio::time::advance(Duration::from_secs(301)).await;
    assert!(cache.cached("t").is_none());
}

#[test]
fn a_revocation_reaches_the_copies_of_other_threads() {
    let table = Table::new(Duration::ZERO);
    table.set("t", Ok(far_future(sample(VALIDATE_BODY))));
    let cache = Arc::new(TokenCache::default());
    let v: Arc<dyn Validator> = table.clone();
    let (to_worker, from_main) = std::sync::mpsc::channel::<()>();
    let (to_main, from_worker) = std::sync::mpsc::channel::<bool>();
    let worker = {
        let cache = cache.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(cache.get_or_validate("t", v.clone())).unwrap();
            rt.block_on(cache.get_or_validate("t", v.clone())).unwrap();
            to_main.send(cache.cached("t").is_some()).unwrap();
            from_main.recv().unwrap();
            to_main.send(cache.cached("t").is_some()).unwrap();
        })
    };
    assert!(from_worker.recv().unwrap(), "the worker holds a copy");
    cache.invalidate("t");
    to_worker.send(()).unwrap();
    assert!(
        !from_worker.recv().unwrap(),
        "the worker's copy is withdrawn"
    );
    worker.join().unwrap();
}

#[tokio::test]
async fn decide_cached_only_when_no_validator_is_needed() {
    let table = table_with_users();
    let layer = RequireTokenLayer::new(
        RequireTokenConfig::new(AuthMode::Required, "http://127.0.0.1:5000/v3"),
        Arc::new(TokenCache::default()),
        table.clone(),
    );
    let headers_of = |pairs: &[(&str, &str)]| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    };
    let mut ext = http::Extensions::new();
    // Not cached yet: the validator must be asked; the spoofed header is gone anyway.
    let mut h = headers_of(&[("x-auth-token", "user"), ("X-User-Id", "spoofed")]);
    assert!(layer.decide_cached(&mut h, &mut ext).is_none());
    assert!(h.get("x-user-id").is_none());
    let (decision, _) = layer.decide(&mut h, &mut ext).await;
    assert_eq!(decision, Decision::Forward);
    // The user's headers come as a block to add, not in the map.
    assert!(h.get("x-user-id").is_none());
    let added = ext.get::<AddedHeaders>().expect("the user headers").clone();
    AddedHeaders::apply_from(&mut ext, &mut h);
    assert_eq!(h["x-user-id"], "4a2b6010d52842ac81b8e0ef29169188");
    let wire = String::from_utf8(added.wire().to_vec()).unwrap();
    assert!(
        wire.contains("x-user-id: 4a2b6010d52842ac81b8e0ef29169188\r\n"),
        "{wire}"
    );
    // The status of a valid token comes with its block, not in the map.
    assert!(
        wire.starts_with("x-identity-status: Confirmed\r\n"),
        "{wire}"
    );
    assert_eq!(h["x-identity-status"], "Confirmed");
    // Cached: decided at once, with the same headers as the validated request got.
    let mut again = headers_of(&[("x-auth-token", "user"), ("X-User-Id", "spoofed")]);
    let mut again_ext = http::Extensions::new();
    let (decision, identity) = layer.decide_cached(&mut again, &mut again_ext).unwrap();
    assert_eq!(decision, Decision::Forward);
    assert!(identity.user.is_some());
    AddedHeaders::apply_from(&mut again_ext, &mut again);
    assert_eq!(again, h);
    // No token: 401 at once.
    let (decision, _) = layer
        .decide_cached(&mut HeaderMap::new(), &mut http::Extensions::new())
        .unwrap();
    assert_eq!(decision, Decision::Unauthorized);
    // A service token always goes to `decide`.
    let mut h = headers_of(&[("x-auth-token", "user"), ("x-service-token", "svc")]);
    assert!(layer.decide_cached(&mut h, &mut ext).is_none());
    assert_eq!(table.calls(), 1);
}

#[test]
fn cache_key_is_sha256() {
    assert_eq!(
        cache::keystonemiddleware_key("abc"),
        "tokens/ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[tokio::test]
async fn chain_tries_validators_in_order() {
    let first = Table::new(Duration::ZERO);
    first.set("x", Err(InvalidReason::Unrecognized.into()));
    first.set(
        "down",
        Err(ValidateError::unavailable(std::io::Error::other("down"))),
    );
    first.set("bad", Err(InvalidReason::BadSignature.into()));
    let second = Table::new(Duration::ZERO);
    second.set("x", Ok(far_future(sample(VALIDATE_BODY))));
    second.set("bad", Ok(far_future(sample(VALIDATE_BODY))));
    second.set("down", Err(InvalidReason::Unrecognized.into()));
    let chain = Chain::new().push(first.clone()).push(second.clone());
    assert!(chain.validate("x").await.is_ok());
    assert_eq!(
        chain.validate("bad").await.unwrap_err().reason(),
        Some(InvalidReason::BadSignature)
    );
    assert!(chain.validate("down").await.unwrap_err().is_unavailable());
}

/// An upstream that echoes the request headers it received as its body.
#[derive(Clone)]
struct Echo;

impl Service<Request<Bytes>> for Echo {
    type Response = Response<Bytes>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Bytes>, Infallible>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let mut map = serde_json::Map::new();
        for (k, v) in req.headers() {
            map.insert(k.to_string(), json!(v.to_str().unwrap_or("?")));
        }
        let identity = req
            .extensions()
            .get::<Identity>()
            .cloned()
            .unwrap_or_default();
        map.insert(
            "identity-user".into(),
            json!(identity.user.map(|u| u.user.name.clone())),
        );
        let status = if req.uri().path() == "/deny" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        Box::pin(async move {
            let mut r = Response::new(Bytes::from(Value::Object(map).to_string()));
            *r.status_mut() = status;
            Ok(r)
        })
    }
}

fn stack(mode: AuthMode, table: Arc<Table>) -> RequireToken<Echo> {
    let layer = RequireTokenLayer::new(
        RequireTokenConfig::new(mode, "http://127.0.0.1:5000/v3"),
        Arc::new(TokenCache::default()),
        table,
    );
    layer.layer(Echo)
}

fn request(path: &str, headers: &[(&str, &str)]) -> Request<Bytes> {
    let mut b = Request::builder().uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Bytes::new()).unwrap()
}

async fn call(svc: &RequireToken<Echo>, req: Request<Bytes>) -> (StatusCode, HeaderMap, Value) {
    let resp = svc.clone().oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    (
        parts.status,
        parts.headers,
        serde_json::from_slice(&body).unwrap(),
    )
}

fn table_with_users() -> Arc<Table> {
    let table = Table::new(Duration::ZERO);
    table.set("user", Ok(far_future(sample(VALIDATE_BODY))));
    let mut service = far_future(sample(VALIDATE_BODY));
    service.user.name = "nova".into();
    service.roles.push(IdName::new("r9", "service"));
    service.scope = Scope::System;
    table.set("svc", Ok(service.clone()));
    service.roles.truncate(2);
    table.set("svc-norole", Ok(service));
    table.set(
        "down",
        Err(ValidateError::unavailable(std::io::Error::other("refused"))),
    );
    table
}

#[tokio::test]
async fn required_mode() {
    let svc = stack(AuthMode::Required, table_with_users());

    let (status, headers, body) = call(
        &svc,
        request(
            "/",
            &[
                ("x-auth-token", " user "),
                ("x-roles", "admin"),
                ("openstack-system-scope", "all"),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get("www-authenticate").is_none());
    assert_eq!(body["x-identity-status"], "Confirmed");
    assert_eq!(body["x-roles"], "member,reader", "spoofed roles replaced");
    assert!(
        body.get("openstack-system-scope").is_none(),
        "spoofed system scope removed"
    );
    assert!(body.get("x-service-identity-status").is_none());
    assert_eq!(
        body["x-auth-token"], " user ",
        "token headers pass unchanged"
    );
    assert_eq!(body["identity-user"], "demo");
    assert!(body["x-service-catalog"]
        .as_str()
        .unwrap()
        .starts_with("[{\"type\": \"identity\""));

    let (status, headers, body) = call(&svc, request("/", &[("x-storage-token", "user")])).await;
    assert_eq!(
        (status, &body["x-user-name"]),
        (StatusCode::OK, &json!("demo"))
    );
    assert!(headers.is_empty());

    for req in [
        request("/", &[]),
        request("/", &[("x-auth-token", "nope")]),
        request("/", &[("x-auth-token", "")]),
    ] {
        let (status, headers, body) = call(&svc, req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            headers["www-authenticate"],
            "Keystone uri=\"http://127.0.0.1:5000/v3\""
        );
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(
            body,
            json!({"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}})
        );
    }

    let (status, _, body) = call(&svc, request("/", &[("x-auth-token", "down")])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], 503);

    // A 401 from the service gets WWW-Authenticate too.
    let (status, headers, _) = call(&svc, request("/deny", &[("x-auth-token", "user")])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.contains_key("www-authenticate"));
}

#[tokio::test]
async fn service_tokens() {
    let svc = stack(AuthMode::Required, table_with_users());
    let (status, _, body) = call(
        &svc,
        request("/", &[("x-auth-token", "user"), ("x-service-token", "svc")]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["x-service-identity-status"], "Confirmed");
    assert_eq!(body["x-service-user-name"], "nova");
    assert_eq!(body["x-service-roles"], "member,reader,service");
    assert_eq!(body["x-user-name"], "demo");
    assert_eq!(
        body["openstack-system-scope"], "all",
        "rewritten from the service token, as keystonemiddleware does"
    );

    // A valid token without the service role is not a service token: 401.
    let (status, _, _) = call(
        &svc,
        request(
            "/",
            &[("x-auth-token", "user"), ("x-service-token", "svc-norole")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = call(
        &svc,
        request(
            "/",
            &[("x-auth-token", "user"), ("x-service-token", "bogus")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn expired_user_token_with_a_service_token() {
    let table = table_with_users();
    let mut old = sample(VALIDATE_BODY);
    old.expires_at = SystemTime::now() - Duration::from_secs(3600);
    table.set("old", Ok(old));
    let svc = stack(AuthMode::Required, table.clone());

    // Alone, an expired token is refused (and that refusal is cached briefly) ...
    let (status, _, _) = call(&svc, request("/", &[("x-auth-token", "old")])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // ... with a service token carrying the service role it is accepted (allow_expired),
    // the cached refusal notwithstanding, with the token's own headers.
    let with = |service: &'static str| {
        request(
            "/",
            &[("x-auth-token", "old"), ("x-service-token", service)],
        )
    };
    let (status, _, body) = call(&svc, with("svc")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["x-identity-status"], "Confirmed");
    assert_eq!(body["x-user-name"], "demo");
    assert_eq!(body["x-service-identity-status"], "Confirmed");
    // A service token without the role gives no allow_expired.
    let (status, _, _) = call(&svc, with("svc-norole")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A token refused even with allow_expired is answered from the cache next time; an
    // expired one that is accepted is not cached (an entry never outlives the token).
    let unknown = || request("/", &[("x-auth-token", "nope"), ("x-service-token", "svc")]);
    let before = table.calls();
    assert_eq!(call(&svc, unknown()).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(table.calls(), before + 1);
    assert_eq!(call(&svc, unknown()).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(table.calls(), before + 1, "cached refusal");
    assert_eq!(call(&svc, with("svc")).await.0, StatusCode::OK);
    assert_eq!(table.calls(), before + 2, "expired: asked again");

    // Roles not required: the role-less service token counts as valid, but
    // allow_expired still needs the role (keystonemiddleware's `role_check_passed`).
    let mut config = RequireTokenConfig::new(AuthMode::Required, "http://127.0.0.1:5000/v3");
    config.service_token_roles_required = false;
    let lax = RequireTokenLayer::new(config, Arc::new(TokenCache::default()), table).layer(Echo);
    let (status, _, _) = call(&lax, with("svc-norole")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = call(
        &lax,
        request(
            "/",
            &[("x-auth-token", "user"), ("x-service-token", "svc-norole")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["x-service-identity-status"], "Confirmed");
    let (status, _, _) = call(&lax, with("svc")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn delay_mode() {
    let svc = stack(AuthMode::Delay, table_with_users());
    let (status, _, body) = call(&svc, request("/", &[("x-user-id", "spoofed")])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["x-identity-status"], "Invalid");
    assert!(body.get("x-user-id").is_none());
    let (status, _, body) = call(&svc, request("/", &[("x-auth-token", "down")])).await;
    assert_eq!(
        (status, &body["x-identity-status"]),
        (StatusCode::OK, &json!("Invalid"))
    );
    let (_, _, body) = call(
        &svc,
        request(
            "/",
            &[("x-auth-token", "user"), ("x-service-token", "svc-norole")],
        ),
    )
    .await;
    assert_eq!(body["x-identity-status"], "Confirmed");
    assert_eq!(body["x-service-identity-status"], "Invalid");
    assert!(body.get("x-service-user-name").is_none());
}

#[tokio::test]
async fn none_mode_only_strips() {
    let table = table_with_users();
    let svc = stack(AuthMode::None, table.clone());
    let (status, _, body) = call(
        &svc,
        request("/", &[("x-auth-token", "user"), ("x-roles", "admin")]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.get("x-roles").is_none());
    assert!(body.get("x-identity-status").is_none());
    assert_eq!(table.calls(), 0);
}

#[tokio::test]
async fn authorize_behind_require_token() {
    use crate::access::{AuthorizeLayer, Rule, Rules, Target};
    let rules = Arc::new(
        Rules::from_yaml_str("\"compute:get\": \"role:member and project_id:%(project_id)s\"\n")
            .unwrap(),
    );
    // The target from the path: /projects/{project_id}/...
    let target: crate::access::TargetFn = Arc::new(|parts: &http::request::Parts| {
        let segs: Vec<&str> = parts.uri.path().split('/').collect();
        Target::new().with("project_id", segs.get(2).copied().unwrap_or_default())
    });
    let authorize = AuthorizeLayer::new(
        "compute:get",
        Rule::parse("rule:compute:get").unwrap(),
        rules,
        target,
    );
    let require = RequireTokenLayer::new(
        RequireTokenConfig::new(AuthMode::Delay, "http://127.0.0.1:5000/v3"),
        Arc::new(TokenCache::default()),
        table_with_users(),
    );
    let svc = require.layer(authorize.layer(Echo));
    let call = |path: &str, token: Option<&str>| {
        let mut b = Request::builder().uri(path);
        if let Some(t) = token {
            b = b.header("x-auth-token", t);
        }
        svc.clone().oneshot(b.body(Bytes::new()).unwrap())
    };
    let ok = call(
        "/projects/5e78fe57e75443aca521771d2b6dd113/servers",
        Some("user"),
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let denied = call("/projects/other/servers", Some("user")).await.unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    let body: Value = serde_json::from_slice(denied.body()).unwrap();
    assert_eq!(
        body,
        json!({"error": {"code": 403, "message": "You are not authorized to perform the requested action: compute:get.", "title": "Forbidden"}})
    );
    let anonymous = call("/projects/5e78fe57e75443aca521771d2b6dd113/servers", None)
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert!(
        anonymous.headers().contains_key("www-authenticate"),
        "RequireToken adds it on the way back"
    );
}
