//! RequireToken (quartet-policies) in front of an upstream that echoes the headers it
//! received, with the embedded identity as its validator: the component test of the
//! token path, without sockets.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use quartet_identity::bootstrap::bootstrap;
use quartet_identity::jws::{new_audit_id, Claims, KeyRepository};
use quartet_identity::store::{HashCost, Store, Target};
use quartet_identity::{Credential, DomainRef, Identity, ProjectRef, ScopeRequest, UserRef};
use quartet_policies::auth::{
    time, AuthMode, Chain, Endpoint, RequireToken, RequireTokenConfig, RequireTokenLayer, Service,
    TokenCache,
};
use serde_json::{json, Value};
use tower::{Layer, ServiceExt};

#[derive(Clone)]
struct Echo;

impl tower::Service<Request<Bytes>> for Echo {
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
        let map: serde_json::Map<String, Value> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("?"))))
            .collect();
        Box::pin(async move { Ok(Response::new(Bytes::from(Value::Object(map).to_string()))) })
    }
}

struct Fixture {
    identity: Arc<Identity>,
    store: Store,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("identity.db").display());
    let store = Store::connect_with(&url, HashCost::CHEAP).await.unwrap();
    let boot = bootstrap(&store, Some("secret")).await.unwrap();
    let member = store.role_by_name("member").await.unwrap();
    store
        .grant(
            &boot.admin_user_id,
            &Target::Domain("default".into()),
            &member.id,
        )
        .await
        .unwrap();
    let catalog = vec![Service {
        id: "c".into(),
        kind: "compute".into(),
        name: Some("nova".into()),
        endpoints: vec![Endpoint {
            id: "e".into(),
            interface: "public".into(),
            region: Some("RegionOne".into()),
            url: "http://gw/compute".into(),
        }],
    }];
    let identity = Arc::new(Identity::new(
        store.clone(),
        KeyRepository::generate(),
        Duration::from_secs(3600),
        catalog,
    ));
    Fixture {
        identity,
        store,
        _dir: dir,
    }
}

fn stack(f: &Fixture, mode: AuthMode) -> RequireToken<Echo> {
    let validators = Chain::new().push(f.identity.clone());
    RequireTokenLayer::new(
        RequireTokenConfig::new(mode, "http://gw/v3"),
        Arc::new(TokenCache::default()),
        Arc::new(validators),
    )
    .layer(Echo)
}

async fn token(f: &Fixture, scope: ScopeRequest) -> String {
    let cred = Credential::Password {
        user: UserRef::Name {
            name: "admin".into(),
            domain: DomainRef::Id("default".into()),
        },
        password: "secret".into(),
    };
    f.identity.authenticate(&cred, &scope).await.unwrap().token
}

async fn call(svc: &RequireToken<Echo>, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut b = Request::builder().uri("/compute/servers");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = svc
        .clone()
        .oneshot(b.body(Bytes::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    (
        status,
        serde_json::from_slice(resp.body()).unwrap_or(Value::Null),
    )
}

const SPOOFED: [(&str, &str); 5] = [
    ("x-roles", "admin"),
    ("x-user-id", "root"),
    ("x-tenant-id", "other"),
    ("x-service-roles", "service"),
    ("openstack-system-scope", "all"),
];

#[tokio::test]
async fn headers_for_each_scope() {
    let f = fixture().await;
    let svc = stack(&f, AuthMode::Required);

    let project = token(
        &f,
        ScopeRequest::Project(ProjectRef::Name {
            name: "admin".into(),
            domain: DomainRef::Name("Default".into()),
        }),
    )
    .await;
    let mut headers = vec![("x-auth-token", project.as_str())];
    headers.extend(SPOOFED);
    let (status, h) = call(&svc, &headers).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["x-identity-status"], "Confirmed");
    assert_eq!(h["x-user-name"], "admin");
    assert_eq!(h["x-user-domain-name"], "Default");
    assert_eq!(h["x-project-name"], "admin");
    assert_eq!(h["x-tenant-name"], "admin");
    assert_eq!(h["x-project-domain-id"], "default");
    assert_eq!(h["x-roles"], "admin,manager,member,reader");
    assert_eq!(h["x-is-admin-project"], "True");
    assert!(h.get("x-service-roles").is_none() && h.get("openstack-system-scope").is_none());
    assert_ne!(h["x-user-id"], "root");
    assert_eq!(
        h["x-service-catalog"],
        r#"[{"type": "compute", "name": "nova", "endpoints": [{"region": "RegionOne", "publicURL": "http://gw/compute"}]}]"#
    );

    let domain = token(&f, ScopeRequest::Domain(DomainRef::Id("default".into()))).await;
    let (_, h) = call(&svc, &[("x-auth-token", &domain)]).await;
    assert_eq!(
        (&h["x-domain-id"], &h["x-domain-name"]),
        (&json!("default"), &json!("Default"))
    );
    assert!(h.get("x-project-id").is_none());
    assert_eq!(h["x-roles"], "member,reader");

    let system = token(&f, ScopeRequest::System).await;
    let (_, h) = call(&svc, &[("x-auth-token", &system)]).await;
    assert_eq!(h["openstack-system-scope"], "all");
    assert!(h.get("x-domain-id").is_none() && h.get("x-project-id").is_none());
}

#[tokio::test]
async fn refused_tokens() {
    let f = fixture().await;
    let svc = stack(&f, AuthMode::Required);
    let good = token(&f, ScopeRequest::System).await;
    let admin = f.store.user_by_name("default", "admin").await.unwrap();
    let now = time::epoch_secs(SystemTime::now());
    let claims = |exp: u64| Claims {
        sub: admin.id.clone(),
        iat: now - 100,
        exp,
        openstack_methods: vec!["password".into()],
        openstack_audit_ids: vec![new_audit_id()],
        openstack_system: Some("all".into()),
        ..Claims::default()
    };
    let expired = f.identity.keys().sign(&claims(now - 1)).unwrap();
    let other_key = KeyRepository::generate().sign(&claims(now + 600)).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    let mut forged = claims(now + 600);
    forged.sub = "someone".into();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap()),
        parts[2]
    );
    for bad in [
        &expired,
        &other_key,
        &none,
        &tampered,
        &"fernet-looking".to_owned(),
    ] {
        let (status, body) = call(&svc, &[("x-auth-token", bad.as_str())]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["code"], 401);
    }

    // Revoked: refused by the identity at once (a fresh cache, or after the entry ends).
    assert_eq!(
        call(&svc, &[("x-auth-token", &good)]).await.0,
        StatusCode::OK
    );
    let info = f.identity.validate_token(&good).await.unwrap();
    f.identity.revoke(&info).await.unwrap();
    let fresh = stack(&f, AuthMode::Required);
    assert_eq!(
        call(&fresh, &[("x-auth-token", &good)]).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Delay mode lets it through, marked Invalid.
    let delay = stack(&f, AuthMode::Delay);
    let (status, h) = call(&delay, &[("x-auth-token", &expired), ("x-roles", "admin")]).await;
    assert_eq!(
        (status, &h["x-identity-status"]),
        (StatusCode::OK, &json!("Invalid"))
    );
    assert!(h.get("x-roles").is_none());
}

#[tokio::test]
async fn store_down_is_503_or_invalid_under_delay() {
    let f = fixture().await;
    let good = token(&f, ScopeRequest::System).await;
    f.store.close().await;
    let (status, body) = call(&stack(&f, AuthMode::Required), &[("x-auth-token", &good)]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], 503);
    let (status, h) = call(&stack(&f, AuthMode::Delay), &[("x-auth-token", &good)]).await;
    assert_eq!(
        (status, &h["x-identity-status"]),
        (StatusCode::OK, &json!("Invalid"))
    );
}
