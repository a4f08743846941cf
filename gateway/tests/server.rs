//! The server loop on real sockets (port 0): HTTP/1.1, h2c by prior knowledge, TLS with h2
//! by ALPN, WebSocket upgrades, config reloads, and draining on shutdown.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use quartet::config::{self, Loaded};
use quartet::server::Server;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;

static FILES: AtomicUsize = AtomicUsize::new(0);

/// A file in the temp dir, unique to this test run.
fn temp_file(name: &str, contents: &str) -> PathBuf {
    let n = FILES.fetch_add(1, Ordering::SeqCst);
    let path = std::env::temp_dir().join(format!(
        "quartet-server-test-{}-{n}-{name}",
        std::process::id()
    ));
    std::fs::write(&path, contents).unwrap();
    path
}

const SERVER: &str = "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n";

struct Running {
    public: SocketAddr,
    admin: SocketAddr,
    reloader: quartet::server::Reloader,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<(), quartet::server::RunError>>,
}

async fn start(loaded: Loaded) -> Running {
    let server = Server::bind(loaded).await.unwrap();
    let public = server.public_addr().unwrap();
    let admin = server.admin_addr().unwrap();
    let reloader = server.reloader();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    Running {
        public,
        admin,
        reloader,
        stop: Some(stop),
        done,
    }
}

async fn start_file(path: &std::path::Path) -> Running {
    start(config::load(Some(path)).unwrap_or_else(|e| panic!("{e}"))).await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test]
async fn port_zero_binds_real_ports_and_serves_http1_and_h2c() {
    let up = Upstream::start().await;
    let path = temp_file("q.toml", &format!("{SERVER}{}", one_route(&up, "/a", "")));
    let mut gw = start_file(&path).await;
    assert_ne!(gw.public.port(), 0);
    assert_ne!(gw.admin.port(), 0);

    let resp = client()
        .get(format!("http://{}/a/x", gw.public))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);

    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2
        .get(format!("http://{}/a/x", gw.public))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let seen: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(seen["path"], "/a/x");

    let ready = client()
        .get(format!("http://{}/readyz", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    gw.stop.take().unwrap().send(()).unwrap();
    gw.done.await.unwrap().unwrap();
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn reload_swaps_a_good_config_and_refuses_a_bad_one() {
    let a = Upstream::start().await;
    let b = Upstream::start().await;
    let route_to = |up: &Upstream| format!("{SERVER}{}", one_route(up, "/svc", ""));
    let path = temp_file("reload.toml", &route_to(&a));
    let mut gw = start_file(&path).await;
    let get = || client().get(format!("http://{}/svc/x", gw.public)).send();

    assert_eq!(get().await.unwrap().status(), 200);
    assert_eq!(a.hits.load(Ordering::SeqCst), 1);

    // A fault set at run time survives the reload (its target still exists).
    let put = client()
        .put(format!("http://{}/admin/faults/a", gw.admin))
        .body(r#"{"delay": "1ms", "delay_percent": 100.0}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);

    std::fs::write(&path, route_to(&b)).unwrap();
    assert!(gw.reloader.reload());
    assert_eq!(get().await.unwrap().status(), 200);
    assert_eq!(b.hits.load(Ordering::SeqCst), 1);
    assert_eq!(a.hits.load(Ordering::SeqCst), 1);
    let faults: serde_json::Value = client()
        .get(format!("http://{}/admin/faults", gw.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(faults[0]["fault"]["delay"], "1ms");

    // A bad config is refused; the running one keeps serving.
    std::fs::write(
        &path,
        format!(
            "{}\n[[routes]]\nprefix = \"/x\"\nupstream = \"nope\"\n",
            route_to(&a)
        ),
    )
    .unwrap();
    assert!(!gw.reloader.reload());
    std::fs::write(&path, "not toml [").unwrap();
    assert!(!gw.reloader.reload());
    assert_eq!(get().await.unwrap().status(), 200);
    assert_eq!(b.hits.load(Ordering::SeqCst), 2);

    gw.stop.take().unwrap().send(()).unwrap();
    gw.done.await.unwrap().unwrap();
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn a_reload_does_not_drop_requests_in_flight() {
    let a = Upstream::start().await;
    let b = Upstream::start().await;
    let route_to = |up: &Upstream| format!("{SERVER}{}", one_route(up, "/svc", ""));
    let path = temp_file("inflight.toml", &route_to(&a));
    let mut gw = start_file(&path).await;
    let slow = tokio::spawn(
        client()
            .get(format!("http://{}/svc/slow/700", gw.public))
            .send(),
    );
    wait_until(|| a.hits.load(Ordering::SeqCst) == 1).await;
    std::fs::write(&path, route_to(&b)).unwrap();
    assert!(gw.reloader.reload());
    let resp = slow.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    gw.stop.take().unwrap().send(()).unwrap();
    gw.done.await.unwrap().unwrap();
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn shutdown_drains_requests_in_flight_then_stops_accepting() {
    let up = Upstream::start().await;
    let path = temp_file(
        "drain.toml",
        &format!(
            "{SERVER}grace_period = \"10s\"\n{}",
            one_route(&up, "/a", "")
        ),
    );
    let mut gw = start_file(&path).await;
    let public = gw.public;
    let slow = tokio::spawn(client().get(format!("http://{public}/a/slow/800")).send());
    wait_until(|| up.hits.load(Ordering::SeqCst) == 1).await;
    gw.stop.take().unwrap().send(()).unwrap();
    let resp = slow.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    gw.done.await.unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(public).await.is_err());
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn tls_listener_offers_h2_by_alpn() {
    let up = Upstream::start().await;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = cert.cert.pem();
    let cert_path = temp_file("cert.pem", &cert_pem);
    let key_path = temp_file("key.pem", &cert.signing_key.serialize_pem());
    let path = temp_file(
        "tls.toml",
        &format!(
            "{SERVER}tls = {{ cert = {:?}, key = {:?} }}\n{}",
            cert_path.display().to_string(),
            key_path.display().to_string(),
            one_route(&up, "/a", "")
        ),
    );
    let mut gw = start_file(&path).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .resolve("localhost", gw.public)
        .build()
        .unwrap();
    let resp = client
        .get(format!("https://localhost:{}/a/x", gw.public.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let seen: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");

    let h1 = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .resolve("localhost", gw.public)
        .build()
        .unwrap();
    let resp = h1
        .get(format!("https://localhost:{}/a/x", gw.public.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);

    gw.stop.take().unwrap().send(()).unwrap();
    gw.done.await.unwrap().unwrap();
    for p in [path, cert_path, key_path] {
        let _ = std::fs::remove_file(p);
    }
}

/// An upstream that echoes WebSocket messages.
async fn ws_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use axum::extract::ws::{WebSocket, WebSocketUpgrade};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().route(
        "/ws",
        axum::routing::get(|ws: WebSocketUpgrade| async move {
            ws.on_upgrade(|mut socket: WebSocket| async move {
                while let Some(Ok(msg)) = socket.recv().await {
                    if socket.send(msg).await.is_err() {
                        break;
                    }
                }
            })
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, task)
}

#[tokio::test]
async fn websocket_upgrades_pass_through() {
    let (ws_addr, ws_task) = ws_upstream().await;
    let path = temp_file(
        "ws.toml",
        &format!(
            "{SERVER}[upstreams.ws]\nendpoints = [\"http://{ws_addr}\"]\n[[routes]]\nprefix = \"/console\"\nupstream = \"ws\"\nstrip_prefix = true\n"
        ),
    );
    let mut gw = start_file(&path).await;
    let (mut socket, resp) =
        tokio_tungstenite::connect_async(format!("ws://{}/console/ws", gw.public))
            .await
            .unwrap();
    assert_eq!(resp.status(), 101);
    for text in ["hello", "through", "quartet"] {
        socket
            .send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    socket.close(None).await.unwrap();
    gw.stop.take().unwrap().send(()).unwrap();
    gw.done.await.unwrap().unwrap();
    ws_task.abort();
    let _ = std::fs::remove_file(path);
}
