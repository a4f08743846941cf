//! RequireToken compared with the real keystonemiddleware: both validate the same
//! tokens against the embedded identity (served over HTTP, keystonemiddleware's
//! backend), in front of an app that echoes the identity headers it receives; the
//! headers, statuses and bodies must be the same.

mod common;
#[path = "common/server.rs"]
mod server;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use quartet_identity::bootstrap::bootstrap;
use quartet_identity::jws::{new_audit_id, Claims, KeyRepository};
use quartet_identity::store::{HashCost, Store, Target};
use quartet_identity::{
    Credential, DomainRef, Identity, IdentityApi, ProjectRef, ScopeRequest, UserRef,
};
use quartet_policies::auth::headers::REMOVED_HEADERS;
use quartet_policies::auth::{
    AuthMode, Chain, Endpoint, RequireTokenConfig, RequireTokenLayer, Service, TokenCache,
};
use serde_json::{json, Map, Value};
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
        let map: Map<String, Value> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("?"))))
            .collect();
        Box::pin(async move { Ok(Response::new(Bytes::from(Value::Object(map).to_string()))) })
    }
}

/// Only the identity headers (the ones either side may set or remove).
fn identity_headers(seen: &Value) -> Map<String, Value> {
    let mut names: Vec<&str> = REMOVED_HEADERS.to_vec();
    names.extend([
        "x-service-identity-status",
        "x-auth-token",
        "x-service-token",
    ]);
    seen.as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| names.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_headers_as_keystonemiddleware() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("identity.db").display());
    let store = Store::connect_with(&url, HashCost::CHEAP).await.unwrap();
    let boot = bootstrap(&store, Some("admin-pw")).await.unwrap();
    // The service user keystonemiddleware validates with: `service` role on project `service`.
    let service_project = store
        .create_project(None, "service", "default")
        .await
        .unwrap();
    let nova = store
        .create_user(None, "nova", "default", Some("nova-pw"))
        .await
        .unwrap();
    let service_role = store.role_by_name("service").await.unwrap();
    store
        .grant(
            &nova.id,
            &Target::Project(service_project.id.clone()),
            &service_role.id,
        )
        .await
        .unwrap();
    let member = store.role_by_name("member").await.unwrap();
    store
        .grant(
            &boot.admin_user_id,
            &Target::Domain("default".into()),
            &member.id,
        )
        .await
        .unwrap();

    let identity = Arc::new(Identity::new(
        store,
        KeyRepository::generate(),
        Duration::from_secs(3600),
        Vec::new(),
    ));
    let (addr, server) = server::serve(IdentityApi::new(identity.clone(), None)).await;
    let auth_url = format!("http://{addr}/v3");
    let endpoint = |interface: &str, url: &str| Endpoint {
        id: format!("{interface}-{url}"),
        interface: interface.into(),
        region: Some("RegionOne".into()),
        url: url.into(),
    };
    identity.set_catalog(vec![
        Service {
            id: "k".into(),
            kind: "identity".into(),
            name: Some("keystone".into()),
            endpoints: vec![
                endpoint("public", &auth_url),
                endpoint("internal", &auth_url),
                endpoint("admin", &auth_url),
            ],
        },
        Service {
            id: "n".into(),
            kind: "compute".into(),
            name: Some("nova".into()),
            endpoints: vec![
                endpoint("public", "http://gw/compute"),
                endpoint("internal", "http://10.0.0.1:8774"),
            ],
        },
    ]);

    let password = |name: &str, pw: &str| Credential::Password {
        user: UserRef::Name {
            name: name.into(),
            domain: DomainRef::Id("default".into()),
        },
        password: pw.into(),
    };
    let issue = |cred: Credential, scope: ScopeRequest| {
        let identity = identity.clone();
        async move { identity.authenticate(&cred, &scope).await.unwrap().token }
    };
    let project = issue(
        password("admin", "admin-pw"),
        ScopeRequest::Project(ProjectRef::Name {
            name: "admin".into(),
            domain: DomainRef::Id("default".into()),
        }),
    )
    .await;
    let domain = issue(
        password("admin", "admin-pw"),
        ScopeRequest::Domain(DomainRef::Id("default".into())),
    )
    .await;
    let system = issue(password("admin", "admin-pw"), ScopeRequest::System).await;
    let service = issue(
        password("nova", "nova-pw"),
        ScopeRequest::Project(ProjectRef::Id(service_project.id.clone())),
    )
    .await;

    // Tokens past their expiry, signed as the identity signs: one within Keystone's
    // allow_expired_window (48 h by default), one beyond it.
    let expired = |hours_ago: u64| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = Claims {
            sub: boot.admin_user_id.clone(),
            iat: now - (hours_ago + 1) * 3600,
            exp: now - hours_ago * 3600,
            openstack_methods: vec!["password".into()],
            openstack_audit_ids: vec![new_audit_id()],
            openstack_project_id: Some(boot.admin_project_id.clone()),
            ..Claims::default()
        };
        identity.keys().sign(&claims).unwrap()
    };
    let (expired_1h, expired_49h) = (expired(1), expired(49));

    let spoofed = json!({"X-Roles": "admin", "X-User-Id": "root", "X-Tenant-Id": "t", "X-Service-Roles": "service",
                         "X-Identity-Status": "Confirmed", "X-Is-Admin-Project": "True", "X-Service-Catalog": "[]"});
    let with = |extra: Value| {
        let mut h = spoofed.as_object().unwrap().clone();
        h.extend(extra.as_object().unwrap().clone());
        json!({"headers": h})
    };
    let cases = vec![
        with(json!({"X-Auth-Token": project})),
        with(json!({"X-Auth-Token": domain})),
        with(json!({"X-Auth-Token": system})),
        with(json!({"X-Storage-Token": project})),
        with(json!({"X-Auth-Token": project, "X-Service-Token": service})),
        with(json!({"X-Auth-Token": project, "X-Service-Token": project})),
        // allow_expired: only with a service token that has the service role, and only
        // within the window.
        with(json!({"X-Auth-Token": expired_1h})),
        with(json!({"X-Auth-Token": expired_1h, "X-Service-Token": service})),
        with(json!({"X-Auth-Token": expired_1h, "X-Service-Token": project})),
        with(json!({"X-Auth-Token": expired_49h, "X-Service-Token": service})),
        with(json!({"X-Auth-Token": "not-a-token"})),
        with(json!({})),
    ];

    let mut differences = Vec::new();
    for delay in [false, true] {
        let python = common::python();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/keystonemiddleware_headers.py"
        );
        let input = serde_json::to_vec(&cases).unwrap();
        let args = (
            auth_url.clone(),
            "nova".to_owned(),
            "nova-pw".to_owned(),
            delay.to_string(),
        );
        let output = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut child = std::process::Command::new(python)
                .args([script, &args.0, &args.1, &args.2, &args.3])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run python");
            child.stdin.take().unwrap().write_all(&input).unwrap();
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap();
        assert!(
            output.status.success(),
            "keystonemiddleware run failed (is keystonemiddleware installed? run `bash tests/run.sh`):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let theirs: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
        if !delay {
            // The real one, against the embedded /v3 (`?allow_expired=1`), lets the
            // expired token through only with the service token, within the window.
            let statuses: Vec<&Value> = theirs[6..10].iter().map(|t| &t["status"]).collect();
            assert_eq!(
                statuses,
                [&json!(401), &json!(200), &json!(401), &json!(401)]
            );
        }

        let layer = RequireTokenLayer::new(
            RequireTokenConfig::new(
                if delay {
                    AuthMode::Delay
                } else {
                    AuthMode::Required
                },
                "http://gw/v3",
            ),
            Arc::new(TokenCache::default()),
            Arc::new(Chain::new().push(identity.clone())),
        );
        let svc = layer.layer(Echo);
        for (i, (case, theirs)) in cases.iter().zip(&theirs).enumerate() {
            let mut b = Request::builder().uri("/compute/servers");
            for (k, v) in case["headers"].as_object().unwrap() {
                b = b.header(k.as_str(), v.as_str().unwrap());
            }
            let resp = svc
                .clone()
                .oneshot(b.body(Bytes::new()).unwrap())
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let www = resp
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned());
            let content_type = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = serde_json::from_slice(resp.body()).unwrap();
            if json!(status) != theirs["status"] {
                differences.push(format!(
                    "delay={delay} case {i}: status ours {status} theirs {}",
                    theirs["status"]
                ));
                continue;
            }
            if status == 200 {
                let (ours, theirs) = (identity_headers(&body), identity_headers(&theirs["body"]));
                if ours != theirs {
                    differences.push(format!(
                        "delay={delay} case {i}: headers\n ours   {}\n theirs {}",
                        Value::Object(ours),
                        Value::Object(theirs)
                    ));
                }
            } else {
                if json!(www) != theirs["www_authenticate"]
                    || body != theirs["body"]
                    || json!(content_type) != theirs["content_type"]
                {
                    differences.push(format!("delay={delay} case {i}: rejection ours {www:?} {content_type:?} {body} theirs {} {} {}", theirs["www_authenticate"], theirs["content_type"], theirs["body"]));
                }
            }
        }
    }
    server.abort();
    assert!(
        differences.is_empty(),
        "RequireToken differs from keystonemiddleware:\n{}",
        differences.join("\n")
    );
}
