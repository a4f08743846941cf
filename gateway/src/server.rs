//! Serving: our own accept loops (HTTP/1.1 and HTTP/2, h2c by prior knowledge, h2 by ALPN
//! on TLS, upgrades), the current [`App`] in an `ArcSwap` (each request uses the app
//! current when it arrives), SIGHUP reloads, and SIGTERM/SIGINT draining within the grace
//! period. A cleartext public connection starts on Quartet's own HTTP/1.1 loop
//! ([`crate::h1`]) and moves to hyper when a request needs it.
//!
//! The public listener is served one of two ways (`server.runtime`): `per_core` (the
//! default) starts one thread per core, each running a single-threaded tokio runtime
//! with its own `SO_REUSEPORT` socket on `server.listen`, so the kernel spreads new
//! connections over the threads and each connection (with its upstream calls, whose idle
//! connections are kept per thread, see `quartet_http::pool`) lives on one thread: no
//! work stealing, no cross-thread wake-ups. `multi_thread` accepts on the shared runtime.
//! The admin listener, SIGHUP and the SQL listeners stay on the shared runtime; the app
//! (routes, breakers, budgets, metrics, faults) is shared by every thread.

use crate::admin::{self, AdminState};
use crate::config::{self, Config, Loaded, RuntimeModel, Source};
use crate::routes::ConnInfo;
use crate::stack::{BuildError, Shared};
use crate::App;
use arc_swap::ArcSwap;
use axum::body::Body;
use axum::Router;
use futures_util::future::Either;
use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use quartet_policies::metrics::Metrics;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// How long a client may take to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot build the app from the config")]
    Build(#[from] BuildError),
    #[error("{key}: cannot read {}", path.display())]
    TlsRead {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{key}: no {what} found in {}", path.display())]
    TlsEmpty {
        key: &'static str,
        what: &'static str,
        path: PathBuf,
    },
    #[error("server.tls: certificate and key not usable")]
    Tls(#[source] rustls::Error),
    #[error("{key}: cannot listen on {addr}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Sql(#[from] crate::sql::SqlBindError),
    #[error("cannot read the bound address")]
    LocalAddr(#[source] std::io::Error),
    #[error("cannot start the identity channel")]
    Identity(#[from] crate::identity::StartError),
    #[error("cannot start the threads serving the public listener")]
    Runtime(#[source] std::io::Error),
    #[error("cannot install the signal handlers")]
    Signals(#[source] std::io::Error),
}

impl RunError {
    /// Whether the config is to blame (exit status 64, like a config refused by `check`).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            RunError::Build(_)
                | RunError::TlsRead { .. }
                | RunError::TlsEmpty { .. }
                | RunError::Tls(_)
        ) || matches!(self, RunError::Sql(e) if e.is_config())
    }
}

/// The rustls server config of `[server].tls`, offering h2 and http/1.1 by ALPN.
pub fn load_tls(tls: &config::TlsConfig) -> Result<Arc<rustls::ServerConfig>, RunError> {
    fn open(key: &'static str, path: &Path) -> Result<std::io::BufReader<std::fs::File>, RunError> {
        std::fs::File::open(path)
            .map(std::io::BufReader::new)
            .map_err(|source| RunError::TlsRead {
                key,
                path: path.to_path_buf(),
                source,
            })
    }
    let read_err = |key, path: &Path| {
        let path = path.to_path_buf();
        move |source| RunError::TlsRead { key, path, source }
    };
    let certs = rustls_pemfile::certs(&mut open("server.tls.cert", &tls.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err("server.tls.cert", &tls.cert))?;
    if certs.is_empty() {
        return Err(RunError::TlsEmpty {
            key: "server.tls.cert",
            what: "certificate",
            path: tls.cert.clone(),
        });
    }
    let key = rustls_pemfile::private_key(&mut open("server.tls.key", &tls.key)?)
        .map_err(read_err("server.tls.key", &tls.key))?
        .ok_or_else(|| RunError::TlsEmpty {
            key: "server.tls.key",
            what: "private key",
            path: tls.key.clone(),
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(RunError::Tls)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(RunError::Tls)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The public listener's socket(s).
enum Public {
    /// Accepted on the shared runtime.
    Shared(TcpListener),
    /// One `SO_REUSEPORT` socket per core thread, all on the same address.
    PerCore(Vec<std::net::TcpListener>),
}

impl Public {
    fn bind(addr: SocketAddr, model: RuntimeModel) -> std::io::Result<Self> {
        match model {
            RuntimeModel::MultiThread => {
                let listener = reuse_port_listener(addr, false)?;
                Ok(Public::Shared(TcpListener::from_std(listener)?))
            }
            RuntimeModel::PerCore => {
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                let first = reuse_port_listener(addr, true)?;
                // Port 0 is resolved by the first bind; the others join that port.
                let addr = first.local_addr()?;
                let mut all = vec![first];
                for _ in 1..threads {
                    all.push(reuse_port_listener(addr, true)?);
                }
                Ok(Public::PerCore(all))
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Public::Shared(l) => l.local_addr(),
            Public::PerCore(all) => all[0].local_addr(),
        }
    }
}

/// A non-blocking listening socket on `addr` (`SO_REUSEADDR` as tokio sets it, and
/// `SO_REUSEPORT` when asked).
fn reuse_port_listener(
    addr: SocketAddr,
    reuse_port: bool,
) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A bound server, not yet serving: its addresses are known (port 0 resolved).
pub struct Server {
    public: Public,
    admin: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Arc<ArcSwap<App>>,
    shared: Shared,
    serving: Arc<AtomicBool>,
    source: Source,
    grace_period: Duration,
    /// Bound at start, served until shutdown, never rebound (see `crate::sql`).
    sql: Vec<quartet_sql::SqlListener>,
    /// Where the SQL listeners run (`[sql] runtime`).
    sql_runtime: quartet_sql::SqlRuntime,
}

impl Server {
    /// Builds the app and binds both listeners.
    pub async fn bind(loaded: Loaded) -> Result<Self, RunError> {
        let mut shared = Shared::new(Metrics::new());
        crate::identity::start(&mut shared, &loaded.config).await?;
        let server_cfg = loaded.config.server.clone();
        let tls = match &server_cfg.tls {
            Some(t) => Some(TlsAcceptor::from(load_tls(t)?)),
            None => None,
        };
        // Bound before the first build, which registers their breakers and faults.
        let sql = crate::sql::bind(&loaded.config, &shared).await?;
        let sql_runtime = loaded.config.sql.runtime;
        let app = App::build(loaded.config, &shared)?;
        let public = Public::bind(server_cfg.listen, server_cfg.runtime).map_err(|source| {
            RunError::Bind {
                key: "server.listen",
                addr: server_cfg.listen,
                source,
            }
        })?;
        let admin = TcpListener::bind(server_cfg.admin_listen)
            .await
            .map_err(|source| RunError::Bind {
                key: "server.admin_listen",
                addr: server_cfg.admin_listen,
                source,
            })?;
        Ok(Self {
            public,
            admin,
            tls,
            app: Arc::new(ArcSwap::from_pointee(app)),
            shared,
            serving: Arc::new(AtomicBool::new(false)),
            source: loaded.source,
            grace_period: server_cfg.grace_period,
            sql,
            sql_runtime,
        })
    }

    pub fn public_addr(&self) -> std::io::Result<SocketAddr> {
        self.public.local_addr()
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// A handle that reloads the config of this server (what SIGHUP does).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            app: self.app.clone(),
            shared: self.shared.clone(),
            source: self.source.clone(),
        }
    }

    /// Serves until `shutdown` completes, reloading on SIGHUP, then drains connections for
    /// at most the grace period.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
        let reloader = self.reloader();
        let admin_router = admin::router(AdminState {
            app: self.app.clone(),
            shared: self.shared.clone(),
            serving: self.serving.clone(),
        });
        let graceful = Drain::new();
        let (sql_stop, sql_stopped) = tokio::sync::watch::channel(false);
        let mut sql_tasks = Vec::with_capacity(self.sql.len());
        for (i, listener) in self.sql.into_iter().enumerate() {
            let mut stopped = sql_stopped.clone();
            let run = listener.run_with_grace(
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
                self.grace_period,
            );
            let (done, finished) = tokio::sync::oneshot::channel::<()>();
            match self.sql_runtime {
                quartet_sql::SqlRuntime::Shared => {
                    tokio::spawn(async move {
                        run.await;
                        let _ = done.send(());
                    });
                }
                quartet_sql::SqlRuntime::OwnThread => sql_thread(i, run, done)?,
            }
            sql_tasks.push(finished);
        }
        let (shared_public, cores) = match self.public {
            Public::Shared(listener) => (Some(listener), None),
            Public::PerCore(listeners) => (
                None,
                Some(PerCore::start(
                    listeners,
                    &self.tls,
                    &self.app,
                    self.grace_period,
                )?),
            ),
        };
        let floor = tokio::spawn(timer_floor());
        self.serving.store(true, Ordering::Relaxed);
        tracing::info!("quartet ready");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = accept_if(&shared_public) => match accepted {
                    Ok((stream, remote)) => {
                        let app = self.app.clone();
                        let tls = self.tls.clone();
                        spawn_public(stream, remote, tls, app, graceful.watcher(), None);
                    }
                    Err(err) => accept_error(err).await,
                },
                accepted = self.admin.accept() => match accepted {
                    Ok((stream, remote)) => {
                        let router = admin_router.clone();
                        let watcher = graceful.watcher();
                        tokio::spawn(serve_connection(TokioIo::new(stream), ConnInfo::new(remote, false), Handler::Fixed(router), watcher));
                    }
                    Err(err) => accept_error(err).await,
                },
                _ = hangup.recv() => {
                    reloader.reload();
                }
                () = &mut shutdown => break,
            }
        }
        self.serving.store(false, Ordering::Relaxed);
        // Stop accepting: new connections are refused from here on.
        drop(shared_public);
        drop(self.admin);
        // The core threads stop accepting too, and drain their connections alongside.
        let cores_drained = cores.map(PerCore::stop);
        // The SQL listeners stop accepting too; their sessions drain alongside.
        let _ = sql_stop.send(true);
        let open = graceful.count();
        tracing::info!(connections = open, grace_period = ?self.grace_period, "shutting down: draining in-flight requests");
        match tokio::time::timeout(self.grace_period, graceful.shutdown()).await {
            Ok(()) => tracing::info!("all connections closed"),
            Err(_) => tracing::warn!("grace period over: closing the remaining connections"),
        }
        if let Some(drained) = cores_drained {
            drained.await;
        }
        let sql_drained = tokio::time::timeout(self.grace_period + Duration::from_secs(1), async {
            for task in sql_tasks {
                let _ = task.await;
            }
        })
        .await;
        if sql_drained.is_err() {
            tracing::warn!("sql listeners did not stop within the grace period");
        }
        floor.abort();
        Ok(())
    }
}

/// Runs one SQL listener on a thread of its own with a single-threaded runtime
/// (`[sql] runtime = "own_thread"`); `done` is told when it has stopped and drained.
fn sql_thread(
    index: usize,
    run: impl Future<Output = ()> + Send + 'static,
    done: tokio::sync::oneshot::Sender<()>,
) -> Result<(), RunError> {
    // Sockets and timers only: the signal and process drivers (signals are the main
    // runtime's) would be looked at on every turn of this one.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(RunError::Runtime)?;
    std::thread::Builder::new()
        .name(format!("quartet-sql-{index}"))
        .spawn(move || {
            runtime.block_on(run);
            // Dropping the runtime here ends what the grace period left open.
            drop(runtime);
            let _ = done.send(());
        })
        .map_err(RunError::Runtime)?;
    Ok(())
}

/// Accepts on the listener, or never when there is none.
async fn accept_if(listener: &Option<TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// The threads of `server.runtime = "per_core"`, one per public socket.
struct PerCore {
    stop: tokio::sync::watch::Sender<bool>,
    done: Vec<tokio::sync::oneshot::Receiver<()>>,
}

impl PerCore {
    fn start(
        listeners: Vec<std::net::TcpListener>,
        tls: &Option<TlsAcceptor>,
        app: &Arc<ArcSwap<App>>,
        grace_period: Duration,
    ) -> Result<Self, RunError> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut done = Vec::with_capacity(listeners.len());
        let (balance, mut inboxes) = Balance::new(listeners.len());
        for (i, listener) in listeners.into_iter().enumerate() {
            let (balance, inbox) = (balance.clone(), inboxes.remove(0));
            let (tx, rx) = tokio::sync::oneshot::channel();
            done.push(rx);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(RunError::Runtime)?;
            let (tls, app, stopped) = (tls.clone(), app.clone(), stopped.clone());
            std::thread::Builder::new()
                .name(format!("quartet-core-{i}"))
                .spawn(move || {
                    quartet_http::pool::use_own_idle_connections(i + 1);
                    let core = Core {
                        index: i,
                        balance,
                        inbox,
                    };
                    runtime.block_on(serve_core(listener, core, tls, app, stopped, grace_period));
                    // Dropping the runtime here ends what the grace period left open.
                    drop(runtime);
                    let _ = tx.send(());
                })
                .map_err(RunError::Runtime)?;
        }
        Ok(Self { stop, done })
    }

    /// Tells every thread to stop accepting and drain; resolves once all have ended.
    fn stop(self) -> impl Future<Output = ()> {
        let _ = self.stop.send(true);
        async move {
            for done in self.done {
                let _ = done.await;
            }
        }
    }
}

/// One core thread: accepts on its own socket and serves each connection on this thread
/// until told to stop, then drains its connections for at most the grace period.
async fn serve_core(
    listener: std::net::TcpListener,
    mut core: Core,
    tls: Option<TlsAcceptor>,
    app: Arc<ArcSwap<App>>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    grace_period: Duration,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(error = %err, "cannot serve a public socket on this thread");
            return;
        }
    };
    let graceful = Drain::new();
    let floor = tokio::spawn(timer_floor());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    // The kernel spreads connections over the threads' sockets by a hash,
                    // not by load: a connection goes to the thread serving the fewest.
                    let (stream, open) = core.balance.place(core.index, stream, remote);
                    if let Some(stream) = stream {
                        spawn_public(stream, remote, tls.clone(), app.clone(), graceful.watcher(), open);
                    }
                }
                Err(err) => accept_error(err).await,
            },
            Some((stream, remote, open)) = core.inbox.recv() => {
                match TcpStream::from_std(stream) {
                    Ok(stream) => spawn_public(stream, remote, tls.clone(), app.clone(), graceful.watcher(), Some(open)),
                    Err(err) => tracing::debug!(client = %remote, error = %err, "cannot take over a connection from another core thread"),
                }
            },
            _ = stopped.wait_for(|s| *s) => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(grace_period, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("grace period over on a core thread: closing its remaining connections");
    }
    floor.abort();
}

/// A core thread's place among the others: its index, the shared counts, and the
/// connections other threads hand it.
struct Core {
    index: usize,
    balance: Arc<Balance>,
    inbox: tokio::sync::mpsc::UnboundedReceiver<Handed>,
}

/// A connection one core thread accepted for another, already counted there.
type Handed = (std::net::TcpStream, SocketAddr, Open);

/// The connections open on each core thread, and where to hand a connection to each.
///
/// Why: `SO_REUSEPORT` spreads new connections over the threads' sockets by a hash of
/// their addresses, so 50 connections can split 30 and 20, and the busier thread's
/// queue sets the tail latency. HAProxy hands each accepted connection to the thread
/// with the fewest; so does this, at the cost of two atomic operations per connection
/// and, for a connection that moves, one trip through a channel.
struct Balance {
    open: Box<[AtomicUsize]>,
    inboxes: Vec<tokio::sync::mpsc::UnboundedSender<Handed>>,
}

impl Balance {
    fn new(threads: usize) -> (Arc<Self>, Vec<tokio::sync::mpsc::UnboundedReceiver<Handed>>) {
        let (senders, receivers) = (0..threads)
            .map(|_| tokio::sync::mpsc::unbounded_channel())
            .unzip();
        let balance = Self {
            open: (0..threads).map(|_| AtomicUsize::new(0)).collect(),
            inboxes: senders,
        };
        (Arc::new(balance), receivers)
    }

    /// Places a connection thread `here` accepted: back to serve here (counted), or
    /// handed to the thread with the fewest open connections (`None`).
    fn place(
        self: &Arc<Self>,
        here: usize,
        stream: TcpStream,
        remote: SocketAddr,
    ) -> (Option<TcpStream>, Option<Open>) {
        let load = |thread: usize| self.open[thread].load(Ordering::Relaxed);
        let fewest = (0..self.open.len())
            .min_by_key(|&t| load(t))
            .unwrap_or(here);
        // A tie stays here: moving costs a channel trip and a new registration.
        if load(here) <= load(fewest) {
            return (Some(stream), Some(self.count(here)));
        }
        let open = self.count(fewest);
        match stream.into_std() {
            Ok(std_stream) => match self.inboxes[fewest].send((std_stream, remote, open)) {
                Ok(()) => (None, None),
                // That thread has stopped: serve it here after all.
                Err(back) => {
                    let (std_stream, _, _) = back.0;
                    let stream = TcpStream::from_std(std_stream).ok();
                    (stream, Some(self.count(here)))
                }
            },
            Err(err) => {
                tracing::debug!(client = %remote, error = %err, "cannot hand a connection to another core thread");
                (None, None)
            }
        }
    }

    fn count(self: &Arc<Self>, thread: usize) -> Open {
        self.open[thread].fetch_add(1, Ordering::Relaxed);
        Open {
            balance: self.clone(),
            thread,
        }
    }
}

/// One open connection of a core thread, counted until dropped.
struct Open {
    balance: Arc<Balance>,
    thread: usize,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.balance.open[self.thread].fetch_sub(1, Ordering::Relaxed);
    }
}

/// How far away the next timer of a serving runtime may be at most ([`timer_floor`]).
const TIMER_FLOOR: Duration = Duration::from_millis(250);

/// Keeps a timer pending on this runtime at all times, at most [`TIMER_FLOOR`] away.
///
/// Why: tokio wakes its driver (an eventfd write, and one more round of `epoll_wait`)
/// whenever a new timer is due before the driver's planned wake-up, and when no timer is
/// pending that is every new timer. The per-request timeouts paid it on a fifth of the
/// requests (`perf` on the `write` system call under `bench/http.sh`). With this one
/// pending, a request's deadline (seconds away) is later than the planned wake-up, and
/// registering it costs no system call. It costs four wake-ups a second per runtime.
async fn timer_floor() {
    loop {
        tokio::time::sleep(TIMER_FLOOR).await;
    }
}

async fn accept_error(err: std::io::Error) {
    tracing::warn!(error = %err, "accept failed");
    // Out of file descriptors and the like: give the system a moment instead of spinning.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

fn spawn_public(
    stream: TcpStream,
    remote: SocketAddr,
    tls: Option<TlsAcceptor>,
    app: Arc<ArcSwap<App>>,
    watcher: DrainWatch,
    open: Option<Open>,
) {
    let _ = stream.set_nodelay(true);
    tokio::spawn(async move {
        // Counted as open on its core thread until the connection ends.
        let _open = open;
        match tls {
            None => serve_plain(stream, ConnInfo::new(remote, false), app, watcher).await,
            Some(acceptor) => {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => {
                        serve_connection(
                            TokioIo::new(tls_stream),
                            ConnInfo::new(remote, true),
                            Handler::Current(app),
                            watcher,
                        )
                        .await
                    }
                    Ok(Err(err)) => {
                        tracing::debug!(client = %remote, error = %err, "TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(client = %remote, "TLS handshake timed out"),
                }
            }
        }
    });
}

/// A cleartext public connection: Quartet's own HTTP/1.1 loop ([`crate::h1`]) serves it
/// until a request needs hyper (HTTP/2, an upgrade, a streamed body, ...), then hyper
/// serves the rest of it.
async fn serve_plain(
    mut stream: TcpStream,
    conn: ConnInfo,
    app: Arc<ArcSwap<App>>,
    mut watcher: DrainWatch,
) {
    // The limit of the config current when the connection came.
    let head_timeout = app.load().built.config.server.header_timeout;
    let served = crate::h1::serve(
        &mut stream,
        |req| dispatch_public(&app, &conn, req),
        watcher.drained(),
        head_timeout,
    )
    .await;
    if let crate::h1::Served::Handoff(buf) = served {
        let io = crate::h1::Rewind::new(buf, stream);
        serve_connection(TokioIo::new(io), conn, Handler::Current(app), watcher).await;
    }
}

/// One request of the public listener, on the app current when it arrives. The proxy
/// path skips the router: its only routes are the native ones, and everything else is
/// its fallback anyway. It gets the connection's facts directly; the extension is set
/// only where something reads it (the routers, and the token guard, for a TLS
/// connection).
fn dispatch_public(
    app: &ArcSwap<App>,
    conn: &ConnInfo,
    mut req: http::Request<Body>,
) -> impl Future<Output = http::Response<Body>> + Send + 'static {
    let app = app.load();
    if crate::routes::needs_router(req.uri().path()) {
        req.extensions_mut().insert(conn.clone());
        Either::Left(
            app.router
                .clone()
                .oneshot(req)
                .map(|resp| resp.unwrap_or_else(|never| match never {})),
        )
    } else {
        if conn.tls {
            req.extensions_mut().insert(conn.clone());
        }
        Either::Right(crate::routes::serve(app.built.clone(), req, conn.clone()))
    }
}

/// The admin listener's limit for a request head (it has no config key of its own).
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Which router a connection's requests go to.
#[derive(Clone)]
enum Handler {
    /// The public router of the app current when each request arrives.
    Current(Arc<ArcSwap<App>>),
    /// A router that never changes (the admin one; it loads the current app itself).
    Fixed(Router),
}

async fn serve_connection<I>(io: I, conn: ConnInfo, handler: Handler, mut watcher: DrainWatch)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let remote = conn.remote;
    let head_timeout = match &handler {
        Handler::Current(app) => app.load().built.config.server.header_timeout,
        Handler::Fixed(_) => ADMIN_HEADER_TIMEOUT,
    };
    let service =
        hyper::service::service_fn(move |mut req: http::Request<Incoming>| match &handler {
            // hyper writes a response from its map: a proxied response's raw header
            // block goes into it first.
            Handler::Current(app) => Either::Left(
                dispatch_public(app, &conn, req.map(Body::new)).map(|mut resp| {
                    quartet_http::raw::RawHead::apply(&mut resp);
                    Ok(resp)
                }),
            ),
            Handler::Fixed(router) => {
                req.extensions_mut().insert(conn.clone());
                Either::Right(router.clone().oneshot(req.map(Body::new)))
            }
        });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A timer lets hyper time out a client that never finishes its request head.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout);
    builder.http2().timer(TokioTimer::new());
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let draining = watcher.drained();
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = draining => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(client = %remote, error = %crate::error::Chain(err.as_ref()), "connection closed with an error");
    }
}

/// Draining a listener's connections: each connection holds a [`DrainWatch`]; shutting
/// down tells them all and waits until every one has ended. (hyper-util's
/// `GracefulShutdown` does this for hyper's connections only; Quartet's own HTTP/1.1
/// loop needs it too.)
struct Drain {
    tx: tokio::sync::watch::Sender<bool>,
}

impl Drain {
    fn new() -> Self {
        Self {
            tx: tokio::sync::watch::Sender::new(false),
        }
    }

    fn watcher(&self) -> DrainWatch {
        DrainWatch {
            rx: self.tx.subscribe(),
        }
    }

    /// The connections still open.
    fn count(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Tells every connection to finish, and resolves once all have ended.
    async fn shutdown(self) {
        self.tx.send_replace(true);
        self.tx.closed().await;
    }
}

/// A connection's view of its listener's [`Drain`].
struct DrainWatch {
    rx: tokio::sync::watch::Receiver<bool>,
}

impl DrainWatch {
    /// Resolves when draining starts (or the listener is gone).
    async fn drained(&mut self) {
        let _ = self.rx.wait_for(|draining| *draining).await;
    }
}

/// Reloads the config: a bad one is refused (the old app keeps serving), a good one is
/// built and swapped in; requests in flight finish on the app they started with.
#[derive(Clone)]
pub struct Reloader {
    app: Arc<ArcSwap<App>>,
    shared: Shared,
    source: Source,
}

impl Reloader {
    /// Returns whether a new config was swapped in.
    pub fn reload(&self) -> bool {
        let path = match &self.source {
            Source::Embedded => {
                tracing::info!("SIGHUP: running on the embedded default config, nothing to reload");
                return false;
            }
            Source::File(path) => path,
        };
        tracing::info!(config = %path.display(), "reloading the config");
        let loaded = match config::load(Some(path)) {
            Ok(loaded) => loaded,
            Err(err) => {
                tracing::error!("config reload refused, the running config stays: {err}");
                return false;
            }
        };
        log_overrides(&loaded);
        let old = self.app.load();
        warn_listener_changes(&old.built.config, &loaded.config);
        match App::build(loaded.config, &self.shared) {
            Ok(app) => {
                self.app.store(Arc::new(app));
                tracing::info!(config = %path.display(), "config reloaded");
                true
            }
            Err(err) => {
                tracing::error!(error = %crate::error::Chain(&err), "config reload refused, the running config stays");
                false
            }
        }
    }
}

fn warn_listener_changes(old: &Config, new: &Config) {
    let (o, n) = (&old.server, &new.server);
    if o.listen != n.listen
        || o.admin_listen != n.admin_listen
        || o.tls != n.tls
        || o.runtime != n.runtime
    {
        tracing::warn!(
            "server.listen, server.admin_listen, server.tls and server.runtime are not changed by a reload: restart to apply them"
        );
    }
    crate::sql::warn_changes(old, new);
    if o.grace_period != n.grace_period || o.log_format != n.log_format {
        tracing::warn!("server.grace_period and server.log_format are not changed by a reload");
    }
}

/// Logs the environment overrides applied (URLs with their passwords redacted).
pub fn log_overrides(loaded: &Loaded) {
    for o in &loaded.overrides {
        tracing::info!(var = %o.var, key = %o.key, value = %o.value, "environment override applied");
    }
}

/// Builds, binds, logs the listening line and serves until SIGTERM or SIGINT.
pub async fn run(loaded: Loaded) -> Result<(), RunError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    // Installing a SIGHUP handler replaces the default action (terminate) for the whole
    // process, so a reload sent right after the listening line cannot kill us before
    // `serve` starts listening for it itself.
    let _hangup_installed = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
    log_overrides(&loaded);
    tracing::info!(config = %loaded.source.name(), "starting");
    let server = Server::bind(loaded).await?;
    let public = server.public_addr().map_err(RunError::LocalAddr)?;
    let admin = server.admin_addr().map_err(RunError::LocalAddr)?;
    tracing::info!("quartet listening public={public} admin={admin}");
    server
        .serve(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair's server side, as an accept loop gets it.
    async fn accepted(listener: &TcpListener) -> (TcpStream, SocketAddr, TcpStream) {
        let addr = listener.local_addr().expect("bound");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, remote) = listener.accept().await.expect("accept");
        (server, remote, client)
    }

    #[tokio::test]
    async fn connections_go_to_the_core_thread_serving_the_fewest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (balance, mut inboxes) = Balance::new(2);
        let mut kept = Vec::new();
        let mut clients = Vec::new();
        // Thread 0 accepts four connections: two stay, two go to thread 1.
        for _ in 0..4 {
            let (server, remote, client) = accepted(&listener).await;
            clients.push(client);
            let (stream, open) = balance.place(0, server, remote);
            if let Some(stream) = stream {
                kept.push((stream, open));
            }
        }
        assert_eq!(kept.len(), 2);
        let mut handed = Vec::new();
        while let Ok(h) = inboxes[1].try_recv() {
            handed.push(h);
        }
        assert_eq!(handed.len(), 2);
        assert!(inboxes[0].try_recv().is_err(), "nothing handed to itself");
        let counts = |b: &Balance| {
            b.open
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect::<Vec<_>>()
        };
        assert_eq!(counts(&balance), vec![2, 2]);
        // A connection that ends is no longer counted.
        drop(kept.pop());
        assert_eq!(counts(&balance), vec![1, 2]);
        // The handed connection is a live socket on the other side.
        let (std_stream, _, _open) = handed.pop().expect("handed");
        assert!(TcpStream::from_std(std_stream).is_ok());
    }
}
