//! Quartet's own pool of HTTP/1.1 connections to one plain `http://` endpoint, on hyper's
//! low-level `client::conn::http1`.
//!
//! Why not hyper-util's pooled client for these: per request it checks a connection out of
//! a keyed pool behind a future racing a lazy connect, and when the response body is not
//! finished yet it spawns a task whose only job is to wait until the connection can be
//! put back. That is an extra task, its wake-ups and several allocations per request,
//! which showed in `bench/cpu.sh` as CPU per request. Here a connection goes back to the
//! pool from the response body itself, the moment its last frame is read.
//!
//! How one request is sent:
//!
//! 1. Take the most recently used idle connection (LIFO keeps few connections warm);
//!    connections the upstream closed, or idle longer than `pool_idle_timeout`, are
//!    dropped on the way.
//! 2. None idle: connect (`connect_timeout`, `TCP_NODELAY`), handshake, and spawn the
//!    connection's task (with upgrades, so a `101` can become a tunnel).
//! 3. Send. A reused connection that turns out closed before the request went out gives
//!    the request back: try again from 1 (nothing was sent, as hyper-util's client does).
//! 4. The response body returns the connection to the pool at its end (at once when the
//!    response has no body); a body dropped before its end, an error, or a `101` keep the
//!    connection out of the pool (hyper closes it, or the upgrade takes it over). When the
//!    connection is not ready yet at the body's end (rare), a small task waits for it.
//! 5. At most `pool_max_idle_per_host` connections are kept idle; more are closed.
//!
//! Idle connections are kept per thread group ("shard"): a thread serving its own
//! connections on its own runtime (`server.runtime = "per_core"`, see
//! [`use_own_idle_connections`]) takes and returns upstream connections in its own shard,
//! so a connection's task, the client connection and the upstream connection all run on
//! that one thread; every other thread shares shard 0. `pool_max_idle_per_host` is per
//! shard.
//!
//! A request whose body is already in memory (the replay buffer, or no body) and that is
//! not an upgrade skips hyper's connection altogether: [`crate::h1`] writes it and reads
//! the answer in the request's own task, on connections this pool keeps apart ("direct"
//! connections, same steps, same limits). Streamed bodies and upgrades use hyper's.
//!
//! HTTPS and HTTP/2 endpoints keep hyper-util's client (TLS, ALPN, h2 multiplexing).

use crate::body::ProxyBody;
use crate::classify::CallInfo;
use crate::h1::{self, Conn, Reading, Step};
use crate::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use quartet_policies::head::AddedHeaders;
use std::cell::Cell;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Why a request could not be sent.
#[derive(Debug)]
pub enum SendError {
    /// Nothing was sent: the connection could not be made (or closed before sending).
    Connect(BoxError),
    /// The request may have reached the upstream.
    Sent(BoxError),
}

#[derive(Debug, thiserror::Error)]
#[error("connect timed out after {0:?}")]
pub struct ConnectTimeout(pub Duration);

thread_local! {
    /// This thread's shard of every pool's idle connections (0: the shared one).
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// How many shards a pool has: the shared one and one per core.
fn shard_count() -> usize {
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *COUNT.get_or_init(|| {
        1 + std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// Makes this thread take and return upstream connections in its own shard of every pool
/// (`index` from 1; threads beyond the core count share shards). For a thread that runs
/// its own single-threaded runtime: the connections it makes are driven on it, so it
/// should be the one reusing them.
pub fn use_own_idle_connections(index: usize) {
    SHARD.with(|s| s.set(index));
}

fn this_shard() -> usize {
    SHARD.with(|s| s.get()) % shard_count()
}

/// The pool of one endpoint; clones share it.
#[derive(Clone)]
pub struct H1Pool {
    inner: Arc<Inner>,
    /// Responses of direct exchanges keep their headers as a [`crate::raw::RawHead`].
    raw_heads: bool,
}

struct Inner {
    /// `host:port` to connect to.
    addr: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// Per shard (see the module docs), LIFO.
    idle: Box<[Mutex<Vec<Idle<Sender>>>]>,
    /// The direct connections ([`crate::h1`]), per shard, LIFO.
    direct: Box<[Mutex<Vec<Idle<Conn>>>]>,
}

/// The sending half of a hyper connection.
type Sender = SendRequest<ProxyBody>;

/// An idle connection of either kind and since when it is idle.
struct Idle<T> {
    conn: T,
    since: Instant,
}

impl H1Pool {
    pub fn new(
        addr: String,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                addr,
                connect_timeout,
                idle_timeout,
                max_idle,
                idle: (0..shard_count()).map(|_| Mutex::new(Vec::new())).collect(),
                direct: (0..shard_count()).map(|_| Mutex::new(Vec::new())).collect(),
            }),
            raw_heads: false,
        }
    }

    /// Responses of direct exchanges keep the upstream's headers as one block
    /// ([`crate::raw::RawHead`]); for a caller that passes them on unread.
    pub fn raw_response_heads(mut self) -> Self {
        self.raw_heads = true;
        self
    }

    /// Connections idle in the pool now.
    pub fn idle_count(&self) -> usize {
        (0..self.inner.idle.len())
            .map(|shard| self.inner.lock(shard).len() + self.inner.lock_direct(shard).len())
            .sum()
    }

    /// Sends `req` (origin-form URI, `Host` set) with hyper, on a pooled or new
    /// connection: a request [`Direct::encode`] gave back (a streamed body, an upgrade,
    /// `CONNECT`).
    pub async fn send_hyper(
        &self,
        req: http::Request<ProxyBody>,
    ) -> Result<http::Response<ProxyBody>, SendError> {
        // hyper writes the head from the map: the added headers go in it.
        let (mut parts, body) = req.into_parts();
        AddedHeaders::apply_from(&mut parts.extensions, &mut parts.headers);
        crate::proxy::apply_proxy_headers(&parts.extensions, &mut parts.headers);
        let mut req = http::Request::from_parts(parts, body);
        let shard = this_shard();
        loop {
            let (mut sender, reused) = match self.inner.checkout(shard) {
                Some(sender) => (sender, true),
                None => (
                    self.inner.connect().await.map_err(SendError::Connect)?,
                    false,
                ),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.finish(resp, sender, shard)),
                Err(mut err) => match err.take_message() {
                    // Not sent: the idle connection was closed under us; take another.
                    Some(back) if reused => req = back,
                    Some(_) => return Err(SendError::Connect(err.into_error().into())),
                    None => return Err(SendError::Sent(err.into_error().into())),
                },
            }
        }
    }

    /// Sends an encoded request on a direct connection ([`crate::h1`]).
    pub async fn send_direct(
        &self,
        direct: Direct,
    ) -> Result<http::Response<ProxyBody>, SendError> {
        let shard = this_shard();
        // Let the other requests this thread has ready go first, so their writes reach
        // the upstream together and it serves them in one wake-up (as happened when
        // hyper's connection tasks wrote after the requests' tasks had run).
        tokio::task::yield_now().await;
        loop {
            let (mut conn, reused) = match self.inner.checkout_direct(shard) {
                Some(conn) => (conn, true),
                None => (
                    self.inner
                        .connect_direct()
                        .await
                        .map_err(SendError::Connect)?,
                    false,
                ),
            };
            if let Err(err) = conn.write_request(&direct.wire).await {
                // Not all of it went out, so the upstream cannot have acted on it.
                if reused {
                    continue;
                }
                return Err(SendError::Connect(err.into()));
            }
            let head = conn
                .read_head(&direct.method, self.raw_heads)
                .await
                .map_err(|e| SendError::Sent(e.into()))?;
            return Ok(self.finish_direct(head, conn, shard));
        }
    }

    /// The response of a direct exchange; the connection goes back to the pool with its
    /// body's last byte (at once when the whole body came with the head).
    fn finish_direct(
        &self,
        head: h1::Head,
        mut conn: Conn,
        shard: usize,
    ) -> http::Response<ProxyBody> {
        let body = match Reading::new(head.framing) {
            None => {
                if head.keep_alive {
                    self.inner.checkin_direct(conn, shard);
                }
                crate::body::empty()
            }
            Some(Reading::Length(n)) if conn.buffered() as u64 >= n => {
                // n fits: it is at most what the buffer holds.
                let bytes = conn.take(n as usize);
                if head.keep_alive {
                    self.inner.checkin_direct(conn, shard);
                }
                crate::body::full(bytes)
            }
            Some(state) => DirectBody {
                conn: Some(conn),
                state,
                back: head.keep_alive.then(|| (self.inner.clone(), shard)),
            }
            .boxed_unsync(),
        };
        let mut resp = http::Response::new(body);
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        if let Some(raw) = head.raw {
            resp.extensions_mut().insert(raw);
        }
        resp
    }

    /// Step 4: the response, its body returning the connection to the pool at its end.
    fn finish(
        &self,
        resp: http::Response<Incoming>,
        sender: SendRequest<ProxyBody>,
        shard: usize,
    ) -> http::Response<ProxyBody> {
        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            return resp.map(|b| b.map_err(BoxError::from).boxed_unsync());
        }
        if resp.body().is_end_stream() {
            self.inner.clone().checkin(sender, shard);
            return resp.map(|b| b.map_err(BoxError::from).boxed_unsync());
        }
        let pool = self.inner.clone();
        resp.map(|body| {
            PooledBody {
                body,
                back: Some((sender, pool, shard)),
            }
            .boxed_unsync()
        })
    }
}

impl Inner {
    fn lock(&self, shard: usize) -> std::sync::MutexGuard<'_, Vec<Idle<Sender>>> {
        self.idle[shard].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_direct(&self, shard: usize) -> std::sync::MutexGuard<'_, Vec<Idle<Conn>>> {
        self.direct[shard].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Step 1, for a direct connection (checked outside the lock: it may cost a read).
    fn checkout_direct(&self, shard: usize) -> Option<Conn> {
        loop {
            let Idle { mut conn, since } = self.lock_direct(shard).pop()?;
            if since.elapsed() < self.idle_timeout && conn.is_usable() {
                return Some(conn);
            }
        }
    }

    /// Steps 4 and 5, for a direct connection; one with bytes after its response is
    /// closed (nothing may follow a response unasked).
    fn checkin_direct(&self, conn: Conn, shard: usize) {
        if conn.buffered() > 0 {
            return;
        }
        self.keep(&mut self.lock_direct(shard), conn, |_| false);
    }

    /// Step 5, for either kind: the oldest sit at the front, those idle too long (or
    /// `dead`) are dropped, then `conn` is kept when there is room.
    fn keep<T>(&self, idle: &mut Vec<Idle<T>>, conn: T, dead: impl Fn(&T) -> bool) {
        let now = Instant::now();
        let stale = idle
            .iter()
            .take_while(|i| now.duration_since(i.since) >= self.idle_timeout || dead(&i.conn))
            .count();
        if stale > 0 {
            idle.drain(..stale);
        }
        if idle.len() < self.max_idle {
            idle.push(Idle { conn, since: now });
        }
    }

    /// Step 2, for a direct connection.
    async fn connect_direct(&self) -> Result<Conn, BoxError> {
        Ok(Conn::new(self.dial().await?))
    }

    /// A new TCP connection to the endpoint (`connect_timeout`, `TCP_NODELAY`).
    async fn dial(&self) -> Result<TcpStream, BoxError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&*self.addr))
            .await
            .map_err(|_| ConnectTimeout(self.connect_timeout))??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Step 1.
    fn checkout(&self, shard: usize) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.lock(shard);
        while let Some(Idle {
            conn: sender,
            since,
        }) = idle.pop()
        {
            if sender.is_ready() && since.elapsed() < self.idle_timeout {
                return Some(sender);
            }
            // Closed by the upstream, or idle too long: dropping it closes it.
        }
        None
    }

    /// Steps 4 and 5.
    fn checkin(self: Arc<Self>, mut sender: SendRequest<ProxyBody>, shard: usize) {
        if sender.is_closed() {
            return;
        }
        if !sender.is_ready() {
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    self.put(sender, shard);
                }
            });
            return;
        }
        self.put(sender, shard);
    }

    fn put(&self, sender: SendRequest<ProxyBody>, shard: usize) {
        self.keep(&mut self.lock(shard), sender, SendRequest::is_closed);
    }

    /// Step 2.
    async fn connect(&self) -> Result<SendRequest<ProxyBody>, BoxError> {
        let stream = self.dial().await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            if let Err(err) = conn.with_upgrades().await {
                tracing::debug!(error = %err, "upstream connection closed with an error");
            }
        });
        Ok(sender)
    }
}

/// A response body that puts its connection back in the pool once its last frame is read.
struct PooledBody {
    body: Incoming,
    back: Option<(SendRequest<ProxyBody>, Arc<Inner>, usize)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((sender, pool, shard)) = self.back.take() {
            pool.checkin(sender, shard);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if this.body.is_end_stream() {
                    this.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                // The connection is not reusable after a broken body.
                this.back = None;
                Poll::Ready(Some(Err(err.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request ready for a direct exchange: its head and whole body as they go on the
/// wire. Encoding it before the exchange's future is made keeps the request itself (240
/// bytes, and a copy per async function it would pass through) out of that future.
pub struct Direct {
    wire: Vec<u8>,
    method: http::Method,
}

impl Direct {
    /// `req` encoded for a direct exchange, with its head (what a retry may send again,
    /// [`CallInfo::keep_request`]), or `req` back when it needs hyper (a streamed body,
    /// an upgrade, `CONNECT`).
    #[allow(
        clippy::result_large_err,
        reason = "the request is handed back by value, as it came, for the hyper path"
    )]
    pub fn encode(
        req: http::Request<ProxyBody>,
    ) -> Result<(Self, http::request::Parts), http::Request<ProxyBody>> {
        let Some(body) = in_memory_body(&req) else {
            return Err(req);
        };
        let (parts, _) = req.into_parts();
        let added = parts
            .extensions
            .get::<AddedHeaders>()
            .map_or(&[][..], |a| a.wire());
        let proxy = parts
            .extensions
            .get::<Arc<CallInfo>>()
            .and_then(|call| call.proxy_headers());
        let mut wire = Vec::new();
        h1::encode_request(
            &mut wire,
            &parts.method,
            &parts.uri,
            &parts.headers,
            added,
            proxy,
            &body,
        );
        let method = parts.method.clone();
        Ok((Self { wire, method }, parts))
    }
}

/// The whole body of a request that can take a direct exchange: held in memory (the
/// replay buffer's bytes, or no body at all), and not an upgrade.
fn in_memory_body(req: &http::Request<ProxyBody>) -> Option<Bytes> {
    if crate::proxy::is_upgrade(req) || req.method() == http::Method::CONNECT {
        return None;
    }
    if let Some(bytes) = req
        .extensions()
        .get::<Arc<CallInfo>>()
        .and_then(|info| info.buffered())
    {
        return Some(bytes.clone());
    }
    req.body().is_end_stream().then(Bytes::new)
}

/// A response body read by the request's task from a direct connection, which goes back
/// to the pool once the body's end is read (when the upstream keeps it alive).
struct DirectBody {
    /// `None` once the body ended (or failed).
    conn: Option<Conn>,
    state: Reading,
    back: Option<(Arc<Inner>, usize)>,
}

impl DirectBody {
    fn release(&mut self) {
        if let (Some(conn), Some((pool, shard))) = (self.conn.take(), self.back.take()) {
            pool.checkin_direct(conn, shard);
        }
    }
}

impl Body for DirectBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        match h1::poll_body(conn, &mut this.state, cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Step::Frame(frame, last))) => {
                if last {
                    this.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Ok(Step::End)) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Ready(Err(err)) => {
                // A broken body leaves the connection unusable: dropping it closes it.
                this.conn = None;
                Poll::Ready(Some(Err(err.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.conn {
            Some(_) => self.state.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}
