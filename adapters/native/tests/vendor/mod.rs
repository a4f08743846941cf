//! A vendor's REST API for the `http` driver's tests: volumes under `/api/v1`, token
//! `secret` in `X-Auth-Token` (or basic `admin:pw`), and the driver spec that points at it.
//! Shared by this package's `http` tests and the gateway's stack tests.

#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use quartet_native::drivers::http::HttpDriver;
use quartet_native::spec::{DriverSettings, DriverSpec};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub auth: Option<String>,
    pub body: Value,
}

#[derive(Clone, Default)]
pub struct Backend {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// 0: answer by route; otherwise this status for everything.
    pub force: Arc<AtomicU16>,
}

impl Backend {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
    pub fn hits(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }
}

/// A vendor API: volumes under `/api/v1`, token `secret` in `X-Auth-Token` (or basic
/// `admin:pw`).
pub async fn answer(backend: Backend, req: hyper::Request<hyper::body::Incoming>) -> (u16, Value) {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let auth = req
        .headers()
        .get("x-auth-token")
        .or_else(|| req.headers().get("authorization"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    backend.seen.lock().expect("lock").push(Seen {
        method: method.clone(),
        path: path.clone(),
        auth: auth.clone(),
        body: body.clone(),
    });
    let forced = backend.force.load(Ordering::SeqCst);
    if forced != 0 {
        return (forced, json!({"error": "forced"}));
    }
    let authorised = matches!(auth.as_deref(), Some("secret") | Some("Basic YWRtaW46cHc="));
    if !authorised {
        return (401, json!({"error": "who are you"}));
    }
    match (method.as_str(), path.as_str()) {
        ("POST", "/api/v1/volumes") => (201, json!({"created": body})),
        ("GET", "/api/v1/volumes/missing") => (404, json!({"error": "no such volume"})),
        ("DELETE", "/api/v1/volumes/busy") => (409, json!({"error": "has snapshots"})),
        ("GET", "/api/v1/bad") => (400, json!({"error": "bad request"})),
        ("GET", "/api/v1/flaky") | ("POST", "/api/v1/flaky") => (503, json!({"error": "busy"})),
        ("GET", "/api/v1/text") => (200, Value::String("plain".into())),
        ("GET", p) if p.starts_with("/api/v1/volumes/") => (200, json!({"path": p})),
        _ => (404, json!({"error": "no route"})),
    }
}

/// Serves `backend` on `listener` until the returned set is dropped (which also drops every
/// open connection: the server is really gone).
pub fn serve(listener: TcpListener, backend: Backend) -> JoinSet<()> {
    let mut set = JoinSet::new();
    set.spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let backend = backend.clone();
            conns.spawn(async move {
                let svc = service_fn(move |req| {
                    let backend = backend.clone();
                    async move {
                        let (status, body) = answer(backend, req).await;
                        let bytes = match &body {
                            Value::String(s) => Bytes::from(s.clone()),
                            other => Bytes::from(other.to_string()),
                        };
                        hyper::Response::builder()
                            .status(status)
                            .body(Full::new(bytes))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    set
}

pub fn spec_toml(addr: SocketAddr, auth: &str) -> String {
    format!(
        r#"
name = "array"
kind = "http"
base_url = "http://{addr}/api/v1"
auth = {auth}
connect_timeout = "2s"

[operations.create_volume]
method = "POST"
path = "/volumes"
body = {{ name = "{{id}}", size = "{{size_gb}}", label = "vol-{{id}}", tags = ["{{id}}"] }}

[operations.get_volume]
method = "GET"
path = "/volumes/{{id}}"

[operations.delete_volume]
method = "DELETE"
path = "/volumes/{{id}}"

[operations.bad]
method = "GET"
path = "/bad"

[operations.text]
method = "GET"
path = "/text"

[operations.flaky_get]
method = "GET"
path = "/flaky"

[operations.flaky_post]
method = "POST"
path = "/flaky"
"#
    )
}

pub fn http_driver(addr: SocketAddr, auth: &str) -> HttpDriver {
    let spec: DriverSpec = toml::from_str(&spec_toml(addr, auth)).expect("spec parses");
    let DriverSettings::Http(http) = &spec.settings else {
        panic!("an http spec");
    };
    HttpDriver::new(http).expect("driver")
}

pub async fn start() -> (SocketAddr, Backend, JoinSet<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let backend = Backend::default();
    let server = serve(listener, backend.clone());
    (addr, backend, server)
}
