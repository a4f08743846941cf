//! The RPC client: oslo.messaging's `RPCClient` over lapin, one per gateway instance.
//!
//! How it works:
//!
//! 1. A supervisor task owns the connection. It declares one reply queue
//!    `reply_<uuid4hex>` (non-durable, not auto-delete, `x-expires`, as oslo does), consumes
//!    it, and opens a publish channel with publisher confirms. Only then is the client
//!    [`State::Ready`].
//! 2. A call registers a waiter under a fresh `_msg_id`, declares the target's exchange
//!    once per connection (falling back to a passive check when it exists with other
//!    flags), publishes with `expiration` = the timeout in ms (and the mandatory flag if
//!    asked), and waits for the broker's confirm: a nack is [`RpcError::Refused`], a
//!    returned message [`RpcError::Unroutable`].
//! 3. Replies are routed to waiters by `_msg_id`; duplicates (same `_unique_id`) are
//!    dropped; call-monitor heartbeats push the call-monitor deadline back (the overall
//!    timeout still holds, as in oslo); replies for calls that already timed out are
//!    dropped and counted ([`ClientStats::late_replies`]).
//! 4. When the connection goes away, every waiting call fails at once with
//!    [`RpcError::Disconnected`], new calls fail with [`RpcError::NotConnected`], and the
//!    supervisor reconnects with backoff and declares everything again. The reply queue
//!    keeps its name across reconnects, so it is the same queue while `x-expires` lasts.

use crate::broker::{self, Backoff, ExchangeSpec, QueueSpec, State, Status};
use crate::codec::{self, CallHeader, Context, Request};
use crate::config::{AmqpConfig, RpcTopic};
use crate::error::{ConnectError, RpcError};
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Confirmation, Connection, Consumer};
use quartet_policies::BoxError;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Call (wait for a reply) or cast (fire and forget, confirmed by the broker).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    Call,
    Cast,
}

/// One RPC to send: oslo's `Target` (exchange, topic, server, fanout, version,
/// namespace) plus the method, its keyword arguments, the context and the timeouts.
#[derive(Clone, Debug, PartialEq)]
pub struct RpcRequest {
    pub kind: CallKind,
    /// The control exchange (`openstack` by default, `nova`, `neutron`).
    pub exchange: String,
    pub topic: String,
    /// Route to `<topic>.<server>` instead of `<topic>`.
    pub server: Option<String>,
    /// Cast to every server of the topic through `<topic>_fanout` (casts only).
    pub fanout: bool,
    pub method: String,
    pub args: Map<String, Value>,
    pub version: Option<String>,
    pub namespace: Option<String>,
    pub context: Context,
    /// RPC timeout; `None` takes `[amqp] default_timeout`. Also the message's expiration.
    pub timeout: Option<Duration>,
    /// oslo's `call_monitor_timeout` (`_timeout` on the wire).
    pub call_monitor_timeout: Option<Duration>,
    /// Publish with the mandatory flag: no queue bound means [`RpcError::Unroutable`].
    pub mandatory: bool,
}

impl RpcRequest {
    fn new(kind: CallKind, topic: impl Into<String>, method: impl Into<String>) -> Self {
        Self {
            kind,
            exchange: "openstack".to_owned(),
            topic: topic.into(),
            server: None,
            fanout: false,
            method: method.into(),
            args: Map::new(),
            version: None,
            namespace: None,
            context: Context::new(),
            timeout: None,
            call_monitor_timeout: None,
            mandatory: false,
        }
    }

    pub fn call(topic: impl Into<String>, method: impl Into<String>) -> Self {
        Self::new(CallKind::Call, topic, method)
    }

    pub fn cast(topic: impl Into<String>, method: impl Into<String>) -> Self {
        Self::new(CallKind::Cast, topic, method)
    }

    /// A request with the defaults of a `[[rpc.topics]]` entry (exchange, server,
    /// mandatory, timeouts).
    pub fn for_topic(topic: &RpcTopic, kind: CallKind, method: impl Into<String>) -> Self {
        let mut req = Self::new(kind, topic.topic.clone(), method);
        req.exchange = topic.exchange.clone();
        req.server = topic.server.clone();
        req.mandatory = topic.mandatory;
        req.timeout = topic.timeout;
        req.call_monitor_timeout = topic.call_monitor_timeout;
        req
    }

    /// Sets the arguments from a JSON object (anything else is ignored).
    pub fn args(mut self, args: Value) -> Self {
        if let Value::Object(m) = args {
            self.args = m;
        }
        self
    }

    pub fn arg(mut self, key: impl Into<String>, value: Value) -> Self {
        self.args.insert(key.into(), value);
        self
    }

    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }

    pub fn server(mut self, server: impl Into<String>) -> Self {
        self.server = Some(server.into());
        self
    }

    pub fn fanout(mut self) -> Self {
        self.fanout = true;
        self
    }

    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    pub fn context(mut self, context: Context) -> Self {
        self.context = context;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub fn call_monitor_timeout(mut self, timeout: Duration) -> Self {
        self.call_monitor_timeout = Some(timeout);
        self
    }

    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// The routing key oslo uses for this target.
    pub fn routing_key(&self) -> String {
        match (&self.server, self.fanout) {
            (_, true) => String::new(),
            (Some(server), false) => format!("{}.{server}", self.topic),
            (None, false) => self.topic.clone(),
        }
    }
}

/// What a successful RPC gives.
#[derive(Clone, Debug, PartialEq)]
pub enum RpcResponse {
    /// A call's result.
    Reply(Value),
    /// A cast (or fanout cast) the broker confirmed.
    Sent,
}

impl RpcResponse {
    pub fn into_value(self) -> Value {
        match self {
            RpcResponse::Reply(v) => v,
            RpcResponse::Sent => Value::Null,
        }
    }
}

/// Counters since the client started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub calls: u64,
    pub casts: u64,
    /// Replies for calls that had already timed out or were cancelled (dropped).
    pub late_replies: u64,
    /// Replies whose `_unique_id` was already seen (dropped).
    pub duplicate_replies: u64,
    /// Replies for a `_msg_id` we never sent from this instance (dropped).
    pub unknown_replies: u64,
    /// Replies that could not be decoded (dropped, with a logged reason).
    pub bad_replies: u64,
    /// Heartbeats received for calls with a call-monitor timeout.
    pub heartbeats: u64,
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    casts: AtomicU64,
    late_replies: AtomicU64,
    duplicate_replies: AtomicU64,
    unknown_replies: AtomicU64,
    bad_replies: AtomicU64,
    heartbeats: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A bounded set of recent ids (oldest forgotten first).
struct Recent {
    set: HashSet<String>,
    order: VecDeque<String>,
    cap: usize,
}

impl Recent {
    fn new(cap: usize) -> Self {
        Self {
            set: HashSet::with_capacity(cap),
            order: VecDeque::with_capacity(cap),
            cap,
        }
    }

    /// False when it was already there.
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }

    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }
}

enum ReplyEvent {
    Reply(Box<codec::Reply>),
    Lost(Option<Arc<ConnectError>>),
}

struct Waiters {
    /// The connection generation calls may register for; `None` while down.
    generation: Option<u64>,
    map: HashMap<String, mpsc::UnboundedSender<ReplyEvent>>,
    abandoned: Recent,
    seen: Recent,
}

struct Session {
    generation: u64,
    conn: Connection,
    publish: tokio::sync::Mutex<Channel>,
    exchanges: Mutex<HashSet<String>>,
}

struct Inner {
    cfg: AmqpConfig,
    reply_queue: String,
    status: watch::Sender<Status>,
    session: RwLock<Option<Arc<Session>>>,
    waiters: Mutex<Waiters>,
    counters: Counters,
    shutdown: watch::Sender<bool>,
}

/// Signals the supervisor to stop when the last client handle goes.
struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// The oslo.messaging RPC client. Cheap to clone; all clones share one connection and
/// one reply queue. It is a `tower::Service<RpcRequest>` with `Error = BoxError` (the
/// boxed error is an [`RpcError`]), so the policy stack goes in front of it.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<Inner>,
    _stop: Arc<StopOnDrop>,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient")
            .field("reply_queue", &self.inner.reply_queue)
            .field("state", &self.inner.status.borrow().state)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RpcClient {
    /// Starts the client: spawns its supervisor on the current tokio runtime, which
    /// connects in the background. Calls made before it is ready fail with
    /// [`RpcError::NotConnected`]; see [`RpcClient::wait_ready`].
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (as `tokio::spawn` does).
    pub fn start(cfg: AmqpConfig) -> Self {
        let name = broker::connection_name(&cfg.connection_name);
        let (status, _) = watch::channel(Status::new(name));
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            reply_queue: format!("reply_{}", codec::new_id()),
            cfg,
            status,
            session: RwLock::new(None),
            waiters: Mutex::new(Waiters {
                generation: None,
                map: HashMap::new(),
                abandoned: Recent::new(4096),
                seen: Recent::new(4096),
            }),
            counters: Counters::default(),
            shutdown: shutdown.clone(),
        });
        tokio::spawn(supervise(inner.clone()));
        Self {
            inner,
            _stop: Arc::new(StopOnDrop(shutdown)),
        }
    }

    /// The reply queue's name (`reply_<uuid4hex>`).
    pub fn reply_queue(&self) -> &str {
        &self.inner.reply_queue
    }

    /// The channel's state for `/readyz`.
    pub fn status(&self) -> Status {
        self.inner.status.borrow().clone()
    }

    /// Follows state changes.
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.inner.status.subscribe()
    }

    /// Waits until the client is ready, at most `bound`. On failure returns the last
    /// connection error, if any.
    pub async fn wait_ready(&self, bound: Duration) -> Result<(), RpcError> {
        let mut rx = self.inner.status.subscribe();
        let res = tokio::time::timeout(bound, rx.wait_for(|s| s.is_ready())).await;
        match res {
            Ok(Ok(_)) => Ok(()),
            _ => Err(RpcError::NotConnected(self.status().last_error)),
        }
    }

    pub fn stats(&self) -> ClientStats {
        let c = &self.inner.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientStats {
            calls: g(&c.calls),
            casts: g(&c.casts),
            late_replies: g(&c.late_replies),
            duplicate_replies: g(&c.duplicate_replies),
            unknown_replies: g(&c.unknown_replies),
            bad_replies: g(&c.bad_replies),
            heartbeats: g(&c.heartbeats),
        }
    }

    /// Sends a call and waits for its result.
    pub async fn call(&self, req: RpcRequest) -> Result<Value, RpcError> {
        let mut req = req;
        req.kind = CallKind::Call;
        self.send(req).await.map(RpcResponse::into_value)
    }

    /// Sends a cast (or fanout cast) and waits for the broker's confirm.
    pub async fn cast(&self, req: RpcRequest) -> Result<(), RpcError> {
        let mut req = req;
        req.kind = CallKind::Cast;
        self.send(req).await.map(|_| ())
    }

    /// Sends `req` as its `kind` says.
    pub async fn send(&self, req: RpcRequest) -> Result<RpcResponse, RpcError> {
        if req.topic.is_empty() || req.method.is_empty() {
            return Err(invalid("topic and method must not be empty"));
        }
        if req.fanout && req.kind == CallKind::Call {
            return Err(invalid("a fanout can only be a cast"));
        }
        let session = self.current_session()?;
        let exchange = if req.fanout {
            ExchangeSpec::fanout(&req.topic)
        } else {
            ExchangeSpec::topic(&req.exchange, &self.inner.cfg)
        };
        self.ensure_exchange(&session, &exchange).await?;
        match req.kind {
            CallKind::Cast => {
                bump(&self.inner.counters.casts);
                let body = encode(&req, None)?;
                // A broker that takes the bytes but never confirms (a stalled
                // connection) must not hold the cast past its timeout: unconfirmed is
                // reported as failed.
                let timeout = req.timeout.unwrap_or(self.inner.cfg.default_timeout);
                let deadline = Instant::now() + timeout;
                self.publish_until(
                    (deadline, timeout),
                    &session,
                    &exchange.name,
                    &req,
                    &body,
                    None,
                )
                .await?;
                Ok(RpcResponse::Sent)
            }
            CallKind::Call => {
                bump(&self.inner.counters.calls);
                let timeout = req.timeout.unwrap_or(self.inner.cfg.default_timeout);
                let msg_id = codec::new_id();
                let header = CallHeader {
                    msg_id: msg_id.clone(),
                    reply_q: self.inner.reply_queue.clone(),
                    call_monitor_timeout: req.call_monitor_timeout,
                };
                let body = encode(&req, Some(header))?;
                let mut waiter = self.register(&session, msg_id)?;
                let deadline = Instant::now() + timeout;
                // The confirm's wait counts against the call's timeout too.
                self.publish_until(
                    (deadline, timeout),
                    &session,
                    &exchange.name,
                    &req,
                    &body,
                    Some(timeout),
                )
                .await
                .map_err(|e| match e {
                    RpcError::Timeout { after, monitor, .. } => RpcError::Timeout {
                        msg_id: waiter.msg_id.clone(),
                        after,
                        monitor,
                    },
                    e => e,
                })?;
                waiter
                    .wait(deadline, timeout, req.call_monitor_timeout)
                    .await
                    .map(RpcResponse::Reply)
            }
        }
    }

    /// Closes the connection and deletes the reply queue (it is this instance's own).
    pub async fn close(self) {
        let session = self.inner.session.read().ok().and_then(|s| s.clone());
        // Delete first: the supervisor closes the connection once told to stop.
        if let Some(s) = &session {
            if let Ok(ch) = s.conn.create_channel().await {
                let _ = ch
                    .queue_delete(
                        ShortString::from(self.inner.reply_queue.as_str()),
                        QueueDeleteOptions::default(),
                    )
                    .await;
            }
        }
        self.inner.shutdown.send_replace(true);
        if let Some(s) = session {
            let _ = s.conn.close(200, "OK".into()).await;
        }
    }

    fn current_session(&self) -> Result<Arc<Session>, RpcError> {
        let session = self
            .inner
            .session
            .read()
            .map_err(|_| RpcError::NotConnected(None))?
            .clone();
        session.ok_or_else(|| RpcError::NotConnected(self.status().last_error))
    }

    async fn ensure_exchange(
        &self,
        session: &Session,
        spec: &ExchangeSpec,
    ) -> Result<(), RpcError> {
        // The default exchange always exists and cannot be declared.
        if spec.name.is_empty() || lock(&session.exchanges).contains(&spec.name) {
            return Ok(());
        }
        broker::declare_exchange(&session.conn, spec)
            .await
            .map_err(|source| {
                if session.conn.status().connected() {
                    RpcError::Exchange {
                        exchange: spec.name.clone(),
                        source,
                    }
                } else {
                    RpcError::NotConnected(Some(Arc::new(ConnectError::Lost(Some(source)))))
                }
            })?;
        lock(&session.exchanges).insert(spec.name.clone());
        Ok(())
    }

    fn register(&self, session: &Session, msg_id: String) -> Result<Waiter, RpcError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut w = lock(&self.inner.waiters);
        if w.generation != Some(session.generation) {
            return Err(RpcError::NotConnected(self.status().last_error));
        }
        w.map.insert(msg_id.clone(), tx);
        Ok(Waiter {
            inner: self.inner.clone(),
            msg_id,
            rx,
        })
    }

    async fn publish_channel(&self, session: &Session) -> Result<Channel, lapin::Error> {
        let mut ch = session.publish.lock().await;
        if !ch.status().connected() {
            let fresh = session.conn.create_channel().await?;
            fresh
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            *ch = fresh;
        }
        Ok(ch.clone())
    }

    /// [`Self::publish`], failing with [`RpcError::Timeout`] when the broker has not
    /// confirmed by `deadline` (the message may have left: it is not retried unless the
    /// target is idempotent).
    async fn publish_until(
        &self,
        (deadline, timeout): (Instant, Duration),
        session: &Session,
        exchange: &str,
        req: &RpcRequest,
        body: &[u8],
        expiration: Option<Duration>,
    ) -> Result<(), RpcError> {
        let publish = self.publish(session, exchange, req, body, expiration);
        match tokio::time::timeout_at(deadline, publish).await {
            Ok(res) => res,
            Err(_) => Err(RpcError::Timeout {
                msg_id: String::new(),
                after: timeout,
                monitor: false,
            }),
        }
    }

    async fn publish(
        &self,
        session: &Session,
        exchange: &str,
        req: &RpcRequest,
        body: &[u8],
        expiration: Option<Duration>,
    ) -> Result<(), RpcError> {
        let lost =
            |e: lapin::Error| RpcError::Disconnected(Some(Arc::new(ConnectError::Lost(Some(e)))));
        let ch = self
            .publish_channel(session)
            .await
            .map_err(RpcError::Publish)?;
        let routing_key = req.routing_key();
        let confirm = ch
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key.as_str()),
                BasicPublishOptions {
                    mandatory: req.mandatory,
                    immediate: false,
                },
                body,
                broker::message_properties(expiration),
            )
            .await
            .map_err(RpcError::Publish)?;
        match confirm.await {
            Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Ok(()),
            Ok(Confirmation::Ack(Some(returned))) | Ok(Confirmation::Nack(Some(returned))) => {
                Err(RpcError::Unroutable {
                    exchange: exchange.to_owned(),
                    routing_key,
                    reply_code: returned.reply_code,
                    reply_text: returned.reply_text.to_string(),
                })
            }
            Ok(Confirmation::Nack(None)) => Err(RpcError::Refused),
            Err(e) if !session.conn.status().connected() => Err(lost(e)),
            Err(e) => Err(RpcError::Unconfirmed(e)),
        }
    }
}

fn invalid(reason: &'static str) -> RpcError {
    RpcError::InvalidRequest {
        reason,
        source: None,
    }
}

fn encode(req: &RpcRequest, call: Option<CallHeader>) -> Result<Vec<u8>, RpcError> {
    Request {
        method: req.method.clone(),
        args: req.args.clone(),
        namespace: req.namespace.clone(),
        version: req.version.clone(),
        call,
        unique_id: Some(codec::new_id()),
        context: req.context.clone(),
    }
    .encode()
    .map_err(|e| RpcError::InvalidRequest {
        reason: "cannot encode the request",
        source: Some(e),
    })
}

/// One call waiting for its reply; unregisters itself when dropped (timeout, success or
/// the caller giving up), so later replies count as late.
struct Waiter {
    inner: Arc<Inner>,
    msg_id: String,
    rx: mpsc::UnboundedReceiver<ReplyEvent>,
}

impl Waiter {
    async fn wait(
        &mut self,
        deadline: Instant,
        timeout: Duration,
        monitor: Option<Duration>,
    ) -> Result<Value, RpcError> {
        let mut monitor_deadline = monitor.map(|m| Instant::now() + m);
        // Old servers sent the result, then a bare `ending` marker.
        let mut last_result = Value::Null;
        loop {
            let (until, by_monitor) = match monitor_deadline {
                Some(m) if m < deadline => (m, true),
                _ => (deadline, false),
            };
            let event = match tokio::time::timeout_at(until, self.rx.recv()).await {
                Err(_) => {
                    return Err(RpcError::Timeout {
                        msg_id: self.msg_id.clone(),
                        after: if by_monitor {
                            monitor.unwrap_or(timeout)
                        } else {
                            timeout
                        },
                        monitor: by_monitor,
                    })
                }
                Ok(None) => return Err(RpcError::Shutdown),
                Ok(Some(ev)) => ev,
            };
            match event {
                ReplyEvent::Lost(e) => return Err(RpcError::Disconnected(e)),
                ReplyEvent::Reply(reply) => {
                    if let Some(f) = reply.failure {
                        return Err(RpcError::Remote(Box::new(f)));
                    }
                    if reply.ending {
                        return Ok(if reply.result.is_null() {
                            last_result
                        } else {
                            reply.result
                        });
                    }
                    if reply.result.is_null() {
                        bump(&self.inner.counters.heartbeats);
                        if let Some(m) = monitor {
                            monitor_deadline = Some(Instant::now() + m);
                        }
                    } else {
                        last_result = reply.result;
                    }
                }
            }
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut w = lock(&self.inner.waiters);
        w.map.remove(&self.msg_id);
        w.abandoned.insert(&self.msg_id);
    }
}

impl Inner {
    fn on_reply(&self, body: &[u8]) {
        let reply = match codec::decode_reply(body) {
            Ok(r) => r,
            Err(error) => {
                bump(&self.counters.bad_replies);
                tracing::warn!(%error, queue = %self.reply_queue, "dropping a reply that could not be decoded");
                return;
            }
        };
        let mut w = lock(&self.waiters);
        if let Some(u) = &reply.unique_id {
            if !w.seen.insert(u) {
                bump(&self.counters.duplicate_replies);
                tracing::debug!(msg_id = %reply.msg_id, unique_id = %u, "dropping a duplicate reply");
                return;
            }
        }
        if let Some(tx) = w.map.get(&reply.msg_id) {
            let _ = tx.send(ReplyEvent::Reply(Box::new(reply)));
        } else if w.abandoned.contains(&reply.msg_id) {
            bump(&self.counters.late_replies);
            tracing::info!(msg_id = %reply.msg_id, "dropping a reply that came after its call gave up");
        } else {
            bump(&self.counters.unknown_replies);
            tracing::warn!(msg_id = %reply.msg_id, "dropping a reply for an unknown message id");
        }
    }

    /// Fails every waiting call at once and refuses new ones until the next connection.
    fn lose(&self, error: Option<Arc<ConnectError>>) {
        if let Ok(mut s) = self.session.write() {
            *s = None;
        }
        let mut w = lock(&self.waiters);
        w.generation = None;
        for (_, tx) in w.map.drain() {
            let _ = tx.send(ReplyEvent::Lost(error.clone()));
        }
    }
}

async fn setup(inner: &Inner, generation: u64) -> Result<(Arc<Session>, Consumer), ConnectError> {
    let cfg = &inner.cfg;
    let name = inner.status.borrow().connection_name.clone();
    let conn = broker::connect(cfg, &name).await?;
    let declare = |source| ConnectError::Declare {
        entity: format!("queue {}", inner.reply_queue),
        source,
    };
    let ch = conn.create_channel().await.map_err(ConnectError::Broker)?;
    let spec = QueueSpec {
        name: inner.reply_queue.clone(),
        durable: false,
        auto_delete: false,
        args: broker::transient_queue_args(cfg),
    };
    let ch = broker::declare_queue(&conn, ch, &spec)
        .await
        .map_err(declare)?;
    let consumer = ch
        .basic_consume(
            ShortString::from(inner.reply_queue.as_str()),
            ShortString::from(""),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(declare)?;
    let publish = conn.create_channel().await.map_err(ConnectError::Broker)?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(ConnectError::Broker)?;
    let session = Arc::new(Session {
        generation,
        conn,
        publish: tokio::sync::Mutex::new(publish),
        exchanges: Mutex::new(HashSet::new()),
    });
    Ok((session, consumer))
}

async fn supervise(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut backoff = Backoff::new(&inner.cfg);
    let mut generation = 0u64;
    loop {
        if *shutdown.borrow() {
            break;
        }
        broker::set_state(&inner.status, State::Connecting, None);
        let attempt = tokio::select! {
            r = setup(&inner, generation + 1) => r,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        match attempt {
            Ok((session, consumer)) => {
                generation += 1;
                let held = session.clone();
                let conn = &held.conn;
                if let Ok(mut s) = inner.session.write() {
                    *s = Some(session);
                }
                lock(&inner.waiters).generation = Some(generation);
                broker::set_state(&inner.status, State::Ready, None);
                backoff.reset();
                tracing::info!(reply_queue = %inner.reply_queue, generation, "rpc client ready");
                let lost = serve_replies(&inner, conn, consumer, &mut shutdown).await;
                let shutting_down = lost.is_none();
                let error = lost.map(Arc::new);
                inner.lose(error.clone());
                if shutting_down {
                    let _ = conn.close(200, "OK".into()).await;
                    break;
                }
                tracing::warn!(error = ?error, "rpc client lost its broker connection");
                if let Some(e) = error {
                    inner.status.send_modify(|s| s.last_error = Some(e));
                }
                broker::set_state(&inner.status, State::Down, None);
                if conn.status().connected() {
                    let _ = conn.close(200, "OK".into()).await;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "rpc client could not connect");
                broker::set_state(&inner.status, State::Down, Some(error));
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    inner.lose(Some(Arc::new(ConnectError::Shutdown)));
}

/// Routes replies until the connection is lost (`Some(why)`) or shutdown (`None`).
async fn serve_replies(
    inner: &Inner,
    conn: &Connection,
    mut consumer: Consumer,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<ConnectError> {
    let mut events = Box::pin(conn.events_listener());
    loop {
        tokio::select! {
            delivery = consumer.next() => match delivery {
                Some(Ok(d)) => inner.on_reply(&d.data),
                Some(Err(e)) => return Some(ConnectError::Lost(Some(e))),
                None => return Some(ConnectError::Lost(None)),
            },
            lost = broker::connection_lost(conn, &mut events) => return Some(lost),
            _ = shutdown.wait_for(|s| *s) => return None,
        }
    }
}

impl tower::Service<RpcRequest> for RpcClient {
    type Response = RpcResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<RpcResponse, BoxError>> + Send>>;

    /// Always ready: a client that is not connected answers at once with
    /// [`RpcError::NotConnected`] (which the breaker counts), it never queues.
    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: RpcRequest) -> Self::Future {
        let client = self.clone();
        Box::pin(async move { client.send(req).await.map_err(BoxError::from) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_follow_oslo() {
        assert_eq!(RpcRequest::call("t", "m").routing_key(), "t");
        assert_eq!(RpcRequest::call("t", "m").server("h").routing_key(), "t.h");
        assert_eq!(RpcRequest::cast("t", "m").fanout().routing_key(), "");
    }

    #[test]
    fn recent_forgets_the_oldest() {
        let mut r = Recent::new(2);
        assert!(r.insert("a"));
        assert!(!r.insert("a"));
        assert!(r.insert("b"));
        assert!(r.insert("c"));
        assert!(!r.contains("a"));
        assert!(r.contains("c"));
    }

    #[tokio::test]
    async fn calls_fail_fast_when_not_connected() {
        let cfg = AmqpConfig {
            // Nothing listens on port 1.
            url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
            ..AmqpConfig::default()
        };
        let client = RpcClient::start(cfg);
        let err = client.call(RpcRequest::call("t", "m")).await.unwrap_err();
        assert!(matches!(err, RpcError::NotConnected(_)), "{err:?}");
        let err = client
            .send(RpcRequest::call("t", "m").fanout())
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::InvalidRequest { .. }), "{err:?}");
    }
}
