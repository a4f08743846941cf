//! The `RequireToken` middleware: keystonemiddleware's `auth_token` as a tower layer.
//!
//! For every request, in keystonemiddleware's order (`AuthProtocol.process_request`):
//!
//! 1. Remove every identity header the client sent ([`REMOVED_HEADERS`]).
//! 2. A service token (`X-Service-Token`) is validated first; it counts only when it
//!    carries one of the service roles (default `service`).
//! 3. The user token (`X-Auth-Token`, else `X-Storage-Token`) is validated, through the
//!    cache, then the validators in order. When the service token passed the role check,
//!    an expired user token is still accepted within the backend's `allow_expired`
//!    window ([`Validator::validate_allow_expired`]), so a service can finish a long
//!    operation it started for a user whose token has since expired.
//! 4. `X-Identity-Status` (and `X-Service-Identity-Status` when a service token came) is
//!    set. Without a valid user token (or with an invalid service token) the request is
//!    refused with 401 and `WWW-Authenticate`, unless the mode is `delay`, where it goes on
//!    marked `Invalid` and the service decides.
//! 5. A backend that cannot answer (and no cached answer) gives 503 in `required` mode
//!    and an `Invalid` mark in `delay` mode, as keystonemiddleware does.
//! 6. For a valid user token the user headers and `X-Service-Catalog` are set; for a
//!    valid service token the `X-Service-*` headers. The validated tokens travel on in the
//!    request's extensions as [`Identity`], for the access rules.
//!
//! On the way back, `WWW-Authenticate` is added to any 401 the service answers.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Extensions, Request, Response, StatusCode};
use tower::{Layer, Service};

use super::cache::TokenCache;
use super::headers::{self, REMOVED_HEADERS};
use super::token::TokenInfo;
use super::validator::{ValidateError, Validator};
use crate::head::AddedHeaders;

/// What a route asks of its callers (`auth = "required" | "delay" | "none"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Refuse requests without a valid token (401), or when the backend is down (503).
    #[default]
    Required,
    /// Let every request through, marked `X-Identity-Status: Confirmed | Invalid`
    /// (keystonemiddleware's `delay_auth_decision`).
    Delay,
    /// No token checks; spoofed identity headers are still removed.
    None,
}

/// The validated tokens of a request, put in its extensions.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    pub user: Option<Arc<TokenInfo>>,
    pub service: Option<Arc<TokenInfo>>,
}

/// What RequireToken decided about one request's headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Forward the request (its headers have been rewritten).
    Forward,
    /// Answer 401.
    Unauthorized,
    /// Answer 503: the identity backend could not answer.
    Unavailable,
}

/// Settings of the middleware, keystonemiddleware's option names in comments.
#[derive(Clone)]
pub struct RequireTokenConfig {
    pub mode: AuthMode,
    /// `www_authenticate_uri`: where clients get tokens.
    pub www_authenticate_uri: String,
    /// `include_service_catalog` (default true).
    pub include_service_catalog: bool,
    /// `service_token_roles` (default `["service"]`).
    pub service_token_roles: Vec<String>,
    /// `service_token_roles_required` (default true since keystonemiddleware 13).
    pub service_token_roles_required: bool,
}

impl RequireTokenConfig {
    pub fn new(mode: AuthMode, www_authenticate_uri: impl Into<String>) -> Self {
        Self {
            mode,
            www_authenticate_uri: www_authenticate_uri.into(),
            include_service_catalog: true,
            service_token_roles: vec!["service".to_owned()],
            service_token_roles_required: true,
        }
    }
}

struct Shared {
    config: RequireTokenConfig,
    www_authenticate: Option<HeaderValue>,
    cache: Arc<TokenCache>,
    validator: Arc<dyn Validator>,
}

/// The layer: configuration, the shared cache, and the validators.
#[derive(Clone)]
pub struct RequireTokenLayer {
    shared: Arc<Shared>,
}

impl RequireTokenLayer {
    pub fn new(
        config: RequireTokenConfig,
        cache: Arc<TokenCache>,
        validator: Arc<dyn Validator>,
    ) -> Self {
        let www_authenticate = headers::www_authenticate(&config.www_authenticate_uri);
        Self {
            shared: Arc::new(Shared {
                config,
                www_authenticate,
                cache,
                validator,
            }),
        }
    }

    /// Runs steps 1 to 6 on a request's headers: the decision, without a service behind.
    /// The user token's headers are not inserted into `headers`: they go into `extensions`
    /// as [`AddedHeaders`], which the sender must honour ([`crate::head`]).
    pub async fn decide(
        &self,
        headers: &mut HeaderMap,
        extensions: &mut Extensions,
    ) -> (Decision, Identity) {
        decide(&self.shared, headers, extensions).await
    }

    /// [`decide`](Self::decide) when it needs no validator (no service token, and the
    /// user token's answer is in the token cache: the common case), without a future;
    /// `None` when a validator must be asked: then call `decide` with the same headers.
    pub fn decide_cached(
        &self,
        headers: &mut HeaderMap,
        extensions: &mut Extensions,
    ) -> Option<(Decision, Identity)> {
        decide_cached(&self.shared, headers, extensions)
    }
}

impl<S> Layer<S> for RequireTokenLayer {
    type Service = RequireToken<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireToken {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The middleware in front of a service.
#[derive(Clone)]
pub struct RequireToken<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B, RB> Service<Request<B>> for RequireToken<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    RB: From<Bytes> + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<RB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let shared = self.shared.clone();
        // The clone that was polled ready serves this request (tower's clone-swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let (decision, identity) =
                decide(&shared, &mut parts.headers, &mut parts.extensions).await;
            match decision {
                Decision::Forward => {
                    // The service behind may be anything: the headers go in the map.
                    AddedHeaders::apply_from(&mut parts.extensions, &mut parts.headers);
                    parts.extensions.insert(identity);
                    let request = Request::from_parts(parts, body);
                    let mut response = inner.call(request).await?;
                    if response.status() == StatusCode::UNAUTHORIZED {
                        if let Some(value) = &shared.www_authenticate {
                            response
                                .headers_mut()
                                .append(WWW_AUTHENTICATE, value.clone());
                        }
                    }
                    Ok(response)
                }
                Decision::Unauthorized => Ok(reject(&shared, StatusCode::UNAUTHORIZED)),
                Decision::Unavailable => Ok(reject(&shared, StatusCode::SERVICE_UNAVAILABLE)),
            }
        })
    }
}

/// The 401 or 503 answer, with keystonemiddleware's body and headers.
fn reject<RB: From<Bytes>>(shared: &Shared, status: StatusCode) -> Response<RB> {
    let body = if status == StatusCode::UNAUTHORIZED {
        headers::UNAUTHORIZED_BODY
    } else {
        headers::UNAVAILABLE_BODY
    };
    let mut response = Response::new(RB::from(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(headers::ERROR_CONTENT_TYPE),
    );
    if status == StatusCode::UNAUTHORIZED {
        if let Some(value) = &shared.www_authenticate {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, value.clone());
        }
    }
    response
}

enum Check {
    Valid(Arc<TokenInfo>),
    Invalid,
    Unavailable,
}

async fn check(shared: &Shared, token: &str, allow_expired: bool) -> Check {
    let validator = shared.validator.clone();
    let outcome = if allow_expired {
        shared
            .cache
            .get_or_validate_allow_expired(token, validator)
            .await
    } else {
        shared.cache.get_or_validate(token, validator).await
    };
    match outcome {
        Ok(info) => Check::Valid(info),
        Err(ValidateError::Invalid(reason)) => {
            tracing::debug!(%reason, "token refused");
            Check::Invalid
        }
        Err(ValidateError::Unavailable(source)) => {
            tracing::warn!(error = %source, "identity backend unavailable");
            Check::Unavailable
        }
    }
}

/// The decision when the cache alone gives it, with nothing to wait for: no service
/// token, and the user token (if any) answered by the cache. `None`: a validator must be
/// asked ([`decide`] does). Either way the spoofed headers have been removed.
fn decide_cached(
    shared: &Shared,
    headers: &mut HeaderMap,
    extensions: &mut Extensions,
) -> Option<(Decision, Identity)> {
    // One pass finds the spoofed headers and the tokens; the spoofed ones go before any
    // return.
    let found = headers::scan(headers);
    let cached = if shared.config.mode == AuthMode::None {
        Some(None)
    } else if found.service {
        None
    } else {
        match found.user {
            None => Some(None),
            Some(token) => match shared.cache.cached_raw(token) {
                None => None,
                Some(Ok(info)) => Some(Some(info)),
                Some(Err(ValidateError::Invalid(reason))) => {
                    tracing::debug!(%reason, "token refused");
                    Some(None)
                }
                // Never cached; ask the validator.
                Some(Err(ValidateError::Unavailable(_))) => None,
            },
        }
    };
    headers::remove(headers, found.spoofed);
    debug_assert!(REMOVED_HEADERS.iter().all(|h| !headers.contains_key(*h)));
    if shared.config.mode == AuthMode::None {
        return Some((Decision::Forward, Identity::default()));
    }
    let identity = Identity {
        user: cached?,
        service: None,
    };
    Some(finish(shared, headers, extensions, identity, None))
}

async fn decide(
    shared: &Shared,
    headers: &mut HeaderMap,
    extensions: &mut Extensions,
) -> (Decision, Identity) {
    if let Some(decided) = decide_cached(shared, headers, extensions) {
        return decided;
    }
    // The headers are borrowed (not copied) while the validators are asked.
    match validate(shared, headers).await {
        Ok((identity, service_valid)) => {
            finish(shared, headers, extensions, identity, service_valid)
        }
        Err(decision) => (decision, Identity::default()),
    }
}

/// Steps 2 and 3: the tokens of `headers` validated. `Ok` with the valid tokens and, when
/// a service token came, whether it counts; `Err(Unavailable)` when the answer is 503.
async fn validate(
    shared: &Shared,
    headers: &HeaderMap,
) -> Result<(Identity, Option<bool>), Decision> {
    let config = &shared.config;
    let delay = config.mode == AuthMode::Delay;
    let mut identity = Identity::default();
    let mut service_valid = None;
    let mut allow_expired = false;
    if let Some(token) = headers::service_token(headers) {
        match check(shared, token, false).await {
            Check::Valid(info) => {
                let passed = config
                    .service_token_roles
                    .iter()
                    .any(|wanted| info.role_names().any(|r| r == wanted));
                let valid = passed || !config.service_token_roles_required;
                if valid {
                    identity.service = Some(info);
                }
                service_valid = Some(valid);
                // keystonemiddleware: allow_expired always requires the role check,
                // even when `service_token_roles_required` is false.
                allow_expired = passed;
            }
            Check::Invalid => service_valid = Some(false),
            Check::Unavailable if delay => service_valid = Some(false),
            Check::Unavailable => return Err(Decision::Unavailable),
        }
    }
    if let Some(token) = headers::user_token(headers) {
        match check(shared, token, allow_expired).await {
            Check::Valid(info) => identity.user = Some(info),
            Check::Invalid => {}
            Check::Unavailable if delay => {}
            Check::Unavailable => return Err(Decision::Unavailable),
        }
    }
    Ok((identity, service_valid))
}

/// Steps 4 and 6: the status headers, the refusal, or the headers of the valid tokens.
fn finish(
    shared: &Shared,
    headers: &mut HeaderMap,
    extensions: &mut Extensions,
    identity: Identity,
    service_valid: Option<bool>,
) -> (Decision, Identity) {
    let config = &shared.config;
    let delay = config.mode == AuthMode::Delay;
    // A valid user token's status is `Confirmed` (whatever the service token's), and
    // comes with its headers' block below.
    if identity.user.is_none() {
        headers::set_identity_status(headers, false);
    }
    if let Some(valid) = service_valid {
        headers::set_service_identity_status(headers, valid);
    }
    let confirmed = identity.user.is_some() && service_valid != Some(false);
    if !confirmed && !delay {
        return (Decision::Unauthorized, Identity::default());
    }
    if let Some(user) = &identity.user {
        // `user` is the cache's unchanging token: its headers are built once, as a block
        // the request points at.
        let added = AddedHeaders::new(user.clone(), usize::from(config.include_service_catalog));
        if identity.service.is_some() {
            // The service headers below overwrite some of the user's (keystonemiddleware
            // sets `OpenStack-System-Scope` for either): keep its order, in the map.
            added.apply(headers);
        } else {
            extensions.insert(added);
        }
    }
    if let Some(service) = &identity.service {
        headers::set_service_headers(headers, service);
    }
    (Decision::Forward, identity)
}
