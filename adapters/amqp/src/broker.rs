//! What the client and the server share: connecting with oslo-like client properties, the
//! channel state read by `/readyz`, reconnect backoff, and declaring entities with
//! oslo.messaging's flags without ever losing the connection over a flag mismatch.

use crate::config::AmqpConfig;
use crate::error::ConnectError;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connect, Connection, ConnectionProperties, ErrorKind, ExchangeKind};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Where a broker connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Starting, or trying again after a loss.
    Connecting,
    /// Connected, reply queue (or server queues) declared and consumed.
    Ready,
    /// Lost or failed; a reconnect is scheduled.
    Down,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Ready => "ready",
            State::Down => "down",
        }
    }
}

/// A snapshot for `/readyz`.
#[derive(Clone, Debug)]
pub struct Status {
    pub state: State,
    /// Since when it is in this state.
    pub since: Instant,
    /// Why it was last down (kept after it is ready again).
    pub last_error: Option<Arc<ConnectError>>,
    /// Connections established so far (1 after the first, +1 per reconnect).
    pub connects: u64,
    /// The connection name the broker shows (`<prefix>:<pid>:<uuid4>`).
    pub connection_name: Arc<str>,
}

impl Status {
    pub(crate) fn new(connection_name: Arc<str>) -> Self {
        Self {
            state: State::Connecting,
            since: Instant::now(),
            last_error: None,
            connects: 0,
            connection_name,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }
}

pub(crate) fn set_state(tx: &watch::Sender<Status>, state: State, error: Option<ConnectError>) {
    tx.send_modify(|s| {
        if s.state != state {
            s.since = Instant::now();
        }
        s.state = state;
        if state == State::Ready {
            s.connects += 1;
        }
        if let Some(e) = error {
            s.last_error = Some(Arc::new(e));
        }
    });
}

/// `<prefix>:<pid>:<uuid4>`, like oslo.messaging's `connection_name`.
pub(crate) fn connection_name(prefix: &str) -> Arc<str> {
    format!(
        "{prefix}:{}:{}",
        std::process::id(),
        uuid::Uuid::new_v4().hyphenated()
    )
    .into()
}

/// Opens a connection with our heartbeat, name and timeout.
pub(crate) async fn connect(cfg: &AmqpConfig, name: &str) -> Result<Connection, ConnectError> {
    let mut uri: lapin::uri::AMQPUri = cfg.url.parse().map_err(|_| ConnectError::Url)?;
    uri.query.heartbeat = Some(u16::try_from(cfg.heartbeat.as_secs()).unwrap_or(u16::MAX));
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(name))
        .with_client_property("product".into(), "quartet".into())
        .with_client_property("product_version".into(), env!("CARGO_PKG_VERSION").into());
    // With a fault handle, the socket goes through the target's toxics (`rpc:broker`).
    let connect = async {
        match cfg.faults.handle() {
            Some(fault) => {
                uri.connect_with_config(
                    props,
                    OwnedTLSConfig::default(),
                    crate::toxic::runtime(fault.clone()),
                )
                .await
            }
            None => Connection::connect_uri(uri, props).await,
        }
    };
    match tokio::time::timeout(cfg.connect_timeout, connect).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(ConnectError::Broker(e)),
        Err(_) => Err(ConnectError::Timeout(cfg.connect_timeout)),
    }
}

/// Waits on a connection's events until it is lost, logging what the broker says on the
/// way (resource alarms). A consumer's stream alone is not enough to notice a loss: when
/// the connection is reset while a delivery is being acknowledged, the stream can stay
/// pending for good (seen in tests/rpc_outage.rs: the RPC server never reconnected).
pub(crate) async fn connection_lost(
    conn: &Connection,
    events: &mut (impl futures_util::Stream<Item = lapin::Event> + Unpin),
) -> ConnectError {
    use futures_util::StreamExt;
    loop {
        match events.next().await {
            // Channel errors (a 406 on a declaration) come here too: only a connection
            // that is no longer usable counts as lost.
            Some(lapin::Event::Error(e)) if !conn.status().connected() => {
                return ConnectError::Lost(Some(e))
            }
            // Publishes wait (and calls run into their timeouts) while blocked.
            Some(lapin::Event::ConnectionBlocked(reason)) => {
                tracing::warn!(%reason, "the broker blocked our connection (resource alarm)");
            }
            Some(lapin::Event::ConnectionUnblocked) => {
                tracing::info!("the broker unblocked our connection");
            }
            Some(_) => {}
            None => return ConnectError::Lost(None),
        }
    }
}

/// Full-jitter exponential backoff between reconnect attempts.
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(cfg: &AmqpConfig) -> Self {
        Self {
            base: cfg.reconnect.backoff,
            max: cfg.reconnect.max_backoff,
            attempt: 0,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // Never below half the ceiling, so a broker coming back is not hammered.
        let half = ceiling / 2;
        half + ceiling.mul_f64(rand::random::<f64>() * 0.5)
    }
}

pub(crate) fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)))
}

/// Queue arguments for transient (reply, fanout) queues: `x-expires` in ms.
pub(crate) fn transient_queue_args(cfg: &AmqpConfig) -> FieldTable {
    let mut args = FieldTable::default();
    // py-amqp writes a Python int as a signed 32-bit field ('I'); so do we.
    let ms = i32::try_from(cfg.transient_queues_ttl.as_millis()).unwrap_or(i32::MAX);
    if ms > 0 {
        args.insert("x-expires".into(), AMQPValue::LongInt(ms));
    }
    args
}

/// How oslo.messaging declares one exchange.
#[derive(Clone, Debug)]
pub(crate) struct ExchangeSpec {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
}

impl ExchangeSpec {
    /// The control exchange (`openstack`, `nova`): topic, `amqp_durable_queues`, not
    /// auto-delete.
    pub(crate) fn topic(name: &str, cfg: &AmqpConfig) -> Self {
        Self {
            name: name.to_owned(),
            kind: ExchangeKind::Topic,
            durable: cfg.durable_queues,
            auto_delete: false,
        }
    }

    /// `<topic>_fanout`: fanout, transient, auto-delete.
    pub(crate) fn fanout(topic: &str) -> Self {
        Self {
            name: format!("{topic}_fanout"),
            kind: ExchangeKind::Fanout,
            durable: false,
            auto_delete: true,
        }
    }
}

/// Declares an exchange with oslo's flags on a channel of its own. When the exchange
/// exists with other flags the broker answers 406 PRECONDITION_FAILED and closes that
/// channel (never the connection): we then check it passively on a fresh channel and use
/// it as it is, as oslo's `_declare_fallback_nondurable` does for `durable`.
pub(crate) async fn declare_exchange(
    conn: &Connection,
    spec: &ExchangeSpec,
) -> Result<(), lapin::Error> {
    let options = ExchangeDeclareOptions {
        durable: spec.durable,
        auto_delete: spec.auto_delete,
        ..Default::default()
    };
    let ch = conn.create_channel().await?;
    match ch
        .exchange_declare(
            ShortString::from(spec.name.as_str()),
            spec.kind.clone(),
            options,
            FieldTable::default(),
        )
        .await
    {
        Ok(()) => {
            close_quietly(&ch).await;
            Ok(())
        }
        Err(e) if is_precondition_failed(&e) => {
            tracing::warn!(exchange = %spec.name, error = %e, "exchange exists with other flags; using it as it is");
            let ch = conn.create_channel().await?;
            let passive = ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let res = ch
                .exchange_declare(
                    ShortString::from(spec.name.as_str()),
                    spec.kind.clone(),
                    passive,
                    FieldTable::default(),
                )
                .await;
            if res.is_ok() {
                close_quietly(&ch).await;
            }
            res
        }
        Err(e) => Err(e),
    }
}

/// How oslo.messaging declares one queue.
#[derive(Clone, Debug)]
pub(crate) struct QueueSpec {
    pub name: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub args: FieldTable,
}

/// Declares a queue on `ch`, falling back to a passive check on a fresh channel of
/// `conn` on 406. Returns the channel to keep using (a fresh one after a fallback).
pub(crate) async fn declare_queue(
    conn: &Connection,
    ch: Channel,
    spec: &QueueSpec,
) -> Result<Channel, lapin::Error> {
    let options = QueueDeclareOptions {
        durable: spec.durable,
        auto_delete: spec.auto_delete,
        ..Default::default()
    };
    match ch
        .queue_declare(
            ShortString::from(spec.name.as_str()),
            options,
            spec.args.clone(),
        )
        .await
    {
        Ok(_) => Ok(ch),
        Err(e) if is_precondition_failed(&e) => {
            tracing::warn!(queue = %spec.name, error = %e, "queue exists with other flags; using it as it is");
            let ch = conn.create_channel().await?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            ch.queue_declare(
                ShortString::from(spec.name.as_str()),
                passive,
                FieldTable::default(),
            )
            .await?;
            Ok(ch)
        }
        Err(e) => Err(e),
    }
}

pub(crate) async fn bind_queue(
    ch: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
) -> Result<(), lapin::Error> {
    ch.queue_bind(
        ShortString::from(queue),
        ShortString::from(exchange),
        ShortString::from(routing_key),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

pub(crate) async fn close_quietly(ch: &Channel) {
    if ch.status().connected() {
        let _ = ch.close(200, "OK".into()).await;
    }
}

/// The AMQP properties oslo (kombu) puts on every message; `expiration` only on calls.
pub(crate) fn message_properties(expiration: Option<Duration>) -> lapin::BasicProperties {
    let props = lapin::BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(2)
        .with_priority(0)
        .with_headers(FieldTable::default());
    match expiration {
        Some(d) => props.with_expiration(ShortString::from(d.as_millis().max(1).to_string())),
        None => props,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling() {
        let cfg = AmqpConfig::default();
        let mut b = Backoff::new(&cfg);
        for _ in 0..40 {
            let d = b.next_delay();
            assert!(d <= cfg.reconnect.max_backoff, "{d:?}");
        }
        b.reset();
        assert!(b.next_delay() <= cfg.reconnect.backoff);
    }

    #[test]
    fn connection_names_look_like_oslo() {
        let n = connection_name("quartet");
        let parts: Vec<_> = n.split(':').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], "quartet");
        assert_eq!(parts[1], std::process::id().to_string());
    }
}
