//! Idle clients parked outside tokio.
//!
//! A logged-in PostgreSQL client in transaction mode spends most of its life idle: no
//! server attached, waiting for its next message. In tokio that wait costs a task (the
//! session's future, its header and the `JoinSet` entry) and a registration of its
//! socket (`ScheduledIo`, 256 bytes) per client, more than PgBouncer spends on the whole
//! client. A parked client costs neither: its socket is taken out of tokio's reactor
//! (`TcpStream::into_std`) and watched by one epoll set per listener (mio's `Poll`),
//! whose own file descriptor is the only thing tokio watches; its session sits in a slot
//! of this module's table. When the socket becomes readable (bytes, or the client
//! closing), the listener takes the client out, removes it from the epoll set and runs
//! its session again as a task of its own; the bytes are still in the socket and the
//! session reads them as usual, and a client that closed is cleaned up by the same code
//! as an active one (its cancel key freed, its guard released).
//!
//! Nothing is lost between the two sets: epoll reports a socket that is readable at the
//! moment it is added, so bytes that came while a client was being parked wake it at
//! once, and tokio's registration of the socket on the way back does the same.
//!
//! The table and the epoll set belong to the listener's accept loop (no lock): sessions
//! hand themselves over through a channel, and the loop spawns the woken ones into its
//! `JoinSet`, so the SIGTERM drain and the final shutdown see them like any other
//! session. A parked client dropped at shutdown is closed, as an idle task would be.

use futures_util::future::BoxFuture;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

/// A client taken out of tokio: its socket, and what serves it again.
pub(crate) trait Parked: Send + 'static {
    /// The client socket, watched for readability while parked.
    fn fd(&self) -> RawFd;
    /// The future that serves the client again, run as a task of the listener.
    fn resume(self: Box<Self>) -> BoxFuture<'static, ()>;
}

type ParkedBox = Box<dyn Parked>;

/// Where sessions park themselves (cheap to clone; one per listener).
#[derive(Clone)]
pub(crate) struct ParkSender {
    tx: mpsc::UnboundedSender<ParkedBox>,
    parked: Arc<AtomicUsize>,
}

impl ParkSender {
    /// Hands a client to the listener's table. After the listener has stopped there is
    /// no one to hand it to: it is dropped, which closes its socket.
    pub fn park(&self, client: ParkedBox) {
        let _ = self.tx.send(client);
    }

    /// Clients parked right now.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }
}

/// The table of parked clients and the epoll set that watches their sockets.
pub(crate) struct Parking {
    /// The epoll set, watched by the runtime it was registered with. `None`: it failed,
    /// and clients are no longer parked but handed back at once.
    poll: Option<AsyncFd<Poll>>,
    events: Events,
    slots: Vec<Option<ParkedBox>>,
    free: Vec<usize>,
    parked: Arc<AtomicUsize>,
    rx: mpsc::UnboundedReceiver<ParkedBox>,
}

impl Parking {
    /// A table and its sender. Needs a tokio runtime (the epoll set is watched by it).
    pub fn new() -> std::io::Result<(Self, ParkSender)> {
        // `with_interest` is deprecated since tokio 1.54 for want of I/O safety: the
        // caller must keep the descriptor open and the same while registered, which
        // the replacement makes an `unsafe fn` (and this workspace forbids unsafe
        // code). mio's `Poll` owns its epoll descriptor and closes it only when
        // dropped, after the `AsyncFd` that wraps it, so the condition holds.
        #[allow(deprecated)]
        let poll = AsyncFd::with_interest(Poll::new()?, tokio::io::Interest::READABLE)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let parked = Arc::new(AtomicUsize::new(0));
        let parking = Self {
            poll: Some(poll),
            events: Events::with_capacity(256),
            slots: Vec::new(),
            free: Vec::new(),
            parked: parked.clone(),
            rx,
        };
        Ok((parking, ParkSender { tx, parked }))
    }

    /// Registers the epoll set with the runtime this is called on (the listener may be
    /// bound on one runtime and served on another): a wake-up then comes from the
    /// runtime that serves the clients. Called before any client is parked.
    pub fn watch_here(&mut self) {
        let Some(fd) = self.poll.take() else {
            return;
        };
        #[allow(deprecated)] // as in `new`
        match AsyncFd::with_interest(fd.into_inner(), tokio::io::Interest::READABLE) {
            Ok(fd) => self.poll = Some(fd),
            Err(e) => {
                tracing::error!(error = %e, "cannot watch the idle clients' epoll set: parking stops")
            }
        }
    }

    /// Clients parked right now.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Waits until a session asks to be parked (it is put in the table) or parked
    /// clients became readable (they are taken out and pushed onto `woken`, to be
    /// resumed). Cancel safe: dropped while waiting, nothing is lost.
    pub async fn turn(&mut self, woken: &mut Vec<ParkedBox>) {
        let Some(poll) = self.poll.as_mut() else {
            // Parking stopped: a session that asks is handed back at once.
            match self.rx.recv().await {
                Some(client) => woken.push(client),
                None => std::future::pending().await,
            }
            return;
        };
        tokio::select! {
            Some(client) = self.rx.recv() => self.insert(client, woken),
            ready = poll.readable_mut() => {
                let mut guard = match ready {
                    Ok(g) => g,
                    Err(e) => return self.fail(&e, woken),
                };
                let polled = guard
                    .get_inner_mut()
                    .poll(&mut self.events, Some(Duration::ZERO));
                match polled {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return,
                    Err(e) => {
                        drop(guard);
                        return self.fail(&e, woken);
                    }
                    // Everything reported is handled: wait for tokio's next wake-up.
                    _ if self.events.is_empty() => {
                        guard.clear_ready();
                        return;
                    }
                    _ => drop(guard),
                }
                let tokens: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
                for i in tokens {
                    if let Some(client) = self.slots.get_mut(i).and_then(Option::take) {
                        if let Some(poll) = &self.poll {
                            let _ = poll
                                .get_ref()
                                .registry()
                                .deregister(&mut SourceFd(&client.fd()));
                        }
                        self.free.push(i);
                        self.parked.fetch_sub(1, Ordering::Relaxed);
                        woken.push(client);
                    }
                }
            }
        }
    }

    fn insert(&mut self, client: ParkedBox, woken: &mut Vec<ParkedBox>) {
        let Some(poll) = &self.poll else {
            woken.push(client);
            return;
        };
        let i = self.free.pop().unwrap_or(self.slots.len());
        let fd = client.fd();
        let registered =
            poll.get_ref()
                .registry()
                .register(&mut SourceFd(&fd), Token(i), Interest::READABLE);
        match registered {
            Ok(()) => {
                if i == self.slots.len() {
                    self.slots.push(Some(client));
                } else {
                    self.slots[i] = Some(client);
                }
                self.parked.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot park an idle client: it stays a task");
                if i < self.slots.len() {
                    self.free.push(i);
                }
                woken.push(client);
            }
        }
    }

    /// The epoll set failed (not expected): every parked client is handed back, and
    /// clients are no longer parked.
    fn fail(&mut self, e: &std::io::Error, woken: &mut Vec<ParkedBox>) {
        tracing::error!(error = %e, "the idle clients' epoll set failed: parking stops");
        self.poll = None;
        for client in self.slots.drain(..).flatten() {
            woken.push(client);
        }
        self.free.clear();
        self.parked.store(0, Ordering::Relaxed);
    }
}

impl Drop for Parking {
    fn drop(&mut self) {
        self.parked.fetch_sub(self.len(), Ordering::Relaxed);
    }
}
