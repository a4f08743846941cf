//! A real Keystone (the `keystone` package from PyPI, SQLite, gunicorn), once with the
//! Fernet and once with the JWS provider: Quartet validates its tokens remotely
//! (Fernet), offline with its public key and then remotely for the facts (JWS), refuses
//! a tampered one without asking, and a token signed by Quartet with Keystone's shared
//! key is accepted by Keystone itself.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use quartet_identity::config::RemoteKeystone as RemoteConfig;
use quartet_identity::jws::{new_audit_id, Claims, KeyRepository};
use quartet_identity::{JwsPrefilter, RemoteKeystone};
use quartet_policies::auth::{time, InvalidReason, Scope, Validator};
use serde_json::{json, Value};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An HTTP client as a tower service over `Request<Bytes>`, counting its calls.
#[derive(Clone)]
struct Http {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    calls: Arc<AtomicUsize>,
}

impl Http {
    fn new() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl tower::Service<Request<Bytes>> for Http {
    type Response = Response<Bytes>;
    type Error = BoxError;
    type Future = futures_util::future::BoxFuture<'static, Result<Response<Bytes>, BoxError>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let client = self.client.clone();
        Box::pin(async move {
            let response = client.request(req.map(Full::new)).await?;
            let (parts, body) = response.into_parts();
            Ok(Response::from_parts(
                parts,
                body.collect().await?.to_bytes(),
            ))
        })
    }
}

struct Keystone {
    url: String,
    dir: std::path::PathBuf,
    child: tokio::process::Child,
}

impl Drop for Keystone {
    /// SIGTERM lets gunicorn's master stop its workers (SIGKILL would orphan them).
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
            for _ in 0..50 {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

async fn start_keystone(root: &Path, provider: &str, password: &str) -> Keystone {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = root.join(provider);
    let python = common::python();
    let venv = python
        .parent()
        .and_then(Path::parent)
        .expect("venv dir")
        .to_owned();
    assert!(
        venv.join("bin/keystone-manage").exists(),
        "keystone is not installed in {} : run `bash tests/run.sh` (it installs keystone and gunicorn)",
        venv.display()
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/keystone_server.sh"
    );
    let log = std::fs::File::create(root.join(format!("{provider}.out"))).unwrap();
    let child = tokio::process::Command::new("bash")
        .arg(script)
        .arg(&venv)
        .arg(&dir)
        .arg(port.to_string())
        .arg(provider)
        .arg(password)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start keystone");
    let url = format!("http://127.0.0.1:{port}/v3");
    let http = Http::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        let req = Request::get(&url).body(Bytes::new()).unwrap();
        if let Ok(r) = tower::ServiceExt::oneshot(http.clone(), req).await {
            if r.status() == StatusCode::OK {
                break;
            }
        }
        if tokio::time::Instant::now() > deadline {
            let out =
                std::fs::read_to_string(root.join(format!("{provider}.out"))).unwrap_or_default();
            panic!("keystone ({provider}) did not come up at {url}:\n{out}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Keystone { url, dir, child }
}

async fn issue(http: &Http, url: &str, password: &str) -> (String, Value) {
    let body = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}});
    let req = Request::post(format!("{url}/auth/tokens"))
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_string()))
        .unwrap();
    let resp = tower::ServiceExt::oneshot(http.clone(), req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let token = resp.headers()["x-subject-token"]
        .to_str()
        .unwrap()
        .to_owned();
    (token, serde_json::from_slice(resp.body()).unwrap())
}

fn remote(http: &Http, url: &str, password: &str) -> RemoteKeystone<Http> {
    RemoteKeystone::new(
        http.clone(),
        RemoteConfig {
            url: url.to_owned(),
            username: "admin".into(),
            password: password.into(),
            user_domain_name: "Default".into(),
            project_name: Some("admin".into()),
            project_domain_name: "Default".into(),
            jws_public_key_repository: None,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validates_a_real_keystones_tokens() {
    let root = tempfile::tempdir().unwrap();
    let password = "keystone-admin-pw";
    let (fernet, jws) = tokio::join!(
        start_keystone(root.path(), "fernet", password),
        start_keystone(root.path(), "jws", password)
    );

    // Fernet: only the remote Keystone can tell.
    let http = Http::new();
    let (token, body) = issue(&http, &fernet.url, password).await;
    assert!(token.starts_with("gAAAAA"), "a fernet token");
    let validator = remote(&http, &fernet.url, password);
    let info = validator
        .validate(&token)
        .await
        .expect("fernet token validated remotely");
    assert_eq!(info.user.name, "admin");
    assert_eq!(info.user.id, body["token"]["user"]["id"].as_str().unwrap());
    assert!(matches!(&info.scope, Scope::Project { name, .. } if name == "admin"));
    assert!(info.has_role("admin") && info.has_role("reader"));
    assert!(info.catalog.iter().any(|s| s.kind == "identity"));
    let garbage = format!("{}x", &token[..token.len() - 4]);
    assert_eq!(
        validator.validate(&garbage).await.unwrap_err().reason(),
        Some(InvalidReason::NotFound)
    );

    // JWS: checked offline with Keystone's public key, then completed remotely.
    let http = Http::new();
    let (token, body) = issue(&http, &jws.url, password).await;
    let public =
        KeyRepository::open(&root.path().join("absent"), &jws.dir.join("jws/public")).unwrap();
    let claims = public
        .verify(&token, SystemTime::now())
        .expect("offline verification");
    assert_eq!(claims.sub, body["token"]["user"]["id"].as_str().unwrap());
    assert_eq!(
        claims.openstack_project_id.as_deref(),
        body["token"]["project"]["id"].as_str()
    );
    let prefilter = JwsPrefilter::new(public.clone(), remote(&http, &jws.url, password));
    let info = prefilter
        .validate(&token)
        .await
        .expect("jws token validated");
    assert_eq!(info.user.name, "admin");
    let calls = http.calls();
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged = claims.clone();
    forged.sub = "0000".into();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap()),
        parts[2]
    );
    assert_eq!(
        prefilter.validate(&tampered).await.unwrap_err().reason(),
        Some(InvalidReason::BadSignature)
    );
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    assert_eq!(
        prefilter.validate(&none).await.unwrap_err().reason(),
        Some(InvalidReason::BadSignature)
    );
    assert_eq!(
        http.calls(),
        calls,
        "forgeries refused without asking Keystone"
    );

    // A shared key: Quartet signs with Keystone's private key, Keystone accepts the token.
    let shared =
        KeyRepository::open(&jws.dir.join("jws/private"), &jws.dir.join("jws/public")).unwrap();
    let now = time::epoch_secs(SystemTime::now());
    let ours = shared
        .sign(&Claims {
            sub: claims.sub.clone(),
            iat: now,
            exp: now + 600,
            openstack_methods: vec!["password".into()],
            openstack_audit_ids: vec![new_audit_id()],
            openstack_project_id: claims.openstack_project_id.clone(),
            ..Claims::default()
        })
        .unwrap();
    let req = Request::get(format!("{}/auth/tokens", jws.url))
        .header("x-auth-token", &token)
        .header("x-subject-token", &ours)
        .body(Bytes::new())
        .unwrap();
    let resp = tower::ServiceExt::oneshot(http.clone(), req).await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "keystone refused a token signed by Quartet with its key: {:?}",
        resp.body()
    );
    let validated: Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(validated["token"]["user"]["name"], "admin");

    // allow_expired (keystonemiddleware with a valid service token): Keystone confirms
    // an expired token with `?allow_expired=1` within its `[token] allow_expired_window`
    // (48 h by default), and refuses it without.
    let expired = |hours_ago: u64| {
        let now = time::epoch_secs(SystemTime::now());
        shared
            .sign(&Claims {
                sub: claims.sub.clone(),
                iat: now - (hours_ago + 1) * 3600,
                exp: now - hours_ago * 3600,
                openstack_methods: vec!["password".into()],
                openstack_audit_ids: vec![new_audit_id()],
                openstack_project_id: claims.openstack_project_id.clone(),
                ..Claims::default()
            })
            .unwrap()
    };
    let (recent, old) = (expired(1), expired(49));
    let keystone = remote(&http, &jws.url, password);
    assert_eq!(
        keystone.validate(&recent).await.unwrap_err().reason(),
        Some(InvalidReason::NotFound),
        "keystone refuses an expired token without allow_expired"
    );
    let info = keystone
        .validate_allow_expired(&recent)
        .await
        .expect("keystone confirms an expired token with allow_expired=1");
    assert_eq!(info.user.name, "admin");
    assert!(
        info.is_expired(SystemTime::now()),
        "the token's real expires_at"
    );
    assert_eq!(
        keystone
            .validate_allow_expired(&old)
            .await
            .unwrap_err()
            .reason(),
        Some(InvalidReason::NotFound),
        "beyond keystone's allow_expired_window"
    );
    // The offline JWS check: expiry refused without asking Keystone, unless allow_expired,
    // where only the signature is checked here and Keystone applies its window.
    let calls = http.calls();
    assert_eq!(
        prefilter.validate(&recent).await.unwrap_err().reason(),
        Some(InvalidReason::Expired)
    );
    assert_eq!(http.calls(), calls, "refused offline");
    let info = prefilter
        .validate_allow_expired(&recent)
        .await
        .expect("jws prefilter + keystone with allow_expired");
    assert_eq!(info.user.id, claims.sub);
    assert_eq!(
        prefilter
            .validate_allow_expired(&old)
            .await
            .unwrap_err()
            .reason(),
        Some(InvalidReason::NotFound)
    );
    assert_eq!(
        prefilter
            .validate_allow_expired(&tampered)
            .await
            .unwrap_err()
            .reason(),
        Some(InvalidReason::BadSignature),
        "allow_expired never skips the signature"
    );
}
