//! Connection-level faults (toxics) on the broker connection.
//!
//! The same [`Toxic`] that wraps SQL's server connections wraps the broker's TCP socket
//! here, below lapin: latency, bandwidth, reset, stall and close-after act on the AMQP
//! frames as a bad network would, so heartbeats, publisher confirms, replies and the
//! reconnect loop meet them as they would meet the real thing.
//!
//! How: lapin opens its socket through its runtime's reactor ([`async_rs`]). We hand it a
//! runtime whose executor is tokio's and whose reactor is tokio's too, except that
//! [`ToxicReactor::tcp_connect_addr`] wraps each new socket in a [`Toxic`] reading the
//! target's [`FaultHandle`]. TLS (`amqps://`), when used, runs over the wrapped socket.
//! One handle per Quartet instance is shared by every broker connection it opens (the RPC
//! client's and each reverse-bridge server's): the target is the broker, `rpc:broker`.

use async_compat::{Compat, CompatExt};
use async_rs::traits::Reactor;
use async_rs::util::RuntimeParts;
use async_rs::{Runtime, Tokio};
use futures_util::Stream;
use quartet_policies::fault::toxic::Toxic;
use quartet_policies::fault::FaultHandle;
use quartet_policies::spec::FaultSpec;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The name of the broker connection's target (channel `rpc`): `rpc:broker`.
pub const BROKER_TARGET: &str = "broker";

/// Why `fault` cannot be set on `rpc:broker`, if it cannot: the key at fault and the
/// reason. Only connection faults (toxics) act on the broker connections; a request-level
/// `delay` or `abort` has no request to act on there (it belongs on a topic, `rpc:TOPIC`),
/// so it is refused rather than silently ignored.
pub fn broker_fault_problem(fault: &FaultSpec) -> Option<(&'static str, String)> {
    let why = |what: &str| {
        format!(
            "rpc:broker takes only connection faults (`connection`: latency, bandwidth, \
             reset, stall, close_after); a {what} acts on requests, set it on a topic \
             (rpc:TOPIC) instead"
        )
    };
    if fault.delay.is_some() || fault.delay_percent > 0.0 {
        let key = if fault.delay.is_some() {
            "delay"
        } else {
            "delay_percent"
        };
        return Some((key, why("delay")));
    }
    if fault.abort_status.is_some() || fault.abort_percent > 0.0 {
        let key = if fault.abort_status.is_some() {
            "abort_status"
        } else {
            "abort_percent"
        };
        return Some((key, why("abort")));
    }
    None
}

/// The fault handle whose connection toxics apply to the broker connections, carried in
/// [`crate::AmqpConfig`] (not part of the config file). Two values are equal when they
/// name the same target, so a reload that keeps `[amqp]` keeps the client.
#[derive(Clone, Default)]
pub struct ConnectionFaults(Option<FaultHandle>);

impl ConnectionFaults {
    pub fn new(handle: FaultHandle) -> Self {
        Self(Some(handle))
    }
    pub fn handle(&self) -> Option<&FaultHandle> {
        self.0.as_ref()
    }
}

impl PartialEq for ConnectionFaults {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => a.target() == b.target(),
            _ => false,
        }
    }
}

impl std::fmt::Debug for ConnectionFaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(h) => write!(f, "ConnectionFaults({})", h.target()),
            None => f.write_str("ConnectionFaults(none)"),
        }
    }
}

/// tokio's reactor, with every TCP connection it opens wrapped in a [`Toxic`].
#[derive(Clone)]
pub(crate) struct ToxicReactor {
    inner: Tokio,
    /// The runtime whose timers the toxics use (lapin polls the socket from a thread of
    /// its own, outside any runtime).
    handle: tokio::runtime::Handle,
    fault: FaultHandle,
}

impl std::fmt::Debug for ToxicReactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToxicReactor")
            .field("target", self.fault.target())
            .finish_non_exhaustive()
    }
}

/// The runtime lapin gets for a connection under `fault`'s toxics.
pub(crate) fn runtime(fault: FaultHandle) -> Runtime<RuntimeParts<Tokio, ToxicReactor>> {
    let handle = tokio::runtime::Handle::current();
    let tokio = Tokio::default().with_handle(handle.clone());
    Runtime::new(RuntimeParts::new(
        tokio.clone(),
        ToxicReactor {
            inner: tokio,
            handle,
            fault,
        },
    ))
}

impl Reactor for ToxicReactor {
    type TcpStream = InRuntime<Toxic<tokio::net::TcpStream>>;
    type Sleep = <Tokio as Reactor>::Sleep;

    // `H: AsSysFd` in the trait: async-rs does not export that name, but it is exactly
    // `AsFd + AsRawFd` (a blanket impl), which is what we ask for.
    fn register<H: Read + Write + AsFd + AsRawFd + Send + 'static>(
        &self,
        socket: H,
    ) -> io::Result<impl futures_io::AsyncRead + futures_io::AsyncWrite + Send + Unpin + 'static>
    {
        self.inner.register(socket)
    }

    fn sleep(&self, dur: Duration) -> Self::Sleep {
        self.inner.sleep(dur)
    }

    fn interval(&self, dur: Duration) -> impl Stream<Item = Instant> + Send + 'static {
        self.inner.interval(dur)
    }

    fn tcp_connect_addr(
        &self,
        addr: SocketAddr,
    ) -> impl std::future::Future<Output = io::Result<Self::TcpStream>> + Send + 'static {
        let connect = self.inner.tcp_connect_addr(addr);
        let fault = self.fault.clone();
        let handle = self.handle.clone();
        async move {
            let stream = connect.await?.into_inner();
            Ok(InRuntime {
                io: Toxic::new(stream, fault).compat(),
                handle,
            })
        }
    }
}

/// A tokio stream seen as a `futures-io` one, polled inside `handle`'s runtime context (the
/// toxics' timers need it; lapin's I/O thread has none).
pub(crate) struct InRuntime<T> {
    io: Compat<T>,
    handle: tokio::runtime::Handle,
}

impl<T: tokio::io::AsyncRead + Unpin> futures_io::AsyncRead for InRuntime<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let _in = this.handle.enter();
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> futures_io::AsyncWrite for InRuntime<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let _in = this.handle.enter();
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let _in = this.handle.enter();
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let _in = this.handle.enter();
        Pin::new(&mut this.io).poll_close(cx)
    }
}
