//! Validators for tokens a real Keystone issued:
//!
//! - [`RemoteKeystone`]: `GET /v3/auth/tokens` with `X-Subject-Token`, authenticated with
//!   the gateway's own service token (obtained with the configured service user, renewed
//!   before it expires), as keystonemiddleware does (`_identity.py`). 404 means invalid;
//!   a rejected service token is renewed and the call made once more; anything else
//!   means the backend is unavailable. The HTTP client is any tower service, so the
//!   gateway puts its policy stack (timeout, retry, breaker) in front of Keystone.
//! - [`JwsPrefilter`]: checks Keystone JWS tokens offline with Keystone's public keys
//!   first (signature, `alg`, expiry) and only asks the inner validator (the remote
//!   Keystone, for roles, names and revocation) about tokens that pass; non-JWS tokens
//!   (Fernet) go straight to the inner validator.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use quartet_policies::auth::body::BodyError;
use quartet_policies::auth::{InvalidReason, TokenInfo, ValidateError, Validator};
use serde_json::json;
use tower::{Service, ServiceExt};

use crate::config::RemoteKeystone as RemoteConfig;
use crate::jws::KeyRepository;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the remote Keystone could not answer.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("keystone request failed")]
    Transport(#[source] BoxError),
    #[error("keystone answered {0}")]
    Status(StatusCode),
    #[error("keystone sent an unreadable token body")]
    Body(#[source] BodyError),
    #[error("keystone sent a token body that is not json")]
    Json(#[source] serde_json::Error),
    #[error("keystone sent no usable X-Subject-Token")]
    NoSubjectToken,
    #[error("invalid keystone url")]
    Url(#[source] http::Error),
}

/// Renew the service token this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(120);

struct ServiceToken {
    token: String,
    expires_at: SystemTime,
}

/// Validates tokens with a remote Keystone.
pub struct RemoteKeystone<S> {
    client: S,
    config: RemoteConfig,
    base: String,
    include_catalog: bool,
    service_token: tokio::sync::Mutex<Option<Arc<ServiceToken>>>,
}

impl<S> std::fmt::Debug for RemoteKeystone<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeystone")
            .field("url", &self.base)
            .field("username", &self.config.username)
            .finish_non_exhaustive()
    }
}

impl<S, E> RemoteKeystone<S>
where
    S: Service<Request<Bytes>, Response = Response<Bytes>, Error = E>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    E: Into<BoxError> + 'static,
{
    pub fn new(client: S, config: RemoteConfig) -> Self {
        let base = config.url.trim_end_matches('/').to_owned();
        Self {
            client,
            config,
            base,
            include_catalog: true,
            service_token: tokio::sync::Mutex::new(None),
        }
    }

    /// keystonemiddleware's `include_service_catalog` (default true).
    pub fn include_catalog(mut self, include: bool) -> Self {
        self.include_catalog = include;
        self
    }

    async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, RemoteError> {
        self.client
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| RemoteError::Transport(e.into()))
    }

    /// The gateway's own token, obtained or renewed when needed.
    async fn service_token(&self, renew: bool) -> Result<Arc<ServiceToken>, RemoteError> {
        let mut slot = self.service_token.lock().await;
        if let Some(current) = slot.as_ref() {
            let fresh = current
                .expires_at
                .duration_since(SystemTime::now())
                .is_ok_and(|left| left > RENEW_BEFORE);
            if fresh && !renew {
                return Ok(current.clone());
            }
        }
        let c = &self.config;
        let mut auth = json!({"identity": {"methods": ["password"], "password": {"user": {
            "name": c.username, "password": c.password, "domain": {"name": c.user_domain_name}}}}});
        if let Some(project) = &c.project_name {
            auth["scope"] =
                json!({"project": {"name": project, "domain": {"name": c.project_domain_name}}});
        }
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/auth/tokens?nocatalog", self.base))
            .header("content-type", "application/json")
            .body(Bytes::from(json!({ "auth": auth }).to_string()))
            .map_err(RemoteError::Url)?;
        let response = self.send(request).await?;
        if response.status() != StatusCode::CREATED {
            return Err(RemoteError::Status(response.status()));
        }
        let token = response
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .ok_or(RemoteError::NoSubjectToken)?
            .to_owned();
        let body = serde_json::from_slice(response.body()).map_err(RemoteError::Json)?;
        let info = TokenInfo::from_keystone_body(&body).map_err(RemoteError::Body)?;
        let fresh = Arc::new(ServiceToken {
            token,
            expires_at: info.expires_at,
        });
        *slot = Some(fresh.clone());
        Ok(fresh)
    }

    async fn fetch(
        &self,
        service: &str,
        token: &str,
        allow_expired: bool,
    ) -> Result<Response<Bytes>, RemoteError> {
        // python-keystoneclient's `get_token_data`: the flags joined with `&`.
        let query = match (self.include_catalog, allow_expired) {
            (true, false) => "",
            (false, false) => "?nocatalog",
            (true, true) => "?allow_expired=1",
            (false, true) => "?nocatalog&allow_expired=1",
        };
        let request = Request::builder()
            .method(Method::GET)
            .uri(format!("{}/auth/tokens{query}", self.base))
            .header("x-auth-token", service)
            .header("x-subject-token", token)
            .header("openstack-identity-access-rules", "1")
            .body(Bytes::new())
            .map_err(RemoteError::Url)?;
        self.send(request).await
    }

    /// One validation, as keystonemiddleware's `verify_token`. With `allow_expired`,
    /// Keystone is asked with `?allow_expired=1` (it then confirms tokens up to its
    /// `[token] allow_expired_window` past expiry) and the answer's expiry is not checked
    /// here, as keystonemiddleware's `_validate_token(allow_expired=True)`.
    pub async fn validate_remote(
        &self,
        token: &str,
        allow_expired: bool,
    ) -> Result<TokenInfo, ValidateError> {
        if http::HeaderValue::from_str(token).is_err() {
            return Err(InvalidReason::Malformed.into());
        }
        let unavailable = ValidateError::unavailable;
        let service = self.service_token(false).await.map_err(unavailable)?;
        let mut response = self
            .fetch(&service.token, token, allow_expired)
            .await
            .map_err(unavailable)?;
        if response.status() == StatusCode::UNAUTHORIZED {
            // Our own token was refused (expired, revoked): renew it once.
            let service = self.service_token(true).await.map_err(unavailable)?;
            response = self
                .fetch(&service.token, token, allow_expired)
                .await
                .map_err(unavailable)?;
        }
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Err(InvalidReason::NotFound.into()),
            status => return Err(unavailable(RemoteError::Status(status))),
        }
        let body = serde_json::from_slice(response.body())
            .map_err(|e| unavailable(RemoteError::Json(e)))?;
        let info =
            TokenInfo::from_keystone_body(&body).map_err(|e| unavailable(RemoteError::Body(e)))?;
        if !allow_expired && info.is_expired(SystemTime::now()) {
            return Err(InvalidReason::Expired.into());
        }
        Ok(info)
    }
}

impl<S, E> Validator for RemoteKeystone<S>
where
    S: Service<Request<Bytes>, Response = Response<Bytes>, Error = E>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    E: Into<BoxError> + 'static,
{
    fn validate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenInfo, ValidateError>> {
        Box::pin(self.validate_remote(token, false))
    }

    fn validate_allow_expired<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<TokenInfo, ValidateError>> {
        Box::pin(self.validate_remote(token, true))
    }
}

/// Offline checks of Keystone JWS tokens before the inner validator is asked.
#[derive(Debug)]
pub struct JwsPrefilter<V> {
    keys: KeyRepository,
    inner: V,
}

impl<V> JwsPrefilter<V> {
    /// `keys`: Keystone's `jws_public_key_repository` (every key is tried).
    pub fn new(keys: KeyRepository, inner: V) -> Self {
        Self { keys, inner }
    }
}

impl<V: Validator> JwsPrefilter<V> {
    async fn check(&self, token: &str, allow_expired: bool) -> Result<TokenInfo, ValidateError> {
        let ask = |token| {
            if allow_expired {
                self.inner.validate_allow_expired(token)
            } else {
                self.inner.validate(token)
            }
        };
        // With allow_expired only the signature is checked offline: how far past its
        // expiry a token may be is Keystone's `allow_expired_window`, which it applies.
        let verified = if allow_expired {
            self.keys.verify_signature(token)
        } else {
            self.keys.verify(token, SystemTime::now())
        };
        match verified {
            Ok(claims) => {
                let info = ask(token).await?;
                // The remote answer must be about the token we checked.
                if info.user.id != claims.sub {
                    return Err(InvalidReason::Malformed.into());
                }
                Ok(info)
            }
            Err(InvalidReason::Unrecognized) => ask(token).await,
            Err(reason) => Err(reason.into()),
        }
    }
}

impl<V: Validator> Validator for JwsPrefilter<V> {
    fn validate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenInfo, ValidateError>> {
        Box::pin(self.check(token, false))
    }

    fn validate_allow_expired<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<TokenInfo, ValidateError>> {
        Box::pin(self.check(token, true))
    }
}
