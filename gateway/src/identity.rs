//! The identity channel, wired: `[identity]` validation and its environment override, the
//! running identity (store opened and migrated, bootstrapped when empty, revocations
//! polled), the per-route token check and access rule, `/v3` on the public listener, and
//! the admin API's identity check. The libraries are `quartet_policies::{auth, access}`
//! and `quartet_identity`; this module only assembles them.
//!
//! Where a route's guard sits: in front of the route's policy stack (see `stack.rs`), so a
//! request without a valid token, or one its access rule denies, never reaches the
//! upstream and never counts as an upstream failure (breaker, retry budget, metrics).
//!
//! Responses: the guard answers 401, 503 and 403 itself, with keystonemiddleware's bodies
//! (`quartet_policies::auth::headers::{UNAUTHORIZED_BODY, UNAVAILABLE_BODY}`) and
//! Keystone's 403 body, the same shape as the edge in `error.rs` writes. They are
//! decisions, not errors, so they do not go through the edge.

pub mod cli;

use crate::config::{invalid, Config, Invalid, KeyPath};
use crate::stack::{RestService, Shared};
use axum::body::Body;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use quartet_http::ProxyBody;
use quartet_identity::{Identity, IdentityApi, IdentityConfig, Mode};
use quartet_policies::access::{AuthorizeLayer, Rule, Rules, Target};
use quartet_policies::auth::{
    headers, AuthMode, Decision, Endpoint, RequireTokenConfig, RequireTokenLayer, Service,
    TokenCache, Validator,
};
use quartet_policies::BoxError;
use std::sync::Arc;
use tower::ServiceExt;

/// Overrides `identity.database`.
pub const DATABASE_VAR: &str = "QUARTET_IDENTITY_DATABASE";

/// Applies [`DATABASE_VAR`] (only when `[identity]` is configured).
pub fn apply_env(
    config: &mut Config,
    env: &impl Fn(&str) -> Option<String>,
    applied: &mut Vec<crate::config::Override>,
) {
    let Some(identity) = config.identity.as_mut() else {
        return;
    };
    if let Some(url) = env(DATABASE_VAR).filter(|v| !v.trim().is_empty()) {
        let url = url.trim().to_string();
        applied.push(crate::config::Override {
            var: DATABASE_VAR.to_string(),
            key: "identity.database".to_string(),
            value: crate::config::redact_url(&url),
        });
        identity.database = url;
    }
}

/// The auth mode of a route: its own, else `required` with `[identity]`, else `none`.
pub fn route_mode(config: &Config, route: &crate::config::RouteConfig) -> AuthMode {
    route.auth.unwrap_or(if config.identity.is_some() {
        AuthMode::Required
    } else {
        AuthMode::None
    })
}

/// Loads `identity.policy_file` (no file: no named rules).
pub fn load_rules(identity: &IdentityConfig) -> Result<Rules, String> {
    match &identity.policy_file {
        None => Ok(Rules::new()),
        Some(path) => Rules::load(path).map_err(|e| crate::error::Chain(&e).to_string()),
    }
}

/// Parses a route's `access`: the expression and the name the 403 message gives.
fn parse_access(text: &str) -> Result<Rule, String> {
    Rule::parse(text).map_err(|e| e.to_string())
}

/// The `[identity]` section and the routes' `auth` and `access` keys.
pub fn validate(config: &Config) -> Result<(), Invalid> {
    let rules = match &config.identity {
        Some(identity) => {
            identity
                .validate()
                .map_err(|e| invalid(KeyPath::root("identity").dotted(e.key), e.problem))?;
            Some(
                load_rules(identity)
                    .map_err(|m| invalid(KeyPath::root("identity").key("policy_file"), m))?,
            )
        }
        None => None,
    };
    for (i, route) in config.routes.iter().enumerate() {
        let path = KeyPath::root("routes").index(i);
        let mode = route_mode(config, route);
        if rules.is_none() && mode != AuthMode::None {
            return Err(invalid(
                path.key("auth"),
                "needs an [identity] section (no token can be checked without one)",
            ));
        }
        let Some(access) = &route.access else {
            continue;
        };
        let Some(rules) = &rules else {
            return Err(invalid(path.key("access"), "needs an [identity] section"));
        };
        if mode == AuthMode::None {
            return Err(invalid(
                path.key("access"),
                "needs auth = \"required\" or \"delay\" (access rules read the token)",
            ));
        }
        parse_access(access).map_err(|m| invalid(path.clone().key("access"), m))?;
        if let Some(name) = access.trim().strip_prefix("rule:") {
            if rules.get(name.trim()).is_none() {
                return Err(invalid(
                    path.key("access"),
                    format!("no rule named {:?} in identity.policy_file", name.trim()),
                ));
            }
        }
    }
    Ok(())
}

/// Why the identity channel could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the embedded identity")]
    Open(#[from] quartet_identity::OpenError),
    #[error("cannot bootstrap the identity store")]
    Bootstrap(#[source] quartet_identity::StoreError),
    #[error("cannot open identity.keystone.jws_public_key_repository")]
    Keys(#[source] quartet_identity::KeyError),
    #[error("cannot build the client of identity.keystone.url")]
    Client(#[source] quartet_http::error::BuildError),
}

/// The identity channel while the process runs (kept across reloads: one store, one
/// token cache, one revocation poller).
pub struct Runtime {
    pub config: IdentityConfig,
    /// The embedded identity (`mode = "embedded"`).
    pub embedded: Option<Arc<Identity>>,
    pub api: Option<IdentityApi>,
    /// The one token cache of the app: every route and the admin API share it.
    pub cache: Arc<TokenCache>,
    pub validator: Arc<dyn Validator>,
    poller: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(p) = &self.poller {
            p.abort();
        }
    }
}

/// The catalog the embedded identity lists: each REST route as a service, with a public
/// endpoint on the public listener (`identity.public_url`'s origin, else `server.listen`).
pub fn catalog(config: &Config) -> Vec<Service> {
    let base = public_origin(config);
    config
        .routes
        .iter()
        .map(|r| {
            let prefix = crate::config::normalize_prefix(&r.prefix);
            let name = prefix.trim_start_matches('/');
            let name = if name.is_empty() { &r.upstream } else { name };
            Service {
                id: format!("quartet-{}", name.replace('/', "-")),
                kind: name.to_string(),
                name: Some(name.to_string()),
                endpoints: vec![Endpoint {
                    id: format!("quartet-{}-public", name.replace('/', "-")),
                    interface: "public".to_string(),
                    region: Some("RegionOne".to_string()),
                    url: format!("{base}{prefix}"),
                }],
            }
        })
        .collect()
}

fn public_origin(config: &Config) -> String {
    if let Some(url) = config.identity.as_ref().and_then(|i| i.public_url.as_ref()) {
        let url = url.trim_end_matches('/');
        return url.strip_suffix("/v3").unwrap_or(url).to_string();
    }
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{}", config.server.listen)
}

/// Starts the identity channel of `config` into `shared` (nothing without `[identity]`).
pub async fn start(shared: &mut Shared, config: &Config) -> Result<(), StartError> {
    let Some(cfg) = &config.identity else {
        return Ok(());
    };
    let cache = Arc::new(TokenCache::new(cfg.cache.clone()));
    let runtime = match cfg.mode {
        Mode::Embedded => {
            let identity = quartet_identity::open(cfg, catalog(config)).await?;
            let password = std::env::var(quartet_identity::bootstrap::ADMIN_PASSWORD_ENV)
                .ok()
                .filter(|p| !p.is_empty());
            let done = quartet_identity::bootstrap::bootstrap_if_empty(
                identity.store(),
                password.as_deref(),
            )
            .await
            .map_err(StartError::Bootstrap)?;
            if let Some(done) = done {
                tracing::info!(admin_user_id = %done.admin_user_id, admin_project_id = %done.admin_project_id, "identity store was empty: bootstrapped");
                if let Some(generated) = &done.generated_password {
                    // Printed once on stdout, never logged.
                    println!(
                        "quartet: identity bootstrapped; admin password (shown once): {generated}"
                    );
                }
            }
            let poller = spawn_revocation_poller(&identity, &cache, cfg.revocation_poll);
            Runtime {
                config: cfg.clone(),
                api: Some(IdentityApi::new(identity.clone(), cfg.public_url.clone())),
                validator: identity.clone(),
                embedded: Some(identity),
                cache,
                poller: Some(poller),
            }
        }
        Mode::Keystone => {
            // validate() guarantees the section; refuse defensively rather than panic.
            let Some(remote) = cfg.keystone.clone() else {
                return Err(StartError::Open(quartet_identity::OpenError::Config(
                    quartet_identity::ConfigError {
                        key: "keystone",
                        problem: "mode = \"keystone\" needs [identity.keystone]",
                    },
                )));
            };
            let client = remote_client(&remote.url, shared)?;
            let keys = remote.jws_public_key_repository.clone();
            let keystone = quartet_identity::RemoteKeystone::new(client, remote);
            let validator: Arc<dyn Validator> = match keys {
                Some(dir) => {
                    let keys = quartet_identity::jws::KeyRepository::open(&dir, &dir)
                        .map_err(StartError::Keys)?;
                    Arc::new(quartet_identity::JwsPrefilter::new(keys, keystone))
                }
                None => Arc::new(keystone),
            };
            Runtime {
                config: cfg.clone(),
                embedded: None,
                api: None,
                cache,
                validator,
                poller: None,
            }
        }
    };
    shared.identity = Some(Arc::new(runtime));
    Ok(())
}

/// Reads the revocations other instances wrote every `interval`; when there are new ones,
/// empties the token cache, so a token revoked elsewhere is refused here within
/// `interval` even when it was cached (keystonemiddleware would keep serving it until
/// its cache entry ends). Revocations are rare; clearing the whole cache is cheap enough.
fn spawn_revocation_poller(
    identity: &Arc<Identity>,
    cache: &Arc<TokenCache>,
    interval: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    let identity = Arc::downgrade(identity);
    let cache = Arc::downgrade(cache);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (Some(identity), Some(cache)) = (identity.upgrade(), cache.upgrade()) else {
                return;
            };
            match identity.refresh_revocations().await {
                Ok(0) => {}
                Ok(added) => {
                    tracing::info!(added, "revocations read: token cache emptied");
                    cache.clear();
                }
                Err(error) => {
                    tracing::warn!(error = %crate::error::Chain(&error), "cannot read revocations")
                }
            }
        }
    })
}

type BytesService = tower::util::BoxCloneSyncService<Request<Bytes>, Response<Bytes>, BoxError>;

/// The HTTP client of the remote Keystone, behind the default policy stack (target
/// `identity:keystone`: timeouts, retry of safe calls, a breaker).
fn remote_client(url: &str, shared: &Shared) -> Result<BytesService, StartError> {
    use quartet_http::classify::{HttpClassify, HttpReplay};
    use quartet_http::endpoint::EndpointService;
    use quartet_policies::breaker::BreakerHandle;
    use quartet_policies::fault::FaultHandle;
    use quartet_policies::retry::Budget;
    let origin = match url.parse::<http::Uri>() {
        Ok(uri) => match (uri.scheme_str(), uri.authority()) {
            (Some(s), Some(a)) => format!("{s}://{a}"),
            _ => url.to_string(),
        },
        Err(_) => url.to_string(),
    };
    let bad = |message: String| {
        StartError::Client(quartet_http::error::BuildError {
            key: "endpoints".to_string(),
            message,
        })
    };
    let spec: quartet_http::spec::UpstreamSpec =
        serde_json::from_value(serde_json::json!({ "endpoints": [origin] }))
            .map_err(|e| bad(e.to_string()))?;
    let client = quartet_http::client::HttpClient::new(&spec).map_err(StartError::Client)?;
    let endpoint = EndpointService::new(&origin, client).map_err(StartError::Client)?;
    let policy = quartet_policies::spec::PolicySpec::default();
    let target = quartet_policies::Target::new("identity", "keystone");
    let breaker = BreakerHandle::new(
        target.clone(),
        &endpoint.authority(),
        policy.breaker.clone(),
        shared.metrics.clone(),
    );
    let inner = crate::stack::endpoint_stack(
        breaker,
        policy.per_try_timeout,
        HttpClassify,
        Arc::default(),
        endpoint,
    );
    let parts = crate::stack::TargetParts {
        fault: FaultHandle::new(target.clone(), None, shared.metrics.clone()),
        budget: Arc::new(Budget::new(&policy.retry)),
        target,
    };
    let stack = crate::stack::policy_stack(
        &parts,
        &policy,
        &shared.metrics,
        HttpClassify,
        HttpReplay {
            idempotent_route: false,
        },
        inner,
    );
    let svc =
        tower::service_fn(
            move |req: Request<Bytes>| -> futures_util::future::BoxFuture<
                'static,
                Result<Response<Bytes>, BoxError>,
            > {
                let stack = stack.clone();
                Box::pin(async move {
                    let (parts, body) = req.into_parts();
                    let mut req =
                        Request::from_parts(parts, quartet_http::body::full(body.clone()));
                    req.extensions_mut()
                        .insert(quartet_http::body::Buffered(body));
                    let resp = send(stack, req).await?;
                    let (parts, body) = resp.into_parts();
                    let bytes = body.collect().await?.to_bytes();
                    Ok::<_, BoxError>(Response::from_parts(parts, bytes))
                })
            },
        );
    Ok(tower::util::BoxCloneSyncService::new(svc))
}

/// A route's guard as built: RequireToken, then the access rule.
#[derive(Clone)]
pub struct Guard {
    require: Option<RequireTokenLayer>,
    authorize: Option<(AuthorizeLayer, Arc<str>)>,
    public_url: Option<String>,
}

/// Wraps a route's stack in its guard. Without `[identity]` the route is unchanged; with
/// `[identity]` but no running identity (it was added by a reload), the route answers 503
/// until a restart (fail closed).
pub fn guard(
    config: &Config,
    shared: &Shared,
    index: usize,
    service: RestService,
) -> Result<RestService, crate::stack::BuildError> {
    let Some(cfg) = &config.identity else {
        return Ok(service);
    };
    let Some(route) = config.routes.get(index) else {
        return Ok(service);
    };
    let build_err = |key: &str, message: String| crate::stack::BuildError::Identity {
        key: KeyPath::root("routes").index(index).key(key),
        message,
    };
    let mode = route_mode(config, route);
    let require = shared.identity.as_ref().map(|rt| {
        let www = rt
            .config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("{}/v3", public_origin(config)));
        RequireTokenLayer::new(
            RequireTokenConfig::new(mode, www),
            rt.cache.clone(),
            rt.validator.clone(),
        )
    });
    if require.is_none() {
        tracing::warn!(route = %route.prefix, "[identity] is not running (added by a reload?): the route answers 503 until a restart");
    }
    let authorize = match &route.access {
        None => None,
        Some(text) => {
            let rules = load_rules(cfg).map_err(|m| build_err("access", m))?;
            let rule = parse_access(text).map_err(|m| build_err("access", m))?;
            let name: Arc<str> = text
                .trim()
                .strip_prefix("rule:")
                .map(str::trim)
                .unwrap_or(text.trim())
                .into();
            // The target: no path parameters are named for REST routes, so it is empty
            // and a `%(...)s` lookup fails closed (denied).
            let target: quartet_policies::access::TargetFn = Arc::new(|_| Target::new());
            Some((
                AuthorizeLayer::new(name.clone(), rule, Arc::new(rules), target),
                name,
            ))
        }
    };
    let guard = Guard {
        require,
        authorize,
        public_url: cfg.public_url.clone(),
    };
    let svc = tower::service_fn(
        move |req: Request<ProxyBody>| -> futures_util::future::BoxFuture<
            'static,
            Result<Response<ProxyBody>, BoxError>,
        > {
            let guard = guard.clone();
            let inner = service.clone();
            Box::pin(async move { guard.call(req, inner).await })
        },
    );
    Ok(tower::util::BoxCloneSyncService::new(svc))
}

impl Guard {
    async fn call(
        &self,
        req: Request<ProxyBody>,
        inner: RestService,
    ) -> Result<Response<ProxyBody>, BoxError> {
        let www = self.www_authenticate(&req);
        let Some(require) = &self.require else {
            return Ok(reject(StatusCode::SERVICE_UNAVAILABLE, None, ""));
        };
        let (mut parts, body) = req.into_parts();
        let (decision, identity) = require.decide(&mut parts.headers).await;
        match decision {
            Decision::Forward => {}
            Decision::Unauthorized => {
                return Ok(reject(StatusCode::UNAUTHORIZED, www.as_ref(), ""))
            }
            Decision::Unavailable => return Ok(reject(StatusCode::SERVICE_UNAVAILABLE, None, "")),
        }
        parts.extensions.insert(identity);
        if let Some((authorize, name)) = &self.authorize {
            if let Err(status) = authorize.decide(&parts) {
                return Ok(reject(status, www.as_ref(), name));
            }
        }
        let mut resp = send(inner, Request::from_parts(parts, body)).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            if let Some(value) = www {
                resp.headers_mut().append(WWW_AUTHENTICATE, value);
            }
        }
        Ok(resp)
    }

    /// `Keystone uri="<public /v3 url>"`: `identity.public_url`, else the request's host.
    fn www_authenticate<B>(&self, req: &Request<B>) -> Option<HeaderValue> {
        if let Some(url) = &self.public_url {
            return headers::www_authenticate(url);
        }
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(String::from)
            })?;
        let tls = req
            .extensions()
            .get::<crate::routes::ConnInfo>()
            .is_some_and(|c| c.tls);
        let scheme = if tls { "https" } else { "http" };
        headers::www_authenticate(&format!("{scheme}://{host}/v3"))
    }
}

/// Calls a stack; a plain function so the future's type is named once (see
/// `quartet_http`'s note on boxing the future first).
fn send(
    service: RestService,
    req: Request<ProxyBody>,
) -> futures_util::future::BoxFuture<'static, Result<Response<ProxyBody>, BoxError>> {
    Box::pin(service.oneshot(req))
}

/// keystonemiddleware's 401 and 503 answers, Keystone's 403.
fn reject(status: StatusCode, www: Option<&HeaderValue>, name: &str) -> Response<ProxyBody> {
    let body: Bytes = match status {
        StatusCode::UNAUTHORIZED => Bytes::from_static(headers::UNAUTHORIZED_BODY.as_bytes()),
        StatusCode::SERVICE_UNAVAILABLE => {
            Bytes::from_static(headers::UNAVAILABLE_BODY.as_bytes())
        }
        _ => Bytes::from(
            serde_json::json!({"error": {
                "code": 403,
                "title": "Forbidden",
                "message": format!("You are not authorized to perform the requested action: {name}."),
            }})
            .to_string(),
        ),
    };
    let mut resp = Response::new(quartet_http::body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(headers::ERROR_CONTENT_TYPE),
    );
    if status == StatusCode::UNAUTHORIZED {
        if let Some(value) = www {
            resp.headers_mut().insert(WWW_AUTHENTICATE, value.clone());
        }
    }
    resp
}

/// Whether the embedded `/v3` answers this request: identity is embedded, the path is
/// under `/v3`, and no REST route claims `/v3` itself (a route whose prefix is `/v3` or
/// under it wins; a catch-all `/` route does not claim it).
pub fn serves_v3(built: &crate::stack::Built, host: Option<&str>, path: &str) -> bool {
    let Some(rt) = &built.identity else {
        return false;
    };
    if rt.api.is_none() || !crate::routes::prefix_matches("/v3", path) {
        return false;
    }
    match crate::routes::find_route(&built.rest.routes, host, path) {
        Some(route) => !crate::routes::prefix_matches("/v3", &route.prefix),
        None => true,
    }
}

/// Answers a `/v3` request with the embedded identity. A revocation (`DELETE
/// /v3/auth/tokens`) also drops the token from this instance's token cache, so the
/// instance refuses it at once.
pub async fn serve_v3(
    built: &crate::stack::Built,
    req: Request<Body>,
) -> Result<Response<Body>, BoxError> {
    let Some((rt, api)) = built
        .identity
        .as_ref()
        .and_then(|rt| rt.api.clone().map(|api| (rt, api)))
    else {
        return Err(crate::error::NoRoute.into());
    };
    let limit = usize::try_from(built.config.server.max_body_bytes).unwrap_or(usize::MAX);
    let (parts, body) = req.into_parts();
    let bytes = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| -> BoxError {
            if e.is::<http_body_util::LengthLimitError>() {
                crate::error::BodyTooLarge {
                    limit: built.config.server.max_body_bytes,
                }
                .into()
            } else {
                quartet_http::error::BodyError { source: e }.into()
            }
        })?
        .to_bytes();
    let revoking = parts.method == http::Method::DELETE
        && parts.uri.path().trim_end_matches('/') == "/v3/auth/tokens";
    let subject = parts
        .headers
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let resp = api.handle(Request::from_parts(parts, bytes)).await;
    if revoking && resp.status().is_success() {
        if let Some(token) = subject {
            rt.cache.invalidate(&token);
        }
    }
    Ok(resp.map(Body::from))
}

/// The admin API's identity check for a request that changes state: a valid
/// `X-Auth-Token` with the admin role (401 without a valid token, 403 without the role).
pub async fn admin_check(
    built: &crate::stack::Built,
    method: &http::Method,
    headers: &http::HeaderMap,
) -> Result<(), BoxError> {
    let Some(rt) = &built.identity else {
        return Ok(());
    };
    if built.config.identity.is_none() || matches!(*method, http::Method::GET | http::Method::HEAD)
    {
        return Ok(());
    }
    let Some(token) = headers::user_token(headers) else {
        return Err(crate::error::Unauthorized.into());
    };
    match rt.cache.get_or_validate(token, rt.validator.clone()).await {
        Ok(info) if info.has_role("admin") => Ok(()),
        Ok(_) => Err(crate::error::Forbidden.into()),
        Err(e) if e.is_unavailable() => Err(crate::error::IdentityUnavailable.into()),
        Err(_) => Err(crate::error::Unauthorized.into()),
    }
}

/// `/readyz`'s identity channel: whether the store answers (embedded) or the validator is
/// set up (keystone). `None` without `[identity]`.
pub async fn readiness(built: &crate::stack::Built) -> Option<(bool, serde_json::Value)> {
    let rt = built.identity.as_ref()?;
    let (ready, store) = match &rt.embedded {
        Some(identity) => {
            let ok = identity.store().is_empty().await.is_ok();
            (ok, if ok { "reachable" } else { "unreachable" })
        }
        None => (true, "remote"),
    };
    let mode = match rt.config.mode {
        Mode::Embedded => "embedded",
        Mode::Keystone => "keystone",
    };
    Some((
        ready,
        serde_json::json!({
            "state": if ready { "ready" } else { "not_ready" },
            "mode": mode,
            "store": store,
            "cached_tokens": rt.cache.len(),
        }),
    ))
}

#[cfg(test)]
mod tests;
