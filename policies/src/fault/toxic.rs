//! Connection-level faults ("toxics", in the manner of Toxiproxy) for every channel.
//!
//! [`Toxic`] wraps the backend side of a connection (any `AsyncRead + AsyncWrite`: a SQL
//! backend's socket, the AMQP broker's, an HTTP upstream's) and applies the toxics set now
//! in [`FaultSpec::connection`] on the target's [`FaultHandle`]. It never opens a socket:
//! the gateway or an adapter owns the sockets and hands them over, or puts [`relay`] in a
//! loopback listener in front of a backend.
//!
//! Directions are seen from the client: what is written into a `Toxic` goes `upstream`
//! (to the backend), what is read from it comes `downstream`.
//!
//! How the toxics behave on an open connection:
//!
//! 1. The handle is read on every poll, so a toxic set while a connection is open applies
//!    from then on, and a removed one stops (a stall releases within [`RECHECK`]). A
//!    connection waiting for data looks again every [`IDLE_RECHECK`], so a reset set on
//!    an idle connection needs no traffic to happen.
//! 2. Whether a toxic applies to a connection is drawn once per connection, with its
//!    `probability`, when the connection first sees it; a `reset`'s or a `stall`'s
//!    `timeout` counts from then too. A toxic that stays in the spec
//!    across a change keeps its draw, its start time and its byte count; a new one starts
//!    afresh. Each toxic that applies counts once in `quartet_faults_injected_total` with
//!    its kind (`latency`, `bandwidth`, `reset`, `stall`, `close_after`).
//! 3. `latency` holds each chunk (one read from, or one write to, the inner stream) for
//!    `latency` ± `jitter`; `bandwidth` holds each chunk for `len / rate` seconds, chunks
//!    being at most `rate` bytes, so N bytes take N / rate seconds.
//! 4. `reset` and a `stall` whose timeout ran out make every later read, write and flush
//!    fail with `ConnectionReset` (to turn that into a TCP RST for the client, the owner
//!    of the client socket sets `SO_LINGER` to 0 before dropping it). A reset toxic acts
//!    on the whole connection whatever its direction.
//! 5. `close_after` lets exactly `bytes` bytes through in its direction; then the
//!    connection is closed: reads return end of file, writes fail with `BrokenPipe`.

use super::{chance, FaultHandle};
use crate::spec::{Direction, FaultSpec, ToxicKind, ToxicSpec};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How often a stalled connection looks again at the handle, to notice that its stall was
/// removed.
pub const RECHECK: Duration = Duration::from_millis(50);

/// How often a connection waiting for data looks again at the handle, so that a toxic set
/// while it is idle (a reset, a stall's timeout) applies without waiting for data.
pub const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// The largest chunk read from or written to the inner stream at once while a toxic
/// shapes the data.
const CHUNK: usize = 16 * 1024;

/// One toxic of the spec as this connection drew it.
#[derive(Debug)]
struct Drawn {
    spec: ToxicSpec,
    applies: bool,
    since: Instant,
    /// Bytes passed in the toxic's direction since it applied (for `close_after`).
    passed: u64,
}

/// A stream with the connection-level faults of a [`FaultHandle`] applied to it.
///
/// Wrap the backend side; see the [module docs](self) for how each toxic behaves.
pub struct Toxic<IO> {
    io: IO,
    handle: FaultHandle,
    seen: Option<Arc<FaultSpec>>,
    /// The handle's version when `seen` was read: `refresh` compares only this while
    /// nothing changes (no reference counting per poll).
    seen_version: u64,
    drawn: Vec<Drawn>,
    reset: bool,
    closed: bool,
    /// A chunk read from `io`, held until `held_until` and then handed to the reader.
    held: Vec<u8>,
    held_pos: usize,
    held_until: Option<Instant>,
    /// Leave to write up to `.1` bytes once `.0` (if any) has passed.
    write_leave: Option<(Option<Instant>, usize)>,
    read_timer: Option<Pin<Box<Sleep>>>,
    read_watch: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
    write_watch: Option<Pin<Box<Sleep>>>,
}

impl<IO> std::fmt::Debug for Toxic<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Toxic")
            .field("target", self.handle.target())
            .field("drawn", &self.drawn)
            .field("reset", &self.reset)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl<IO> Toxic<IO> {
    /// Wraps `io`, the backend side of a connection, with the toxics of `handle`.
    pub fn new(io: IO, handle: FaultHandle) -> Self {
        Self {
            io,
            handle,
            seen: None,
            seen_version: u64::MAX,
            drawn: Vec::new(),
            reset: false,
            closed: false,
            held: Vec::new(),
            held_pos: 0,
            held_until: None,
            write_leave: None,
            read_timer: None,
            read_watch: None,
            write_timer: None,
            write_watch: None,
        }
    }
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }
    /// The inner stream; bytes read from it but not yet handed on are lost.
    pub fn into_inner(self) -> IO {
        self.io
    }
    /// True once a `reset` (or a stall's timeout) has reset the connection.
    pub fn is_reset(&self) -> bool {
        self.reset
    }
    /// True once `close_after` has closed the connection.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Reads the handle; draws the toxics that are new to this connection.
    fn refresh(&mut self) {
        let version = self.handle.version();
        if version == self.seen_version {
            return;
        }
        self.seen_version = version;
        let current = self.handle.current();
        let same = match (&current, &self.seen) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        let mut old = std::mem::take(&mut self.drawn);
        let now = Instant::now();
        let specs = current.as_deref().map_or(&[][..], |f| &f.connection[..]);
        for spec in specs {
            if let Some(i) = old.iter().position(|d| d.spec == *spec) {
                self.drawn.push(old.swap_remove(i));
                continue;
            }
            let applies = chance(spec.probability * 100.0);
            if applies {
                let target = self.handle.target();
                self.handle
                    .metrics
                    .faults_injected
                    .with_label_values(&[target.channel, &target.name, spec.kind.as_str()])
                    .inc();
                tracing::debug!(target = %target, toxic = %spec.kind, "connection fault applies");
            }
            self.drawn.push(Drawn {
                spec: spec.clone(),
                applies,
                since: now,
                passed: 0,
            });
        }
        self.seen = current;
    }

    fn applying(&self, way: Direction) -> impl Iterator<Item = &ToxicSpec> {
        self.drawn
            .iter()
            .filter(move |d| d.applies && d.spec.direction.covers(way))
            .map(|d| &d.spec)
    }

    /// After [`Self::refresh`]: resets, stalls: `Ok(None)` when data may flow `way` now, `Ok(Some(at))` while
    /// stalled (look again at `at`), `Err` once reset. `watch_at` becomes the next reset
    /// deadline, if any, so that a waiting poll is woken for it.
    fn check(&mut self, way: Direction, watch_at: &mut Instant) -> io::Result<Option<Instant>> {
        if self.reset {
            return Err(reset_error());
        }
        let now = Instant::now();
        let mut stalled = false;
        let mut reset = false;
        for d in self.drawn.iter().filter(|d| d.applies) {
            let timeout = d.spec.timeout.unwrap_or_default();
            let deadline = match d.spec.kind {
                ToxicKind::Reset => Some(later(d.since, timeout)),
                ToxicKind::Stall if d.spec.direction.covers(way) => {
                    stalled = true;
                    (!timeout.is_zero()).then(|| later(d.since, timeout))
                }
                _ => None,
            };
            match deadline {
                Some(at) if at <= now => reset = true,
                Some(at) => *watch_at = (*watch_at).min(at),
                None => {}
            }
        }
        if reset {
            self.reset = true;
            tracing::debug!(target = %self.handle.target(), "connection reset by a fault");
            return Err(reset_error());
        }
        Ok(stalled.then(|| (*watch_at).min(later(now, RECHECK))))
    }

    /// Before returning `Pending` for `way`: makes sure the task is woken at `at` to look
    /// at the handle again.
    fn watch(&mut self, way: Direction, at: Instant, cx: &mut Context<'_>) {
        let watch = match way {
            Direction::Upstream => &mut self.write_watch,
            _ => &mut self.read_watch,
        };
        if wait_until(watch, at, cx).is_ready() {
            cx.waker().wake_by_ref();
        }
    }

    /// Before returning `Pending` for `way` with no toxic acting on the connection: makes
    /// sure the task looks at the handle again within [`IDLE_RECHECK`]. A watch that has
    /// not fired yet is kept as it is (it may fire early; the next poll looks again and
    /// sets a new one), so a busy connection does not move a timer on every wait.
    fn idle_watch(&mut self, way: Direction, cx: &mut Context<'_>) {
        let watch = match way {
            Direction::Upstream => &mut self.write_watch,
            _ => &mut self.read_watch,
        };
        let sleep = match watch {
            Some(sleep) if !sleep.is_elapsed() => sleep,
            Some(sleep) => {
                sleep.as_mut().reset(later(Instant::now(), IDLE_RECHECK));
                sleep
            }
            None => watch.insert(Box::pin(tokio::time::sleep_until(later(
                Instant::now(),
                IDLE_RECHECK,
            )))),
        };
        if sleep.as_mut().poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
    }

    /// Polls `inner` for `way` with the resets and stalls applied, and a watch timer set
    /// whenever it has to wait.
    fn gated<T>(
        &mut self,
        way: Direction,
        cx: &mut Context<'_>,
        inner: impl FnOnce(&mut Self, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if self.reset {
            return Poll::Ready(Err(reset_error()));
        }
        self.refresh();
        if !self.drawn.iter().any(|d| d.applies) {
            // No toxic acts on this connection (the common case): no clock, and the idle
            // watch is left where it is while it has not fired.
            let polled = inner(self, cx);
            if polled.is_pending() {
                self.idle_watch(way, cx);
            }
            return polled;
        }
        let mut watch_at = later(Instant::now(), IDLE_RECHECK);
        match self.check(way, &mut watch_at) {
            Err(e) => return Poll::Ready(Err(e)),
            Ok(Some(again)) => {
                self.watch(way, again, cx);
                return Poll::Pending;
            }
            Ok(None) => {}
        }
        let polled = inner(self, cx);
        if polled.is_pending() {
            self.watch(way, watch_at, cx);
        }
        polled
    }

    /// How the toxics shape the data going `way`: `None` when they leave it alone, else
    /// the largest chunk to move now (0: the connection is to be closed).
    fn shape(&self, way: Direction, wanted: usize) -> Option<usize> {
        let mut shaped = false;
        let mut limit = wanted.min(CHUNK);
        for spec in self.applying(way) {
            match spec.kind {
                ToxicKind::Latency => shaped = true,
                ToxicKind::Bandwidth => {
                    shaped = true;
                    let rate = usize::try_from(spec.rate.unwrap_or(u64::MAX)).unwrap_or(CHUNK);
                    limit = limit.min(rate.max(1));
                }
                _ => {}
            }
        }
        for d in self.drawn.iter().filter(|d| d.applies) {
            if d.spec.kind == ToxicKind::CloseAfter && d.spec.direction.covers(way) {
                shaped = true;
                let left = d.spec.bytes.unwrap_or(0).saturating_sub(d.passed);
                limit = limit.min(usize::try_from(left).unwrap_or(usize::MAX));
            }
        }
        shaped.then_some(limit)
    }

    /// How long to hold a chunk of `len` bytes going `way`.
    fn delay_for(&self, way: Direction, len: usize) -> Duration {
        let mut delay = Duration::ZERO;
        for spec in self.applying(way) {
            let d = match spec.kind {
                ToxicKind::Latency => jittered(
                    spec.latency.unwrap_or_default(),
                    spec.jitter.unwrap_or_default(),
                ),
                ToxicKind::Bandwidth => {
                    let rate = u128::from(spec.rate.unwrap_or(u64::MAX).max(1));
                    let nanos = (len as u128).saturating_mul(1_000_000_000) / rate;
                    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
                }
                _ => Duration::ZERO,
            };
            delay = delay.saturating_add(d);
        }
        delay
    }

    /// Counts `n` bytes gone `way`; closes the connection when a `close_after` is reached.
    fn passed(&mut self, way: Direction, n: usize) {
        for d in self.drawn.iter_mut().filter(|d| d.applies) {
            if d.spec.kind == ToxicKind::CloseAfter && d.spec.direction.covers(way) {
                d.passed = d.passed.saturating_add(n as u64);
                if d.passed >= d.spec.bytes.unwrap_or(0) {
                    self.closed = true;
                }
            }
        }
        if self.closed {
            tracing::debug!(target = %self.handle.target(), "connection closed by a fault");
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Toxic<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Ok(()));
        }
        this.gated(Direction::Downstream, cx, |this, cx| {
            this.read_shaped(cx, buf)
        })
    }
}

impl<IO: AsyncRead + Unpin> Toxic<IO> {
    fn read_shaped(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.held_pos < self.held.len() {
                if let Some(at) = self.held_until {
                    ready!(wait_until(&mut self.read_timer, at, cx));
                    self.held_until = None;
                }
                let n = buf.remaining().min(self.held.len() - self.held_pos);
                buf.put_slice(&self.held[self.held_pos..self.held_pos + n]);
                self.held_pos += n;
                if self.held_pos == self.held.len() {
                    self.held.clear();
                    self.held_pos = 0;
                }
                self.passed(Direction::Downstream, n);
                return Poll::Ready(Ok(()));
            }
            let Some(limit) = self.shape(Direction::Downstream, buf.remaining()) else {
                return Pin::new(&mut self.io).poll_read(cx, buf);
            };
            if limit == 0 {
                if buf.remaining() > 0 {
                    self.closed = true;
                }
                return Poll::Ready(Ok(()));
            }
            self.held.clear();
            self.held.resize(limit, 0);
            let mut chunk = ReadBuf::new(&mut self.held[..limit]);
            let polled = Pin::new(&mut self.io).poll_read(cx, &mut chunk);
            let n = chunk.filled().len();
            match polled {
                Poll::Ready(Ok(())) if n > 0 => {}
                other => {
                    self.held.clear();
                    return other;
                }
            }
            self.held.truncate(n);
            self.held_pos = 0;
            let delay = self.delay_for(Direction::Downstream, n);
            self.held_until = (!delay.is_zero()).then(|| later(Instant::now(), delay));
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Toxic<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Err(closed_error()));
        }
        this.gated(Direction::Upstream, cx, |this, cx| {
            this.write_shaped(cx, buf)
        })
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.reset {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.reset {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<IO: AsyncWrite + Unpin> Toxic<IO> {
    fn write_shaped(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Pin::new(&mut self.io).poll_write(cx, buf);
        }
        let Some(limit) = self.shape(Direction::Upstream, buf.len()) else {
            self.write_leave = None;
            return Pin::new(&mut self.io).poll_write(cx, buf);
        };
        if limit == 0 {
            self.closed = true;
            return Poll::Ready(Err(closed_error()));
        }
        let (until, allowed) = match self.write_leave {
            Some(leave) => leave,
            None => {
                let delay = self.delay_for(Direction::Upstream, limit);
                let leave = (
                    (!delay.is_zero()).then(|| later(Instant::now(), delay)),
                    limit,
                );
                self.write_leave = Some(leave);
                leave
            }
        };
        if let Some(at) = until {
            ready!(wait_until(&mut self.write_timer, at, cx));
            self.write_leave = Some((None, allowed));
        }
        let n = allowed.min(limit);
        let written = ready!(Pin::new(&mut self.io).poll_write(cx, &buf[..n]));
        self.write_leave = None;
        let written = written?;
        self.passed(Direction::Upstream, written);
        Poll::Ready(Ok(written))
    }
}

/// Copies bytes both ways between `client` and `server` until both sides are done, with
/// the toxics of `handle` applied to the server side. Returns the bytes copied client to
/// server and server to client, or the first error (`ConnectionReset` after a reset
/// fault, `BrokenPipe` when the client writes after a `close_after`).
///
/// The caller owns both streams (typically a client connection accepted on a loopback
/// listener and a connection it opened to the backend); this function only copies.
pub async fn relay<A, B>(mut client: A, server: B, handle: FaultHandle) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut server = Toxic::new(server, handle);
    tokio::io::copy_bidirectional(&mut client, &mut server).await
}

fn reset_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "connection reset by a fault",
    )
}

fn closed_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "connection closed by a close_after fault",
    )
}

/// `at + d`, saturating far in the future rather than overflowing.
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(Duration::from_secs(86_400 * 365 * 30)))
        .unwrap_or(at)
}

/// A delay drawn uniformly in `latency` ± `jitter`, never below zero.
fn jittered(latency: Duration, jitter: Duration) -> Duration {
    if jitter.is_zero() {
        return latency;
    }
    let j = jitter.as_nanos().min(u128::from(u64::MAX)) as u64;
    let offset = rand::Rng::random_range(&mut rand::rng(), 0..=j.saturating_mul(2));
    let base = latency.saturating_add(Duration::from_nanos(offset));
    base.saturating_sub(Duration::from_nanos(j))
}

/// Polls a timer set to `at`, making it (or moving it) first.
fn wait_until(slot: &mut Option<Pin<Box<Sleep>>>, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
    let sleep = match slot {
        Some(sleep) => {
            if sleep.deadline() != at {
                sleep.as_mut().reset(at);
            }
            sleep
        }
        None => slot.insert(Box::pin(tokio::time::sleep_until(at))),
    };
    sleep.as_mut().poll(cx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::Target;

    #[test]
    fn jitter_stays_in_range_and_never_underflows() {
        let l = Duration::from_millis(100);
        let j = Duration::from_millis(30);
        for _ in 0..1000 {
            let d = jittered(l, j);
            assert!(d >= l - j && d <= l + j, "{d:?}");
        }
        for _ in 0..100 {
            assert!(
                jittered(Duration::from_millis(1), Duration::from_secs(1))
                    <= Duration::from_millis(1001)
            );
        }
        assert_eq!(jittered(l, Duration::ZERO), l);
        let _ = jittered(Duration::MAX, Duration::MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn later_saturates() {
        let now = Instant::now();
        assert!(later(now, Duration::MAX) > now);
        assert_eq!(
            later(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_toxic_that_stays_keeps_its_draw_and_counts_once() {
        let metrics = Metrics::new();
        let handle = FaultHandle::new(Target::new("sql", "db"), None, metrics.clone());
        let spec = |toxics: Vec<ToxicSpec>| FaultSpec {
            connection: toxics,
            ..FaultSpec::default()
        };
        let latency = ToxicSpec::latency(Duration::from_millis(5), Duration::ZERO);
        let mut t = Toxic::new(tokio::io::empty(), handle.clone());
        t.refresh();
        assert!(t.drawn.is_empty());
        handle.set(Some(spec(vec![latency.clone()])));
        t.refresh();
        let since = t.drawn[0].since;
        tokio::time::advance(Duration::from_secs(1)).await;
        handle.set(Some(spec(vec![latency.clone(), ToxicSpec::bandwidth(10)])));
        t.refresh();
        assert_eq!(t.drawn.len(), 2);
        assert_eq!(t.drawn[0].since, since);
        let count = |kind: &str| {
            metrics
                .faults_injected
                .with_label_values(&["sql", "db", kind])
                .get()
        };
        assert_eq!(count("latency"), 1);
        assert_eq!(count("bandwidth"), 1);
        handle.set(None);
        t.refresh();
        assert!(t.drawn.is_empty());
    }
}
