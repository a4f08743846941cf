//! The token validation paths, measured (a benchmark, not a test):
//!
//! - `cache_hit`: `TokenCache::get_or_validate` for a token already cached (SHA-256 of
//!   the token, a map lookup, the expiry checks). Target: under 2 µs.
//! - `jws_es256_verify`: an offline verification of a Keystone JWS token (ES256
//!   signature, claims, expiry) with a key repository of one key. Target: under 100 µs.
//! - `require_token_decision`: the full RequireToken decision on a request's headers with
//!   the token cached (anti-spoofing removal, cache hit, the keystonemiddleware headers
//!   set, the service catalog header included).
//!
//! `cargo bench -p quartet-identity --bench validation` (add `-- --quick` for a short run).

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use quartet_identity::jws::{Claims, KeyRepository};
use quartet_policies::auth::{
    AuthMode, CacheConfig, Endpoint, IdName, RequireTokenConfig, RequireTokenLayer, Scope, Service,
    TokenCache, TokenInfo, User, ValidateError, Validator,
};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A project-scoped token as the embedded identity describes it.
fn token_info() -> TokenInfo {
    let now = SystemTime::now();
    TokenInfo {
        user: User {
            id: "u1".into(),
            name: "alice".into(),
            domain: IdName::new("default", "Default"),
        },
        scope: Scope::Project {
            id: "p1".into(),
            name: "demo".into(),
            domain: IdName::new("default", "Default"),
            is_domain: false,
        },
        roles: vec![IdName::new("r1", "member"), IdName::new("r2", "reader")],
        catalog: vec![Service {
            id: "s1".into(),
            kind: "compute".into(),
            name: Some("compute".into()),
            endpoints: vec![Endpoint {
                id: "e1".into(),
                interface: "public".into(),
                region: Some("RegionOne".into()),
                url: "http://127.0.0.1:8080/compute".into(),
            }],
        }],
        methods: vec!["password".into()],
        audit_ids: vec!["a1".into()],
        issued_at: now,
        expires_at: now + Duration::from_secs(3600),
        is_admin_project: false,
        forward_headers: Default::default(),
    }
}

/// A validator that answers one known token (only reached on a cache miss).
struct Fixed(TokenInfo);

impl Validator for Fixed {
    fn validate<'a>(
        &'a self,
        _token: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<TokenInfo, ValidateError>> {
        Box::pin(async move { Ok(self.0.clone()) })
    }
}

/// A token of Keystone's JWS shape (about 250 bytes, as Keystone's are).
fn jws_token(keys: &KeyRepository) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = Claims {
        sub: "0ba5f1f3c6d34b4d9e3a7d0f2c1b4e5a".into(),
        iat: now,
        exp: now + 3600,
        openstack_methods: vec!["password".into()],
        openstack_audit_ids: vec!["xbU2LQ2bSbSkkd3UfIBnhQ".into()],
        openstack_project_id: Some("9fbe2e5c3e7b4b8c8b1f3c2d4a6e8f00".into()),
        ..Claims::default()
    };
    keys.sign(&claims).expect("a signing key")
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // A long random-looking token, cached once.
    let keys = KeyRepository::generate();
    let token = jws_token(&keys);
    let cache = Arc::new(TokenCache::new(CacheConfig::default()));
    let validator: Arc<dyn Validator> = Arc::new(Fixed(token_info()));
    rt.block_on(cache.get_or_validate(&token, validator.clone()))
        .expect("the first validation");

    c.bench_function("cache_hit", |b| {
        b.to_async(&rt).iter(|| {
            let cache = cache.clone();
            let validator = validator.clone();
            let token = token.as_str();
            async move { black_box(cache.get_or_validate(token, validator).await) }
        })
    });

    c.bench_function("jws_es256_verify", |b| {
        b.iter(|| {
            let claims = keys.verify(black_box(&token), SystemTime::now());
            black_box(claims.expect("a valid token"))
        })
    });

    let layer = RequireTokenLayer::new(
        RequireTokenConfig::new(AuthMode::Required, "http://127.0.0.1:8080/v3"),
        cache.clone(),
        validator.clone(),
    );
    let mut template = HeaderMap::new();
    template.insert(
        "x-auth-token",
        HeaderValue::from_str(&token).expect("header"),
    );
    template.insert("x-user-id", HeaderValue::from_static("spoofed"));
    template.insert("accept", HeaderValue::from_static("application/json"));
    template.insert("user-agent", HeaderValue::from_static("bench"));
    c.bench_function("require_token_decision", |b| {
        b.to_async(&rt).iter(|| {
            let layer = layer.clone();
            let mut headers = template.clone();
            let mut extensions = http::Extensions::new();
            async move {
                let decision = layer.decide(&mut headers, &mut extensions).await;
                black_box((decision, headers, extensions))
            }
        })
    });
}

criterion_group!(validation, benches);
criterion_main!(validation);
