//! The real keystoneauth1 client (from PyPI, in the test venv) against the embedded
//! identity served over HTTP: password auth, validation as keystonemiddleware does it,
//! the catalog, `?nocatalog`, HEAD, a wrong password, and revocation.

mod common;
#[path = "common/server.rs"]
mod server;

use std::time::Duration;

use quartet_identity::bootstrap::bootstrap;
use quartet_identity::jws::KeyRepository;
use quartet_identity::store::{HashCost, Store};
use quartet_identity::{Identity, IdentityApi};
use quartet_policies::auth::{Endpoint, Service};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keystoneauth_gets_and_validates_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("identity.db").display());
    let store = Store::connect_with(&url, HashCost::CHEAP).await.unwrap();
    let boot = bootstrap(&store, None).await.unwrap();
    let password = boot.generated_password.clone().expect("generated");

    // Bind first so the catalog can name the real address.
    let identity = std::sync::Arc::new(Identity::new(
        store,
        KeyRepository::open_or_create(&dir.path().join("keys")).unwrap(),
        Duration::from_secs(3600),
        Vec::new(),
    ));
    let (addr, server) = server::serve(IdentityApi::new(identity.clone(), None)).await;
    let auth_url = format!("http://{addr}/v3");
    identity.set_catalog(vec![Service {
        id: "0e8780c4177e41e39065b01f1cfcdf8e".into(),
        kind: "identity".into(),
        name: Some("keystone".into()),
        endpoints: ["public", "internal", "admin"]
            .iter()
            .enumerate()
            .map(|(i, interface)| Endpoint {
                id: format!("e{i}"),
                interface: (*interface).into(),
                region: Some("RegionOne".into()),
                url: auth_url.clone(),
            })
            .collect(),
    }]);

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/keystoneauth_password.py"
    );
    let python = common::python();
    let auth_url_arg = auth_url.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(&auth_url_arg)
            .arg(&password)
            .output()
            .expect("run python")
    })
    .await
    .unwrap();
    server.abort();
    assert!(
        output.status.success(),
        "keystoneauth1 run failed (is keystoneauth1 installed? run `bash tests/run.sh`):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    eprintln!("{report:#}");

    assert_eq!(report["issued"]["user_id"], boot.admin_user_id.as_str());
    assert_eq!(report["issued"]["project_name"], "admin");
    assert_eq!(
        report["issued"]["roles"],
        serde_json::json!(["admin", "manager", "member", "reader"])
    );
    assert_eq!(report["issued"]["methods"], serde_json::json!(["password"]));
    assert_eq!(report["catalog_identity_url"], auth_url.as_str());
    assert_eq!(report["validate"]["status"], 200);
    assert_eq!(report["validate"]["subject_header"], true);
    assert_eq!(
        report["validate"]["project_id"],
        boot.admin_project_id.as_str()
    );
    assert_eq!(report["validate"]["project_scoped"], true);
    assert_eq!(report["validate"]["is_admin_project"], true);
    assert_eq!(report["validate_via_catalog"], 200);
    assert_eq!(report["nocatalog_has_catalog"], false);
    assert_eq!(report["head"], 200);
    assert_eq!(report["wrong_password"], 401);
    assert_eq!(report["revoke"], 204);
    assert_eq!(report["revoked_validate"], 404);
}
