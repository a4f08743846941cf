//! One connection from Quartet to a PostgreSQL server: connect, log in with Quartet's own
//! credentials (trust, cleartext, md5, SCRAM-SHA-256), remember what the server said at
//! startup (parameters, its backend key for cancels).

use super::auth::{md5_response, md5_stored, ScramClient, ScramError, MECHANISM};
use super::codec::{self, AuthRequest, ErrorFields, Frame, ProtocolError};
use bytes::BytesMut;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

pub struct ServerConn {
    pub(crate) stream: TcpStream,
    pub(crate) buf: BytesMut,
    pub peer: SocketAddr,
    pub pid: i32,
    pub key: i32,
    pub params: Vec<(String, String)>,
    /// Names of the statements prepared on this connection by Quartet (transaction
    /// mode's renamed statements).
    pub prepared: HashSet<Arc<str>>,
    pub created: Instant,
    pub last_used: Instant,
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
pub(crate) async fn read_frame(
    stream: &mut TcpStream,
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
        let addr = format!("{host}:{port}");
        match tokio::time::timeout(timeout, Self::connect_inner(&addr, login, backend)).await {
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
    ) -> Result<ServerConn, ConnectError> {
        let io = |source| ConnectError::Io {
            addr: addr.to_string(),
            source,
        };
        let mut stream = TcpStream::connect(addr).await.map_err(io)?;
        let _ = stream.set_nodelay(true);
        let peer = stream.peer_addr().map_err(io)?;
        let mut params: Vec<(&str, &str)> =
            vec![("user", &login.user), ("database", &login.database)];
        for (k, v) in &login.params {
            params.push((k, v));
        }
        stream
            .write_all(&codec::startup_message(&params))
            .await
            .map_err(io)?;
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
                    return Ok(ServerConn {
                        stream,
                        buf,
                        peer,
                        pid,
                        key,
                        params: server_params,
                        prepared: HashSet::new(),
                        created: now,
                        last_used: now,
                        backend,
                    });
                }
                other => return Err(ProtocolError::Unexpected { tag: other as char }.into()),
            }
        }
    }

    /// Whether an idle connection is still open and silent: a server that went away
    /// has closed it (end of stream) or said why (an `ErrorResponse` before closing).
    /// Costs one non-blocking read, no round trip.
    pub fn looks_alive(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Runs a simple query and waits for `ReadyForQuery`; `Ok(status)` when the
    /// server is idle again, whatever the query's outcome.
    pub async fn simple(&mut self, sql: &str) -> std::io::Result<u8> {
        self.stream.write_all(&codec::query(sql)).await?;
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
