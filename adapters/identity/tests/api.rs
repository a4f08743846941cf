//! The v3 token API through its tower Service (no socket), compared with the answers a
//! real Keystone gave (`tests/data/keystone-jws-*`, captured from Keystone 30.0.0).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use quartet_identity::bootstrap::bootstrap;
use quartet_identity::jws::KeyRepository;
use quartet_identity::store::{HashCost, Store, Target};
use quartet_identity::{Identity, IdentityApi};
use quartet_policies::auth::{Endpoint, Service};
use serde_json::{json, Value};
use tower::ServiceExt;

fn sample(name: &str) -> Value {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

struct Fixture {
    api: IdentityApi,
    store: Store,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("identity.db").display());
    let store = Store::connect_with(&url, HashCost::CHEAP).await.unwrap();
    bootstrap(&store, Some("secret")).await.unwrap();
    let demo_project = store.create_project(None, "demo", "default").await.unwrap();
    let demo = store
        .create_user(None, "demo", "default", Some("demo-pw"))
        .await
        .unwrap();
    let member = store.role_by_name("member").await.unwrap();
    store
        .grant(&demo.id, &Target::Project(demo_project.id), &member.id)
        .await
        .unwrap();
    let catalog = vec![Service {
        id: "0e8780c4177e41e39065b01f1cfcdf8e".into(),
        kind: "identity".into(),
        name: Some("keystone".into()),
        endpoints: vec![Endpoint {
            id: "0cbf8690d65349188e032886749d5650".into(),
            interface: "public".into(),
            region: Some("RegionOne".into()),
            url: "http://127.0.0.1:5001/v3".into(),
        }],
    }];
    let identity = Identity::new(
        store.clone(),
        KeyRepository::generate(),
        Duration::from_secs(3600),
        catalog,
    );
    Fixture {
        api: IdentityApi::new(Arc::new(identity), Some("http://127.0.0.1:5001/v3".into())),
        store,
        _dir: dir,
    }
}

async fn send(
    api: &IdentityApi,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (StatusCode, http::HeaderMap, Value) {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let body = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    let response = api.clone().oneshot(b.body(body).unwrap()).await.unwrap();
    let (parts, body) = response.into_parts();
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    };
    (parts.status, parts.headers, value)
}

fn password_body(user: &str, password: &str, project: &str) -> Value {
    let mut body = sample("keystone-jws-issue-request.json");
    body["auth"]["identity"]["password"]["user"]["name"] = json!(user);
    body["auth"]["identity"]["password"]["user"]["password"] = json!(password);
    body["auth"]["scope"]["project"]["name"] = json!(project);
    body
}

async fn issue(api: &IdentityApi, user: &str, password: &str, project: &str) -> (String, Value) {
    let (status, headers, body) = send(
        api,
        Method::POST,
        "/v3/auth/tokens",
        &[],
        password_body(user, password, project),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (
        headers["x-subject-token"].to_str().unwrap().to_owned(),
        body,
    )
}

#[tokio::test]
async fn version_document() {
    let f = fixture().await;
    let (status, _, body) = send(&f.api, Method::GET, "/v3", &[], Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["version"]["id"], "v3.14");
    assert_eq!(body["version"]["status"], "stable");
    assert_eq!(
        body["version"]["links"][0]["href"],
        "http://127.0.0.1:5001/v3/"
    );
    let (status, _, _) = send(&f.api, Method::GET, "/v3/", &[], Value::Null).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn issue_has_keystones_shape() {
    let f = fixture().await;
    let (status, headers, body) = send(
        &f.api,
        Method::POST,
        "/v3/auth/tokens",
        &[],
        password_body("admin", "secret", "admin"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["vary"], "X-Auth-Token");
    assert!(headers["x-openstack-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req-"));
    let token = headers["x-subject-token"].to_str().unwrap();
    assert_eq!(token.split('.').count(), 3);
    let real = sample("keystone-jws-issue-response-body.json");
    assert_eq!(keys(&body["token"]), keys(&real["token"]));
    assert_eq!(keys(&body["token"]["user"]), keys(&real["token"]["user"]));
    assert_eq!(
        keys(&body["token"]["project"]),
        keys(&real["token"]["project"])
    );
    assert_eq!(
        keys(&body["token"]["catalog"][0]),
        keys(&real["token"]["catalog"][0])
    );
    assert_eq!(
        keys(&body["token"]["catalog"][0]["endpoints"][0]),
        keys(&real["token"]["catalog"][0]["endpoints"][0])
    );
    assert_eq!(
        keys(&body["token"]["roles"][0]),
        keys(&real["token"]["roles"][0])
    );
    assert_eq!(
        body["token"]["user"]["domain"],
        real["token"]["user"]["domain"]
    );
    assert_eq!(
        body["token"]["project"]["domain"],
        real["token"]["project"]["domain"]
    );
    assert_eq!(body["token"]["is_domain"], false);
    let names: BTreeSet<&str> = body["token"]["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    let real_names: BTreeSet<&str> = real["token"]["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names, real_names,
        "the admin of a bootstrapped Keystone has the same roles"
    );
    let expires = body["token"]["expires_at"].as_str().unwrap();
    assert!(
        expires.ends_with(".000000Z") && expires.len() == 27,
        "{expires}"
    );

    let (_, _, body) = send(
        &f.api,
        Method::POST,
        "/v3/auth/tokens?nocatalog",
        &[],
        password_body("admin", "secret", "admin"),
    )
    .await;
    assert!(body["token"].get("catalog").is_none());
    let real = sample("keystone-jws-validate-nocatalog-body.json");
    assert_eq!(keys(&body["token"]), keys(&real["token"]));

    // By user id, unscoped: no roles, no catalog, no project.
    let admin = f.store.user_by_name("default", "admin").await.unwrap();
    let (status, _, body) = send(&f.api, Method::POST, "/v3/auth/tokens", &[],
        json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"id": admin.id, "password": "secret"}}}}})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(
        body["token"].get("roles").is_none()
            && body["token"].get("catalog").is_none()
            && body["token"].get("project").is_none()
    );

    // System and domain scope.
    let (status, _, body) = send(&f.api, Method::POST, "/v3/auth/tokens", &[],
        json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"id": admin.id, "password": "secret"}}}, "scope": {"system": {"all": true}}}})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["token"]["system"], json!({"all": true}));
}

#[tokio::test]
async fn errors_have_keystones_bodies() {
    let f = fixture().await;
    let unauthorized = sample("keystone-jws-invalid-authtoken-response-body.json");
    let (status, headers, body) = send(
        &f.api,
        Method::POST,
        "/v3/auth/tokens",
        &[],
        password_body("admin", "nope", "admin"),
    )
    .await;
    assert_eq!((status, &body), (StatusCode::UNAUTHORIZED, &unauthorized));
    assert_eq!(
        headers["www-authenticate"],
        "Keystone uri=\"http://127.0.0.1:5001/v3\""
    );
    let (status, _, body) = send(
        &f.api,
        Method::POST,
        "/v3/auth/tokens",
        &[],
        password_body("ghost", "x", "admin"),
    )
    .await;
    assert_eq!((status, &body), (StatusCode::UNAUTHORIZED, &unauthorized));
    let (status, _, _) = send(
        &f.api,
        Method::POST,
        "/v3/auth/tokens",
        &[],
        password_body("demo", "demo-pw", "admin"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no role on that project");
    let (status, _, body) = send(
        &f.api,
        Method::POST,
        "/v3/auth/tokens",
        &[],
        json!({"auth": {}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["title"], "Bad Request");
    let (status, _, _) = send(&f.api, Method::PUT, "/v3/auth/tokens", &[], Value::Null).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _, body) = send(&f.api, Method::GET, "/v3/users", &[], Value::Null).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!(404))
    );
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v3/auth/tokens")
        .body(Bytes::from_static(b"{not json"))
        .unwrap();
    assert_eq!(
        f.api.clone().oneshot(req).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn validate_check_revoke() {
    let f = fixture().await;
    let (admin_token, _) = issue(&f.api, "admin", "secret", "admin").await;
    let (demo_token, issued) = issue(&f.api, "demo", "demo-pw", "demo").await;

    // Validate: 200, the subject echoed, the same body as at issue.
    let (status, headers, body) = send(
        &f.api,
        Method::GET,
        "/v3/auth/tokens",
        &[
            ("x-auth-token", &admin_token),
            ("x-subject-token", &demo_token),
        ],
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-subject-token"], demo_token.as_str());
    assert_eq!(body, issued);
    let real = sample("keystone-jws-validate-response-body.json");
    assert_eq!(keys(&body["token"]), keys(&real["token"]));
    let (_, _, body) = send(
        &f.api,
        Method::GET,
        "/v3/auth/tokens?nocatalog",
        &[
            ("x-auth-token", &admin_token),
            ("x-subject-token", &demo_token),
        ],
        Value::Null,
    )
    .await;
    assert!(body["token"].get("catalog").is_none());

    // A user may validate their own token; not someone else's.
    let (status, _, _) = send(
        &f.api,
        Method::GET,
        "/v3/auth/tokens",
        &[
            ("x-auth-token", &demo_token),
            ("x-subject-token", &demo_token),
        ],
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = send(
        &f.api,
        Method::GET,
        "/v3/auth/tokens",
        &[
            ("x-auth-token", &demo_token),
            ("x-subject-token", &admin_token),
        ],
        Value::Null,
    )
    .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::FORBIDDEN,
            sample("keystone-jws-forbidden-response-body.json")
        )
    );

    // HEAD: 200, no body.
    let (status, headers, body) = send(
        &f.api,
        Method::HEAD,
        "/v3/auth/tokens",
        &[
            ("x-auth-token", &admin_token),
            ("x-subject-token", &demo_token),
        ],
        Value::Null,
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, Value::Null));
    assert_eq!(headers["x-subject-token"], demo_token.as_str());

    // Bad caller token: 401; no subject: 400; unknown subject: 404 naming it.
    let (status, _, body) = send(
        &f.api,
        Method::GET,
        "/v3/auth/tokens",
        &[
            ("x-auth-token", "garbage"),
            ("x-subject-token", &demo_token),
        ],
        Value::Null,
    )
    .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::UNAUTHORIZED,
            sample("keystone-jws-invalid-authtoken-response-body.json")
        )
    );
    let (status, _, _) = send(
        &f.api,
        Method::GET,
        "/v3/auth/tokens",
        &[("x-auth-token", &admin_token)],
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let bogus = "gAAAAABinvalidtokenAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let (status, _, body) = send(
        &f.api,
        Method::GET,
        "/v3/auth/tokens",
        &[("x-auth-token", &admin_token), ("x-subject-token", bogus)],
        Value::Null,
    )
    .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::NOT_FOUND,
            sample("keystone-jws-invalid-response-body.json")
        )
    );

    // Re-scope with the token method.
    let (status, _, body) = send(&f.api, Method::POST, "/v3/auth/tokens", &[],
        json!({"auth": {"identity": {"methods": ["token"], "token": {"id": admin_token}}, "scope": {"system": {"all": true}}}})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["token"]["methods"], json!(["token", "password"]));

    // Revoke: 204, then the revoked body.
    let (status, _, body) = send(
        &f.api,
        Method::DELETE,
        "/v3/auth/tokens",
        &[
            ("x-auth-token", &demo_token),
            ("x-subject-token", &demo_token),
        ],
        Value::Null,
    )
    .await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    let (status, _, body) = send(
        &f.api,
        Method::GET,
        "/v3/auth/tokens",
        &[
            ("x-auth-token", &admin_token),
            ("x-subject-token", &demo_token),
        ],
        Value::Null,
    )
    .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::NOT_FOUND,
            sample("keystone-jws-revoked-response-body.json")
        )
    );
}
