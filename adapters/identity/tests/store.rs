//! The identity store and the token lifecycle on the three databases: SQLite (a temp
//! file), PostgreSQL and MariaDB (a fresh database per run on the local servers).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TempDb;
use quartet_identity::bootstrap::bootstrap;
use quartet_identity::jws::KeyRepository;
use quartet_identity::store::{HashCost, Store, Target};
use quartet_identity::{
    AuthError, Credential, DomainRef, Identity, ProjectRef, ScopeRequest, UserRef,
};
use quartet_policies::auth::{InvalidReason, Scope, Validator};

async fn suite(url: &str) {
    let store = Store::connect_with(url, HashCost::CHEAP)
        .await
        .expect("connect");
    store.migrate().await.expect("migrating twice is a no-op");
    assert!(store.is_empty().await.unwrap());

    let boot = bootstrap(&store, Some("s3cret")).await.unwrap();
    assert!(boot.created && boot.generated_password.is_none());
    let again = bootstrap(&store, None).await.unwrap();
    assert!(!again.created, "bootstrap is idempotent");
    assert_eq!(again.admin_user_id, boot.admin_user_id);
    assert!(!store.is_empty().await.unwrap());

    let default = store.domain("default").await.unwrap();
    assert_eq!(default.name, "Default");
    let admin = store.user_by_name("default", "admin").await.unwrap();
    assert!(store.check_password(&admin.id, "s3cret").await.unwrap());
    assert!(!store.check_password(&admin.id, "wrong").await.unwrap());
    let project = store.project_by_name("default", "admin").await.unwrap();
    let names: Vec<String> = store
        .roles(&admin.id, &Target::Project(project.id.clone()))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(
        names,
        ["admin", "manager", "member", "reader"],
        "implied roles"
    );
    assert!(!store
        .roles(&admin.id, &Target::System)
        .await
        .unwrap()
        .is_empty());

    // Users, projects, grants, conflicts.
    let demo_project = store.create_project(None, "demo", "default").await.unwrap();
    let demo = store
        .create_user(None, "demo", "default", Some("pw"))
        .await
        .unwrap();
    assert!(store
        .create_user(None, "demo", "default", None)
        .await
        .unwrap_err()
        .is_conflict());
    assert!(store.user("nope").await.unwrap_err().is_not_found());
    let member = store.role_by_name("member").await.unwrap();
    let target = Target::Project(demo_project.id.clone());
    store.grant(&demo.id, &target, &member.id).await.unwrap();
    store.grant(&demo.id, &target, &member.id).await.unwrap();
    let names: Vec<String> = store
        .roles(&demo.id, &target)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["member", "reader"]);
    let other = store.create_domain(None, "Other").await.unwrap();
    store
        .create_user(None, "demo", &other.id, None)
        .await
        .unwrap();
    assert!(!store
        .check_password(&store.user_by_name(&other.id, "demo").await.unwrap().id, "")
        .await
        .unwrap());

    // Tokens: two instances over the same database, sharing keys.
    let keys = KeyRepository::generate();
    let a = Arc::new(Identity::new(
        store.clone(),
        keys.clone(),
        Duration::from_secs(3600),
        vec![],
    ));
    let b_store = Store::connect_with(url, HashCost::CHEAP).await.unwrap();
    let b = Arc::new(Identity::new(
        b_store.clone(),
        keys,
        Duration::from_secs(3600),
        vec![],
    ));

    let password = |user: UserRef, pw: &str| Credential::Password {
        user,
        password: pw.into(),
    };
    let issued = a
        .authenticate(
            &password(
                UserRef::Name {
                    name: "demo".into(),
                    domain: DomainRef::Name("Default".into()),
                },
                "pw",
            ),
            &ScopeRequest::Project(ProjectRef::Name {
                name: "demo".into(),
                domain: DomainRef::Id("default".into()),
            }),
        )
        .await
        .unwrap();
    assert_eq!(issued.info.project_id(), Some(demo_project.id.as_str()));
    assert_eq!(
        issued.info.role_names().collect::<Vec<_>>(),
        ["member", "reader"]
    );
    let on_b = b.validate(&issued.token).await.unwrap();
    assert_eq!(on_b, issued.info);

    assert!(matches!(
        a.authenticate(
            &password(UserRef::Id(demo.id.clone()), "bad"),
            &ScopeRequest::Unscoped
        )
        .await,
        Err(AuthError::Unauthorized)
    ));
    assert!(
        matches!(
            a.authenticate(
                &password(UserRef::Id(demo.id.clone()), "pw"),
                &ScopeRequest::Project(ProjectRef::Id(project.id.clone()))
            )
            .await,
            Err(AuthError::Unauthorized)
        ),
        "no role on the admin project"
    );
    assert!(matches!(
        a.authenticate(
            &password(UserRef::Id(demo.id.clone()), "pw"),
            &ScopeRequest::System
        )
        .await,
        Err(AuthError::Unauthorized)
    ));
    let unscoped = a
        .authenticate(
            &password(UserRef::Id(demo.id.clone()), "pw"),
            &ScopeRequest::Unscoped,
        )
        .await
        .unwrap();
    assert_eq!(unscoped.info.scope, Scope::Unscoped);
    assert!(unscoped.info.roles.is_empty());
    let system = a
        .authenticate(
            &password(UserRef::Id(admin.id.clone()), "s3cret"),
            &ScopeRequest::System,
        )
        .await
        .unwrap();
    assert_eq!(system.info.scope, Scope::System);
    let domain = a
        .authenticate(
            &password(UserRef::Id(admin.id.clone()), "s3cret"),
            &ScopeRequest::Domain(DomainRef::Id("default".into())),
        )
        .await;
    assert!(
        matches!(domain, Err(AuthError::Unauthorized)),
        "admin has no role on the domain"
    );
    store
        .grant(&admin.id, &Target::Domain("default".into()), &member.id)
        .await
        .unwrap();
    let domain = a
        .authenticate(
            &password(UserRef::Id(admin.id.clone()), "s3cret"),
            &ScopeRequest::Domain(DomainRef::Name("Default".into())),
        )
        .await
        .unwrap();
    assert!(matches!(domain.info.scope, Scope::Domain(_)));

    // Re-scoping with the token method keeps the user and the expiry, chains audit ids.
    let rescoped = a
        .authenticate(
            &Credential::Token(unscoped.token.clone()),
            &ScopeRequest::Project(ProjectRef::Id(demo_project.id.clone())),
        )
        .await
        .unwrap();
    assert_eq!(rescoped.info.user.id, demo.id);
    assert_eq!(rescoped.info.methods, ["token", "password"]);
    assert_eq!(rescoped.info.audit_ids[1], unscoped.info.audit_ids[0]);
    assert_eq!(rescoped.info.expires_at, unscoped.info.expires_at);

    // Revocation: at once on the instance that revokes, on the other after its poll.
    a.revoke(&issued.info).await.unwrap();
    assert_eq!(
        a.validate(&issued.token).await.unwrap_err().reason(),
        Some(InvalidReason::Revoked)
    );
    assert!(
        b.validate(&issued.token).await.is_ok(),
        "b has not polled yet"
    );
    let poller = b.spawn_revocation_poller(Duration::from_millis(20));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.validate(&issued.token).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never saw the revocation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    poller.abort();
    assert!(store.is_revoked(&issued.info.audit_ids[0]).await.unwrap());
    assert!(
        b.validate(&rescoped.token).await.is_ok(),
        "other tokens still valid"
    );

    // A disabled user's tokens stop validating; roles removed likewise.
    store.set_user_enabled(&demo.id, false).await.unwrap();
    assert_eq!(
        a.validate(&rescoped.token).await.unwrap_err().reason(),
        Some(InvalidReason::NotFound)
    );
    store.set_user_enabled(&demo.id, true).await.unwrap();
    store
        .revoke_grant(&demo.id, &target, &member.id)
        .await
        .unwrap();
    assert!(a.validate(&rescoped.token).await.is_err());
    assert_eq!(
        store
            .purge_revocations(std::time::SystemTime::now() + Duration::from_secs(7200))
            .await
            .unwrap(),
        1
    );

    b_store.close().await;
    store.close().await;
}

#[tokio::test]
async fn sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = TempDb::sqlite(&dir).await;
    suite(&db.url).await;
    assert!(
        dir.path().join("identity.db").exists(),
        "the file was created"
    );
}

#[tokio::test]
async fn postgres() {
    let db = TempDb::create(common::POSTGRES, "PostgreSQL").await;
    suite(&db.url).await;
    db.drop_db().await;
}

#[tokio::test]
async fn mariadb() {
    let db = TempDb::create(common::MARIADB, "MariaDB").await;
    suite(&db.url).await;
    db.drop_db().await;
}

#[tokio::test]
async fn first_start_bootstraps_once_even_when_racing() {
    let dir = tempfile::tempdir().unwrap();
    let db = TempDb::sqlite(&dir).await;
    let a = Store::connect_with(&db.url, HashCost::CHEAP).await.unwrap();
    let b = Store::connect_with(&db.url, HashCost::CHEAP).await.unwrap();
    let (ra, rb) = tokio::join!(
        quartet_identity::bootstrap::bootstrap_if_empty(&a, None),
        quartet_identity::bootstrap::bootstrap_if_empty(&b, None)
    );
    let outcomes = [ra.unwrap(), rb.unwrap()];
    let created: Vec<_> = outcomes.iter().flatten().filter(|o| o.created).collect();
    assert_eq!(created.len(), 1, "exactly one instance created the admin");
    let password = created[0]
        .generated_password
        .clone()
        .expect("a generated password");
    assert_eq!(password.len(), 24);
    let admin = a.user_by_name("default", "admin").await.unwrap();
    assert!(a.check_password(&admin.id, &password).await.unwrap());
    assert!(
        quartet_identity::bootstrap::bootstrap_if_empty(&a, Some("x"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        a.check_password(&admin.id, &password).await.unwrap(),
        "not bootstrapped again"
    );
}

#[tokio::test]
async fn unknown_users_cost_a_password_check() {
    let dir = tempfile::tempdir().unwrap();
    let db = TempDb::sqlite(&dir).await;
    let store = Store::connect_with(
        &db.url,
        HashCost {
            memory_kib: 8 * 1024,
            iterations: 3,
            parallelism: 1,
        },
    )
    .await
    .unwrap();
    assert!(!store.check_no_password("anything").await.unwrap());
    bootstrap(&store, Some("pw")).await.unwrap();
    let identity = Identity::new(
        store,
        KeyRepository::generate(),
        Duration::from_secs(60),
        vec![],
    );
    let attempt = |name: &str| Credential::Password {
        user: UserRef::Name {
            name: name.into(),
            domain: DomainRef::Id("default".into()),
        },
        password: "wrong".into(),
    };
    let time = |name: &'static str| {
        let identity = &identity;
        async move {
            let start = std::time::Instant::now();
            for _ in 0..3 {
                assert!(identity
                    .authenticate(&attempt(name), &ScopeRequest::Unscoped)
                    .await
                    .is_err());
            }
            start.elapsed()
        }
    };
    let (known, unknown) = (time("admin").await, time("nobody").await);
    assert!(
        unknown * 3 > known,
        "unknown {unknown:?} vs known {known:?}: no early answer"
    );
}
