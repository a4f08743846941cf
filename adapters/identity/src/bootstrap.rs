//! `keystone-manage bootstrap`, for the embedded store: the `Default` domain (id
//! `default`), the roles admin, manager, member, reader and service (admin implies
//! manager implies member implies reader, as Keystone's bootstrap sets up), the user
//! `admin` and project `admin`, and admin granted `admin` on that project and on the
//! system. Running it again changes nothing, except the password when one is given.

use crate::error::StoreError;
use crate::store::{Store, Target};

/// The roles bootstrap creates.
pub const ROLES: [&str; 5] = ["admin", "manager", "member", "reader", "service"];

/// What bootstrap did.
#[derive(Clone, PartialEq, Eq)]
pub struct Bootstrapped {
    pub admin_user_id: String,
    pub admin_project_id: String,
    /// The admin password when bootstrap generated it (print it once, never log it).
    pub generated_password: Option<String>,
    /// Whether the admin user was created by this run.
    pub created: bool,
}

impl std::fmt::Debug for Bootstrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bootstrapped")
            .field("admin_user_id", &self.admin_user_id)
            .field("admin_project_id", &self.admin_project_id)
            .field(
                "generated_password",
                &self.generated_password.as_ref().map(|_| "***"),
            )
            .field("created", &self.created)
            .finish()
    }
}

/// A random password: 24 characters from [A-Za-z0-9].
pub fn generate_password() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 24)
}

async fn ensure<T, F>(found: Result<T, StoreError>, create: F) -> Result<T, StoreError>
where
    F: std::future::Future<Output = Result<T, StoreError>>,
{
    match found {
        Ok(v) => Ok(v),
        Err(e) if e.is_not_found() => create.await,
        Err(e) => Err(e),
    }
}

/// Bootstraps the store. `password`: the admin password (set even if admin exists);
/// `None` generates one for a new admin and leaves an existing admin's alone.
pub async fn bootstrap(store: &Store, password: Option<&str>) -> Result<Bootstrapped, StoreError> {
    let domain = ensure(
        store.domain("default").await,
        store.create_domain(Some("default"), "Default"),
    )
    .await?;
    let mut roles = Vec::new();
    for name in ROLES {
        roles.push(
            ensure(
                store.role_by_name(name).await,
                store.create_role(None, name),
            )
            .await?,
        );
    }
    // admin -> manager -> member -> reader
    store.imply_role(&roles[0].id, &roles[1].id).await?;
    store.imply_role(&roles[1].id, &roles[2].id).await?;
    store.imply_role(&roles[2].id, &roles[3].id).await?;
    let project = ensure(
        store.project_by_name(&domain.id, "admin").await,
        store.create_project(None, "admin", &domain.id),
    )
    .await?;
    let (user, created, generated) = match store.user_by_name(&domain.id, "admin").await {
        Ok(user) => {
            if let Some(p) = password {
                store.set_password(&user.id, p).await?;
            }
            (user, false, None)
        }
        Err(e) if e.is_not_found() => {
            let generated = password.is_none().then(generate_password);
            let p = password.or(generated.as_deref());
            (
                store.create_user(None, "admin", &domain.id, p).await?,
                true,
                generated,
            )
        }
        Err(e) => return Err(e),
    };
    store
        .grant(&user.id, &Target::Project(project.id.clone()), &roles[0].id)
        .await?;
    store.grant(&user.id, &Target::System, &roles[0].id).await?;
    Ok(Bootstrapped {
        admin_user_id: user.id,
        admin_project_id: project.id,
        generated_password: generated,
        created,
    })
}

/// The environment variable the gateway reads the first admin password from.
pub const ADMIN_PASSWORD_ENV: &str = "QUARTET_ADMIN_PASSWORD";

/// Bootstraps the store only when it holds no user (a first start). `None` when it
/// already had users. Instances starting together on one shared database may race:
/// the one that loses sees the other's rows and finishes without creating anything.
pub async fn bootstrap_if_empty(
    store: &Store,
    password: Option<&str>,
) -> Result<Option<Bootstrapped>, StoreError> {
    if !store.is_empty().await? {
        return Ok(None);
    }
    // Each conflict means the other instance created one more of the rows `bootstrap`
    // makes (the domain, the roles, the project, the user), so at most that many.
    let most = ROLES.len() + 3;
    let mut attempt = 0;
    loop {
        match bootstrap(store, password).await {
            Ok(done) => return Ok(Some(done)),
            // Another instance created a row first: run again over what it made.
            Err(e) if e.is_conflict() && attempt < most => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}
