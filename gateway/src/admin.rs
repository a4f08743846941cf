//! The admin listener: health, readiness, metrics, and the run-time controls of breakers
//! and faults. It reads the app current when each request arrives, so a reload shows at
//! once. With `server.admin_token` set, every request needs `Authorization: Bearer TOKEN`.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /healthz` | 200 `{"status": "ok"}` |
//! | `GET /readyz` | 200 or 503 `{"status": "ready"\|"not_ready", "channels": {"rest": {"state", "targets": {NAME: {"endpoints": [{"endpoint", "healthy", "breaker", "in_flight"}], "fault"}}}, "native": {"state", "jobs": {"state"}, "drivers": {NAME: {"kind", "ready", "breaker", "in_flight", "fault"} or {"kind", "ready": false, "reason"}}}}}` (`native` only when drivers are configured) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /admin/breakers` | 200, a list of breaker snapshots |
//! | `GET /admin/sql` | 200 `{"listeners": {NAME: {"target", "listen", "protocol", "pool_mode", "role", "ready", "reason"?, "clients", "backends": [{"endpoint", "role", "healthy", "breaker"}], "pools": [...], "stats": {...}}}}` (see docs/sql.md) |
//! | `POST /admin/breakers/{target}[?endpoint=host:port]` `{"state": "forced_open"\|"closed"\|"disabled"}` | 200 with the snapshots changed; 404 unknown target; 400 bad body |
//! | `GET /admin/faults` | 200 `[{"channel", "target", "fault"}]` for every fault set |
//! | `PUT /admin/faults/{target}` with a fault (`delay`, `delay_percent`, `abort_status`, `abort_percent`) | 200, the same list shape for the targets set; 400 naming the key; 404 |
//! | `DELETE /admin/faults/{target}` | 204; 404 |
//!
//! `{target}` is an upstream's name, or `channel:name` (`rest:compute`). Errors use the
//! Keystone error body.

use crate::error::{self, BadRequest, NoRoute, Unauthorized, UnknownTarget};
use crate::stack::{Built, Shared};
use crate::App;
use arc_swap::ArcSwap;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use http::{header, HeaderValue, Response, StatusCode};
use quartet_policies::breaker::AdminState as BreakerCommand;
use quartet_policies::spec::FaultSpec;
use quartet_policies::BoxError;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What the admin router reads: the current app, the state shared across reloads, and
/// whether the public listener is serving.
#[derive(Clone)]
pub struct AdminState {
    pub app: Arc<ArcSwap<App>>,
    pub shared: Shared,
    pub serving: Arc<AtomicBool>,
}

impl AdminState {
    fn built(&self) -> Arc<Built> {
        self.app.load().built.clone()
    }
}

/// The admin API's one error type: every failure goes through the edge function.
pub struct ApiError(BoxError);

impl<E: Into<BoxError>> From<E> for ApiError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let mut resp = error::into_response(self.0.as_ref(), None);
        // The identity check's 401 carries its own (`Keystone uri=...`).
        if resp.status() == StatusCode::UNAUTHORIZED
            && !resp.headers().contains_key(header::WWW_AUTHENTICATE)
        {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/admin/breakers", get(list_breakers))
        .route("/admin/breakers/{target}", post(set_breaker))
        .route("/admin/faults", get(list_faults))
        .route("/admin/faults/{target}", put(set_fault).delete(clear_fault))
        .route("/admin/sql", get(crate::sql::admin_sql))
        .fallback(|| async { ApiError::from(NoRoute) })
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(
    State(state): State<AdminState>,
    req: Request,
    next: Next,
) -> Result<axum::response::Response, ApiError> {
    let built = state.built();
    if let Some(token) = &built.config.server.admin_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| same_secret(g.as_bytes(), token.expose().as_bytes())) {
            return Err(Unauthorized.into());
        }
    }
    crate::identity::admin_check(&built, req.method(), req.headers()).await?;
    Ok(next.run(req).await)
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The state of every channel and target.
pub fn readiness(built: &Built, serving: bool) -> (bool, Value) {
    let mut targets = serde_json::Map::new();
    for (name, up) in &built.rest.upstreams {
        let endpoints: Vec<Value> = up
            .endpoints
            .iter()
            .map(|e| {
                json!({
                    "endpoint": e.name,
                    "healthy": e.healthy.load(Ordering::Relaxed),
                    "breaker": e.breaker.state(),
                    "in_flight": e.in_flight.load(Ordering::Relaxed),
                })
            })
            .collect();
        targets.insert(
            name.clone(),
            json!({"endpoints": endpoints, "fault": up.parts.fault.get()}),
        );
    }
    let rest_state = if serving { "ready" } else { "not_ready" };
    let mut ready = serving;
    let mut channels = serde_json::Map::new();
    channels.insert(
        "rest".into(),
        json!({"state": rest_state, "targets": targets}),
    );
    // Listed only when drivers are configured, as a channel with no config is absent.
    if !built.native.drivers.is_empty() {
        let (native_ready, native) = built.native.readiness();
        ready &= native_ready;
        channels.insert("native".into(), native);
    }
    // Listed only when SQL listeners are configured.
    if let Some((sql_ready, sql)) = crate::sql::readiness(&built.sql) {
        ready &= sql_ready;
        channels.insert("sql".into(), sql);
    }
    if let Some((rpc_ready, rpc)) = crate::rpc::readiness(built) {
        ready &= rpc_ready;
        channels.insert("rpc".into(), rpc);
    }
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "channels": channels,
    });
    (ready, body)
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, Json<Value>) {
    let built = state.built();
    let (mut ready, mut body) = readiness(&built, state.serving.load(Ordering::Relaxed));
    if let Some((ok, identity)) = crate::identity::readiness(&built).await {
        ready &= ok;
        body["channels"]["identity"] = identity;
        if !ok {
            body["status"] = json!("not_ready");
        }
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

async fn metrics(State(state): State<AdminState>) -> Response<Body> {
    let mut resp = Response::new(Body::from(state.shared.metrics.render()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

async fn list_breakers(State(state): State<AdminState>) -> Json<Value> {
    Json(json!(state.built().breakers.list()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakerBody {
    state: BreakerCommand,
}

#[derive(Deserialize)]
struct EndpointQuery {
    endpoint: Option<String>,
}

fn bad_json(e: &serde_json::Error) -> ApiError {
    BadRequest {
        message: format!("invalid body: {e}"),
    }
    .into()
}

async fn set_breaker(
    State(state): State<AdminState>,
    Path(target): Path<String>,
    Query(q): Query<EndpointQuery>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let built = state.built();
    let handles = built.breakers.find(&target, q.endpoint.as_deref());
    if handles.is_empty() {
        let target = match q.endpoint {
            Some(e) => format!("{target} (endpoint {e})"),
            None => target,
        };
        return Err(UnknownTarget { target }.into());
    }
    let cmd: BreakerBody = serde_json::from_slice(&body).map_err(|e| bad_json(&e))?;
    let snapshots: Vec<_> = handles
        .iter()
        .map(|h| {
            h.set(cmd.state);
            tracing::info!(target = %h.target(), endpoint = h.endpoint(), state = ?cmd.state, "breaker set by the admin API");
            h.snapshot()
        })
        .collect();
    Ok(Json(json!(snapshots)))
}

async fn list_faults(State(state): State<AdminState>) -> Json<Value> {
    let active: Vec<Value> = state
        .built()
        .faults
        .active()
        .into_iter()
        .map(|(t, f)| json!({"channel": t.channel, "target": &*t.name, "fault": f}))
        .collect();
    Json(json!(active))
}

async fn set_fault(
    State(state): State<AdminState>,
    Path(target): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let built = state.built();
    let handles = built.faults.find(&target);
    if handles.is_empty() {
        return Err(UnknownTarget { target }.into());
    }
    let spec: FaultSpec = serde_json::from_slice(&body).map_err(|e| bad_json(&e))?;
    spec.validate().map_err(|e| BadRequest {
        message: format!("{}: {}", e.key, e.message),
    })?;
    for h in &handles {
        let t = h.target();
        if t.channel == "rpc" && &*t.name == quartet_amqp::BROKER_TARGET {
            if let Some((key, message)) = quartet_amqp::toxic::broker_fault_problem(&spec) {
                return Err(BadRequest {
                    message: format!("{key}: {message}"),
                }
                .into());
            }
        }
    }
    let mut set = Vec::new();
    for h in &handles {
        h.set(Some(spec.clone()));
        state.shared.remember_fault(h.target(), Some(spec.clone()));
        tracing::info!(target = %h.target(), fault = ?spec, "fault set by the admin API");
        set.push(
            json!({"channel": h.target().channel, "target": &*h.target().name, "fault": spec}),
        );
    }
    // The same shape as GET /admin/faults: one entry per target the name matched.
    Ok(Json(json!(set)))
}

async fn clear_fault(
    State(state): State<AdminState>,
    Path(target): Path<String>,
) -> Result<StatusCode, ApiError> {
    let built = state.built();
    let handles = built.faults.find(&target);
    if handles.is_empty() {
        return Err(UnknownTarget { target }.into());
    }
    for h in &handles {
        h.set(None);
        state.shared.remember_fault(h.target(), None);
        tracing::info!(target = %h.target(), "fault cleared by the admin API");
    }
    Ok(StatusCode::NO_CONTENT)
}
