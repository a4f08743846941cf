//! The RPC server side: Quartet as an oslo.messaging RPC server (the reverse bridge).
//!
//! Declares and consumes what oslo's `RPCServer` does for `Target(topic, server)`: queue
//! `<topic>` and `<topic>.<server>` on the control exchange (topic type), and
//! `<topic>_fanout_<uuid4hex>` (`x-expires`) on the `<topic>_fanout` exchange. Each
//! request is decoded, acknowledged (before dispatch, as oslo does: at most once, so a
//! crash never runs a non-idempotent method twice), de-duplicated by `_unique_id`, and
//! handed to an [`RpcHandler`]. Calls are answered on the default exchange with routing
//! key `_reply_q`, published mandatory with confirms: `result`, or a `failure` with
//! class/module/message/tb. While a call with `_timeout` (call-monitor) runs, a heartbeat
//! goes out every half of it, as oslo's dispatcher watchdog does (none when the half is
//! under 1 s). Requests that cannot be decoded are rejected (not requeued) with a logged
//! reason.
//!
//! Concurrency is bounded (`concurrency`): the next delivery is taken only when a slot is
//! free, and the channel's prefetch equals it, so the broker holds the backlog.

use crate::broker::{self, Backoff, ExchangeSpec, QueueSpec, State, Status};
use crate::codec::{self, RemoteFailure, Reply, Request};
use crate::config::{AmqpConfig, RpcServerSpec};
use crate::error::{ConnectError, RpcError};
use futures_util::stream::{select_all, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Confirmation, Connection, Consumer};
use serde_json::Value;
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// One request handed to the handler.
#[derive(Clone, Debug, PartialEq)]
pub struct IncomingCall {
    /// Method, args, version, namespace, context; `request.call` is `Some` for a call.
    pub request: Request,
    /// The queue it came from (`<topic>`, `<topic>.<server>` or the fanout queue).
    pub queue: String,
}

impl IncomingCall {
    pub fn is_call(&self) -> bool {
        self.request.call.is_some()
    }
}

/// What the server hands requests to. A failure is sent back as oslo's `failure`; for a
/// cast it is only logged.
pub trait RpcHandler: Send + Sync + 'static {
    fn handle(
        &self,
        call: IncomingCall,
    ) -> impl Future<Output = Result<Value, RemoteFailure>> + Send;
}

impl<F, Fut> RpcHandler for F
where
    F: Fn(IncomingCall) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, RemoteFailure>> + Send,
{
    fn handle(
        &self,
        call: IncomingCall,
    ) -> impl Future<Output = Result<Value, RemoteFailure>> + Send {
        self(call)
    }
}

/// Counters since the server started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub calls: u64,
    pub casts: u64,
    pub replies: u64,
    pub failures: u64,
    pub heartbeats: u64,
    /// Requests that could not be decoded (rejected).
    pub bad_requests: u64,
    /// Requests whose `_unique_id` was already seen (dropped).
    pub duplicates: u64,
    /// Replies the broker could not deliver (reply queue gone) or did not confirm.
    pub lost_replies: u64,
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    casts: AtomicU64,
    replies: AtomicU64,
    failures: AtomicU64,
    heartbeats: AtomicU64,
    bad_requests: AtomicU64,
    duplicates: AtomicU64,
    lost_replies: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Seen {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    const CAP: usize = 1024;

    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == Self::CAP {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

struct Inner<H> {
    cfg: AmqpConfig,
    spec: RpcServerSpec,
    fanout_queue: String,
    handler: H,
    status: watch::Sender<Status>,
    counters: Counters,
    seen: Mutex<Seen>,
    permits: Arc<Semaphore>,
    shutdown: watch::Sender<bool>,
}

/// Publishes replies on a confirm channel, replacing it when it was closed.
struct Replier {
    conn: Connection,
    channel: tokio::sync::Mutex<Channel>,
}

impl Replier {
    async fn send(&self, reply_q: &str, reply: &Reply) -> Result<(), RpcError> {
        let body = reply.encode().map_err(|e| RpcError::InvalidRequest {
            reason: "cannot encode the reply",
            source: Some(e),
        })?;
        let ch = {
            let mut ch = self.channel.lock().await;
            if !ch.status().connected() {
                let fresh = self
                    .conn
                    .create_channel()
                    .await
                    .map_err(RpcError::Publish)?;
                fresh
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(RpcError::Publish)?;
                *ch = fresh;
            }
            ch.clone()
        };
        let confirm = ch
            .basic_publish(
                ShortString::from(""),
                ShortString::from(reply_q),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &body,
                broker::message_properties(None),
            )
            .await
            .map_err(RpcError::Publish)?;
        match confirm.await {
            Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Ok(()),
            Ok(Confirmation::Ack(Some(r))) | Ok(Confirmation::Nack(Some(r))) => {
                Err(RpcError::Unroutable {
                    exchange: String::new(),
                    routing_key: reply_q.to_owned(),
                    reply_code: r.reply_code,
                    reply_text: r.reply_text.to_string(),
                })
            }
            Ok(Confirmation::Nack(None)) => Err(RpcError::Refused),
            Err(e) => Err(RpcError::Unconfirmed(e)),
        }
    }
}

struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// A running oslo.messaging RPC server. Stops when dropped or [`RpcServer::close`]d.
pub struct RpcServer {
    status: watch::Sender<Status>,
    stats: Arc<dyn Fn() -> ServerStats + Send + Sync>,
    fanout_queue: String,
    _stop: StopOnDrop,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcServer")
            .field("state", &self.status.borrow().state)
            .finish()
    }
}

impl RpcServer {
    /// Starts serving `spec.topic` on the current tokio runtime; connects in the background.
    pub fn start<H: RpcHandler>(cfg: AmqpConfig, spec: RpcServerSpec, handler: H) -> Self {
        let name = broker::connection_name(&cfg.connection_name);
        let (status, _) = watch::channel(Status::new(name));
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            fanout_queue: format!("{}_fanout_{}", spec.topic, codec::new_id()),
            permits: Arc::new(Semaphore::new(spec.concurrency.max(1))),
            cfg,
            spec,
            handler,
            status: status.clone(),
            counters: Counters::default(),
            seen: Mutex::new(Seen {
                set: HashSet::new(),
                order: VecDeque::new(),
            }),
            shutdown: shutdown.clone(),
        });
        let for_stats = inner.clone();
        let stats = Arc::new(move || {
            let c = &for_stats.counters;
            let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
            ServerStats {
                calls: g(&c.calls),
                casts: g(&c.casts),
                replies: g(&c.replies),
                failures: g(&c.failures),
                heartbeats: g(&c.heartbeats),
                bad_requests: g(&c.bad_requests),
                duplicates: g(&c.duplicates),
                lost_replies: g(&c.lost_replies),
            }
        });
        let fanout_queue = inner.fanout_queue.clone();
        let task = tokio::spawn(supervise(inner));
        Self {
            status,
            stats,
            fanout_queue,
            _stop: StopOnDrop(shutdown),
            task,
        }
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    pub fn stats(&self) -> ServerStats {
        (self.stats)()
    }

    /// The fanout queue's name (`<topic>_fanout_<uuid4hex>`).
    pub fn fanout_queue(&self) -> &str {
        &self.fanout_queue
    }

    /// Waits until it consumes, at most `bound`.
    pub async fn wait_ready(&self, bound: Duration) -> Result<(), RpcError> {
        let mut rx = self.status.subscribe();
        let ready = tokio::time::timeout(bound, rx.wait_for(|s| s.is_ready()))
            .await
            .is_ok_and(|r| r.is_ok());
        if ready {
            Ok(())
        } else {
            Err(RpcError::NotConnected(self.status().last_error))
        }
    }

    /// Stops consuming, deletes its fanout queue and closes the connection.
    pub async fn close(self) {
        self._stop.0.send_replace(true);
        let _ = self.task.await;
    }
}

async fn setup<H: RpcHandler>(
    inner: &Inner<H>,
) -> Result<(Arc<Replier>, Vec<Consumer>), ConnectError> {
    let cfg = &inner.cfg;
    let spec = &inner.spec;
    let name = inner.status.borrow().connection_name.clone();
    let conn = broker::connect(cfg, &name).await?;
    let declare = |entity: &str| {
        let entity = entity.to_owned();
        move |source| ConnectError::Declare { entity, source }
    };
    let topic_ex = ExchangeSpec::topic(&spec.exchange, cfg);
    broker::declare_exchange(&conn, &topic_ex)
        .await
        .map_err(declare(&format!("exchange {}", spec.exchange)))?;
    let mut queues = vec![(
        spec.topic.clone(),
        spec.exchange.clone(),
        spec.topic.clone(),
        false,
    )];
    if let Some(server) = &spec.server {
        let q = format!("{}.{server}", spec.topic);
        queues.push((q.clone(), spec.exchange.clone(), q, false));
    }
    if spec.fanout {
        let fan = ExchangeSpec::fanout(&spec.topic);
        broker::declare_exchange(&conn, &fan)
            .await
            .map_err(declare(&format!("exchange {}", fan.name)))?;
        queues.push((
            inner.fanout_queue.clone(),
            fan.name,
            spec.topic.clone(),
            true,
        ));
    }
    let mut ch = conn.create_channel().await.map_err(ConnectError::Broker)?;
    for (queue, exchange, key, transient) in &queues {
        let qspec = QueueSpec {
            name: queue.clone(),
            durable: !transient && cfg.durable_queues,
            auto_delete: false,
            args: if *transient {
                broker::transient_queue_args(cfg)
            } else {
                FieldTable::default()
            },
        };
        let what = format!("queue {queue}");
        ch = broker::declare_queue(&conn, ch, &qspec)
            .await
            .map_err(declare(&what))?;
        broker::bind_queue(&ch, queue, exchange, key)
            .await
            .map_err(declare(&what))?;
    }
    let prefetch = u16::try_from(spec.concurrency).unwrap_or(u16::MAX);
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(ConnectError::Broker)?;
    let mut consumers = Vec::with_capacity(queues.len());
    for (queue, ..) in &queues {
        let consumer = ch
            .basic_consume(
                ShortString::from(queue.as_str()),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(declare(&format!("queue {queue}")))?;
        consumers.push(consumer);
    }
    let publish = conn.create_channel().await.map_err(ConnectError::Broker)?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(ConnectError::Broker)?;
    let replier = Arc::new(Replier {
        conn,
        channel: tokio::sync::Mutex::new(publish),
    });
    Ok((replier, consumers))
}

async fn supervise<H: RpcHandler>(inner: Arc<Inner<H>>) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut backoff = Backoff::new(&inner.cfg);
    loop {
        if *shutdown.borrow() {
            break;
        }
        broker::set_state(&inner.status, State::Connecting, None);
        let attempt = tokio::select! {
            r = setup(&inner) => r,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        match attempt {
            Ok((replier, consumers)) => {
                broker::set_state(&inner.status, State::Ready, None);
                backoff.reset();
                tracing::info!(topic = %inner.spec.topic, "rpc server ready");
                let lost = serve(&inner, &replier, consumers, &mut shutdown).await;
                match lost {
                    None => {
                        if let Ok(ch) = replier.conn.create_channel().await {
                            let _ = ch
                                .queue_delete(
                                    ShortString::from(inner.fanout_queue.as_str()),
                                    Default::default(),
                                )
                                .await;
                        }
                        let _ = replier.conn.close(200, "OK".into()).await;
                        break;
                    }
                    Some(error) => {
                        tracing::warn!(%error, topic = %inner.spec.topic, "rpc server lost its broker connection");
                        broker::set_state(&inner.status, State::Down, Some(error));
                        if replier.conn.status().connected() {
                            let _ = replier.conn.close(200, "OK".into()).await;
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, topic = %inner.spec.topic, "rpc server could not connect");
                broker::set_state(&inner.status, State::Down, Some(error));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
}

async fn serve<H: RpcHandler>(
    inner: &Arc<Inner<H>>,
    replier: &Arc<Replier>,
    consumers: Vec<Consumer>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<ConnectError> {
    // Tag each delivery with its queue (a fanout delivery's routing key is empty).
    let mut deliveries = select_all(consumers.into_iter().map(|c| {
        let queue = c.queue().to_string();
        c.map(move |d| (queue.clone(), d))
    }));
    // The connection's events as well as the deliveries: a reset can leave the
    // consumers' streams pending for good (see `broker::connection_lost`).
    let mut events = Box::pin(replier.conn.events_listener());
    loop {
        if !replier.conn.status().connected() {
            return Some(ConnectError::Lost(None));
        }
        let permit = tokio::select! {
            p = inner.permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return None,
            },
            lost = broker::connection_lost(&replier.conn, &mut events) => return Some(lost),
            _ = shutdown.wait_for(|s| *s) => return None,
        };
        let delivery = tokio::select! {
            d = deliveries.next() => d,
            lost = broker::connection_lost(&replier.conn, &mut events) => return Some(lost),
            _ = shutdown.wait_for(|s| *s) => return None,
        };
        let (queue, delivery) = match delivery {
            Some((queue, Ok(d))) => (queue, d),
            Some((_, Err(e))) => return Some(ConnectError::Lost(Some(e))),
            None => return Some(ConnectError::Lost(None)),
        };
        let request = match codec::decode_request(&delivery.data) {
            Ok(r) => r,
            Err(error) => {
                bump(&inner.counters.bad_requests);
                tracing::warn!(%error, topic = %inner.spec.topic, "rejecting a request that could not be decoded");
                // Raced with the connection's events, like the ack below.
                tokio::select! {
                    _ = delivery.reject(BasicRejectOptions { requeue: false }) => {}
                    lost = broker::connection_lost(&replier.conn, &mut events) => return Some(lost),
                }
                continue;
            }
        };
        // oslo acks before dispatching: at most once. Raced with the connection's
        // events: an ack sent as the connection is reset may never be answered, and
        // this loop waited on it for good (tests/rpc_outage.rs, under load).
        let acked = tokio::select! {
            r = delivery.ack(BasicAckOptions::default()) => r,
            lost = broker::connection_lost(&replier.conn, &mut events) => return Some(lost),
        };
        if let Err(error) = acked {
            tracing::warn!(%error, "ack failed; dropping the request as oslo does");
            continue;
        }
        if let Some(u) = &request.unique_id {
            let fresh = inner.seen.lock().map(|mut s| s.insert(u)).unwrap_or(true);
            if !fresh {
                bump(&inner.counters.duplicates);
                tracing::info!(unique_id = %u, "dropping a duplicate request");
                continue;
            }
        }
        let inner = inner.clone();
        let replier = replier.clone();
        tokio::spawn(async move {
            let _permit = permit;
            dispatch(&inner, &replier, IncomingCall { request, queue }).await;
        });
    }
}

async fn dispatch<H: RpcHandler>(inner: &Inner<H>, replier: &Replier, call: IncomingCall) {
    let Some(header) = call.request.call.clone() else {
        bump(&inner.counters.casts);
        let method = call.request.method.clone();
        if let Err(f) = inner.handler.handle(call).await {
            tracing::warn!(%method, failure = %f, "cast failed");
        }
        return;
    };
    bump(&inner.counters.calls);
    let method = call.request.method.clone();
    let handling = inner.handler.handle(call);
    // Call monitoring: a heartbeat every half of `_timeout`, none when that is under 1 s.
    let every = header
        .call_monitor_timeout
        .map(|t| t / 2)
        .filter(|half| *half >= Duration::from_secs(1));
    let outcome = match every {
        None => handling.await,
        Some(every) => {
            tokio::pin!(handling);
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! {
                    out = &mut handling => break out,
                    _ = ticks.tick() => {
                        let hb = Reply {
                            result: Value::Null,
                            failure: None,
                            ending: false,
                            msg_id: header.msg_id.clone(),
                            unique_id: Some(codec::new_id()),
                        };
                        match replier.send(&header.reply_q, &hb).await {
                            Ok(()) => bump(&inner.counters.heartbeats),
                            Err(error) => tracing::warn!(%error, "heartbeat not delivered"),
                        }
                    }
                }
            }
        }
    };
    let (result, failure) = match outcome {
        Ok(v) => (v, None),
        Err(f) => {
            bump(&inner.counters.failures);
            tracing::info!(%method, failure = %f, "call failed");
            (Value::Null, Some(strip_remote_suffix(f)))
        }
    };
    let reply = Reply {
        result,
        failure,
        ending: true,
        msg_id: header.msg_id,
        unique_id: Some(codec::new_id()),
    };
    match replier.send(&header.reply_q, &reply).await {
        Ok(()) => bump(&inner.counters.replies),
        Err(error) => {
            bump(&inner.counters.lost_replies);
            tracing::warn!(%error, reply_q = %header.reply_q, %method, "reply not delivered");
        }
    }
}

/// oslo strips a trailing `_Remote` from class and module names before sending.
fn strip_remote_suffix(mut f: RemoteFailure) -> RemoteFailure {
    for s in [&mut f.class, &mut f.module] {
        if let Some(stripped) = s.strip_suffix("_Remote") {
            *s = stripped.to_owned();
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_suffix_is_stripped() {
        let f = strip_remote_suffix(RemoteFailure::new(
            "ValueError_Remote",
            "builtins_Remote",
            "x",
        ));
        assert_eq!(
            (f.class.as_str(), f.module.as_str()),
            ("ValueError", "builtins")
        );
    }

    #[test]
    fn seen_drops_repeats() {
        let mut s = Seen {
            set: HashSet::new(),
            order: VecDeque::new(),
        };
        assert!(s.insert("a"));
        assert!(!s.insert("a"));
    }
}
