//! Quartet's embedded identity: a Keystone-compatible token service.
//!
//! - [`store::Store`]: domains, projects, users (Argon2id password hashes), roles, role
//!   assignments and revocation events in SQL (SQLite, PostgreSQL, MySQL/MariaDB, one set
//!   of portable migrations applied on start).
//! - [`bootstrap::bootstrap`]: `keystone-manage bootstrap` for that store.
//! - [`jws::KeyRepository`]: Keystone's JWS tokens (ES256) and key layout.
//! - [`Identity`]: issue, validate and revoke tokens; a
//!   [`quartet_policies::auth::Validator`] for the RequireToken middleware.
//! - [`api::IdentityApi`]: the Keystone v3 token API as a tower `Service` over
//!   `http::Request<Bytes>` (no web framework here; the gateway mounts it at `/v3`).
//! - [`config::IdentityConfig`]: the `[identity]` config section.

pub mod api;
pub mod bootstrap;
pub mod config;
pub mod error;
mod identity;
pub mod jws;
pub mod remote;
pub mod store;

pub use api::IdentityApi;
pub use config::{ConfigError, IdentityConfig, Mode};
pub use error::{KeyError, StoreError};
pub use identity::{
    AuthError, Credential, DomainRef, Identity, Issued, ProjectRef, ScopeRequest, UserRef,
};
pub use remote::{JwsPrefilter, RemoteError, RemoteKeystone};

/// Why the embedded identity could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("invalid identity config")]
    Config(#[from] ConfigError),
    #[error("cannot open the identity store")]
    Store(#[from] StoreError),
    #[error("cannot open the jws key repository")]
    Keys(#[from] KeyError),
}

/// Opens the embedded identity from its config: connects and migrates the store, opens
/// (or creates) the key repository, reads the revocations recorded so far. Bootstrapping
/// an empty store is the caller's choice ([`bootstrap::bootstrap`]).
pub async fn open(
    config: &IdentityConfig,
    catalog: Vec<quartet_policies::auth::Service>,
) -> Result<std::sync::Arc<Identity>, OpenError> {
    config.validate()?;
    let store = store::Store::connect(&config.database).await?;
    let keys = jws::KeyRepository::open_or_create(&config.key_repository)?;
    let identity = Identity::new(store, keys, config.token_expiration, catalog)
        .with_allow_expired_window(config.allow_expired_window);
    identity.refresh_revocations().await?;
    Ok(std::sync::Arc::new(identity))
}
