//! THE one place where the order of the policy layers is decided.
//!
//! ```text
//! observe -> rate limit -> concurrency limit -> total timeout -> fault injection
//!   -> retry (budget, only safe retries) -> [balancer]
//!      -> per endpoint: circuit breaker -> per-try timeout -> (in-flight count) -> adapter
//! ```
//!
//! [`policy_stack`] builds the layers above the balancer and [`endpoint_stack`] those below
//! it, generic over the request, the response and the channel's [`Classify`] and
//! [`Replay`], so every channel (REST here; RPC topics, SQL backends and drivers later)
//! gets the same order from the same two functions. Each stack is kept as a
//! [`SharedStack`] (its type erased, called through a shared reference).
//!
//! What is shared, and by whom (REST):
//! - per (upstream, endpoint): one breaker, one health flag, one in-flight count, shared by
//!   every route sending to the upstream, so an endpoint is ejected for all of them;
//! - per upstream (the target `rest:NAME`): one fault handle and one retry budget; their
//!   specs (and the breakers') come from the policy of the first route naming the upstream,
//!   the `default` policy when none does;
//! - per route: the rest of the stack, with the route's policy (its own concurrency slots,
//!   rate bucket, timeouts and retry settings) and its `idempotent` flag.

use crate::config::{Config, DEFAULT_POLICY};
use quartet_http::balance::{Balancer, EndpointSlot};
use quartet_http::classify::{HttpClassify, HttpReplay};
use quartet_http::client::HttpClient;
use quartet_http::endpoint::EndpointService;
use quartet_http::health::{self, HealthChecks};
use quartet_http::spec::BalanceStrategy;
use quartet_http::ProxyBody;
use quartet_policies::breaker::{BreakerHandle, BreakerRegistry};
use quartet_policies::classify::{Classify, Replay};
use quartet_policies::error::TimeoutKind;
use quartet_policies::fault::{FaultHandle, FaultLayer, FaultRegistry};
use quartet_policies::future::{Hold, LayerFuture};
use quartet_policies::limit::{ConcurrencyLimitLayer, RateLimitLayer};
use quartet_policies::metrics::Metrics;
use quartet_policies::observe::ObserveLayer;
use quartet_policies::retry::{Budget, RetryLayer};
use quartet_policies::spec::{FaultSpec, PolicySpec};
use quartet_policies::timeout::TimeoutLayer;
use quartet_policies::{BoxError, SharedStack, Target};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service, ServiceBuilder};

/// A REST route's whole stack, as the router calls it.
pub type RestService = SharedStack<http::Request<ProxyBody>, http::Response<ProxyBody>>;

/// The per-target state every stack sending to the target shares: one fault handle (the
/// admin API sets faults per target) and one retry budget (retries are a share of the
/// target's traffic, whichever route it came through).
#[derive(Clone)]
pub struct TargetParts {
    pub target: Target,
    pub fault: FaultHandle,
    pub budget: Arc<Budget>,
}

/// The layers above the balancer, in request order.
pub fn policy_stack<S, Req, Resp, C, R>(
    parts: &TargetParts,
    policy: &PolicySpec,
    metrics: &Arc<Metrics>,
    classify: C,
    replay: R,
    inner: S,
) -> SharedStack<Req, Resp>
where
    S: Service<Req, Response = Resp, Error = BoxError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    Req: Send + 'static,
    Resp: Send + 'static,
    C: Classify<Resp>,
    R: Replay<Req>,
{
    let svc = ServiceBuilder::new()
        // Outermost, so every call is counted and timed, refusals of the layers below
        // included: an operator sees what clients saw.
        .layer(ObserveLayer::new(
            parts.target.clone(),
            metrics.clone(),
            classify.clone(),
        ))
        // Rate limit first among the guards: the cheapest refusal, and a refused call
        // must not take a concurrency slot.
        .option_layer(policy.rate_limit.as_ref().map(RateLimitLayer::new))
        // Bulkhead: refuses at once when full (no queue), before any work or delay is
        // spent on the call. Built here, so one semaphore per stack.
        .layer(ConcurrencyLimitLayer::new(policy.concurrency))
        // The total timeout bounds the call with all its retries and backoffs, and an
        // injected delay too: a delay longer than the timeout shows the client a 504, as
        // a slow backend would.
        .layer(TimeoutLayer::new(policy.timeout, TimeoutKind::Total))
        // Faults sit inside the guards (an injected delay holds a concurrency slot, as a
        // slow backend would), inside the total timeout (above) and above the retry, so
        // an injected abort is what the client sees and is never retried.
        .layer(FaultLayer::new(parts.fault.clone()))
        // Retry sits above the balancer so another attempt can go to another endpoint,
        // and below the total timeout so retries never outlive the call.
        .layer(RetryLayer::new(
            &policy.retry,
            parts.budget.clone(),
            classify,
            replay,
            parts.target.clone(),
            metrics.clone(),
        ))
        .service(inner);
    // One allocation per call for the whole stack: the layers' futures nest unboxed
    // (`quartet_policies::future`).
    SharedStack::boxing(svc)
}

/// The layers below the balancer, around one endpoint, in request order.
pub fn endpoint_stack<S, Req, Resp, C>(
    breaker: BreakerHandle,
    per_try_timeout: Duration,
    classify: C,
    in_flight: Option<Arc<AtomicUsize>>,
    inner: S,
) -> SharedStack<Req, Resp>
where
    S: Service<Req, Response = Resp, Error = BoxError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    Req: Send + 'static,
    Resp: Send + 'static,
    C: Classify<Resp>,
{
    let svc = ServiceBuilder::new()
        // One breaker per endpoint (shared by every route using the upstream): it sees
        // each attempt, so a failing endpoint is ejected while the others keep serving.
        .layer(quartet_policies::breaker::CircuitBreakerLayer::new(
            breaker, classify,
        ))
        // Inside the breaker, so a hung attempt counts as that endpoint's failure; the
        // retry above may then try another endpoint.
        .layer(TimeoutLayer::new(per_try_timeout, TimeoutKind::PerTry))
        // Innermost: counts what is really outstanding at the endpoint, for /readyz.
        // `None` where a balancer above counts it already (REST).
        .option_layer(in_flight.map(InFlightLayer))
        .service(inner);
    // One allocation per call for the whole stack: the layers' futures nest unboxed
    // (`quartet_policies::future`).
    SharedStack::boxing(svc)
}

/// Counts calls outstanding at one endpoint (until the response head arrives).
#[derive(Clone)]
pub struct InFlightLayer(pub Arc<AtomicUsize>);

impl<S> Layer<S> for InFlightLayer {
    type Service = InFlight<S>;
    fn layer(&self, inner: S) -> InFlight<S> {
        InFlight {
            inner,
            count: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct InFlight<S> {
    inner: S,
    count: Arc<AtomicUsize>,
}

/// Takes the call out of the count when it ends, or when its future is dropped.
pub struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S, Req> Service<Req> for InFlight<S>
where
    S: Service<Req, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = LayerFuture<S::Future, Hold<InFlightGuard>, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.count.fetch_add(1, Ordering::Relaxed);
        let guard = InFlightGuard(self.count.clone());
        LayerFuture::calling(self.inner.call(req), Hold(guard))
    }
}

/// Errors building the running app from a valid config (what `validate` cannot see).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot build upstream {upstream:?}")]
    Upstream {
        upstream: String,
        #[source]
        source: quartet_http::error::BuildError,
    },
    #[error("{key}: {message}")]
    Identity {
        key: crate::config::KeyPath,
        message: String,
    },
    #[error(transparent)]
    Native(#[from] crate::native::NativeBuildError),
}

impl BuildError {
    /// The config key to blame, for a message that names it and its line.
    pub fn key_path(&self) -> crate::config::KeyPath {
        match self {
            BuildError::Upstream { upstream, source } => crate::config::KeyPath::root("upstreams")
                .key(upstream.clone())
                .dotted(&source.key),
            BuildError::Identity { key, .. } => key.clone(),
            BuildError::Native(e) => crate::native::key_path(&e.0.key),
        }
    }

    /// What is wrong with the value at [`BuildError::key_path`].
    pub fn message(&self) -> &str {
        match self {
            BuildError::Upstream { source, .. } => &source.message,
            BuildError::Identity { message, .. } => message,
            BuildError::Native(e) => &e.0.message,
        }
    }
}

/// State that outlives one config: the metrics registry and the faults set at run time on
/// the admin API (kept across a reload while their target exists).
#[derive(Clone)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub runtime_faults: Arc<Mutex<HashMap<String, FaultSpec>>>,
    /// The identity channel, started once per process (`identity::start`).
    pub identity: Option<Arc<crate::identity::Runtime>>,
    /// The native jobs stores by URL: opened once, kept across reloads.
    pub job_stores: crate::native::JobStores,
    /// The SQL listeners: bound once at start, kept across reloads.
    pub sql: crate::sql::SqlListeners,
    /// The RPC client (one per instance, kept across reloads) and the RPC metrics.
    pub rpc: crate::rpc::RpcShared,
}

impl Shared {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            rpc: crate::rpc::RpcShared::new(&metrics),
            metrics,
            runtime_faults: Arc::default(),
            identity: None,
            job_stores: Arc::default(),
            sql: Default::default(),
        }
    }

    /// Records a fault set at run time (`Some`) for `target`, so a reload keeps it; a
    /// fault cleared at run time (`None`) leaves the config to decide again.
    pub fn remember_fault(&self, target: &Target, fault: Option<FaultSpec>) {
        if let Ok(mut map) = self.runtime_faults.lock() {
            match fault {
                Some(f) => map.insert(target.to_string(), f),
                None => map.remove(&target.to_string()),
            };
        }
    }

    /// The jobs store at `url`, started on first use and shared by later builds.
    /// Its owner id and lease are those of the config that opened it (a reload keeps them).
    pub fn job_store(&self, native: &crate::native::NativeConfig) -> Arc<crate::native::JobStore> {
        let (url, retention) = (native.database.as_str(), native.job_retention);
        let mut stores = self.job_stores.lock().unwrap_or_else(|e| e.into_inner());
        let store = stores.entry(url.to_string()).or_insert_with(|| {
            crate::native::JobStore::start(url, retention, native.owner(), native.owner_lease)
        });
        store.set_retention(retention);
        store.clone()
    }

    pub(crate) fn runtime_fault(&self, target: &Target) -> Option<FaultSpec> {
        self.runtime_faults
            .lock()
            .ok()
            .and_then(|m| m.get(&target.to_string()).cloned())
    }
}

/// One endpoint of an upstream, shared by every route that uses the upstream.
pub struct Endpoint {
    pub name: String,
    pub service: EndpointService,
    pub breaker: BreakerHandle,
    pub healthy: Arc<AtomicBool>,
    pub in_flight: Arc<AtomicUsize>,
}

/// One upstream (one REST target) as built.
pub struct Upstream {
    pub name: String,
    pub parts: TargetParts,
    pub strategy: BalanceStrategy,
    pub endpoints: Vec<Endpoint>,
    /// Stops the upstream's health checks when the app is dropped (on reload).
    pub health: Option<HealthChecks>,
}

/// One route with its stack.
pub struct Route {
    /// Without trailing slashes; `""` matches every path.
    pub prefix: String,
    /// Lower-cased, without port.
    pub host: Option<String>,
    pub strip_prefix: bool,
    pub upstream: String,
    pub policy: PolicySpec,
    pub service: RestService,
}

/// The REST channel as built from one config.
pub struct Rest {
    /// In matching order: host-specific first, then the longest prefix.
    pub routes: Vec<Route>,
    pub upstreams: BTreeMap<String, Upstream>,
}

/// Everything one config builds: the channels and the registries the admin API reads.
pub struct Built {
    pub config: Config,
    pub rest: Rest,
    pub native: crate::native::Native,
    /// The SQL listeners (the process's, not this config's: they are not rebuilt).
    pub sql: crate::sql::SqlListeners,
    /// The RPC channel; `None` without `[amqp]`.
    pub rpc: Option<crate::rpc::Rpc>,
    pub breakers: BreakerRegistry,
    pub faults: FaultRegistry,
    pub metrics: Arc<Metrics>,
    pub identity: Option<Arc<crate::identity::Runtime>>,
    /// The token checks and access rules of `/rpc` and `/native` (REST routes carry theirs
    /// in their service).
    pub guards: crate::identity::Guards,
}

impl Built {
    /// Builds every channel. Must run inside a tokio runtime (health checks are spawned).
    pub fn build(config: Config, shared: &Shared) -> Result<Self, BuildError> {
        let breakers = BreakerRegistry::new();
        let faults = FaultRegistry::new();
        let rest = build_rest(&config, shared, &breakers, &faults)?;
        if let Some(identity) = shared.identity.as_ref().and_then(|rt| rt.embedded.as_ref()) {
            identity.set_catalog(crate::identity::catalog(&config));
        }
        let native = crate::native::build(&config, shared, &breakers, &faults)?;
        crate::sql::register(shared, &breakers, &faults);
        let rpc = crate::rpc::build(&config, shared, &breakers, &faults, &rest, &native);
        crate::identity::register(shared, &breakers, &faults);
        let guards = crate::identity::Guards::build(&config, shared, &native)?;
        Ok(Self {
            guards,
            identity: shared.identity.clone(),
            config,
            rest,
            native,
            sql: shared.sql.clone(),
            rpc,
            breakers,
            faults,
            metrics: shared.metrics.clone(),
        })
    }
}

/// The policy of the first route sending to `upstream` (the default policy when none
/// does): it decides the per-target parts (breaker spec, budget, initial fault).
fn target_policy(config: &Config, upstream: &str) -> PolicySpec {
    let name = config
        .routes
        .iter()
        .find(|r| r.upstream == upstream)
        .map_or(DEFAULT_POLICY, |r| r.policy.as_str());
    config.policy(name)
}

/// The REST stack to one upstream under `policy`: its endpoints (breaker, per-try timeout)
/// behind its balancer, behind the policy layers. Routes and the RPC reverse bridge both
/// send to upstreams through this.
pub fn upstream_service(
    up: &Upstream,
    policy: &PolicySpec,
    idempotent: bool,
    metrics: &Arc<Metrics>,
) -> RestService {
    let slots = up
        .endpoints
        .iter()
        .map(|e| EndpointSlot {
            name: e.name.clone(),
            // The balancer counts the endpoint's outstanding attempts (for p2c and
            // /readyz) in the endpoint's own counter, shared by every route to it.
            service: endpoint_stack(
                e.breaker.clone(),
                policy.per_try_timeout,
                HttpClassify,
                None,
                e.service.clone(),
            ),
            breaker: Some(e.breaker.clone()),
            healthy: e.healthy.clone(),
            in_flight: e.in_flight.clone(),
        })
        .collect();
    let balancer = Balancer::new(up.parts.target.clone(), up.strategy, slots);
    policy_stack(
        &up.parts,
        policy,
        metrics,
        HttpClassify,
        HttpReplay {
            idempotent_route: idempotent,
        },
        balancer,
    )
}

fn build_rest(
    config: &Config,
    shared: &Shared,
    breakers: &BreakerRegistry,
    faults: &FaultRegistry,
) -> Result<Rest, BuildError> {
    let metrics = &shared.metrics;
    let mut upstreams = BTreeMap::new();
    for (name, spec) in &config.upstreams {
        let build_err = |source| BuildError::Upstream {
            upstream: name.clone(),
            source,
        };
        let target = Target::new("rest", name.as_str());
        let policy = target_policy(config, name);
        let client = HttpClient::new(spec).map_err(build_err)?;
        let mut endpoints = Vec::new();
        let mut to_check = Vec::new();
        for url in &spec.endpoints {
            // The REST channel passes an upstream's response headers on unread: they
            // stay one block of bytes (quartet_http::raw).
            let service = EndpointService::new(url, client.clone())
                .map_err(build_err)?
                .raw_response_heads();
            let name = service.authority();
            let breaker = BreakerHandle::new(
                target.clone(),
                &name,
                policy.breaker.clone(),
                metrics.clone(),
            );
            breakers.register(breaker.clone());
            let healthy = Arc::new(AtomicBool::new(true));
            if let Ok(uri) = url.parse::<http::Uri>() {
                to_check.push((uri, healthy.clone()));
            }
            endpoints.push(Endpoint {
                name,
                service,
                breaker,
                healthy,
                in_flight: Arc::default(),
            });
        }
        let initial_fault = shared
            .runtime_fault(&target)
            .or_else(|| policy.fault.clone());
        let fault = FaultHandle::new(target.clone(), initial_fault, metrics.clone());
        faults.register(fault.clone());
        let health = spec
            .health
            .as_ref()
            .map(|h| health::spawn(h, client.clone(), to_check));
        upstreams.insert(
            name.clone(),
            Upstream {
                name: name.clone(),
                parts: TargetParts {
                    target,
                    fault,
                    budget: Arc::new(Budget::new(&policy.retry)),
                },
                strategy: spec.balance,
                endpoints,
                health,
            },
        );
    }

    let mut routes = Vec::new();
    for (index, route) in config.routes.iter().enumerate() {
        // validate() guarantees the upstream exists; skip defensively rather than panic.
        let Some(up) = upstreams.get(&route.upstream) else {
            continue;
        };
        let policy = config.policy(&route.policy);
        let service = upstream_service(up, &policy, route.idempotent, metrics);
        // The route's guard (RequireToken, then the access rule) sits in front of the
        // whole policy stack: a refused caller never reaches the upstream and never
        // counts as an upstream failure, nor takes a concurrency slot or a rate token.
        let service = crate::identity::guard(config, shared, index, service)?;
        routes.push(Route {
            prefix: crate::config::normalize_prefix(&route.prefix).to_string(),
            host: route.host.as_deref().map(crate::config::normalize_host),
            strip_prefix: route.strip_prefix,
            upstream: route.upstream.clone(),
            policy,
            service,
        });
    }
    // Host-specific routes first, then the longest prefix; the sort is stable, so equal
    // keys keep the file's order.
    routes.sort_by_key(|r| (r.host.is_none(), std::cmp::Reverse(r.prefix.len())));
    Ok(Rest { routes, upstreams })
}
