//! One client connection: startup, authentication by Quartet, then the proxy loop that
//! moves whole frames between the client and the server connection serving it.
//!
//! In transaction mode the server connection goes back to the pool when the server says
//! the transaction is idle (`ReadyForQuery` `I`) and nothing else is outstanding. Named
//! prepared statements are renamed to names shared by every client (`QUARTET_<n>`, one per
//! distinct query text and parameter types) and prepared again on whichever server
//! connection serves a `Bind` or `Describe` that needs them; the extra `ParseComplete`
//! the server answers is swallowed. A `Parse` of a statement the connection has already is
//! sent as a harmless `Close` whose `CloseComplete` the client gets as `ParseComplete`, so
//! answers stay in order and the client's unnamed statement is left alone. A batch of
//! named `Parse`s and a `Sync` with no server attached is answered by Quartet (see
//! `answer_prepare`). Statements prepared with SQL (`PREPARE`) are not tracked; a simple
//! query that mentions `DISCARD` or `DEALLOCATE` makes Quartet forget what the connection
//! had prepared.

use super::auth::{md5_check, md5_stored, ScramSecret, ScramServer, MECHANISM};
use super::codec::{self, Frame, ProtocolError, Severity, StartupFrame, StartupParams};
use super::server::{forward_io, send_cancel, ServerConn, SERVER_MAX_MESSAGE};
use crate::config::{AuthMethod, PoolMode};
use crate::listener::{ClientGuard, Shared};
use crate::park::Parked;
use crate::pool::{Lease, Pool};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::{BoxFuture, Either};
use futures_util::FutureExt;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Where a client's cancel goes: the server connection serving it right now.
#[derive(Default)]
pub(crate) struct CancelSlot {
    target: Mutex<Option<(SocketAddr, i32, i32)>>,
}

impl CancelSlot {
    fn set(&self, t: Option<(SocketAddr, i32, i32)>) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = t;
    }
    fn get(&self) -> Option<(SocketAddr, i32, i32)> {
        *self.target.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A client's connection: TCP, TLS over TCP once `SSLRequest` was accepted, or closed
/// (a failed handshake left nothing to talk to).
pub(crate) enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Closed(tokio::io::Empty),
}

forward_io!(ClientStream, Plain, Tls, Closed);

impl ClientStream {
    /// Writes all of `bytes` and pushes them out (TLS keeps records until flushed).
    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_all(bytes).await?;
        self.flush().await
    }

    /// Reads what the client sent into `buf`; 0 at end of stream. An idle plain client
    /// holds no read buffer: wait for bytes first, then make room and read. A TLS
    /// client may have bytes decrypted already, so it reads at once. The wait is
    /// `poll_read_ready` (the waker sits in tokio's slot for the socket), not
    /// `readable()`, whose future carries a waiter node: that future is part of every
    /// idle client's task.
    ///
    /// The read itself is `poll_read`, not `try_read_buf`: a read that does not fill
    /// the buffer has emptied the socket, and `poll_read` then clears tokio's readiness,
    /// so the next wait sleeps at once; `try_read_buf` keeps the readiness, and every
    /// message cost one more `recvfrom` that failed with `EAGAIN` (strace under
    /// `pgbench -S`: one per transaction).
    async fn read_some(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        let room = |buf: &mut BytesMut| {
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(16384);
            }
        };
        match self {
            // An active client keeps its buffer: it is read at once, one readiness
            // check fewer per message.
            ClientStream::Plain(s) if buf.capacity() - buf.len() >= 4096 => s.read_buf(buf).await,
            ClientStream::Plain(s) => {
                std::future::poll_fn(|cx| s.poll_read_ready(cx)).await?;
                room(buf);
                s.read_buf(buf).await
            }
            other => {
                room(buf);
                other.read_buf(buf).await
            }
        }
    }
}

/// Why a client's session ended early; each is reported to the client as a FATAL
/// `ErrorResponse` with its SQLSTATE.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error("protocol violation")]
    Protocol(#[from] ProtocolError),
    #[error("client i/o failed")]
    Io(#[from] std::io::Error),
    #[error("password authentication failed for user \"{user}\"")]
    Auth { user: String },
    #[error("{message}")]
    Checkout { code: String, message: String },
    #[error("server connection lost")]
    ServerLost,
    #[error("server connection lost: no answer to the query nor to its cancel request")]
    ServerUnresponsive,
    #[error("terminating connection due to idle-in-transaction timeout")]
    IdleInTransaction,
    #[error("client login timeout")]
    LoginTimeout,
    #[error("startup packet has no user")]
    NoUser,
    #[error("the database system is not accepting connections (fault injected)")]
    FaultAbort,
}

impl ClientError {
    fn sqlstate(&self) -> &str {
        match self {
            ClientError::Protocol(_) | ClientError::Io(_) | ClientError::LoginTimeout => "08P01",
            ClientError::Auth { .. } => "28P01",
            ClientError::Checkout { code, .. } => code,
            ClientError::ServerLost | ClientError::ServerUnresponsive => "08006",
            ClientError::IdleInTransaction => "25P03",
            ClientError::NoUser => "28000",
            ClientError::FaultAbort => "57P03",
        }
    }

    fn client_message(&self) -> String {
        match self {
            ClientError::Protocol(e) => format!("protocol violation: {e}"),
            other => other.to_string(),
        }
    }
}

/// What the client logged in with: its startup parameters (user, database and the rest).
struct Login {
    params: StartupParams,
}

/// Entry point for one accepted connection; `guard` is released when the client ends.
pub(crate) fn handle(
    shared: Arc<Shared>,
    stream: TcpStream,
    guard: ClientGuard,
) -> impl Future<Output = ()> {
    // What an idle client's task holds is the session and the proxy loop: every rare
    // and deep path (logging in, connecting, reporting an error, cleaning up) runs
    // boxed, so thousands of idle clients stay small. The arguments go into the boxed
    // login at once: an async fn would keep their places for the task's whole life.
    // `then`, not an async block: the block would keep the session it got from the
    // login apart from the one `serve` holds, twice the session in every task.
    let opening = Box::pin(open(shared, stream));
    opening.then(move |session| match session {
        Some(session) => Either::Left(serve(session, guard)),
        None => Either::Right(std::future::ready(())),
    })
}

/// Serves a logged-in client until it ends or is parked. Not an `async fn`: one keeps
/// its arguments and their moved copies apart, the session twice in every task (the
/// unit test `a_client_task_is_small` measures it: 664 bytes against 400).
#[allow(clippy::manual_async_fn)]
fn serve(mut session: Session, guard: ClientGuard) -> impl Future<Output = ()> + Send {
    async move {
        match session.run().await {
            Ok(Next::Park) => return session.park(guard),
            Ok(Next::End) => {}
            Err(e) => {
                tracing::debug!(error = %e, "client session ended");
                Box::pin(session.fatal(&e)).await;
            }
        }
        Box::pin(session.close()).await;
        drop(guard);
    }
}

/// A client that sends nothing this long after its login is parked, whatever
/// `client_park_after` says (unless shorter, or 0: never). Parking and waking cost
/// about 50 µs of CPU, so a client that has been active is parked only after
/// `client_park_after` (1 s): busy clients never are. A new client either sends at once
/// (a connection per transaction) or sits in an application's pool; parking the latter
/// at once keeps the memory of many clients logging in together low: the memory of
/// their tasks, freed when they park later, stays with the allocator.
const FIRST_PARK_AFTER: Duration = Duration::from_millis(10);

/// What a session does once its loop returns.
enum Next {
    /// The client is gone or said goodbye.
    End,
    /// The client is idle with no server: park it (see [`crate::park`]).
    Park,
}

/// A session parked outside tokio, with its socket and its guard.
struct ParkedSession {
    session: Session,
    stream: std::net::TcpStream,
    guard: ClientGuard,
}

impl Parked for ParkedSession {
    fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Called on the listener's runtime (the accept loop), which the socket joins.
    fn resume(self: Box<Self>) -> BoxFuture<'static, ()> {
        let ParkedSession {
            mut session,
            stream,
            guard,
        } = *self;
        // Registers the socket with this runtime's reactor again; bytes that came while
        // parked are still in it and make it readable at once.
        match TcpStream::from_std(stream) {
            Ok(tcp) => {
                session.client = ClientStream::Plain(tcp);
                // Woken by the client: it gets `client_park_after` again to send.
                session.last_client = Instant::now();
                Box::pin(serve(session, guard))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot resume a parked client: closing it");
                session.forget_key();
                Box::pin(std::future::ready(()))
            }
        }
    }
}

/// Startup, authentication and the end of startup (with a first server connection).
/// `None`: the client is done (a cancel request, gone, or told why it cannot go on).
async fn open(shared: Arc<Shared>, stream: TcpStream) -> Option<Session> {
    let _ = stream.set_nodelay(true);
    let mut stream = ClientStream::Plain(stream);
    // Startup and password messages are small: a small buffer, grown when needed.
    let mut buf = BytesMut::with_capacity(1024);
    // One timer for the connection: the login's deadline, then, moved, the session's
    // first wait before parking (one registration with tokio's timer, not two).
    let mut timer = Box::pin(tokio::time::sleep(shared.spec.client_login_timeout));
    let result = tokio::select! {
        biased;
        r = login(&shared, &mut stream, &mut buf) => r,
        () = timer.as_mut() => Err(ClientError::LoginTimeout),
    };
    let (login, pool) = match result {
        Ok(Some(s)) => s,
        Ok(None) => return None,
        Err(e) => {
            tracing::debug!(error = %e, "client login failed");
            shared.stats.error(e.sqlstate());
            let _ = stream
                .send(&codec::error_response(
                    Severity::Fatal,
                    e.sqlstate(),
                    &e.client_message(),
                ))
                .await;
            return None;
        }
    };
    let buf = if buf.is_empty() { BytesMut::new() } else { buf };
    let mut session = Session::new(shared, pool, stream, buf);
    if session.parkable() {
        session.timer = Some(timer);
    }
    if let Err(e) = session.start(&login).await {
        // The client has not been told `AuthenticationOk` yet: it would go out with the
        // startup's last messages.
        if !matches!(e, ClientError::Io(_)) {
            let _ = session.client.send(&codec::auth_ok()).await;
        }
        session.fatal(&e).await;
        session.close().await;
        return None;
    }
    Some(session)
}

/// Reads more bytes from the client; `Ok(false)` at end of stream.
async fn fill(stream: &mut ClientStream, buf: &mut BytesMut) -> std::io::Result<bool> {
    if buf.capacity() - buf.len() < 512 {
        buf.reserve(buf.capacity().max(1024));
    }
    Ok(stream.read_buf(buf).await? > 0)
}

/// Startup and authentication. `Ok(None)`: a cancel request, handled, or a client gone.
async fn login(
    shared: &Arc<Shared>,
    stream: &mut ClientStream,
    buf: &mut BytesMut,
) -> Result<Option<(Login, Arc<Pool>)>, ClientError> {
    let params = loop {
        match codec::decode_startup(buf)? {
            None => {
                if !fill(stream, buf).await? {
                    return Ok(None);
                }
            }
            Some(StartupFrame::Ssl) => match (&shared.tls, &*stream) {
                (Some(acceptor), ClientStream::Plain(_)) => {
                    // Bytes sent after SSLRequest and before the handshake would be
                    // taken as if they came through TLS: refuse them.
                    if !buf.is_empty() {
                        return Err(ProtocolError::Malformed {
                            what: "data after SSLRequest",
                        }
                        .into());
                    }
                    stream.send(b"S").await?;
                    let ClientStream::Plain(tcp) =
                        std::mem::replace(stream, ClientStream::Closed(tokio::io::empty()))
                    else {
                        return Ok(None);
                    };
                    match acceptor.accept(tcp).await {
                        Ok(tls) => *stream = ClientStream::Tls(Box::new(tls)),
                        Err(e) => {
                            tracing::debug!(error = %e, "client tls handshake failed");
                            return Ok(None);
                        }
                    }
                }
                _ => stream.send(b"N").await?,
            },
            Some(StartupFrame::GssEnc) => stream.send(b"N").await?,
            Some(StartupFrame::Cancel { pid, key }) => {
                let slot = shared.cancels().get(&(pid, key)).cloned();
                if let Some((peer, spid, skey)) = slot.and_then(|s| s.get()) {
                    send_cancel(peer, spid, skey, shared.spec.connect_timeout).await;
                }
                return Ok(None);
            }
            Some(StartupFrame::Startup { params }) => break params,
        }
    };
    if crate::listener::login_fault(&shared.fault, &shared.policy_metrics).await {
        return Err(ClientError::FaultAbort);
    }
    let user = params
        .get("user")
        .filter(|u| !u.is_empty())
        .ok_or(ClientError::NoUser)?;
    let database = params
        .get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(user);
    authenticate(shared, stream, buf, user).await?;
    let pool = shared.pool(database, user, &params);
    Ok(Some((Login { params }, pool)))
}

/// Reads the client's next `PasswordMessage`-family frame during authentication.
async fn read_password_frame(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
) -> Result<Frame, ClientError> {
    loop {
        if let Some(f) = codec::next_frame(buf, codec::MAX_STARTUP_LEN)? {
            if f.tag != b'p' {
                return Err(ProtocolError::Unexpected { tag: f.tag as char }.into());
            }
            return Ok(f);
        }
        if !fill(stream, buf).await? {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
}

async fn authenticate(
    shared: &Arc<Shared>,
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    user: &str,
) -> Result<(), ClientError> {
    let refused = || ClientError::Auth {
        user: user.to_string(),
    };
    let looked_up;
    let secret = match shared.users.get(user) {
        Some(s) => Some(s),
        None if shared.spec.auth != AuthMethod::Trust => {
            looked_up = shared.lookup_user(user).await;
            looked_up.as_ref()
        }
        None => None,
    };
    match shared.spec.auth {
        AuthMethod::Trust => {}
        AuthMethod::Md5 => {
            let salt: [u8; 4] = rand::random();
            stream.send(&codec::auth_md5(salt)).await?;
            let f = read_password_frame(stream, buf).await?;
            let answer = codec::parse_password(f.body())?;
            let stored = secret.and_then(|s| s.md5.as_deref());
            if !stored.is_some_and(|stored| md5_check(stored, salt, answer)) {
                return Err(refused());
            }
        }
        AuthMethod::ScramSha256 => {
            // An unknown user goes through the whole exchange with a secret nobody
            // knows, so the answer does not tell which users exist.
            let secret = secret.and_then(|s| s.scram.clone()).unwrap_or_else(|| {
                ScramSecret::from_password(&format!("{:x}", rand::random::<u128>()))
            });
            stream.send(&codec::auth_sasl(&[MECHANISM])).await?;
            let f = read_password_frame(stream, buf).await?;
            let (mech, data) = codec::parse_sasl_initial(f.body())?;
            if mech != MECHANISM {
                return Err(refused());
            }
            let (server, first) = ScramServer::start(secret, data).map_err(|_| refused())?;
            stream
                .send(&codec::auth_sasl_continue(first.as_bytes()))
                .await?;
            let f = read_password_frame(stream, buf).await?;
            let last = server.finish(f.body()).map_err(|_| refused())?;
            stream
                .send(&codec::auth_sasl_final(last.as_bytes()))
                .await?;
        }
    }
    // `AuthenticationOk` goes out with the rest of the startup (`Session::start`).
    Ok(())
}

/// A user's secrets as the listener keeps them.
#[derive(Clone, Debug)]
pub(crate) struct UserSecret {
    pub scram: Option<ScramSecret>,
    pub md5: Option<String>,
}

impl UserSecret {
    pub fn new(name: &str, password: &str) -> Self {
        if let Some(s) = ScramSecret::parse(password) {
            return Self {
                scram: Some(s),
                md5: None,
            };
        }
        if password.starts_with("md5") && password.len() == 35 {
            return Self {
                scram: None,
                md5: Some(password.to_string()),
            };
        }
        Self {
            scram: Some(ScramSecret::from_password(password)),
            md5: Some(md5_stored(name, password)),
        }
    }
}

/// A client statement in transaction mode.
struct Stmt {
    server_name: Arc<str>,
    /// The `Parse` body after the name: query text and parameter types.
    rest: Bytes,
}

/// Transaction mode: the messages sent to the server whose answers Quartet changes, in
/// the order sent. The server answers in the same order (`ParseComplete` for a `Parse`,
/// `CloseComplete` for a `Close`, `ReadyForQuery` for a `Sync`), and after an error it
/// skips everything up to the next `Sync`, so the front of this queue is always what
/// the next such answer is for.
enum Sent {
    /// A `Parse`: the client's unnamed one (`name` none), a renamed one, or one Quartet
    /// added to prepare a statement on this connection (`injected`: answer swallowed).
    Parse {
        name: Option<Arc<str>>,
        injected: bool,
    },
    /// A `Close`; `as_parse` when it stands in for a client's `Parse` of a statement this
    /// connection has already: its `CloseComplete` goes to the client as `ParseComplete`.
    Close {
        as_parse: bool,
    },
    Sync,
}

/// A name never prepared. Closing it is harmless and answered `CloseComplete` in order,
/// so it stands in for a client's `Close` of a shared statement (which stays prepared)
/// and for a `Parse` of a statement the connection has already.
const CLOSED_NAME: &str = "QUARTET_closed";

/// What woke a session up (no data in it: it lives across the session's awaits).
enum Wake {
    /// The client sent bytes, now in the session's buffer.
    Client,
    /// The client closed its end.
    ClientGone,
    /// The server sent bytes, now in its connection's buffer.
    Server,
    /// The server closed its end or failed.
    ServerLost,
    Timer,
}

impl Wake {
    fn client(read: usize) -> Self {
        if read == 0 {
            Wake::ClientGone
        } else {
            Wake::Client
        }
    }
}

struct Session {
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    client: ClientStream,
    cbuf: BytesMut,
    lease: Option<Lease>,
    mode: PoolMode,
    key: (i32, i32),
    slot: Arc<CancelSlot>,
    /// A `BTreeMap`: empty, it is 24 bytes smaller than a `HashMap` in every session.
    stmts: BTreeMap<String, Stmt>,
    sent: VecDeque<Sent>,
    /// `Sync`s and `Query`s sent whose `ReadyForQuery` has not come yet.
    pending: usize,
    status: u8,
    query_started: Option<Instant>,
    cancel_sent: bool,
    last_client: Instant,
    /// Nothing received since the login: the session parks after
    /// [`FIRST_PARK_AFTER`] rather than `client_park_after`.
    fresh: bool,
    forget_prepared: bool,
    /// Transaction mode: the client used SQL `PREPARE` and keeps its server connection.
    pinned: bool,
    /// The query or idle-in-transaction timer, made the first time one is needed and
    /// moved after (boxed: most sessions never need one).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Extended-protocol messages were sent after the last `Sync`.
    unsynced: bool,
}

impl Session {
    fn new(shared: Arc<Shared>, pool: Arc<Pool>, client: ClientStream, cbuf: BytesMut) -> Self {
        let slot = Arc::new(CancelSlot::default());
        let key = shared.register_cancel(slot.clone());
        Self {
            mode: shared.spec.pool_mode,
            shared,
            pool,
            client,
            cbuf,
            lease: None,
            key,
            slot,
            stmts: BTreeMap::new(),
            sent: VecDeque::new(),
            pending: 0,
            status: b'I',
            query_started: None,
            cancel_sent: false,
            last_client: Instant::now(),
            fresh: true,
            forget_prepared: false,
            pinned: false,
            timer: None,
            unsynced: false,
        }
    }

    /// Takes a server connection for the session; it is also returned, for a caller
    /// that reads from it at once.
    async fn checkout(&mut self) -> Result<&Lease, ClientError> {
        // An idle server connection is taken without a future; waiting or connecting
        // is boxed: deep and rare, it stays out of the session's futures.
        let lease = match self.pool.try_get(self.last_client) {
            Some(lease) => Ok(lease),
            None => Box::pin(self.pool.get()).await,
        };
        let lease = lease.map_err(|e| {
            tracing::debug!(error = %e, "no server connection for client");
            ClientError::Checkout {
                code: e.sqlstate(),
                message: e.client_message(),
            }
        })?;
        self.slot
            .set(Some((lease.conn.peer, lease.conn.pid, lease.conn.key)));
        Ok(self.lease.insert(lease))
    }

    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.slot.set(None);
            self.pool.put(lease);
        }
    }

    /// The end of startup: `AuthenticationOk`, the server's parameters, Quartet's own key
    /// and `ReadyForQuery` in one write, as PgBouncer does (a separate `AuthenticationOk`
    /// was one more `sendto` and one more wake-up of the client per connection).
    ///
    /// The parameters come from a server connection taken for the login (so a client
    /// whose backend is down hears it now), or, in transaction mode, from the pool's
    /// [`Pool::welcome`]: what the last such server said, while its backend is usable.
    /// A login then takes no server, as with PgBouncer, and a backend that went down
    /// unnoticed is heard of at the first query.
    async fn start(&mut self, login: &Login) -> Result<(), ClientError> {
        let cached = match self.mode {
            PoolMode::Transaction => self.pool.welcome(),
            _ => None,
        };
        let welcome = match cached {
            Some(w) => w,
            None => {
                let pool = self.pool.clone();
                pool.remember_welcome(&self.checkout().await?.conn)
            }
        };
        let mut out = BytesMut::with_capacity(512);
        out.extend_from_slice(&codec::auth_ok());
        out.extend_from_slice(&welcome.status_block);
        if let Some(v) = &welcome.application_name {
            let k = "application_name";
            let v = login.params.get(k).unwrap_or(v);
            out.extend_from_slice(&codec::parameter_status(k, v));
        }
        out.extend_from_slice(&codec::backend_key_data(self.key.0, self.key.1));
        out.extend_from_slice(&codec::ready_for_query(b'I'));
        self.client.send(&out).await?;
        if self.mode == PoolMode::Transaction {
            self.release();
        }
        Ok(())
    }

    fn deadline(&self) -> Option<Instant> {
        self.lease.as_ref()?;
        if self.pending > 0 {
            let t = self.shared.spec.query_timeout?;
            if self.cancel_sent {
                // A server that answers neither the query nor its cancel (frozen, or cut
                // off without a reset) is given up on, so the client is not held forever.
                return Some(self.query_started? + t + self.shared.spec.connect_timeout);
            }
            Some(self.query_started? + t)
        } else if self.status != b'I' {
            Some(self.last_client + self.shared.spec.idle_transaction_timeout?)
        } else {
            None
        }
    }

    /// The idle loop: waits for the client with no server attached, then serves what it
    /// sent as one unit of work ([`Session::work`]).
    async fn run(&mut self) -> Result<Next, ClientError> {
        loop {
            let wake = if self.lease.is_some() {
                // Session mode keeps its server: all of it is work.
                Wake::Client
            } else if self.parkable() {
                // The read buffer stays while the client is active (it goes when the
                // session parks): a buffer made anew for every message cost an
                // allocation of 16 KiB per transaction.
                match Box::pin(self.wait_idle()).await? {
                    Some(wake) => wake,
                    None => return Ok(Next::Park),
                }
            } else {
                // Idle (no server, so no timer either) and not to be parked: only the
                // client can wake the session, and the smallest future waits for it,
                // holding no buffer.
                if self.cbuf.is_empty() {
                    self.cbuf = BytesMut::new();
                }
                Wake::client(self.client.read_some(&mut self.cbuf).await?)
            };
            match wake {
                Wake::Client => {
                    // Boxed: the deep part (a server, forwarding both ways, timers)
                    // costs one allocation per unit of work and stays out of the size
                    // of every idle client's task.
                    if !Box::pin(self.work()).await? {
                        return Ok(Next::End);
                    }
                }
                Wake::ClientGone => return Ok(Next::End),
                // Without a server nothing else wakes an idle session.
                Wake::Server | Wake::ServerLost | Wake::Timer => {}
            }
        }
    }

    /// What the client sent (in the buffer, or session mode's first turn), then both
    /// ways until the server goes back to the pool. `Ok(false)`: the client is done.
    async fn work(&mut self) -> Result<bool, ClientError> {
        let mut wake = if self.cbuf.is_empty() {
            None
        } else {
            Some(Wake::Client)
        };
        loop {
            match wake.take() {
                Some(Wake::ClientGone) => return Ok(false),
                Some(Wake::Client) => {
                    self.last_client = Instant::now();
                    self.fresh = false;
                    if !self.forward_client().await? {
                        return Ok(false);
                    }
                }
                Some(Wake::Server) => self.forward_server().await?,
                Some(Wake::ServerLost) => {
                    self.lease = None;
                    self.slot.set(None);
                    return Err(ClientError::ServerLost);
                }
                Some(Wake::Timer) => self.on_timer().await?,
                None => {}
            }
            if self.lease.is_none() {
                return Ok(true);
            }
            wake = Some(self.wait_active().await?);
        }
    }

    /// Whether this session, idle with no server, is parked once quiet for
    /// `client_park_after`: plain TCP clients only (a TLS session keeps state of its
    /// own in rustls), and only where the listener parks.
    fn parkable(&self) -> bool {
        self.shared.parker.is_some() && matches!(self.client, ClientStream::Plain(_))
    }

    /// Idle with no server: waits for the client until it has been quiet for
    /// `client_park_after` ([`FIRST_PARK_AFTER`] right after the login). `None`: time
    /// to park. The timer is moved only when it would
    /// fire late, so a busy client does not touch it on every message: an early firing
    /// just looks again.
    async fn wait_idle(&mut self) -> std::io::Result<Option<Wake>> {
        loop {
            let after = self.shared.spec.client_park_after;
            let after = if self.fresh {
                after.min(FIRST_PARK_AFTER)
            } else {
                after
            };
            let due = self.last_client + after;
            match self.timer.as_mut() {
                Some(t) if !t.is_elapsed() && t.deadline() <= due => {}
                Some(t) => t.as_mut().reset(due),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(due))),
            }
            let Some(timer) = self.timer.as_mut() else {
                return Ok(None);
            };
            tokio::select! {
                biased;
                r = self.client.read_some(&mut self.cbuf) => return Ok(Some(Wake::client(r?))),
                _ = timer.as_mut() => {}
            }
            // The clock is read only when the timer fired (a due time already past
            // fires it at once).
            if Instant::now() >= due {
                return Ok(None);
            }
        }
    }

    /// Takes the client out of tokio and hands it to the listener's table of parked
    /// clients; it comes back as a task of its own when it sends or closes.
    fn park(mut self, guard: ClientGuard) {
        // Nothing of a wait is kept while parked, nor an empty read buffer.
        self.timer = None;
        if self.cbuf.is_empty() {
            self.cbuf = BytesMut::new();
        }
        let Some(parker) = self.shared.parker.clone() else {
            return self.forget_key();
        };
        let client = std::mem::replace(&mut self.client, ClientStream::Closed(tokio::io::empty()));
        let ClientStream::Plain(tcp) = client else {
            return self.forget_key();
        };
        match tcp.into_std() {
            Ok(stream) => parker.park(Box::new(ParkedSession {
                session: self,
                stream,
                guard,
            })),
            Err(e) => {
                tracing::warn!(error = %e, "cannot park an idle client: closing it");
                self.forget_key();
            }
        }
    }

    /// A session without a server that ends here: its cancel key is forgotten.
    fn forget_key(&self) {
        self.shared.cancels().remove(&self.key);
    }

    /// With a server attached: waits for the client, the server or the query or
    /// idle-in-transaction timer, whichever comes first.
    async fn wait_active(&mut self) -> std::io::Result<Wake> {
        let deadline = self.deadline();
        if let Some(d) = deadline {
            match self.timer.as_mut() {
                Some(t) if t.deadline() == d => {}
                Some(t) => t.as_mut().reset(d),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(d))),
            }
        }
        let armed = self.timer.as_mut().filter(|_| deadline.is_some());
        let timer = async move {
            match armed {
                Some(t) => t.as_mut().await,
                None => std::future::pending().await,
            }
        };
        let server_read = async {
            match self.lease.as_mut() {
                Some(l) => {
                    let buf = &mut l.conn.buf;
                    if buf.capacity() - buf.len() < 4096 {
                        buf.reserve(16384);
                    }
                    l.conn.stream.read_buf(buf).await
                }
                None => std::future::pending().await,
            }
        };
        // In a fixed order: an armed timer first (a server that streams without pause
        // must not hold off the query timeout), then the server, which is what wakes a
        // session waiting on its query, so the client's socket is not looked at then.
        Ok(tokio::select! {
            biased;
            _ = timer, if deadline.is_some() => Wake::Timer,
            r = server_read => match r {
                Ok(n) if n > 0 => Wake::Server,
                _ => Wake::ServerLost,
            },
            r = self.client.read_some(&mut self.cbuf) => Wake::client(r?),
        })
    }

    async fn on_timer(&mut self) -> Result<(), ClientError> {
        let Some(lease) = &self.lease else {
            return Ok(());
        };
        if self.pending > 0 && self.cancel_sent {
            tracing::debug!("query timeout: no answer to the cancel either, dropping the server");
            self.lease = None;
            self.slot.set(None);
            return Err(ClientError::ServerUnresponsive);
        }
        if self.pending > 0 {
            self.cancel_sent = true;
            let (peer, pid, key) = (lease.conn.peer, lease.conn.pid, lease.conn.key);
            let timeout = self.shared.spec.connect_timeout;
            tracing::debug!(pid, "query timeout: cancelling");
            tokio::spawn(send_cancel(peer, pid, key, timeout));
            Ok(())
        } else {
            // The server rolls back when its connection closes.
            self.lease = None;
            self.slot.set(None);
            Err(ClientError::IdleInTransaction)
        }
    }

    /// Transaction mode, no server attached: a batch of named `Parse`s ending with a
    /// `Sync` (what libpq's `PQprepare` sends) is answered by Quartet itself and the
    /// statements are prepared on a server when a `Bind` or `Describe` first needs them.
    /// A client that prepares while another of its own connections (same thread, as in
    /// pgbench -M prepared) holds a server in a transaction would otherwise wait for a
    /// server forever. The price: an invalid statement is reported at its first use.
    async fn answer_prepare(&mut self) -> Result<(), ClientError> {
        if self.lease.is_some() || self.mode != PoolMode::Transaction {
            return Ok(());
        }
        let max = self.shared.spec.max_message_size;
        let mut at = 0;
        let mut count = 0;
        loop {
            match codec::peek_frame(&self.cbuf, at, max)? {
                Some(h) if h.tag == b'P' => {
                    let (name, _) = codec::parse_parse(&self.cbuf[at + 5..at + h.size])?;
                    if name.is_empty() {
                        return Ok(());
                    }
                    at += h.size;
                    count += 1;
                }
                Some(h) if h.tag == b'S' && count > 0 => break,
                _ => return Ok(()),
            }
        }
        let mut reply = BytesMut::with_capacity(count * 5 + 6);
        for _ in 0..count {
            let h = codec::peek_frame(&self.cbuf, 0, max)?
                .ok_or(ProtocolError::Malformed { what: "parse" })?;
            let f = self.cbuf.split_to(h.size).freeze();
            let (name, rest) = codec::parse_parse(&f[5..])?;
            let rest = f.slice_ref(rest);
            let server_name = self.shared.statement_name(&rest);
            self.stmts
                .insert(name.to_string(), Stmt { server_name, rest });
            reply.extend_from_slice(&codec::frame(b'1', &[]));
        }
        if let Some(h) = codec::peek_frame(&self.cbuf, 0, max)? {
            let _ = self.cbuf.split_to(h.size);
        }
        reply.extend_from_slice(&codec::ready_for_query(b'I'));
        self.shared
            .stats
            .local_prepares
            .fetch_add(1, Ordering::Relaxed);
        self.client.send(&reply).await?;
        Ok(())
    }

    /// Forwards every complete client frame. `Ok(false)`: the client said goodbye.
    async fn forward_client(&mut self) -> Result<bool, ClientError> {
        self.answer_prepare().await?;
        let max = self.shared.spec.max_message_size;
        let mut run = 0usize;
        let mut goodbye = false;
        let mut out: Vec<Bytes> = Vec::new();
        while let Some(h) = codec::peek_frame(&self.cbuf, run, max)? {
            if !codec::is_frontend_tag(h.tag) || h.tag == b'p' {
                return Err(ProtocolError::Unexpected { tag: h.tag as char }.into());
            }
            if h.tag == b'X' {
                goodbye = true;
                break;
            }
            if self.lease.is_none() {
                self.checkout().await?;
            }
            self.unsynced = !matches!(h.tag, b'S' | b'Q' | b'F');
            match h.tag {
                b'S' | b'Q' | b'F' => {
                    if self.mode == PoolMode::Transaction {
                        self.sent.push_back(Sent::Sync);
                    }
                    if self.pending == 0 {
                        // The clock read when the message came (`work`).
                        self.query_started = Some(self.last_client);
                        self.cancel_sent = false;
                    }
                    self.pending += 1;
                    self.shared.stats.query();
                    self.pool.count_query();
                    if h.tag == b'Q' && self.mode == PoolMode::Transaction {
                        let body = &self.cbuf[run + 5..run + h.size];
                        if may_manage_statements(body) {
                            if mentions_discard(body) {
                                self.forget_prepared = true;
                            }
                            watch_sql_prepare(&mut self.pinned, body);
                        }
                    }
                    run += h.size;
                }
                b'P' | b'B' | b'D' | b'C' if self.mode == PoolMode::Transaction => {
                    if h.tag == b'P' {
                        let (_, rest) = codec::parse_parse(&self.cbuf[run + 5..run + h.size])?;
                        if may_manage_statements(rest) {
                            watch_sql_prepare(&mut self.pinned, rest);
                        }
                    }
                    if !self.cbuf.is_empty() && run > 0 {
                        out.push(self.cbuf.split_to(run).freeze());
                    }
                    run = 0;
                    let f = self.cbuf.split_to(h.size).freeze();
                    let frame = Frame {
                        tag: h.tag,
                        bytes: f,
                    };
                    self.rewrite(frame, &mut out)?;
                }
                _ => run += h.size,
            }
        }
        // Nothing rewritten (the common case): the frames go to the server straight from
        // the client's buffer, with no chunk list and no shared copy of the buffer.
        let direct = run > 0 && out.is_empty();
        if run > 0 && !direct {
            out.push(self.cbuf.split_to(run).freeze());
        }
        if direct || !out.is_empty() {
            let Some(l) = self.lease.as_mut() else {
                return Err(ClientError::ServerLost);
            };
            l.conn.arm_faults();
            let sent = if direct {
                match l.conn.stream.write_all(&self.cbuf[..run]).await {
                    Ok(()) => l.conn.stream.flush().await,
                    Err(e) => Err(e),
                }
            } else {
                write_chunks(&mut l.conn.stream, out).await
            };
            if sent.is_err() {
                self.lease = None;
                return Err(ClientError::ServerLost);
            }
            if direct {
                self.cbuf.advance(run);
            }
        }
        if goodbye {
            self.cbuf.clear();
        }
        Ok(!goodbye)
    }

    /// Transaction mode: renames named statements and prepares them where needed.
    fn rewrite(&mut self, frame: Frame, out: &mut Vec<Bytes>) -> Result<(), ClientError> {
        let Some(lease) = self.lease.as_mut() else {
            return Err(ClientError::ServerLost);
        };
        let conn = &mut lease.conn;
        let body = frame.body();
        match frame.tag {
            b'P' => {
                let (name, rest) = codec::parse_parse(body)?;
                if name.is_empty() {
                    self.sent.push_back(Sent::Parse {
                        name: None,
                        injected: false,
                    });
                    out.push(frame.bytes.clone());
                    return Ok(());
                }
                let rest = frame.bytes.slice_ref(rest);
                let server_name = self.shared.statement_name(&rest);
                if conn.prepared.contains(&server_name) {
                    self.sent.push_back(Sent::Close { as_parse: true });
                    out.push(codec::build_target(b'C', b'S', CLOSED_NAME));
                } else {
                    conn.prepared.insert(server_name.clone());
                    self.sent.push_back(Sent::Parse {
                        name: Some(server_name.clone()),
                        injected: false,
                    });
                    out.push(codec::build_parse(&server_name, &rest));
                }
                self.stmts
                    .insert(name.to_string(), Stmt { server_name, rest });
            }
            b'B' => {
                let (portal, stmt, rest) = codec::parse_bind(body)?;
                match self.stmts.get(stmt).filter(|_| !stmt.is_empty()) {
                    Some(s) => {
                        if ensure_prepared(conn, s, &mut self.sent, out) {
                            self.shared.stats.reprepares.fetch_add(1, Ordering::Relaxed);
                        }
                        out.push(codec::build_bind(portal, &s.server_name, rest));
                    }
                    None => out.push(frame.bytes.clone()),
                }
            }
            b'D' => {
                let (kind, name) = codec::parse_target(body, "describe")?;
                match self
                    .stmts
                    .get(name)
                    .filter(|_| kind == b'S' && !name.is_empty())
                {
                    Some(s) => {
                        if ensure_prepared(conn, s, &mut self.sent, out) {
                            self.shared.stats.reprepares.fetch_add(1, Ordering::Relaxed);
                        }
                        out.push(codec::build_target(b'D', b'S', &s.server_name));
                    }
                    None => out.push(frame.bytes.clone()),
                }
            }
            b'C' => {
                let (kind, name) = codec::parse_target(body, "close")?;
                self.sent.push_back(Sent::Close { as_parse: false });
                if kind == b'S' && self.stmts.remove(name).is_some() {
                    out.push(codec::build_target(b'C', b'S', CLOSED_NAME));
                } else {
                    out.push(frame.bytes.clone());
                }
            }
            _ => out.push(frame.bytes.clone()),
        }
        Ok(())
    }

    /// Forwards every complete server frame, watching `ReadyForQuery` and swallowing
    /// the answers to Quartet's own `Parse`s.
    async fn forward_server(&mut self) -> Result<(), ClientError> {
        let Some(lease) = self.lease.as_mut() else {
            return Ok(());
        };
        let buf = &mut lease.conn.buf;
        let mut out: Vec<Bytes> = Vec::new();
        let mut run = 0usize;
        let mut release = false;
        let mut broken = false;
        loop {
            let h = match codec::peek_frame(buf, run, SERVER_MAX_MESSAGE) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "server broke the protocol");
                    broken = true;
                    break;
                }
            };
            match h.tag {
                b'1' | b'3' if self.mode == PoolMode::Transaction => {
                    let replace = match self.sent.pop_front() {
                        Some(Sent::Parse { injected: true, .. }) => Some(None),
                        Some(Sent::Close { as_parse: true }) => Some(Some(codec::frame(b'1', &[]))),
                        _ => None,
                    };
                    match replace {
                        None => run += h.size,
                        Some(with) => {
                            if run > 0 {
                                out.push(buf.split_to(run).freeze());
                            }
                            run = 0;
                            let _ = buf.split_to(h.size);
                            out.extend(with);
                        }
                    }
                }
                b'E' => {
                    let body = &buf[run + 5..run + h.size];
                    if let Ok(fields) = codec::parse_error(body) {
                        self.shared.stats.error(&fields.code);
                    }
                    run += h.size;
                }
                b'Z' => {
                    let status = buf.get(run + 5).copied().unwrap_or(b'I');
                    run += h.size;
                    self.status = status;
                    self.pending = self.pending.saturating_sub(1);
                    // What is still unanswered up to this Sync failed.
                    while let Some(sent) = self.sent.pop_front() {
                        match sent {
                            Sent::Sync => break,
                            Sent::Parse {
                                name: Some(name), ..
                            } => {
                                lease.conn.prepared.remove(&name);
                            }
                            _ => {}
                        }
                    }
                    if self.pending == 0 {
                        if status == b'I' {
                            self.shared.stats.transaction();
                            self.pool.count_transaction();
                        }
                        self.query_started = None;
                        self.cancel_sent = false;
                        if std::mem::take(&mut self.forget_prepared) {
                            lease.conn.prepared.clear();
                        }
                        // Messages sent after the last Sync still await their
                        // answers on this connection: it stays with the client.
                        if self.mode == PoolMode::Transaction
                            && status == b'I'
                            && !self.unsynced
                            && !self.pinned
                        {
                            release = true;
                        }
                    }
                }
                _ => run += h.size,
            }
        }
        if run > 0 && out.is_empty() && !broken {
            // The common case, nothing replaced: what the client's socket takes at once
            // goes straight from the server's buffer. The server is released before any
            // wait on the client, so a slow client never holds it: the rest, if any, is
            // copied out below.
            if let ClientStream::Plain(tcp) = &self.client {
                if let Ok(n) = tcp.try_write(&buf[..run]) {
                    buf.advance(n);
                    run -= n;
                }
            }
        }
        if run > 0 {
            out.push(buf.split_to(run).freeze());
        }
        if broken {
            self.lease = None;
            self.slot.set(None);
            let _ = write_chunks(&mut self.client, out).await;
            return Err(ClientError::ServerLost);
        }
        if release {
            self.release();
        }
        if !out.is_empty() {
            write_chunks(&mut self.client, out).await?;
        }
        Ok(())
    }

    async fn fatal(&mut self, e: &ClientError) {
        self.shared.stats.error(e.sqlstate());
        let frame = codec::error_response(Severity::Fatal, e.sqlstate(), &e.client_message());
        let _ = self.client.send(&frame).await;
    }

    /// The end of a session: its cancel key is forgotten and its server connection
    /// cleaned up.
    async fn close(mut self) {
        self.finish().await;
        self.shared.cancels().remove(&self.key);
    }

    /// The client is gone: the server connection goes back to the pool when it can be
    /// made clean, or is closed.
    async fn finish(&mut self) {
        let Some(mut lease) = self.lease.take() else {
            return;
        };
        self.slot.set(None);
        if self.pending > 0 {
            return;
        }
        // An open transaction is rolled back; then session mode's reset query, or, for
        // a transaction-mode client pinned by SQL `PREPARE`, `DEALLOCATE ALL`.
        let mut resets: Vec<String> = Vec::new();
        if self.status != b'I' {
            resets.push("ROLLBACK".into());
        }
        match self.mode {
            PoolMode::Session => {
                let q = self.shared.spec.reset_query.trim();
                if !q.is_empty() {
                    resets.push(q.to_string());
                }
            }
            PoolMode::Transaction if self.pinned => resets.push("DEALLOCATE ALL".into()),
            PoolMode::Transaction => {}
        }
        let mut ok = true;
        let wait = Duration::from_secs(5).min(self.shared.spec.connect_timeout);
        for q in &resets {
            ok = matches!(
                tokio::time::timeout(wait, lease.conn.simple(q)).await,
                Ok(Ok(b'I'))
            );
            if !ok {
                break;
            }
        }
        if ok && !resets.is_empty() && (self.mode == PoolMode::Session || self.pinned) {
            lease.conn.prepared.clear();
        }
        if ok {
            self.pool.put(lease);
        }
    }
}

fn ensure_prepared(
    conn: &mut ServerConn,
    s: &Stmt,
    sent: &mut VecDeque<Sent>,
    out: &mut Vec<Bytes>,
) -> bool {
    if conn.prepared.contains(&s.server_name) {
        return false;
    }
    conn.prepared.insert(s.server_name.clone());
    sent.push_back(Sent::Parse {
        name: Some(s.server_name.clone()),
        injected: true,
    });
    out.push(codec::build_parse(&s.server_name, &s.rest));
    true
}

/// Transaction mode: SQL-level `PREPARE` makes a statement that lives on one server
/// connection, under the client's own name, where Quartet cannot follow it. The client
/// keeps its server connection from then on (as in session mode), so its `EXECUTE`s
/// find the statement; `DEALLOCATE ALL` or `DISCARD ALL` lets it go back to sharing at
/// the end of the transaction.
fn watch_sql_prepare(pinned: &mut bool, sql: &[u8]) {
    if let Some(pin) = sql_prepare_effect(sql) {
        if pin && !*pinned {
            tracing::debug!("sql PREPARE in transaction mode: the client keeps its server");
        }
        *pinned = pin;
    }
}

/// What a query text means for SQL-level prepared statements: `Some(true)` when a
/// statement in it is `PREPARE`, `Some(false)` when the last such statement is
/// `DEALLOCATE ALL` or `DISCARD ALL` (nothing prepared by SQL is left), `None` when it
/// has neither. Statements are split at `;` and their comments skipped; a `;` or a
/// keyword inside a string literal can only make a client keep its server longer.
fn sql_prepare_effect(sql: &[u8]) -> Option<bool> {
    let sql = match memchr::memchr(0, sql) {
        Some(nul) => &sql[..nul],
        None => sql,
    };
    let mut effect = None;
    // Runs on every query in transaction mode: statements are found with `memchr`, and
    // one whose first word cannot be `PREPARE`, `DEALLOCATE` or `DISCARD` (all begin
    // with p or d) is not read further. Nothing is allocated.
    let is = |w: &[u8], k: &[u8]| w.eq_ignore_ascii_case(k);
    let mut rest = sql;
    loop {
        let (stmt, next) = match memchr::memchr(b';', rest) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        // Most statements begin with their first word's letter, at once or after
        // spaces: one byte tells. Comments and the rest go the long way.
        let lead = stmt
            .iter()
            .position(|c| !matches!(c, b' ' | b'\n' | b'\t' | b'\r'));
        let starts_other = lead.is_some_and(|i| {
            stmt[i].is_ascii_alphabetic() && !matches!(stmt[i] | 0x20, b'p' | b'd')
        });
        let (a, after) = if starts_other {
            (&[][..], &[][..])
        } else {
            next_word(stmt)
        };
        if matches!(a.first(), Some(b'p' | b'P' | b'd' | b'D')) {
            if is(a, b"prepare") {
                effect = Some(true);
            } else if is(a, b"deallocate") || is(a, b"discard") {
                let (b, after) = next_word(after);
                let all = is(b, b"all")
                    || (is(a, b"deallocate")
                        && is(b, b"prepare")
                        && is(next_word(after).0, b"all"));
                if all {
                    effect = Some(false);
                }
            }
        }
        match next {
            Some(n) => rest = n,
            None => return effect,
        }
    }
}

/// The next word of a statement after whitespace and comments, and what follows it
/// (an empty word where there is none).
fn next_word(stmt: &[u8]) -> (&[u8], &[u8]) {
    let mut i = 0;
    while i < stmt.len() {
        match stmt[i] {
            c if c.is_ascii_whitespace() => i += 1,
            b'-' if stmt.get(i + 1) == Some(&b'-') => {
                while i < stmt.len() && stmt[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if stmt.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < stmt.len() && !(stmt[i] == b'*' && stmt[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < stmt.len() && (stmt[i].is_ascii_alphanumeric() || stmt[i] == b'_') {
                    i += 1;
                }
                return (&stmt[start..i], &stmt[i..]);
            }
            _ => break,
        }
    }
    (&[], &[])
}

/// Whether a query's text holds `prepare`, `discard` or `deallocate` in any case, the
/// words [`mentions_discard`] and [`sql_prepare_effect`] look for: when it does not
/// (nearly every query), neither needs to read it. Eight bytes at a time: a word whose
/// bytes, folded to lower case, hold no `d` and no `p` cannot begin one of them, so only
/// the words that do are looked at byte by byte.
fn may_manage_statements(sql: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const FOLD: u64 = 0x2020_2020_2020_2020;
    // A high bit where a byte of `v` is zero (and maybe above one: every hit is checked).
    let zeros = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    // The second letter tells which word it can be.
    let starts_keyword = |i: usize| {
        let at = |w: &[u8]| {
            sql.get(i..i + w.len())
                .is_some_and(|x| x.eq_ignore_ascii_case(w))
        };
        match sql.get(i + 1).map(|c| c | 0x20) {
            Some(b'r') => at(b"prepare"),
            Some(b'i') => at(b"discard"),
            Some(b'e') => at(b"deallocate"),
            _ => false,
        }
    };
    let mut chunks = sql.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let Ok(word) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let folded = u64::from_le_bytes(word) | FOLD;
        let mut hits =
            zeros(folded ^ (ONES * u64::from(b'd'))) | zeros(folded ^ (ONES * u64::from(b'p')));
        while hits != 0 {
            if starts_keyword(base + (hits.trailing_zeros() / 8) as usize) {
                return true;
            }
            hits &= hits - 1;
        }
        base += 8;
    }
    let tail = chunks.remainder();
    (0..tail.len()).any(|j| matches!(tail[j] | 0x20, b'd' | b'p') && starts_keyword(base + j))
}

/// Whether a simple query may drop the server's prepared statements.
fn mentions_discard(body: &[u8]) -> bool {
    // Both words begin with d: only where a d is (found with SIMD by `memchr2`) is a
    // word compared, so a query costs a scan, not a comparison at every byte.
    memchr::memchr2_iter(b'd', b'D', body).any(|i| {
        let at = |w: &[u8]| {
            body.get(i..i + w.len())
                .is_some_and(|x| x.eq_ignore_ascii_case(w))
        };
        at(b"discard") || at(b"deallocate")
    })
}

async fn write_chunks<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    chunks: Vec<Bytes>,
) -> std::io::Result<()> {
    if chunks.len() == 1 {
        stream.write_all(&chunks[0]).await?;
        return stream.flush().await;
    }
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    if total <= 64 * 1024 {
        let mut b = BytesMut::with_capacity(total);
        for c in &chunks {
            b.extend_from_slice(c);
        }
        stream.write_all(&b).await?;
        return stream.flush().await;
    }
    for c in &chunks {
        stream.write_all(c).await?;
    }
    stream.flush().await
}

#[cfg(test)]
pub(crate) fn sizes() -> Vec<(&'static str, usize)> {
    fn ret<A, R>(_: fn(A) -> R) -> usize {
        std::mem::size_of::<R>()
    }
    type S = &'static mut Session;
    vec![
        ("session", std::mem::size_of::<Session>()),
        ("run", ret::<S, _>(Session::run)),
        ("wait_active", ret::<S, _>(Session::wait_active)),
        ("forward_client", ret::<S, _>(Session::forward_client)),
        ("forward_server", ret::<S, _>(Session::forward_server)),
        ("on_timer", ret::<S, _>(Session::on_timer)),
        ("answer_prepare", ret::<S, _>(Session::answer_prepare)),
        ("checkout", ret::<S, _>(Session::checkout)),
        ("sleep", std::mem::size_of::<tokio::time::Sleep>()),
    ]
}

#[cfg(test)]
mod tests {
    use super::{may_manage_statements, mentions_discard, sql_prepare_effect};

    #[test]
    fn the_keyword_filter_passes_every_query_the_scans_act_on() {
        let queries: &[&[u8]] = &[
            b"PREPARE q AS select 1\0",
            b"  /* c */ -- x\n prepare q(int) as select $1",
            b"select 1; Prepare q as select 2",
            b"DEALLOCATE ALL",
            b"deallocate prepare all",
            b"discard all",
            b"select 1;;  DISCARD  /* x */ ALL;",
            b"do $$ begin execute 'discard plans'; end $$",
            b"select 1; Deallocate q",
            b"1234567prepare",
            b"12345678Discard",
            b"1234567Deallocat DEALLOCATE",
        ];
        for q in queries {
            assert!(may_manage_statements(q), "{}", String::from_utf8_lossy(q));
        }
        let other: &[&[u8]] = &[
            b"select abalance from pgbench_accounts where aid = 1;\0",
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
            b"select prepar, discar, dealloc from t",
            b"",
            b"d",
            b"prepar",
        ];
        for q in other {
            assert!(!may_manage_statements(q), "{}", String::from_utf8_lossy(q));
            assert!(!mentions_discard(q));
            assert_eq!(sql_prepare_effect(q), None);
        }
        // Every position and case of each word, in and across the eight-byte words.
        for word in ["prepare", "DISCARD", "DeAlLoCaTe"] {
            for pad in 0..17 {
                let q = format!("{}{word} x", "x".repeat(pad));
                assert!(may_manage_statements(q.as_bytes()), "{q}");
            }
        }
    }

    #[test]
    fn sql_prepare_pins_and_deallocate_all_unpins() {
        assert_eq!(sql_prepare_effect(b"PREPARE q AS select 1\0"), Some(true));
        assert_eq!(
            sql_prepare_effect(b"  /* c */ -- x\n prepare q(int) as select $1"),
            Some(true)
        );
        assert_eq!(
            sql_prepare_effect(b"select 1; Prepare q as select 2"),
            Some(true)
        );
        assert_eq!(sql_prepare_effect(b"DEALLOCATE ALL"), Some(false));
        assert_eq!(sql_prepare_effect(b"deallocate prepare all"), Some(false));
        assert_eq!(sql_prepare_effect(b"discard all"), Some(false));
        assert_eq!(
            sql_prepare_effect(b"prepare q as select 1; deallocate all"),
            Some(false)
        );
        assert_eq!(sql_prepare_effect(b"deallocate q"), None);
        assert_eq!(sql_prepare_effect(b"select prepared from t"), None);
        assert_eq!(sql_prepare_effect(b"EXECUTE q(1)"), None);
        assert_eq!(sql_prepare_effect(b""), None);
        assert_eq!(sql_prepare_effect(b"discard plans; select 1"), None);
        assert_eq!(
            sql_prepare_effect(b"select 1;;  DISCARD  /* x */ ALL;"),
            Some(false)
        );
        assert_eq!(sql_prepare_effect(b"deallocate prepare q"), None);
        assert_eq!(
            sql_prepare_effect(b"deallocate all\0prepare q as select 1"),
            Some(false)
        );
    }

    #[test]
    fn discard_is_found_anywhere_in_any_case() {
        assert!(mentions_discard(b"DISCARD ALL"));
        assert!(mentions_discard(b"select 1; Deallocate q"));
        assert!(mentions_discard(
            b"do $$ begin execute 'discard plans'; end $$"
        ));
        assert!(!mentions_discard(
            b"select abalance from pgbench_accounts where aid = 1"
        ));
        assert!(!mentions_discard(b"select discar"));
        assert!(!mentions_discard(b""));
    }
}
