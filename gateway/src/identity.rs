//! The identity channel, wired: `[identity]` validation and its environment override, the
//! running identity (store opened and migrated, bootstrapped when empty, revocations
//! polled), the guard of every handler on the public listener ([`guard`]: REST routes,
//! `/rpc`, `/native`), `/v3` on the public listener, and the admin API's identity check.
//! The libraries are `quartet_policies::{auth, access}` and `quartet_identity`; this
//! module only assembles them.
//!
//! Where a guard sits: in front of its handler's policy stack (see `stack.rs`), so a
//! request without a valid token, or one its access rule denies, never reaches the
//! backend and never counts as a backend failure (breaker, retry budget, metrics).
//!
//! Responses: a refusal is a [`Refused`] error, answered by the one edge in `error.rs`:
//! keystonemiddleware's 401 (with `WWW-Authenticate: Keystone uri="..."`) and 503
//! messages, Keystone's 403 naming the rule, all in Keystone's `{"error": {...}}` body.

pub mod cli;
pub mod guard;

pub use guard::{Guard, Guards, Refused};

use crate::config::{invalid, Config, Invalid, KeyPath};
use crate::stack::{RestService, Shared};
use axum::body::Body;
use bytes::Bytes;
use http::header::WWW_AUTHENTICATE;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use quartet_http::ProxyBody;
use quartet_identity::{Identity, IdentityApi, IdentityConfig, Mode};
use quartet_policies::access::{Rule, Rules};
use quartet_policies::auth::{headers, AuthMode, Endpoint, Service, TokenCache, Validator};
use quartet_policies::future::{LayerFuture, OnDone};
use quartet_policies::shared::StackFuture;
use quartet_policies::BoxError;
use std::sync::Arc;

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
    guard::effective_mode(config, route.auth)
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

/// The `[identity]` section and the `auth`/`access` keys of every guarded handler: REST
/// routes (and their `path_params`), `[[rpc.topics]]`, `[[rpc.routes]]`,
/// `[[native.drivers]]` (`caller_auth`, `access.OPERATION`).
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
    let rules = rules.as_ref();
    for (i, route) in config.routes.iter().enumerate() {
        let path = KeyPath::root("routes").index(i);
        check_protection(
            rules,
            &path,
            "auth",
            route_mode(config, route),
            route.access.as_deref(),
            "access",
        )?;
        guard::PathParams::parse(&route.path_params)
            .map_err(|m| invalid(path.key("path_params"), m))?;
    }
    for (i, t) in config.rpc.topics.iter().enumerate() {
        let path = KeyPath::root("rpc").key("topics").index(i);
        let mode = guard::effective_mode(config, t.auth);
        check_protection(rules, &path, "auth", mode, t.access.as_deref(), "access")?;
    }
    for (i, r) in config.rpc.routes.iter().enumerate() {
        let path = KeyPath::root("rpc").key("routes").index(i);
        let (mode, access) = guard::rpc_route_protection(config, r);
        let mode = guard::effective_mode(config, mode);
        check_protection(rules, &path, "auth", mode, access, "access")?;
    }
    for (i, d) in config.native.drivers.iter().enumerate() {
        let path = KeyPath::root("native").key("drivers").index(i);
        let mode = guard::effective_mode(config, d.caller_auth);
        check_protection(rules, &path, "caller_auth", mode, None, "access")?;
        for (op, rule) in &d.access {
            let key = format!("access.{op}");
            check_protection(rules, &path, "caller_auth", mode, Some(rule), &key)?;
        }
    }
    Ok(())
}

/// One guarded handler's `auth` (named `auth_key`) and `access` (named `access_key`):
/// both need `[identity]` (`rules` is `None` without it), an access rule needs a token
/// check, parses, and names only rules the policy file has.
fn check_protection(
    rules: Option<&Rules>,
    path: &KeyPath,
    auth_key: &str,
    mode: AuthMode,
    access: Option<&str>,
    access_key: &str,
) -> Result<(), Invalid> {
    let access_path = || path.clone().dotted(access_key);
    if rules.is_none() && mode != AuthMode::None {
        return Err(invalid(
            path.clone().key(auth_key),
            "needs an [identity] section (no token can be checked without one)",
        ));
    }
    let Some(access) = access else {
        return Ok(());
    };
    let Some(rules) = rules else {
        return Err(invalid(access_path(), "needs an [identity] section"));
    };
    if mode == AuthMode::None {
        return Err(invalid(
            access_path(),
            format!("needs {auth_key} = \"required\" or \"delay\" (access rules read the token)"),
        ));
    }
    parse_access(access).map_err(|m| invalid(access_path(), m))?;
    if let Some(name) = access.trim().strip_prefix("rule:") {
        if rules.get(name.trim()).is_none() {
            return Err(invalid(
                access_path(),
                format!("no rule named {:?} in identity.policy_file", name.trim()),
            ));
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
    /// The remote Keystone's breaker and fault handle (target `identity:keystone`),
    /// listed on the admin API with every other target's.
    pub remote_handles: Option<(
        quartet_policies::breaker::BreakerHandle,
        quartet_policies::fault::FaultHandle,
    )>,
    poller: Option<tokio::task::JoinHandle<()>>,
}

/// Registers the remote Keystone's breaker and fault handle in one build's registries, so
/// `GET /admin/breakers` shows `identity:keystone` and the admin API can set it.
pub fn register(
    shared: &Shared,
    breakers: &quartet_policies::breaker::BreakerRegistry,
    faults: &quartet_policies::fault::FaultRegistry,
) {
    if let Some((breaker, fault)) = shared
        .identity
        .as_ref()
        .and_then(|rt| rt.remote_handles.as_ref())
    {
        breakers.register(breaker.clone());
        faults.register(fault.clone());
    }
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
                remote_handles: None,
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
            let (client, handles) = remote_client(&remote.url, shared)?;
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
                remote_handles: Some(handles),
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
type RemoteHandles = (
    quartet_policies::breaker::BreakerHandle,
    quartet_policies::fault::FaultHandle,
);

fn remote_client(url: &str, shared: &Shared) -> Result<(BytesService, RemoteHandles), StartError> {
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
        breaker.clone(),
        policy.per_try_timeout,
        HttpClassify,
        None,
        endpoint,
    );
    let fault = FaultHandle::new(target.clone(), None, shared.metrics.clone());
    let handles = (breaker.clone(), fault.clone());
    let parts = crate::stack::TargetParts {
        fault,
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
                    let info = quartet_http::classify::CallInfo::default();
                    info.set_buffered(body);
                    req.extensions_mut().insert(Arc::new(info));
                    let resp = stack.call(req).await?;
                    let (parts, body) = resp.into_parts();
                    let bytes = body.collect().await?.to_bytes();
                    Ok::<_, BoxError>(Response::from_parts(parts, bytes))
                })
            },
        );
    Ok((tower::util::BoxCloneSyncService::new(svc), handles))
}

/// Wraps a route's stack in its guard ([`guard::Guard`]: RequireToken, then the route's
/// access rule against the route's `path_params`). Without `[identity]` the route is
/// unchanged; with `[identity]` but no running identity (it was added by a reload), the
/// route answers 503 until a restart (fail closed).
pub fn guard(
    config: &Config,
    shared: &Shared,
    index: usize,
    service: RestService,
) -> Result<RestService, crate::stack::BuildError> {
    let Some(builder) = guard::GuardBuilder::new(config, shared)? else {
        return Ok(service);
    };
    let Some(route) = config.routes.get(index) else {
        return Ok(service);
    };
    let key = KeyPath::root("routes").index(index);
    let checks = builder
        .guard(
            Some(route_mode(config, route)),
            route.access.as_deref(),
            &key,
        )?
        .for_rest_route();
    let params = guard::PathParams::parse(&route.path_params).map_err(|message| {
        crate::stack::BuildError::Identity {
            key: key.clone().key("path_params"),
            message,
        }
    })?;
    let route = Arc::new(RouteGuard {
        checks,
        params,
        inner: service,
    });
    Ok(RestService::boxing(Guarded { route }))
}

/// A REST route's guard and the route's stack behind it.
struct RouteGuard {
    checks: Guard,
    params: guard::PathParams,
    inner: RestService,
}

/// The guarded route as a service. A clone (the [`RestService`] around it makes one per
/// call) is one reference count.
#[derive(Clone)]
struct Guarded {
    route: Arc<RouteGuard>,
}

/// A guarded route's call: refused at once, forwarded (with the 401 rule applied to the
/// answer), or, when a validator must be asked, boxed.
type GuardedFuture = LayerFuture<StackFuture<Response<ProxyBody>>, Www, Response<ProxyBody>>;

impl tower::Service<Request<ProxyBody>> for Guarded {
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = GuardedFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // The stack behind is always ready (`quartet_policies::call_ready`).
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ProxyBody>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        // The common case (a cached token) is decided here, with no future of its own.
        match self.route.checks.authenticate_cached(&mut parts) {
            Some(Ok(())) => match self.route.authorize(&parts) {
                Ok(()) => {
                    let www = Www(self.route.checks.www_source(&parts));
                    LayerFuture::calling(
                        self.route.inner.call(Request::from_parts(parts, body)),
                        www,
                    )
                }
                Err(refused) => LayerFuture::refused(refused),
            },
            Some(Err(refused)) => LayerFuture::refused(refused),
            None => {
                let route = self.route.clone();
                LayerFuture::boxed(Box::pin(async move {
                    route.checks.authenticate(&mut parts).await?;
                    route.authorize(&parts)?;
                    let www = Www(route.checks.www_source(&parts));
                    let answer = route.inner.call(Request::from_parts(parts, body)).await;
                    www.done(answer)
                }))
            }
        }
    }
}

impl RouteGuard {
    /// The route's access rule, against the route's `path_params` of the path as the
    /// client sent it (before `strip_prefix`).
    fn authorize(&self, parts: &http::request::Parts) -> Result<(), Refused> {
        if !self.checks.has_access_rule() {
            return Ok(());
        }
        let target = match parts.extensions.get::<axum::extract::OriginalUri>() {
            Some(original) => self.params.target(original.0.path()),
            None => self.params.target(parts.uri.path()),
        };
        self.checks.authorize(parts, &target)
    }
}

/// What a checked request's answer gets, as keystonemiddleware does: a 401 of the service
/// tells where tokens are (`WWW-Authenticate`, built only then). The route's stack is
/// called at once, as an unguarded route's is (`routes::forward`): every layer of it is
/// always ready, so there is no `poll_ready` walk (`Oneshot`) to wait on.
struct Www(guard::WwwSource);

impl OnDone<Result<Response<ProxyBody>, BoxError>> for Www {
    type Output = Result<Response<ProxyBody>, BoxError>;

    fn done(self, answer: Self::Output) -> Self::Output {
        let mut resp = answer?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            if let Some(value) = self.0.value() {
                resp.headers_mut().append(WWW_AUTHENTICATE, value);
            }
        }
        Ok(resp)
    }
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
/// `X-Auth-Token` with the admin role. Refusals are the guard's ([`Refused`]): 401 with
/// keystonemiddleware's message and `WWW-Authenticate: Keystone uri="..."`, 403 naming
/// `admin_required` (Keystone's rule name), 503 when the backend cannot answer.
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
    let unauthorized = || Refused::Unauthorized {
        www_authenticate: headers::www_authenticate(
            &rt.config
                .public_url
                .clone()
                .unwrap_or_else(|| format!("{}/v3", public_origin(&built.config))),
        ),
    };
    let Some(token) = headers::user_token(headers) else {
        return Err(unauthorized().into());
    };
    match rt.cache.get_or_validate(token, rt.validator.clone()).await {
        Ok(info) if info.has_role("admin") => Ok(()),
        Ok(_) => Err(Refused::Forbidden {
            rule: "admin_required".into(),
        }
        .into()),
        Err(e) if e.is_unavailable() => Err(Refused::Unavailable.into()),
        Err(_) => Err(unauthorized().into()),
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
