//! The embedded identity: issues Keystone JWS tokens from the store, validates them
//! (signature, expiry, revocation, and the user, scope and roles as they are now), and
//! revokes them by audit id.
//!
//! Revocation across instances: the instance that revokes adds the audit id to its own
//! set at once; every instance reads the revocation table every `revocation_poll`
//! ([`Identity::spawn_revocation_poller`]), so others stop accepting the token within
//! that interval. (Tokens validated before that may still be served from a
//! RequireToken cache until its entry ends, as with keystonemiddleware.)

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use quartet_policies::auth::{
    time, IdName, InvalidReason, Scope, Service, TokenInfo, User as TokenUser, ValidateError,
    Validator,
};

use crate::error::StoreError;
use crate::jws::{new_audit_id, Claims, KeyRepository};
use crate::store::{Store, Target};

/// How a password user is named in a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserRef {
    Id(String),
    Name { name: String, domain: DomainRef },
}

/// How a domain is named in a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainRef {
    Id(String),
    Name(String),
}

/// How a project is named in a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProjectRef {
    Id(String),
    Name { name: String, domain: DomainRef },
}

/// The scope a token is asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ScopeRequest {
    #[default]
    Unscoped,
    Project(ProjectRef),
    Domain(DomainRef),
    System,
}

/// How the caller proves who they are.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Password {
        user: UserRef,
        password: String,
    },
    /// Re-scoping an existing token.
    Token(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Password { user, .. } => f
                .debug_struct("Password")
                .field("user", user)
                .finish_non_exhaustive(),
            Credential::Token(_) => f.write_str("Token(..)"),
        }
    }
}

/// Why a token could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong password, unknown or disabled user, no role on the scope, bad token: 401.
    #[error("authentication failed")]
    Unauthorized,
    #[error("identity store failed")]
    Store(#[from] StoreError),
    #[error("this key repository has no private key to sign with")]
    CannotSign,
    #[error("identity backend unavailable")]
    Unavailable(#[source] ValidateError),
}

/// A token just issued: the token itself (for `X-Subject-Token`) and its facts.
#[derive(Clone)]
pub struct Issued {
    pub token: String,
    pub info: TokenInfo,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// The embedded identity.
pub struct Identity {
    store: Store,
    keys: KeyRepository,
    catalog: RwLock<Arc<Vec<Service>>>,
    expiration: Duration,
    /// Keystone's `[token] allow_expired_window`: how long past its expiry a token is
    /// still confirmed when `allow_expired` is asked for.
    allow_expired_window: Duration,
    revoked: RwLock<HashSet<String>>,
    /// The newest `revoked_at` read from the table (microseconds).
    cursor: Mutex<i64>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("keys", &self.keys)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

/// Keystone's default `[token] allow_expired_window`: 48 hours.
pub const DEFAULT_ALLOW_EXPIRED_WINDOW: Duration = Duration::from_secs(48 * 3600);

fn unavailable(err: StoreError) -> ValidateError {
    ValidateError::unavailable(err)
}

impl Identity {
    /// An identity over a store and keys; `catalog` is what tokens list (the gateway's
    /// REST routes as services and endpoints).
    pub fn new(
        store: Store,
        keys: KeyRepository,
        expiration: Duration,
        catalog: Vec<Service>,
    ) -> Self {
        Self {
            store,
            keys,
            catalog: RwLock::new(Arc::new(catalog)),
            expiration,
            allow_expired_window: DEFAULT_ALLOW_EXPIRED_WINDOW,
            revoked: RwLock::new(HashSet::new()),
            cursor: Mutex::new(0),
        }
    }

    /// Sets Keystone's `[token] allow_expired_window` (default 48 h).
    pub fn with_allow_expired_window(mut self, window: Duration) -> Self {
        self.allow_expired_window = window;
        self
    }

    pub fn allow_expired_window(&self) -> Duration {
        self.allow_expired_window
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn keys(&self) -> &KeyRepository {
        &self.keys
    }

    /// Replaces the catalog (the config was reloaded).
    pub fn set_catalog(&self, catalog: Vec<Service>) {
        *self.catalog.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(catalog);
    }

    pub fn catalog(&self) -> Arc<Vec<Service>> {
        self.catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn resolve_domain(&self, domain: &DomainRef) -> Result<crate::store::Domain, StoreError> {
        match domain {
            DomainRef::Id(id) => self.store.domain(id).await,
            DomainRef::Name(name) => self.store.domain_by_name(name).await,
        }
    }

    /// `POST /v3/auth/tokens`: checks the credential and issues a token for the scope.
    pub async fn authenticate(
        &self,
        credential: &Credential,
        scope: &ScopeRequest,
    ) -> Result<Issued, AuthError> {
        let now = SystemTime::now();
        let now_secs = time::epoch_secs(now);
        let (user_id, methods, audit_ids, exp) = match credential {
            Credential::Password { user, password } => {
                let user = match user {
                    UserRef::Id(id) => self.store.user(id).await,
                    UserRef::Name { name, domain } => match self.resolve_domain(domain).await {
                        Ok(domain) => self.store.user_by_name(&domain.id, name).await,
                        Err(e) => Err(e),
                    },
                };
                let user = match user {
                    Ok(user) => user,
                    Err(e) if e.is_not_found() => {
                        self.store.check_no_password(password).await?;
                        return Err(AuthError::Unauthorized);
                    }
                    Err(e) => return Err(e.into()),
                };
                if !user.enabled || !self.store.check_password(&user.id, password).await? {
                    return Err(AuthError::Unauthorized);
                }
                let exp = now_secs + self.expiration.as_secs();
                (
                    user.id,
                    vec!["password".to_owned()],
                    vec![new_audit_id()],
                    exp,
                )
            }
            Credential::Token(token) => {
                let old = match self.validate_token(token).await {
                    Ok(info) => info,
                    Err(ValidateError::Invalid(_)) => return Err(AuthError::Unauthorized),
                    Err(err @ ValidateError::Unavailable(_)) => {
                        return Err(AuthError::Unavailable(err))
                    }
                };
                let mut methods = vec!["token".to_owned()];
                methods.extend(old.methods.iter().filter(|m| *m != "token").cloned());
                let parent = old.audit_ids.last().cloned().unwrap_or_default();
                // A re-scoped token never outlives the one it came from.
                let exp = time::epoch_secs(old.expires_at);
                (old.user.id, methods, vec![new_audit_id(), parent], exp)
            }
        };
        let mut claims = Claims {
            sub: user_id,
            iat: now_secs,
            exp,
            openstack_methods: methods,
            openstack_audit_ids: audit_ids,
            ..Claims::default()
        };
        match scope {
            ScopeRequest::Unscoped => {}
            ScopeRequest::System => claims.openstack_system = Some("all".to_owned()),
            ScopeRequest::Domain(domain) => match self.resolve_domain(domain).await {
                Ok(d) => claims.openstack_domain_id = Some(d.id),
                Err(e) if e.is_not_found() => return Err(AuthError::Unauthorized),
                Err(e) => return Err(e.into()),
            },
            ScopeRequest::Project(project) => {
                let found = match project {
                    ProjectRef::Id(id) => self.store.project(id).await,
                    ProjectRef::Name { name, domain } => match self.resolve_domain(domain).await {
                        Ok(d) => self.store.project_by_name(&d.id, name).await,
                        Err(e) => Err(e),
                    },
                };
                match found {
                    Ok(p) => claims.openstack_project_id = Some(p.id),
                    Err(e) if e.is_not_found() => return Err(AuthError::Unauthorized),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        // Build the token's facts the way validation will (no role on the scope: 401).
        let info = match self.complete(&claims).await {
            Ok(info) => info,
            Err(ValidateError::Invalid(_)) => return Err(AuthError::Unauthorized),
            Err(err @ ValidateError::Unavailable(_)) => return Err(AuthError::Unavailable(err)),
        };
        let token = self.keys.sign(&claims).ok_or(AuthError::CannotSign)?;
        Ok(Issued { token, info })
    }

    /// Validates a token this identity issued (or any ES256 token signed by one of its
    /// public keys): signature, expiry, revocation, then the user, scope and roles as the
    /// store has them now.
    pub async fn validate_token(&self, token: &str) -> Result<TokenInfo, ValidateError> {
        self.validate_within(token, Duration::ZERO).await
    }

    /// As [`validate_token`](Self::validate_token), for Keystone's `allow_expired`: a
    /// token up to `allow_expired_window` past its expiry is still confirmed (with its
    /// real `expires_at`), as Keystone's `validate_token(window_seconds=...)` does.
    pub async fn validate_token_allow_expired(
        &self,
        token: &str,
    ) -> Result<TokenInfo, ValidateError> {
        self.validate_within(token, self.allow_expired_window).await
    }

    async fn validate_within(
        &self,
        token: &str,
        window: Duration,
    ) -> Result<TokenInfo, ValidateError> {
        let claims = self.keys.verify_signature(token)?;
        // Keystone: valid while now < expires_at + window.
        let until = SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_secs(claims.exp))
            .and_then(|exp| exp.checked_add(window));
        if until.is_some_and(|until| until <= SystemTime::now()) {
            return Err(InvalidReason::Expired.into());
        }
        if self.is_revoked(&claims) {
            return Err(InvalidReason::Revoked.into());
        }
        self.complete(&claims).await
    }

    fn is_revoked(&self, claims: &Claims) -> bool {
        let revoked = self.revoked.read().unwrap_or_else(|p| p.into_inner());
        claims
            .openstack_audit_ids
            .first()
            .is_some_and(|id| revoked.contains(id))
    }

    /// The token's facts from its claims and the store.
    async fn complete(&self, claims: &Claims) -> Result<TokenInfo, ValidateError> {
        let not_found = |e: StoreError| {
            if e.is_not_found() {
                ValidateError::Invalid(InvalidReason::NotFound)
            } else {
                unavailable(e)
            }
        };
        let user = self.store.user(&claims.sub).await.map_err(not_found)?;
        if !user.enabled {
            return Err(InvalidReason::NotFound.into());
        }
        let user_domain = self
            .store
            .domain(&user.domain_id)
            .await
            .map_err(not_found)?;
        let (scope, target) = if let Some(id) = &claims.openstack_project_id {
            let project = self.store.project(id).await.map_err(not_found)?;
            let domain = self
                .store
                .domain(&project.domain_id)
                .await
                .map_err(not_found)?;
            if !project.enabled || !domain.enabled {
                return Err(InvalidReason::NotFound.into());
            }
            (
                Scope::Project {
                    id: project.id.clone(),
                    name: project.name,
                    domain: IdName::new(domain.id, domain.name),
                    is_domain: false,
                },
                Some(Target::Project(project.id)),
            )
        } else if let Some(id) = &claims.openstack_domain_id {
            let domain = self.store.domain(id).await.map_err(not_found)?;
            if !domain.enabled {
                return Err(InvalidReason::NotFound.into());
            }
            (
                Scope::Domain(IdName::new(domain.id.clone(), domain.name)),
                Some(Target::Domain(domain.id)),
            )
        } else if claims.openstack_system.as_deref() == Some("all") {
            (Scope::System, Some(Target::System))
        } else {
            (Scope::Unscoped, None)
        };
        let roles = match &target {
            Some(target) => {
                let roles = self
                    .store
                    .roles(&user.id, target)
                    .await
                    .map_err(unavailable)?;
                if roles.is_empty() {
                    return Err(InvalidReason::NotFound.into());
                }
                roles
                    .into_iter()
                    .map(|r| IdName::new(r.id, r.name))
                    .collect()
            }
            None => Vec::new(),
        };
        let catalog = match scope {
            Scope::Unscoped => Vec::new(),
            _ => self.catalog().as_ref().clone(),
        };
        Ok(TokenInfo {
            user: TokenUser {
                id: user.id,
                name: user.name,
                domain: IdName::new(user_domain.id, user_domain.name),
            },
            scope,
            roles,
            catalog,
            methods: claims.openstack_methods.clone(),
            audit_ids: claims.openstack_audit_ids.clone(),
            issued_at: time::from_epoch_secs(claims.iat),
            expires_at: time::from_epoch_secs(claims.exp),
            is_admin_project: true,
            forward_headers: Default::default(),
        })
    }

    /// `DELETE /v3/auth/tokens`: revokes a token by its audit id; effective on this
    /// instance at once, on others at their next poll.
    pub async fn revoke(&self, info: &TokenInfo) -> Result<(), StoreError> {
        let Some(audit_id) = info.audit_ids.first() else {
            return Ok(());
        };
        self.store
            .revoke(audit_id, Some(&info.user.id), Some(info.expires_at))
            .await?;
        self.revoked
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(audit_id.clone());
        Ok(())
    }

    /// Reads revocations written since the last read (by any instance); returns how many
    /// were new.
    pub async fn refresh_revocations(&self) -> Result<usize, StoreError> {
        let since = *self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        let events = self.store.revocations_since(since).await?;
        let mut added = 0;
        let mut newest = since;
        {
            let mut revoked = self.revoked.write().unwrap_or_else(|p| p.into_inner());
            for event in events {
                newest = newest.max(event.revoked_at);
                if revoked.insert(event.audit_id) {
                    added += 1;
                }
            }
        }
        // `>=` on the next read: events written in the same microsecond are not missed.
        *self.cursor.lock().unwrap_or_else(|p| p.into_inner()) = newest;
        Ok(added)
    }

    /// Polls the revocation table every `interval` until the returned handle is aborted
    /// (or the identity dropped).
    pub fn spawn_revocation_poller(
        self: &Arc<Self>,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(identity) = weak.upgrade() else {
                    return;
                };
                if let Err(error) = identity.refresh_revocations().await {
                    tracing::warn!(%error, "cannot read revocations");
                }
            }
        })
    }
}

impl Validator for Identity {
    fn validate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenInfo, ValidateError>> {
        Box::pin(self.validate_token(token))
    }

    fn validate_allow_expired<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<TokenInfo, ValidateError>> {
        Box::pin(self.validate_token_allow_expired(token))
    }
}
