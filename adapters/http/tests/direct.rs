//! The direct HTTP/1.1 exchange (`quartet_http::h1`, used by the pool for requests held
//! in memory) against an upstream that writes exact bytes: body framings, interim
//! answers, connection reuse, and the upstream's mistakes.

mod common;

use bytes::Bytes;
use common::spec;
use http_body_util::BodyExt;
use quartet_http::body::{full, ProxyBody};
use quartet_http::classify::CallInfo;
use quartet_http::client::HttpClient;
use quartet_http::endpoint::EndpointService;
use quartet_http::error::UpstreamError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

/// What the scripted upstream does with one request.
enum Answer {
    /// Writes these bytes and keeps the connection.
    Keep(&'static [u8]),
    /// Writes these bytes and closes the connection.
    Close(&'static [u8]),
}

/// An upstream answering the n-th request (over all connections) with `answers[n]`
/// (the last one for any later request). Records each request's bytes.
struct Raw {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Raw {
    async fn start(answers: Vec<Answer>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(answers);
        let (conns, reqs) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, answers.clone(), reqs.clone()));
            }
        });
        Self {
            addr,
            connections,
            requests,
        }
    }

    fn endpoint(&self) -> EndpointService {
        let url = format!("http://{}", self.addr);
        EndpointService::new(&url, HttpClient::new(&spec(vec![url.clone()])).unwrap()).unwrap()
    }

    fn request(&self, n: usize) -> String {
        String::from_utf8(self.requests.lock().unwrap()[n].clone()).unwrap()
    }
}

async fn serve(
    mut stream: TcpStream,
    answers: Arc<Vec<Answer>>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
) {
    let mut buf = Vec::new();
    loop {
        // One request: its head, then Content-Length bytes.
        let (head_end, length) = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..at]).to_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                break (at + 4, length);
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let request: Vec<u8> = buf.drain(..head_end + length).collect();
        let n = {
            let mut reqs = requests.lock().unwrap();
            reqs.push(request);
            reqs.len() - 1
        };
        match &answers[n.min(answers.len() - 1)] {
            Answer::Keep(bytes) => {
                if stream.write_all(bytes).await.is_err() {
                    return;
                }
            }
            Answer::Close(bytes) => {
                let _ = stream.write_all(bytes).await;
                return;
            }
        }
    }
}

/// A request as the gateway hands it to the endpoint: its body in the replay buffer.
fn buffered(method: &str, path: &str, body: &'static [u8]) -> http::Request<ProxyBody> {
    let bytes = Bytes::from_static(body);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "api.example")
        .body(full(bytes.clone()))
        .unwrap();
    let info = CallInfo::default();
    info.set_buffered(bytes);
    req.extensions_mut().insert(std::sync::Arc::new(info));
    req
}

async fn call(
    ep: &EndpointService,
    req: http::Request<ProxyBody>,
) -> Result<(http::Response<()>, Bytes, Option<http::HeaderMap>), quartet_http::BoxError> {
    let resp = ep.clone().oneshot(req).await?;
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok((
        http::Response::from_parts(parts, ()),
        collected.to_bytes(),
        trailers,
    ))
}

#[tokio::test]
async fn a_buffered_request_goes_out_with_its_length_and_the_connection_is_reused() {
    let up = Raw::start(vec![Answer::Keep(
        b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello",
    )])
    .await;
    let ep = up.endpoint();
    for _ in 0..3 {
        let (resp, body, _) = call(&ep, buffered("POST", "/v2/x?y=1", b"{\"a\":1}"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        assert_eq!(body, "hello");
        let values: Vec<_> = resp.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
    }
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "one kept-alive connection"
    );
    let req = up.request(0);
    assert!(req.starts_with("POST /v2/x?y=1 HTTP/1.1\r\n"), "{req}");
    assert!(req.contains("host: api.example\r\n"), "{req}");
    assert!(req.ends_with("content-length: 7\r\n\r\n{\"a\":1}"), "{req}");
}

#[tokio::test]
async fn a_chunked_body_is_decoded_with_its_trailers() {
    let up = Raw::start(vec![Answer::Keep(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Checksum: abc\r\n\r\n",
    )])
    .await;
    let ep = up.endpoint();
    for _ in 0..2 {
        let (resp, body, trailers) = call(&ep, buffered("GET", "/", b"")).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(body, "hello, world");
        assert_eq!(trailers.unwrap()["x-checksum"], "abc");
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_without_length_is_read_until_close_and_the_connection_not_reused() {
    let up = Raw::start(vec![Answer::Close(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
    )])
    .await;
    let ep = up.endpoint();
    for _ in 0..2 {
        let (_, body, _) = call(&ep, buffered("GET", "/", b"")).await.unwrap();
        assert_eq!(body, "until the end");
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn interim_answers_are_skipped_and_head_has_no_body() {
    let up = Raw::start(vec![
        Answer::Keep(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        Answer::Keep(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
        Answer::Keep(b"HTTP/1.1 204 No Content\r\n\r\n"),
        Answer::Keep(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nend"),
    ])
    .await;
    let ep = up.endpoint();
    let (resp, body, _) = call(&ep, buffered("PUT", "/x", b"data")).await.unwrap();
    assert_eq!((resp.status().as_u16(), &body[..]), (200, &b"ok"[..]));
    let (resp, body, _) = call(&ep, buffered("HEAD", "/x", b"")).await.unwrap();
    assert_eq!(resp.headers()["content-length"], "1000");
    assert!(body.is_empty());
    let (resp, body, _) = call(&ep, buffered("DELETE", "/x", b"")).await.unwrap();
    assert_eq!((resp.status().as_u16(), body.len()), (204, 0));
    let (_, body, _) = call(&ep, buffered("GET", "/x", b"")).await.unwrap();
    assert_eq!(body, "end");
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_replaced() {
    // The first answer closes its connection (without saying so): the next request must
    // not be lost on it.
    let up = Raw::start(vec![
        Answer::Close(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"),
        Answer::Keep(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"),
    ])
    .await;
    let ep = up.endpoint();
    let (_, body, _) = call(&ep, buffered("POST", "/", b"1")).await.unwrap();
    assert_eq!(body, "a");
    // Let the close reach us.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let (_, body, _) = call(&ep, buffered("POST", "/", b"2")).await.unwrap();
    assert_eq!(body, "b");
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
    assert_eq!(
        up.requests.lock().unwrap().len(),
        2,
        "each request sent once"
    );
}

#[tokio::test]
async fn a_large_body_streams_across_reads() {
    static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let big = BIG.get_or_init(|| {
        let mut v =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 3_000_000).into_bytes();
        v.extend((0..3_000_000u32).map(|i| (i % 251) as u8));
        v
    });
    let up = Raw::start(vec![Answer::Keep(big)]).await;
    let ep = up.endpoint();
    let resp = ep.clone().oneshot(buffered("GET", "/", b"")).await.unwrap();
    let mut body = resp.into_body();
    let (mut total, mut frames) = (0usize, 0usize);
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        assert!(data
            .iter()
            .enumerate()
            .all(|(i, b)| *b == ((total + i) % 251) as u8));
        total += data.len();
        frames += 1;
    }
    assert_eq!(total, 3_000_000);
    assert!(frames > 1, "streamed in several frames, not buffered whole");
}

#[tokio::test]
async fn the_upstreams_mistakes_are_errors_not_panics() {
    let cases: [&'static [u8]; 6] = [
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        b"",
    ];
    for bytes in cases {
        let up = Raw::start(vec![Answer::Close(bytes)]).await;
        let ep = up.endpoint();
        let err = call(&ep, buffered("POST", "/", b"x"))
            .await
            .expect_err(&String::from_utf8_lossy(bytes));
        // Before the head: an UpstreamError (the request was sent); in the body: the
        // body's error.
        let in_head = err.downcast_ref::<UpstreamError>().is_some();
        let text = format!("{err}");
        assert!(
            in_head || text.contains("body") || text.contains("chunk"),
            "{text}"
        );
    }
}

/// A holder of one prepared header block, as a validated token is.
struct Block(quartet_policies::head::HeaderBlock);

impl quartet_policies::head::HoldsHeaderBlocks for Block {
    fn header_block(&self, _: usize) -> &quartet_policies::head::HeaderBlock {
        &self.0
    }
}

#[tokio::test]
async fn added_headers_reach_the_upstream_on_either_way_of_sending() {
    use quartet_policies::head::{AddedHeaders, HeaderBlock};
    let up = Raw::start(vec![Answer::Keep(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )])
    .await;
    let ep = up.endpoint();
    let block = Arc::new(Block(HeaderBlock::new(vec![
        (
            http::HeaderName::from_static("x-roles"),
            http::HeaderValue::from_static("admin,member"),
        ),
        (
            http::HeaderName::from_static("x-user-id"),
            http::HeaderValue::from_static("u1"),
        ),
    ])));
    // In memory: written by the direct exchange, after the request's own headers.
    let mut req = buffered("PUT", "/a", b"{}");
    req.extensions_mut()
        .insert(AddedHeaders::new(block.clone(), 0));
    call(&ep, req).await.unwrap();
    // A body not held in memory: hyper writes the head, from the map.
    let mut req = http::Request::builder()
        .method("PUT")
        .uri("/b")
        .header("host", "api.example")
        .body(full(Bytes::from_static(b"{}")))
        .unwrap();
    req.extensions_mut().insert(AddedHeaders::new(block, 0));
    call(&ep, req).await.unwrap();
    for n in 0..2 {
        let req = up.request(n).to_lowercase();
        assert_eq!(req.matches("x-roles: admin,member\r\n").count(), 1, "{req}");
        assert_eq!(req.matches("x-user-id: u1\r\n").count(), 1, "{req}");
        assert!(req.ends_with("\r\n\r\n{}"), "{req}");
    }
}
