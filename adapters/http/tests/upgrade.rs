//! An HTTP/1.1 Upgrade (WebSocket-like) through a tiny gateway built as the module docs of
//! `quartet_http::proxy` describe, to an upstream that echoes after its 101.

mod common;

use common::spec;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use quartet_http::client::HttpClient;
use quartet_http::endpoint::EndpointService;
use quartet_http::proxy::{
    client_ip_value, is_upgrade, prepare_request, prepare_response, request_id, tunnel, Forwarded,
    REQUEST_ID,
};
use quartet_http::{BoxError, ProxyBody};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

/// Reads up to the end of an HTTP head (`\r\n\r\n`), byte by byte so nothing after it is
/// consumed.
async fn read_head(s: &mut (impl AsyncRead + Unpin)) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let b = s.read_u8().await.expect("head");
        head.push(b);
    }
    String::from_utf8(head).unwrap()
}

/// An upstream that switches to an echo protocol when asked properly.
async fn echo_upstream() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let head = read_head(&mut s).await.to_ascii_lowercase();
        if !(head.contains("\r\nupgrade: echo\r\n") && head.contains("\r\nconnection: upgrade\r\n"))
        {
            let _ = s
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
            return;
        }
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    (addr, task)
}

/// The gateway's part, as `proxy`'s module docs describe it.
async fn handle(
    ep: EndpointService,
    client_addr: std::net::SocketAddr,
    mut req: http::Request<Incoming>,
) -> Result<http::Response<ProxyBody>, BoxError> {
    let client_upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let id = request_id(req.headers());
    let fwd = Forwarded {
        client_ip: client_ip_value(client_addr),
        proto: "http",
    };
    prepare_request(&mut req, &fwd, &id);
    let req = req.map(|b| b.map_err(BoxError::from).boxed_unsync());
    // Boxed outside the async block's own analysis: awaiting `oneshot` directly inside a
    // future that must be Send trips rustc's higher-ranked lifetime check on the boxed
    // error type in `ProxyBody` ("implementation of Service is not general enough").
    let sent: futures_util::future::BoxFuture<'static, _> = Box::pin(ep.oneshot(req));
    let mut resp = sent.await?;
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(tunnel(client_upgrade, upstream_upgrade));
        }
    }
    prepare_response(&mut resp, &id);
    Ok(resp)
}

#[tokio::test]
async fn an_upgrade_is_tunnelled_both_ways() {
    let (up_addr, upstream) = echo_upstream().await;
    let url = format!("http://{up_addr}");
    let ep =
        EndpointService::new(&url, HttpClient::new(&spec(vec![url.clone()])).unwrap()).unwrap();

    let gw = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw_addr = gw.local_addr().unwrap();
    let gateway = tokio::spawn(async move {
        let (s, client_addr) = gw.accept().await.unwrap();
        let svc = service_fn(move |req| handle(ep.clone(), client_addr, req));
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(s), svc)
            .with_upgrades()
            .await;
    });

    let mut client = TcpStream::connect(gw_addr).await.unwrap();
    client
        .write_all(b"GET /ws HTTP/1.1\r\nHost: gw.example\r\nConnection: keep-alive, Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains(REQUEST_ID.as_str()),
        "{head}"
    );

    for msg in [&b"ping"[..], b"a longer second message", b"\x00\xffbinary"] {
        client.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
    drop(client);
    gateway.await.unwrap();
    upstream.await.unwrap();
}

#[tokio::test]
async fn a_refused_upgrade_is_an_ordinary_response() {
    // The upstream answers 400 when the upgrade headers did not reach it; here the client
    // asks for no upgrade, so no tunnel is set up and the 400 comes back as it is.
    let (up_addr, upstream) = echo_upstream().await;
    let url = format!("http://{up_addr}");
    let ep =
        EndpointService::new(&url, HttpClient::new(&spec(vec![url.clone()])).unwrap()).unwrap();
    let req = http::Request::get("/ws")
        .header("upgrade", "echo")
        .body(quartet_http::body::empty())
        .unwrap();
    let resp = ep.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 400);
    upstream.await.unwrap();
}
