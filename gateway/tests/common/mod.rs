//! Helpers for the gateway's component tests: a real upstream on port 0, and the app and
//! admin routers built from a config string.
#![allow(dead_code)]

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::{Method, StatusCode};
use quartet::admin::{self, AdminState};
use quartet::stack::Shared;
use quartet::App;
use quartet_policies::metrics::Metrics;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// An upstream that answers by path: `.../status/N` with status N, `.../slow/MS` after
/// MS milliseconds, `.../mirror` with the request body streamed back, anything else with
/// a JSON echo of what reached it (path, query, headers, body length).
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn number_after(segments: &[&str], name: &str) -> Option<u64> {
    let i = segments.iter().position(|s| *s == name)?;
    segments.get(i + 1)?.parse().ok()
}

async fn answer(hits: Arc<AtomicUsize>, req: Request) -> Response {
    hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.split('/').collect();
    if let Some(ms) = number_after(&segments, "slow") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(code) = number_after(&segments, "status") {
        let status = StatusCode::from_u16(code as u16).unwrap_or(StatusCode::IM_A_TEAPOT);
        return (status, format!("status {code}")).into_response();
    }
    if segments.last() == Some(&"mirror") {
        return Response::new(req.into_body());
    }
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().to_string();
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
        .collect();
    let body_len = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    axum::Json(json!({
        "method": method,
        "path": path,
        "query": query,
        "headers": headers,
        "body_len": body_len,
    }))
    .into_response()
}

impl Upstream {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let router = Router::new().fallback(move |req: Request| answer(h.clone(), req));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { addr, hits, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A URL where nothing listens (a port bound then released).
pub async fn dead_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// One upstream `a` on `up` and one route on `prefix` with extra route keys.
pub fn one_route(up: &Upstream, prefix: &str, extra: &str) -> String {
    format!(
        "[upstreams.a]\nendpoints = [\"{}\"]\n\n[[routes]]\nprefix = \"{prefix}\"\nupstream = \"a\"\n{extra}\n",
        up.url()
    )
}

pub fn build_app(src: &str) -> App {
    let (config, _) =
        quartet::config::parse(src, "test.toml", |_| None).unwrap_or_else(|e| panic!("{e}"));
    App::build(config, &Shared::new(Metrics::new())).unwrap()
}

/// The app (for the public router) and the admin router over it.
pub fn build_admin(src: &str) -> (Arc<App>, Router) {
    let (config, _) =
        quartet::config::parse(src, "test.toml", |_| None).unwrap_or_else(|e| panic!("{e}"));
    let shared = Shared::new(Metrics::new());
    let app = Arc::new(App::build(config, &shared).unwrap());
    let swap = Arc::new(ArcSwap::new(app.clone()));
    let admin = admin::router(AdminState {
        app: swap,
        shared,
        serving: Arc::new(AtomicBool::new(true)),
    });
    (app, admin)
}

pub async fn json_body(resp: Response) -> Value {
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))
}

/// Calls the admin router; returns the status and the JSON body (null when empty).
pub async fn admin_call(
    admin: &Router,
    method: Method,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (u16, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = body.map_or(Body::empty(), |b| Body::from(b.to_string()));
    let resp = admin
        .clone()
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, value)
}

/// Waits until `cond` holds (at most 10 s).
pub async fn wait_until(cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
