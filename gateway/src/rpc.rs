//! The RPC channel in the gateway: quartet-amqp's client and server wired to the config,
//! the policy stack, the public listener, `/readyz`, `/metrics` and the CLI.
//!
//! - One [`RpcClient`] per Quartet instance, kept in [`RpcShared`] across reloads while
//!   `[amqp]` stays the same (a changed `[amqp]` starts a new one).
//! - Per `[[rpc.topics]]` entry, a target `rpc:<topic>` with the same layers as a REST
//!   route, from [`crate::stack::policy_stack`] and [`crate::stack::endpoint_stack`]: the
//!   "endpoint" is the broker, so one breaker per topic. Each attempt's RPC timeout (and so
//!   the message's `expiration`) is bounded by the policy's `per_try_timeout`.
//! - `POST /rpc/{topic}` and the `[[rpc.routes]]` (REST paths mapped to RPC methods) are
//!   answered by [`intercept`], called first by the public router.
//! - Per `[[rpc.servers]]` entry, an [`RpcServer`] whose handler sends each call to an
//!   HTTP upstream through that upstream's REST stack, or to a native driver through the
//!   driver's stack ([`RpcTarget`]).
//!
//! Errors go to the one edge function (`crate::error`), wrapped in [`RpcFailed`] so the
//! edge knows the status the topic maps a remote exception to.

use crate::config::{Config, DEFAULT_POLICY};
use crate::error::{BadRequest, BodyTooLarge};
use crate::identity::guard;
use crate::stack::{endpoint_stack, policy_stack, Built, RestService, Shared, TargetParts};
use axum::body::Body;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use quartet_amqp::{
    AmqpConfig, CallKind, Caller, Context, IncomingCall, RemoteFailure, RpcClassify, RpcClient,
    RpcError, RpcReplay, RpcRequest, RpcResponse, RpcRoute, RpcServer, RpcServerSpec, RpcTopic,
    State,
};
use quartet_http::classify::CallInfo;
use quartet_http::ProxyBody;
use quartet_policies::auth::Identity;
use quartet_policies::breaker::BreakerHandle;
use quartet_policies::fault::FaultHandle;
use quartet_policies::metrics::Metrics;
use quartet_policies::retry::Budget;
use quartet_policies::{BoxError, Target};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tower::ServiceExt;

/// A topic's whole stack.
pub type RpcService = quartet_policies::SharedStack<RpcRequest, RpcResponse>;

/// `POST /rpc/{topic}` named a topic that is not in `[[rpc.topics]]`. Edge: 404.
#[derive(Debug, thiserror::Error)]
#[error("no rpc topic named {topic:?}")]
pub struct UnknownTopic {
    pub topic: String,
}

/// An RPC through a topic's stack failed. Carries what the topic's config says about a
/// remote exception, for the edge; the cause is the source.
#[derive(Debug, thiserror::Error)]
#[error("rpc to topic {topic:?} failed")]
pub struct RpcFailed {
    pub topic: String,
    /// The status `status_map` gives the remote exception (when there is one and it maps).
    pub remote_status: Option<u16>,
    /// `[rpc] expose_traceback`.
    pub expose_traceback: bool,
    #[source]
    pub source: BoxError,
}

/// The RPC error in a chain, if any.
pub fn find_rpc_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a RpcError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<RpcError>() {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

// ---------------------------------------------------------------------------------------
// Shared across reloads: the client and the metrics collector.

#[derive(Default)]
struct Slot {
    client: Option<(AmqpConfig, RpcClient)>,
    servers: Vec<(String, Weak<RpcServer>)>,
    /// `rpc:broker`: its connection toxics apply to every broker connection; one handle
    /// for the instance's life, so open connections keep following it across reloads.
    broker_fault: Option<FaultHandle>,
}

/// The RPC state that outlives one config: the instance's one client (reused by a reload
/// while `[amqp]` is unchanged) and what `/metrics` reads.
#[derive(Clone, Default)]
pub struct RpcShared {
    slot: Arc<Mutex<Slot>>,
}

impl RpcShared {
    /// Registers the RPC metrics in `metrics`' registry (once per registry: a second
    /// registration of the same names is refused by prometheus and ignored here).
    pub fn new(metrics: &Metrics) -> Self {
        let shared = Self::default();
        let collector = RpcCollector::new(Arc::downgrade(&shared.slot));
        if let Err(e) = metrics.registry.register(Box::new(collector)) {
            tracing::debug!(error = %e, "rpc metrics already registered");
        }
        shared
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The running client for `cfg`, started if there is none or `[amqp]` changed.
    pub fn client_for(&self, cfg: &AmqpConfig) -> RpcClient {
        let mut slot = self.lock();
        if let Some((c, client)) = &slot.client {
            if c == cfg {
                return client.clone();
            }
        }
        let client = RpcClient::start(cfg.clone());
        slot.client = Some((cfg.clone(), client.clone()));
        client
    }

    fn set_servers(&self, servers: &[Server]) {
        self.lock().servers = servers
            .iter()
            .map(|s| (s.spec.topic.clone(), Arc::downgrade(&s.server)))
            .collect();
    }

    /// The broker connections' fault handle (target `rpc:broker`), made once.
    fn broker_fault(&self, metrics: &Arc<Metrics>) -> FaultHandle {
        self.lock()
            .broker_fault
            .get_or_insert_with(|| {
                let target = Target::new("rpc", quartet_amqp::BROKER_TARGET);
                FaultHandle::new(target, None, metrics.clone())
            })
            .clone()
    }

    /// Forgets the client when the config has no `[amqp]` any more.
    fn drop_client(&self) {
        self.lock().client = None;
    }
}

// ---------------------------------------------------------------------------------------
// Built from one config.

/// One `[[rpc.topics]]` entry as built.
pub struct Topic {
    pub spec: RpcTopic,
    pub parts: TargetParts,
    pub breaker: BreakerHandle,
    pub in_flight: Arc<AtomicUsize>,
    pub service: RpcService,
}

/// Where a `[[rpc.servers]]` entry sends its calls.
#[derive(Clone)]
pub enum RpcTarget {
    /// POST `{endpoint}/{method}` with the args as the JSON body, through the REST stack
    /// of `[upstreams.NAME]`.
    Upstream { name: String, service: RestService },
    /// The operation `method` of a `[[native.drivers]]` instance with the args as its
    /// arguments, through the driver's own stack (the one `/native` calls pass).
    Driver(crate::native::DriverHandle),
}

/// One `[[rpc.servers]]` entry, running.
pub struct Server {
    pub spec: RpcServerSpec,
    pub server: Arc<RpcServer>,
}

/// The RPC channel as built from one config.
pub struct Rpc {
    pub client: RpcClient,
    /// `rpc:broker`: connection toxics on every broker connection.
    pub broker_fault: FaultHandle,
    /// The broker's `host:port`: the "endpoint" of every topic's breaker.
    pub broker: String,
    pub topics: BTreeMap<String, Topic>,
    pub routes: Vec<RpcRoute>,
    pub servers: Vec<Server>,
    pub expose_traceback: bool,
    pub default_timeout: Duration,
}

/// `host:port` of an amqp URL, for names (never the credentials).
fn broker_name(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let has_port = host_port
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    match (host_port.is_empty(), has_port) {
        (true, _) => "broker".to_owned(),
        (false, true) => host_port.to_owned(),
        (false, false) if scheme == "amqps" => format!("{host_port}:5671"),
        (false, false) => format!("{host_port}:5672"),
    }
}

/// Builds the RPC channel: `None` without `[amqp]`. Must run inside a tokio runtime.
pub fn build(
    config: &Config,
    shared: &Shared,
    breakers: &quartet_policies::breaker::BreakerRegistry,
    faults: &quartet_policies::fault::FaultRegistry,
    rest: &crate::stack::Rest,
    native: &crate::native::Native,
) -> Option<Rpc> {
    let Some(amqp) = &config.amqp else {
        shared.rpc.drop_client();
        return None;
    };
    let metrics = &shared.metrics;
    // The broker connections' toxics: set at run time (kept across reloads), else the
    // config's `[rpc] broker_fault`, else none.
    let broker_fault = shared.rpc.broker_fault(metrics);
    let wanted = shared
        .runtime_fault(broker_fault.target())
        .or_else(|| config.rpc.broker_fault.clone());
    if broker_fault.get() != wanted {
        broker_fault.set(wanted);
    }
    faults.register(broker_fault.clone());
    let mut amqp = amqp.clone();
    amqp.faults = quartet_amqp::ConnectionFaults::new(broker_fault.clone());
    let amqp = &amqp;
    let client = shared.rpc.client_for(amqp);
    let broker = broker_name(&amqp.url);
    let mut topics = BTreeMap::new();
    for spec in &config.rpc.topics {
        let target = Target::new("rpc", spec.topic.as_str());
        let policy = config.policy(&spec.policy);
        let breaker = BreakerHandle::new(
            target.clone(),
            &broker,
            policy.breaker.clone(),
            metrics.clone(),
        );
        breakers.register(breaker.clone());
        let initial_fault = shared
            .runtime_fault(&target)
            .or_else(|| policy.fault.clone());
        let fault = FaultHandle::new(target.clone(), initial_fault, metrics.clone());
        faults.register(fault.clone());
        let parts = TargetParts {
            target,
            fault,
            budget: Arc::new(Budget::new(&policy.retry)),
        };
        let in_flight: Arc<AtomicUsize> = Arc::default();
        let attempt = attempt_service(client.clone(), amqp.default_timeout, policy.per_try_timeout);
        let endpoint = endpoint_stack(
            breaker.clone(),
            policy.per_try_timeout,
            RpcClassify::default(),
            Some(in_flight.clone()),
            attempt,
        );
        let service = policy_stack(
            &parts,
            &policy,
            metrics,
            RpcClassify::default(),
            RpcReplay {
                idempotent_target: spec.idempotent,
            },
            endpoint,
        );
        topics.insert(
            spec.topic.clone(),
            Topic {
                spec: spec.clone(),
                parts,
                breaker,
                in_flight,
                service,
            },
        );
    }

    let mut servers = Vec::new();
    for spec in &config.rpc.servers {
        // validate() guarantees the upstream or driver; a server without one is skipped,
        // not a panic.
        let target = match &spec.driver {
            Some(driver) => native.handle(driver).map(RpcTarget::Driver),
            None => server_target(config, spec, rest, metrics),
        };
        let Some(target) = target else {
            continue;
        };
        let handler = Forward {
            target,
            max_body: usize::try_from(config.server.max_body_bytes).unwrap_or(usize::MAX),
        };
        let server = RpcServer::start(amqp.clone(), spec.clone(), handler);
        servers.push(Server {
            spec: spec.clone(),
            server: Arc::new(server),
        });
    }
    shared.rpc.set_servers(&servers);

    Some(Rpc {
        client,
        broker_fault,
        broker,
        topics,
        routes: config.rpc.routes.clone(),
        servers,
        expose_traceback: config.rpc.expose_traceback,
        default_timeout: amqp.default_timeout,
    })
}

/// The adapter under a topic's breaker: one attempt, its RPC timeout bounded by the
/// per-try timeout, so the message's `expiration` never outlives the attempt.
fn attempt_service(client: RpcClient, default_timeout: Duration, per_try: Duration) -> RpcService {
    let svc = tower::service_fn(move |mut req: RpcRequest| {
        let client = client.clone();
        async move {
            let wanted = req.timeout.unwrap_or(default_timeout);
            req.timeout = Some(wanted.min(per_try));
            client.send(req).await.map_err(BoxError::from)
        }
    });
    RpcService::boxing(svc)
}

/// The REST stack a `[[rpc.servers]]` entry forwards through: the upstream's balancer and
/// breakers, with the policy of the first route naming the upstream (else `default`).
fn server_target(
    config: &Config,
    spec: &RpcServerSpec,
    rest: &crate::stack::Rest,
    metrics: &Arc<Metrics>,
) -> Option<RpcTarget> {
    let name = spec.upstream.as_ref()?;
    let up = rest.upstreams.get(name)?;
    let policy_name = config
        .routes
        .iter()
        .find(|r| &r.upstream == name)
        .map_or(DEFAULT_POLICY, |r| r.policy.as_str());
    let policy = config.policy(policy_name);
    let service = crate::stack::upstream_service(up, &policy, false, metrics);
    Some(RpcTarget::Upstream {
        name: name.clone(),
        service,
    })
}

// ---------------------------------------------------------------------------------------
// The reverse bridge's handler.

/// Sends each incoming call to its [`RpcTarget`] and turns the answer into a result or
/// a [`RemoteFailure`] for the oslo.messaging caller.
pub struct Forward {
    target: RpcTarget,
    max_body: usize,
}

impl quartet_amqp::RpcHandler for Forward {
    fn handle(
        &self,
        call: IncomingCall,
    ) -> impl std::future::Future<Output = Result<Value, RemoteFailure>> + Send {
        let fut: futures_util::future::BoxFuture<'static, Result<Value, RemoteFailure>> =
            match self.target.clone() {
                RpcTarget::Upstream { name, service } => {
                    Box::pin(forward_to_upstream(name, service, call, self.max_body))
                }
                RpcTarget::Driver(driver) => Box::pin(forward_to_driver(driver, call)),
            };
        fut
    }
}

/// One call to a driver: the method is the operation, the args its arguments. Failures
/// become the classes of [`crate::native::remote_failure`].
async fn forward_to_driver(
    driver: crate::native::DriverHandle,
    call: IncomingCall,
) -> Result<Value, RemoteFailure> {
    let operation = call.request.method;
    let args = Value::Object(call.request.args);
    match driver.call(&operation, args).await {
        Ok(value) => Ok(value),
        Err(err) => {
            let failure = crate::native::remote_failure(driver.name(), &operation, err.as_ref());
            tracing::info!(
                driver = driver.name(),
                %operation,
                class = %failure.class,
                error = %crate::error::Chain(err.as_ref()),
                "rpc server: driver call failed"
            );
            Err(failure)
        }
    }
}

fn upstream_failure(message: String, status: Option<u16>) -> RemoteFailure {
    let mut f = RemoteFailure::new("UpstreamError", "quartet", message);
    if let Some(s) = status {
        f.kwargs.insert("status".to_owned(), json!(s));
    }
    f
}

async fn forward_to_upstream(
    upstream: String,
    service: RestService,
    call: IncomingCall,
    max_body: usize,
) -> Result<Value, RemoteFailure> {
    let upstream = upstream.as_str();
    let method = call.request.method.clone();
    let ok_method = !method.is_empty()
        && method
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok_method {
        return Err(RemoteFailure::no_such_method(&method));
    }
    let body = match serde_json::to_vec(&Value::Object(call.request.args.clone())) {
        Ok(b) => b,
        Err(e) => return Err(upstream_failure(format!("args not encodable: {e}"), None)),
    };
    let mut req = Request::post(format!("/{method}"));
    req = req.header(header::CONTENT_TYPE, "application/json");
    let request_id = call
        .request
        .context
        .get("request_id")
        .and_then(Value::as_str)
        .filter(|r| quartet_http::proxy::is_valid_request_id(r))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("req-{}", uuid::Uuid::new_v4()));
    req = req.header(quartet_http::proxy::REQUEST_ID, request_id.as_str());
    let body: ProxyBody = Full::new(Bytes::from(body))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut req = match req.body(body) {
        Ok(r) => r,
        Err(e) => return Err(upstream_failure(format!("bad request: {e}"), None)),
    };
    req.extensions_mut().insert(Arc::new(CallInfo::default()));
    let result = send_rest(service, req).await;
    let resp = match result {
        Ok(r) => r,
        Err(err) => {
            let edge = crate::error::classify(err.as_ref());
            tracing::warn!(upstream, method = %method, error = %crate::error::Chain(err.as_ref()), "rpc server: upstream call failed");
            return Err(upstream_failure(
                format!("upstream {upstream}: {}", edge.message),
                Some(edge.status.as_u16()),
            ));
        }
    };
    let status = resp.status();
    let bytes = match read_limited(resp.into_body(), max_body).await {
        Some(b) => b,
        None => {
            tracing::warn!(upstream, "rpc server: upstream body failed or too large");
            return Err(upstream_failure(
                format!("upstream {upstream}: the answer could not be read"),
                Some(502),
            ));
        }
    };
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    if status.is_success() {
        Ok(value)
    } else if status == StatusCode::NOT_FOUND {
        let mut f = RemoteFailure::no_such_method(&method);
        f.kwargs.insert("status".to_owned(), json!(404));
        Err(f)
    } else {
        let mut f = upstream_failure(
            format!("upstream {upstream} answered {}", status.as_u16()),
            Some(status.as_u16()),
        );
        f.kwargs.insert("body".to_owned(), value);
        Err(f)
    }
}

/// The whole body, or `None` when it fails or grows past `limit`.
async fn read_limited(mut body: ProxyBody, limit: usize) -> Option<Bytes> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.ok()?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return None;
            }
            buf.extend_from_slice(&data);
        }
    }
    Some(buf.freeze())
}

/// Calls a REST stack; a plain function so the future's type is named once (and is Send).
fn send_rest(
    service: RestService,
    req: Request<ProxyBody>,
) -> futures_util::future::BoxFuture<'static, Result<Response<ProxyBody>, BoxError>> {
    Box::pin(service.oneshot(req))
}

// ---------------------------------------------------------------------------------------
// The HTTP side.

/// The body of `POST /rpc/{topic}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallBody {
    method: String,
    #[serde(default)]
    args: Map<String, Value>,
    #[serde(default)]
    server: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    fanout: bool,
    #[serde(default)]
    cast: bool,
    /// Seconds.
    #[serde(default)]
    timeout: Option<f64>,
}

fn bad(message: impl Into<String>) -> BoxError {
    Box::new(BadRequest {
        message: message.into(),
    })
}

/// An answer of the RPC bridge under way.
pub type Answer = futures_util::future::BoxFuture<'static, Result<Response<Body>, BoxError>>;

/// What the public router does with a request on the RPC channel, decided before anything
/// is awaited: `Ok` with the bridge's answer (boxed, so that the REST requests that never
/// come here do not carry its future), or `Err(req)`, the request handed back, when it is
/// not one (not `POST /rpc/{topic}`, no `[[rpc.routes]]` match, or no RPC channel).
#[allow(clippy::result_large_err)] // the request is handed back, as `Direct::encode` does
pub fn intercept(
    built: &Arc<Built>,
    req: Request<Body>,
    request_id: &HeaderValue,
) -> Result<Answer, Request<Body>> {
    let Some(rpc) = &built.rpc else {
        return Err(req);
    };
    let path = req.uri().path();
    if req.method() == http::Method::POST {
        if let Some(topic) = path.strip_prefix("/rpc/") {
            if !topic.is_empty() && !topic.contains('/') {
                let topic = topic.to_owned();
                let (built, rid) = (built.clone(), request_id.clone());
                return Ok(Box::pin(async move {
                    let rid = quartet_http::proxy::request_id_str(&rid);
                    match &built.rpc {
                        Some(rpc) => post_rpc(&built, rpc, &topic, req, rid).await,
                        None => Err(crate::error::NoRoute.into()),
                    }
                }));
            }
        }
    }
    let found = rpc.routes.iter().enumerate().find_map(|(i, r)| {
        (r.method == req.method().as_str())
            .then(|| r.match_path(path))
            .flatten()
            .map(|params| {
                let params: Vec<(String, String)> = params
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), guard::percent_decode(v)))
                    .collect();
                (i, params)
            })
    });
    let Some((index, params)) = found else {
        return Err(req);
    };
    let (built, rid) = (built.clone(), request_id.clone());
    Ok(Box::pin(async move {
        let rid = quartet_http::proxy::request_id_str(&rid);
        match built
            .rpc
            .as_ref()
            .and_then(|rpc| Some((rpc, rpc.routes.get(index)?)))
        {
            Some((rpc, route)) => route_rpc(&built, rpc, (index, route), params, req, rid).await,
            None => Err(crate::error::NoRoute.into()),
        }
    }))
}

async fn read_body(built: &Built, body: Body) -> Result<Bytes, BoxError> {
    let limit = built.config.server.max_body_bytes;
    match Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .collect()
        .await
    {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyTooLarge { limit }.into()),
        Err(e) => Err(Box::new(quartet_http::error::BodyError { source: e })),
    }
}

/// The caller's context: from the validated token when there is one, else anonymous;
/// with the request ids either way.
fn context(parts: &http::request::Parts, topic: &RpcTopic, request_id: &str) -> Context {
    let global_request_id = parts
        .headers
        .get(quartet_http::proxy::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| quartet_http::proxy::is_valid_request_id(v))
        .map(str::to_owned);
    let mut caller = Caller {
        request_id: Some(request_id.to_owned()),
        global_request_id,
        ..Caller::default()
    };
    if let Some(token) = parts
        .extensions
        .get::<Identity>()
        .and_then(|i| i.user.clone())
    {
        use quartet_policies::auth::Scope;
        caller.user_id = Some(token.user.id.clone());
        caller.user_domain_id = Some(token.user.domain.id.clone());
        match &token.scope {
            Scope::Project { id, domain, .. } => {
                caller.project_id = Some(id.clone());
                caller.project_domain_id = Some(domain.id.clone());
            }
            Scope::Domain(d) => caller.domain_id = Some(d.id.clone()),
            Scope::System => caller.system_scope = Some("all".to_owned()),
            Scope::Unscoped => {}
        }
        caller.roles = token.role_names().map(str::to_owned).collect();
        caller.is_admin = token.has_role("admin");
        caller.is_admin_project = token.is_admin_project;
        if topic.forward_token {
            caller.auth_token = parts
                .headers
                .get("x-auth-token")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
        }
    }
    Context::oslo(&caller)
}

async fn post_rpc(
    built: &Built,
    rpc: &Rpc,
    topic: &str,
    req: Request<Body>,
    request_id: &str,
) -> Result<Response<Body>, BoxError> {
    let Some(t) = rpc.topics.get(topic) else {
        return Err(Box::new(UnknownTopic {
            topic: topic.to_owned(),
        }));
    };
    let (mut parts, body) = req.into_parts();
    // The token is checked before the body is read; the access rule after (its target
    // is the call's args, topic and method).
    let guard = built.guards.rpc_topic(topic);
    guard::authenticate(guard, &mut parts).await?;
    let bytes = read_body(built, body).await?;
    let body: CallBody =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid body: {e}")))?;
    if body.method.is_empty() {
        return Err(bad("invalid body: method must not be empty"));
    }
    guard::authorize(guard, &parts, || {
        guard::call_target(
            &Value::Object(body.args.clone()),
            &[("topic", topic), ("method", &body.method)],
        )
    })?;
    if body.fanout && body.server.is_some() {
        return Err(bad(
            "invalid body: a fanout goes to every server: no server",
        ));
    }
    let timeout = match body.timeout {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Some(Duration::from_secs_f64(s)),
        Some(_) => {
            return Err(bad(
                "invalid body: timeout must be seconds above 0 (at most 86400)",
            ))
        }
    };
    let cast = body.cast || body.fanout;
    let kind = if cast { CallKind::Cast } else { CallKind::Call };
    let mut r = RpcRequest::for_topic(&t.spec, kind, body.method);
    r.args = body.args;
    r.fanout = body.fanout;
    if body.fanout {
        r.server = None;
    }
    if let Some(s) = body.server {
        r.server = Some(s);
    }
    r.version = body.version;
    r.namespace = body.namespace;
    if timeout.is_some() {
        r.timeout = timeout;
    }
    r.context = context(&parts, &t.spec, request_id);
    let value = send(rpc, t, r).await?;
    Ok(answer(cast, json!({"result": value}), request_id))
}

async fn route_rpc(
    built: &Built,
    rpc: &Rpc,
    (index, route): (usize, &RpcRoute),
    params: Vec<(String, String)>,
    req: Request<Body>,
    request_id: &str,
) -> Result<Response<Body>, BoxError> {
    let Some(t) = rpc.topics.get(&route.topic) else {
        return Err(Box::new(UnknownTopic {
            topic: route.topic.clone(),
        }));
    };
    let (mut parts, body) = req.into_parts();
    let guard = built.guards.rpc_route(index);
    guard::authenticate(guard, &mut parts).await?;
    let mut args = Map::new();
    if route.body_args {
        let bytes = read_body(built, body).await?;
        if !bytes.is_empty() {
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(m)) => args.extend(m),
                Ok(_) => return Err(bad("invalid body: must be a JSON object")),
                Err(e) => return Err(bad(format!("invalid body: {e}"))),
            }
        }
    }
    if route.query_args {
        for pair in parts.uri.query().unwrap_or("").split('&') {
            if pair.is_empty() {
                continue;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = guard::percent_decode(&v.replace('+', " "));
            args.insert(guard::percent_decode(k), Value::String(v));
        }
    }
    for (k, v) in &route.args {
        let filled = v
            .as_str()
            .and_then(|s| s.strip_prefix('{'))
            .and_then(|s| s.strip_suffix('}'))
            .and_then(|name| params.iter().find(|(p, _)| p == name))
            .map(|(_, value)| Value::String(value.clone()))
            .unwrap_or_else(|| v.clone());
        args.insert(k.clone(), filled);
    }
    let kind = if route.cast {
        CallKind::Cast
    } else {
        CallKind::Call
    };
    guard::authorize(guard, &parts, || {
        let mut extra: Vec<(&str, &str)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        extra.extend([
            ("topic", route.topic.as_str()),
            ("method", route.rpc_method.as_str()),
        ]);
        guard::call_target(&Value::Object(args.clone()), &extra)
    })?;
    let mut r = RpcRequest::for_topic(&t.spec, kind, route.rpc_method.clone());
    r.args = args;
    r.context = context(&parts, &t.spec, request_id);
    let value = send(rpc, t, r).await?;
    Ok(answer(route.cast, value, request_id))
}

/// Sends through the topic's stack; errors wrapped for the edge.
async fn send(rpc: &Rpc, t: &Topic, req: RpcRequest) -> Result<Value, BoxError> {
    let result = t.service.clone().oneshot(req).await;
    result.map(RpcResponse::into_value).map_err(|source| {
        let remote_status = find_rpc_error(source.as_ref())
            .and_then(RpcError::remote)
            .and_then(|f| t.spec.status_for(f));
        if let Some(f) = find_rpc_error(source.as_ref()).and_then(RpcError::remote) {
            tracing::info!(topic = %t.spec.topic, class = %f.class, module = %f.module, traceback = %f.tb.join(""), "remote exception");
        }
        Box::new(RpcFailed {
            topic: t.spec.topic.clone(),
            remote_status,
            expose_traceback: rpc.expose_traceback,
            source,
        }) as BoxError
    })
}

fn answer(cast: bool, value: Value, request_id: &str) -> Response<Body> {
    let (status, body) = if cast {
        (StatusCode::ACCEPTED, json!({"sent": true}))
    } else {
        (StatusCode::OK, value)
    };
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut()
            .insert(quartet_http::proxy::REQUEST_ID, v);
    }
    resp
}

/// The `remote` object of an error body, and the status, for a remote exception.
pub fn remote_edge(failure: &RemoteFailure, traceback: bool) -> Value {
    let mut remote = json!({
        "class": failure.class,
        "module": failure.module,
        "message": failure.message,
    });
    if traceback {
        remote["traceback"] = json!(failure.tb);
    }
    remote
}

// ---------------------------------------------------------------------------------------
// /readyz and /metrics.

fn secs_since(since: std::time::Instant) -> u64 {
    since.elapsed().as_secs()
}

fn status_json(s: &quartet_amqp::Status) -> Value {
    json!({
        "state": s.state.as_str(),
        "since_seconds": secs_since(s.since),
        "last_error": s.last_error.as_ref().map(|e| crate::error::Chain(e.as_ref()).to_string()),
        "connects": s.connects,
        "connection_name": &*s.connection_name,
    })
}

/// The `rpc` channel of `/readyz`: `None` without `[amqp]`. Not ready (with a reason)
/// while the client or a server is not connected.
pub fn readiness(built: &Built) -> Option<(bool, Value)> {
    let rpc = built.rpc.as_ref()?;
    let status = rpc.client.status();
    let mut ready = status.is_ready();
    let mut reasons = Vec::new();
    if !ready {
        reasons.push(format!(
            "rpc client {}{}",
            status.state.as_str(),
            status
                .last_error
                .as_ref()
                .map(|e| format!(": {}", crate::error::Chain(e.as_ref())))
                .unwrap_or_default()
        ));
    }
    let mut targets = Map::new();
    for (name, t) in &rpc.topics {
        targets.insert(
            name.clone(),
            json!({
                "endpoints": [{
                    "endpoint": rpc.broker,
                    "healthy": status.is_ready(),
                    "breaker": t.breaker.state(),
                    "in_flight": t.in_flight.load(std::sync::atomic::Ordering::Relaxed),
                }],
                "fault": t.parts.fault.get(),
                "exchange": t.spec.exchange,
            }),
        );
    }
    let mut servers = Map::new();
    for s in &rpc.servers {
        let st = s.server.status();
        if !st.is_ready() {
            ready = false;
            reasons.push(format!("rpc server {} {}", s.spec.topic, st.state.as_str()));
        }
        servers.insert(s.spec.topic.clone(), status_json(&st));
    }
    let state = match (ready, status.is_ready()) {
        (true, _) => "ready",
        (false, true) => "not_ready",
        (false, false) => status.state.as_str(),
    };
    let mut body = json!({
        "state": state,
        "client": status_json(&status),
        "broker": {"endpoint": rpc.broker, "fault": rpc.broker_fault.get()},
        "targets": targets,
        "servers": servers,
    });
    if !ready {
        body["reason"] = json!(reasons.join("; "));
    }
    Some((ready, body))
}

fn state_value(s: State) -> i64 {
    match s {
        State::Connecting => 0,
        State::Ready => 1,
        State::Down => 2,
    }
}

/// Reads the client's and servers' counters at scrape time into the one registry.
struct RpcCollector {
    slot: Weak<Mutex<Slot>>,
    descs: Vec<Desc>,
}

struct Families {
    state: IntGaugeVec,
    connects: IntCounterVec,
    client_requests: IntCounterVec,
    client_dropped: IntCounterVec,
    heartbeats: IntCounterVec,
    server_requests: IntCounterVec,
    server_dropped: IntCounterVec,
}

fn families() -> Result<Families, prometheus::Error> {
    let gauge = |n: &str, h: &str, l: &[&str]| IntGaugeVec::new(Opts::new(n, h), l);
    let counter = |n: &str, h: &str, l: &[&str]| IntCounterVec::new(Opts::new(n, h), l);
    Ok(Families {
        state: gauge(
            "quartet_rpc_connection_state",
            "Broker connection state (0 connecting, 1 ready, 2 down) by role and topic.",
            &["role", "topic"],
        )?,
        connects: counter(
            "quartet_rpc_connects_total",
            "Broker connections established (the first plus each reconnect).",
            &["role", "topic"],
        )?,
        client_requests: counter(
            "quartet_rpc_client_requests_total",
            "Calls and casts the RPC client sent.",
            &["kind"],
        )?,
        client_dropped: counter(
            "quartet_rpc_client_replies_dropped_total",
            "Replies the RPC client dropped: late (after the timeout), duplicate, unknown, bad.",
            &["reason"],
        )?,
        heartbeats: counter(
            "quartet_rpc_client_heartbeats_total",
            "Call-monitor heartbeats received.",
            &[],
        )?,
        server_requests: counter(
            "quartet_rpc_server_requests_total",
            "Requests the reverse bridge handled, by topic and kind (call, cast, failure).",
            &["topic", "kind"],
        )?,
        server_dropped: counter(
            "quartet_rpc_server_dropped_total",
            "Requests or replies the reverse bridge dropped: duplicate, bad_request, lost_reply.",
            &["topic", "reason"],
        )?,
    })
}

impl Families {
    fn all(&self) -> Vec<&dyn Collector> {
        vec![
            &self.state,
            &self.connects,
            &self.client_requests,
            &self.client_dropped,
            &self.heartbeats,
            &self.server_requests,
            &self.server_dropped,
        ]
    }
}

impl RpcCollector {
    fn new(slot: Weak<Mutex<Slot>>) -> Self {
        let descs = match families() {
            Ok(f) => f
                .all()
                .iter()
                .flat_map(|c| c.desc().into_iter().cloned())
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "rpc metrics not available");
                Vec::new()
            }
        };
        Self { slot, descs }
    }
}

impl Collector for RpcCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok(f) = families() else {
            return Vec::new();
        };
        let (client, servers) = match self.slot.upgrade() {
            Some(slot) => {
                let slot = slot.lock().unwrap_or_else(|p| p.into_inner());
                let servers: Vec<(String, Arc<RpcServer>)> = slot
                    .servers
                    .iter()
                    .filter_map(|(t, w)| w.upgrade().map(|s| (t.clone(), s)))
                    .collect();
                (slot.client.as_ref().map(|(_, c)| c.clone()), servers)
            }
            None => (None, Vec::new()),
        };
        if let Some(client) = client {
            let st = client.status();
            f.state
                .with_label_values(&["client", ""])
                .set(state_value(st.state));
            f.connects
                .with_label_values(&["client", ""])
                .inc_by(st.connects);
            let s = client.stats();
            f.client_requests
                .with_label_values(&["call"])
                .inc_by(s.calls);
            f.client_requests
                .with_label_values(&["cast"])
                .inc_by(s.casts);
            for (reason, n) in [
                ("late", s.late_replies),
                ("duplicate", s.duplicate_replies),
                ("unknown", s.unknown_replies),
                ("bad", s.bad_replies),
            ] {
                f.client_dropped.with_label_values(&[reason]).inc_by(n);
            }
            f.heartbeats
                .with_label_values::<&str>(&[])
                .inc_by(s.heartbeats);
        }
        for (topic, server) in servers {
            let st = server.status();
            f.state
                .with_label_values(&["server", &topic])
                .set(state_value(st.state));
            f.connects
                .with_label_values(&["server", &topic])
                .inc_by(st.connects);
            let s = server.stats();
            for (kind, n) in [
                ("call", s.calls),
                ("cast", s.casts),
                ("failure", s.failures),
            ] {
                f.server_requests
                    .with_label_values(&[&topic, kind])
                    .inc_by(n);
            }
            for (reason, n) in [
                ("duplicate", s.duplicates),
                ("bad_request", s.bad_requests),
                ("lost_reply", s.lost_replies),
            ] {
                f.server_dropped
                    .with_label_values(&[&topic, reason])
                    .inc_by(n);
            }
        }
        f.all().iter().flat_map(|c| c.collect()).collect()
    }
}

// ---------------------------------------------------------------------------------------
// The command line: `quartet rpc call|cast`.

/// `quartet rpc call` and `quartet rpc cast`.
#[derive(Debug, clap::Subcommand)]
pub enum RpcCommand {
    /// Call METHOD on TOPIC and print the JSON result (exit 1 on a remote exception).
    Call(RpcArgs),
    /// Cast METHOD to TOPIC (no reply; printed once the broker confirmed it).
    Cast(RpcArgs),
}

#[derive(Debug, clap::Args)]
pub struct RpcArgs {
    pub topic: String,
    pub method: String,
    /// The keyword arguments, a JSON object.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    pub args: String,
    /// Send to `<topic>.<server>`.
    #[arg(long)]
    pub server: Option<String>,
    /// The control exchange (default: the topic's in the config, else "openstack").
    #[arg(long)]
    pub exchange: Option<String>,
    /// Seconds to wait for the reply (and for the broker connection).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// A cast to every server of the topic.
    #[arg(long)]
    pub fanout: bool,
    /// The config whose [amqp] and [[rpc.topics]] are used (default: the embedded one).
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
}

/// Runs `quartet rpc ...`: 0 on success, 1 on a failed RPC, 64 on a bad config or input.
pub fn cli(command: RpcCommand) -> std::process::ExitCode {
    use std::process::ExitCode;
    let (kind, args) = match command {
        RpcCommand::Call(a) => (CallKind::Call, a),
        RpcCommand::Cast(a) => (CallKind::Cast, a),
    };
    let usage = || ExitCode::from(crate::cli::EXIT_CONFIG);
    let loaded = match crate::config::load(args.config.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return usage();
        }
    };
    let Some(amqp) = loaded.config.amqp.clone() else {
        eprintln!(
            "{}: no [amqp] table: no broker to send to",
            loaded.source.name()
        );
        return usage();
    };
    let call_args: Value = match serde_json::from_str(&args.args) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            eprintln!("quartet: --args must be a JSON object");
            return usage();
        }
        Err(e) => {
            eprintln!("quartet: --args is not JSON: {e}");
            return usage();
        }
    };
    let timeout = match args.timeout {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Some(Duration::from_secs_f64(s)),
        Some(_) => {
            eprintln!("quartet: --timeout must be seconds above 0");
            return usage();
        }
    };
    let topic = loaded
        .config
        .rpc
        .topics
        .iter()
        .find(|t| t.topic == args.topic)
        .cloned()
        .unwrap_or_else(|| RpcTopic {
            topic: args.topic.clone(),
            exchange: "openstack".to_owned(),
            policy: DEFAULT_POLICY.to_owned(),
            auth: Default::default(),
            access: None,
            mandatory: false,
            server: None,
            timeout: None,
            call_monitor_timeout: None,
            idempotent: false,
            forward_token: false,
            status_map: Default::default(),
        });
    let kind = if args.fanout { CallKind::Cast } else { kind };
    let mut req = RpcRequest::for_topic(&topic, kind, args.method.clone()).args(call_args);
    req.fanout = args.fanout;
    if let Some(s) = args.server {
        req.server = Some(s);
    }
    if let Some(e) = args.exchange {
        req.exchange = e;
    }
    if timeout.is_some() {
        req.timeout = timeout;
    }
    req.context = Context::oslo(&Caller {
        request_id: Some(format!("req-{}", uuid::Uuid::new_v4())),
        ..Caller::default()
    });
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quartet: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let connect_bound = timeout
        .unwrap_or(amqp.connect_timeout)
        .max(amqp.connect_timeout);
    let result = runtime.block_on(async move {
        let client = RpcClient::start(amqp);
        client.wait_ready(connect_bound).await?;
        let result = client.send(req).await;
        client.close().await;
        result
    });
    match result {
        Ok(RpcResponse::Reply(v)) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Ok(RpcResponse::Sent) => {
            println!("{}", json!({"sent": true}));
            ExitCode::SUCCESS
        }
        Err(RpcError::Remote(f)) => {
            eprintln!("{}", json!({"remote": remote_edge(&f, true)}));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("quartet: {}", crate::error::Chain(&e));
            ExitCode::FAILURE
        }
    }
}
