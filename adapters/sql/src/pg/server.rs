//! One connection from Quartet to a PostgreSQL server: connect, log in with Quartet's own
//! credentials (trust, cleartext, md5, SCRAM-SHA-256), remember what the server said at
//! startup (parameters, its backend key for cancels).

use super::auth::{md5_response, md5_stored, ScramClient, ScramError, MECHANISM};
use super::codec::{self, AuthRequest, ErrorFields, Frame, ProtocolError};
use crate::tls::ServerTls;
use bytes::{Bytes, BytesMut};
use quartet_policies::fault::toxic::Toxic;
use quartet_policies::fault::FaultHandle;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Server messages are not limited (the server is trusted), only sanity-checked.
pub const SERVER_MAX_MESSAGE: usize = i32::MAX as usize;

/// Why connecting or logging in to a server failed. Nothing of a client's was sent.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {addr}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {addr} timed out after {after:?}")]
    Timeout { addr: String, after: Duration },
    #[error("server refused the login: {}", .fields.message)]
    Server { fields: ErrorFields },
    #[error("server closed the connection during startup")]
    Closed,
    #[error("server broke the protocol")]
    Protocol(#[from] ProtocolError),
    #[error("scram authentication with the server failed")]
    Scram(#[from] ScramError),
    #[error("server asks for a password and the backend url has none")]
    NoPassword,
    #[error("tls with {addr} failed")]
    Tls {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} does not accept tls and the backend url requires it (sslmode)")]
    TlsRefused { addr: String },
    #[error("server asks for unsupported authentication method {code}")]
    UnsupportedAuth { code: i32 },
}

impl ConnectError {
    /// Whether trying again (here or on another backend) may help: the server was
    /// unreachable or not ready. A refused login or a missing database will not change.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::Io { .. } | ConnectError::Timeout { .. } | ConnectError::Closed => true,
            ConnectError::Server { fields } => {
                fields.code.starts_with("08") || fields.code.starts_with("57P")
            }
            _ => false,
        }
    }
}

/// What to log in as.
#[derive(Clone, Debug)]
pub struct Login {
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    /// Other startup parameters to pass on (application_name, client_encoding, ...).
    pub params: Vec<(String, String)>,
}

/// The connection to a server under the protocol: TCP, or TLS over TCP.
pub(crate) enum ServerIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl ServerIo {
    fn tcp(&self) -> &TcpStream {
        match self {
            ServerIo::Plain(s) => s,
            ServerIo::Tls(t) => t.get_ref().0,
        }
    }
}

/// Forwards the `AsyncRead`/`AsyncWrite` methods to whichever variant is there.
macro_rules! forward_io {
    ($ty:ident, $($variant:ident),+) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }

        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<std::io::Result<usize>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_write(cx, buf),)+
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_flush(cx),)+
                }
            }

            fn poll_shutdown(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_shutdown(cx),)+
                }
            }
        }
    };
}
pub(crate) use forward_io;

forward_io!(ServerIo, Plain, Tls);

/// The socket to a server: as is, or with the listener's connection-level faults
/// ([`Toxic`]: latency, reset, stall, close_after) applied once logged in.
pub(crate) enum ServerStream {
    Io(ServerIo),
    Toxic(Box<Toxic<ServerIo>>),
    /// Only while [`ServerConn::arm_faults`] moves the socket into a [`Toxic`].
    Detached(tokio::io::Empty),
}

forward_io!(ServerStream, Io, Toxic, Detached);

impl ServerStream {
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            ServerStream::Io(s) => Some(s.tcp()),
            ServerStream::Toxic(t) => Some(t.get_ref().tcp()),
            ServerStream::Detached(_) => None,
        }
    }

    /// Whether the server sent anything (or closed): a look at the socket that takes
    /// nothing from it, so TLS records stay whole.
    fn has_input(&self) -> bool {
        let Some(tcp) = self.tcp() else {
            return true;
        };
        // First what tokio knows: a socket it has seen nothing on since the last read
        // drained it is quiet, and `try_read` says so without a system call or a waker.
        if matches!(tcp.try_read(&mut []), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
            return false;
        }
        // Something was seen (or is stale): a peek tells.
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        !matches!(tcp.poll_peek(&mut cx, &mut buf), Poll::Pending)
    }
}

/// The `ParameterStatus` messages of `params`, but for `application_name`.
fn status_block(params: &[(String, String)]) -> Bytes {
    let mut block = BytesMut::new();
    for (k, v) in params.iter().filter(|(k, _)| k != "application_name") {
        block.extend_from_slice(&codec::parameter_status(k, v));
    }
    block.freeze()
}

/// Whether `fault` holds connection-level faults now.
fn has_toxics(fault: &FaultHandle) -> bool {
    fault.current().is_some_and(|f| !f.connection.is_empty())
}

pub struct ServerConn {
    pub(crate) stream: ServerStream,
    /// The backend's faults: the socket goes into a [`Toxic`] the first time they hold
    /// connection-level faults ([`ServerConn::arm_faults`]); until then it is used as is.
    fault: Option<FaultHandle>,
    /// The fault's version when it was last looked at.
    fault_version: u64,
    pub(crate) buf: BytesMut,
    pub peer: SocketAddr,
    pub pid: i32,
    pub key: i32,
    pub params: Vec<(String, String)>,
    /// `params` as `ParameterStatus` messages, all but `application_name` (which a
    /// client's own replaces): made once per connection, copied into every login's
    /// answer as one block.
    pub status_block: Bytes,
    /// Names of the statements prepared on this connection by Quartet (transaction
    /// mode's renamed statements).
    pub prepared: HashSet<Arc<str>>,
    pub created: Instant,
    pub last_used: Instant,
    /// Idle in the pool: closed instead of lent from this moment (the earlier of its
    /// lifetime's end and its idle timeout), set when it is given back.
    pub idle_until: Option<Instant>,
    /// The index of the backend in its listener's list.
    pub backend: usize,
}

impl std::fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConn")
            .field("peer", &self.peer)
            .field("pid", &self.pid)
            .finish()
    }
}

/// Reads one whole frame from `stream` into `buf`.
pub(crate) async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> std::io::Result<Option<Frame>> {
    loop {
        match codec::next_frame(buf, max) {
            Ok(Some(f)) => return Ok(Some(f)),
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
        buf.reserve(8192);
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

impl ServerConn {
    /// Connects to `host:port` and logs in, all within `timeout`.
    pub async fn connect(
        host: &str,
        port: u16,
        login: &Login,
        timeout: Duration,
        backend: usize,
    ) -> Result<ServerConn, ConnectError> {
        Self::connect_with_faults(host, port, login, timeout, backend, None).await
    }

    /// Like [`ServerConn::connect`]; once logged in, the connection carries the
    /// connection-level faults of `fault` (its toxics), if any is given.
    pub async fn connect_with_faults(
        host: &str,
        port: u16,
        login: &Login,
        timeout: Duration,
        backend: usize,
        fault: Option<FaultHandle>,
    ) -> Result<ServerConn, ConnectError> {
        Self::connect_with(host, port, login, timeout, backend, fault, None).await
    }

    /// Like [`ServerConn::connect_with_faults`], with TLS first when `tls` says so.
    pub async fn connect_with(
        host: &str,
        port: u16,
        login: &Login,
        timeout: Duration,
        backend: usize,
        fault: Option<FaultHandle>,
        tls: Option<&ServerTls>,
    ) -> Result<ServerConn, ConnectError> {
        let addr = format!("{host}:{port}");
        let connected = Self::connect_inner(&addr, login, backend, fault, tls);
        match tokio::time::timeout(timeout, connected).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout {
                addr,
                after: timeout,
            }),
        }
    }

    async fn connect_inner(
        addr: &str,
        login: &Login,
        backend: usize,
        mut fault: Option<FaultHandle>,
        tls: Option<&ServerTls>,
    ) -> Result<ServerConn, ConnectError> {
        let io = |source| ConnectError::Io {
            addr: addr.to_string(),
            source,
        };
        let tcp = TcpStream::connect(addr).await.map_err(io)?;
        let _ = tcp.set_nodelay(true);
        let peer = tcp.peer_addr().map_err(io)?;
        let mut stream = match tls {
            Some(tls) => start_tls(tcp, tls, addr).await?,
            None => ServerIo::Plain(tcp),
        };
        let mut params: Vec<(&str, &str)> =
            vec![("user", &login.user), ("database", &login.database)];
        for (k, v) in &login.params {
            params.push((k, v));
        }
        stream
            .write_all(&codec::startup_message(&params))
            .await
            .map_err(io)?;
        stream.flush().await.map_err(io)?;
        let mut buf = BytesMut::with_capacity(8192);
        let mut scram: Option<ScramClient> = None;
        let mut server_params = Vec::new();
        let (mut pid, mut key) = (0, 0);
        loop {
            let frame = read_frame(&mut stream, &mut buf, SERVER_MAX_MESSAGE)
                .await
                .map_err(io)?
                .ok_or(ConnectError::Closed)?;
            match frame.tag {
                b'R' => {
                    let password = || login.password.as_deref().ok_or(ConnectError::NoPassword);
                    let reply = match codec::parse_auth(&frame)? {
                        AuthRequest::Ok => None,
                        AuthRequest::Cleartext => Some(codec::password_message(password()?)),
                        AuthRequest::Md5 { salt } => {
                            let stored = md5_stored(&login.user, password()?);
                            Some(codec::password_message(&md5_response(&stored, salt)))
                        }
                        AuthRequest::Sasl { mechanisms } => {
                            if !mechanisms.iter().any(|m| m == MECHANISM) {
                                return Err(ConnectError::UnsupportedAuth { code: 10 });
                            }
                            let (client, first) = ScramClient::start(password()?);
                            scram = Some(client);
                            Some(codec::sasl_initial_response(MECHANISM, first.as_bytes()))
                        }
                        AuthRequest::SaslContinue { data } => {
                            let client = scram
                                .as_mut()
                                .ok_or(ProtocolError::Unexpected { tag: 'R' })?;
                            Some(codec::sasl_response(client.answer(&data)?.as_bytes()))
                        }
                        AuthRequest::SaslFinal { data } => {
                            let client = scram
                                .as_ref()
                                .ok_or(ProtocolError::Unexpected { tag: 'R' })?;
                            client.verify(&data)?;
                            None
                        }
                        AuthRequest::Other { code } => {
                            return Err(ConnectError::UnsupportedAuth { code })
                        }
                    };
                    if let Some(reply) = reply {
                        stream.write_all(&reply).await.map_err(io)?;
                        stream.flush().await.map_err(io)?;
                    }
                }
                b'S' => server_params.push(codec::parse_parameter_status(&frame)?),
                b'K' => (pid, key) = codec::parse_backend_key(&frame)?,
                b'E' => {
                    return Err(ConnectError::Server {
                        fields: codec::parse_error(frame.body())?,
                    })
                }
                b'N' => {}
                b'Z' => {
                    let now = Instant::now();
                    let fault_version = fault.as_ref().map_or(0, FaultHandle::version);
                    return Ok(ServerConn {
                        // Toxics act on the session's traffic, not on the login.
                        stream: match &fault {
                            Some(f) if has_toxics(f) => {
                                ServerStream::Toxic(Box::new(Toxic::new(stream, f.clone())))
                            }
                            _ => ServerStream::Io(stream),
                        },
                        fault: fault.take(),
                        fault_version,
                        buf,
                        peer,
                        pid,
                        key,
                        status_block: status_block(&server_params),
                        params: server_params,
                        prepared: HashSet::new(),
                        created: now,
                        last_used: now,
                        idle_until: None,
                        backend,
                    });
                }
                other => return Err(ProtocolError::Unexpected { tag: other as char }.into()),
            }
        }
    }

    /// Before traffic of a session: puts the socket into a [`Toxic`] when the backend's
    /// faults have changed since they were last looked at and now hold connection-level
    /// faults (toxics). A connection without toxics is read and written as is, with no
    /// watch timer per wait; one that has had them keeps the wrapper, which follows the
    /// faults from then on. So a toxic set at run time reaches a connection that had
    /// none at the next message a client sends on it (in transaction mode, at the next
    /// transaction), not in the middle of an exchange.
    pub fn arm_faults(&mut self) {
        let Some(fault) = &self.fault else {
            return;
        };
        let version = fault.version();
        if version == self.fault_version {
            return;
        }
        self.fault_version = version;
        if !matches!(self.stream, ServerStream::Io(_)) || !has_toxics(fault) {
            return;
        }
        let fault = fault.clone();
        let detached = ServerStream::Detached(tokio::io::empty());
        if let ServerStream::Io(io) = std::mem::replace(&mut self.stream, detached) {
            self.stream = ServerStream::Toxic(Box::new(Toxic::new(io, fault)));
        }
    }

    /// Whether an idle connection is still open and silent: a server that went away
    /// has closed it (end of stream) or said why (an `ErrorResponse` before closing).
    /// Costs a look at tokio's readiness, and a non-blocking peek only when the socket
    /// was seen readable; no round trip.
    pub fn looks_alive(&self) -> bool {
        self.buf.is_empty() && !self.stream.has_input()
    }

    /// Runs a simple query and waits for `ReadyForQuery`; `Ok(status)` when the
    /// server is idle again, whatever the query's outcome.
    pub async fn simple(&mut self, sql: &str) -> std::io::Result<u8> {
        self.stream.write_all(&codec::query(sql)).await?;
        self.stream.flush().await?;
        loop {
            let f = read_frame(&mut self.stream, &mut self.buf, SERVER_MAX_MESSAGE)
                .await?
                .ok_or(std::io::ErrorKind::UnexpectedEof)?;
            if f.tag == b'Z' {
                return codec::parse_ready(&f)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
            }
        }
    }

    /// Says goodbye politely (best effort).
    pub async fn terminate(mut self) {
        let _ = self.stream.write_all(&codec::terminate()).await;
        let _ = self.stream.flush().await;
    }
}

/// `SSLRequest`, then the handshake when the server answers `S`; on `N`, plain when the
/// mode allows it. Reads exactly the one answer byte, so nothing the server may have
/// sent before the handshake is ever taken as inside it.
async fn start_tls(
    mut tcp: TcpStream,
    tls: &ServerTls,
    addr: &str,
) -> Result<ServerIo, ConnectError> {
    let io = |source| ConnectError::Io {
        addr: addr.to_string(),
        source,
    };
    tcp.write_all(&codec::ssl_request()).await.map_err(io)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(io)?;
    match answer[0] {
        b'S' => {
            let stream = tls
                .connector
                .connect(tls.name.clone(), tcp)
                .await
                .map_err(|source| ConnectError::Tls {
                    addr: addr.to_string(),
                    source,
                })?;
            Ok(ServerIo::Tls(Box::new(stream)))
        }
        b'N' if !tls.mode.required() => Ok(ServerIo::Plain(tcp)),
        b'N' => Err(ConnectError::TlsRefused {
            addr: addr.to_string(),
        }),
        // An old server answers an ErrorResponse; anything else is not PostgreSQL.
        _ => Err(ProtocolError::Unexpected {
            tag: answer[0] as char,
        }
        .into()),
    }
}

/// Sends a `CancelRequest` for the server connection `(pid, key)` at `peer`.
pub async fn send_cancel(peer: SocketAddr, pid: i32, key: i32, timeout: Duration) {
    let fut = async {
        let mut s = TcpStream::connect(peer).await?;
        s.write_all(&codec::cancel_request(pid, key)).await?;
        // The server closes the connection once it has read the request.
        let mut sink = [0u8; 16];
        let _ = s.read(&mut sink).await;
        Ok::<_, std::io::Error>(())
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(%peer, error = %e, "cancel request failed"),
        Err(_) => tracing::warn!(%peer, "cancel request timed out"),
    }
}
