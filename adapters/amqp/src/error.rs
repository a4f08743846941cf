//! Errors of the AMQP adapter. Each says whether the message can have reached a server,
//! which is what [`crate::classify::RpcClassify`] reads.

use crate::codec::{CodecError, RemoteFailure};
use std::sync::Arc;
use std::time::Duration;

/// Why connecting to the broker (or setting up what we need on it) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error("invalid broker url")]
    Url,
    #[error("connecting to the broker timed out after {0:?}")]
    Timeout(Duration),
    #[error("broker connection failed")]
    Broker(#[source] lapin::Error),
    #[error("declaring {entity} failed")]
    Declare {
        entity: String,
        #[source]
        source: lapin::Error,
    },
    #[error("the connection was lost")]
    Lost(#[source] Option<lapin::Error>),
    #[error("the client was shut down")]
    Shutdown,
}

/// Why one RPC (call or cast) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// No connection to the broker right now: nothing was sent. Edge: 503.
    #[error("not connected to the broker")]
    NotConnected(#[source] Option<Arc<ConnectError>>),
    /// The connection went away while the message was in flight (after the publish):
    /// it may have been delivered. Edge: 503.
    #[error("broker connection lost while the message was in flight")]
    Disconnected(#[source] Option<Arc<ConnectError>>),
    /// Published with the mandatory flag and returned by the broker: no queue is bound
    /// for this routing key. Nothing was delivered. Edge: 503.
    #[error("no queue for exchange {exchange:?} routing key {routing_key:?}")]
    Unroutable {
        exchange: String,
        routing_key: String,
        reply_code: u16,
        reply_text: String,
    },
    /// The broker refused the message (publisher-confirm nack). Edge: 503.
    #[error("the broker refused the message")]
    Refused,
    /// The exchange could not be declared (or checked passively). Nothing was sent.
    #[error("exchange {exchange:?} is not usable")]
    Exchange {
        exchange: String,
        #[source]
        source: lapin::Error,
    },
    /// The publish failed before the message left: nothing was sent. Edge: 503.
    #[error("publish failed")]
    Publish(#[source] lapin::Error),
    /// The message left but the broker never confirmed it: it may or may not have been
    /// delivered. Edge: 503.
    #[error("the broker did not confirm the message")]
    Unconfirmed(#[source] lapin::Error),
    /// No reply in time (`monitor`: the call-monitor heartbeats stopped). Edge: 504.
    #[error("timed out waiting for a reply to message id {msg_id}")]
    Timeout {
        msg_id: String,
        after: Duration,
        monitor: bool,
    },
    /// The remote method raised. Edge: 500, or the status mapped for its class.
    #[error("remote method raised {0}")]
    Remote(Box<RemoteFailure>),
    /// A reply came but could not be decoded. Edge: 502.
    #[error("the reply could not be decoded")]
    BadReply(#[source] CodecError),
    /// The request could not be encoded or makes no sense (a fanout call). Edge: 400.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        reason: &'static str,
        #[source]
        source: Option<CodecError>,
    },
    /// The client was shut down.
    #[error("the rpc client is shut down")]
    Shutdown,
}

impl RpcError {
    /// The remote exception, when the server raised one.
    pub fn remote(&self) -> Option<&RemoteFailure> {
        match self {
            RpcError::Remote(f) => Some(f),
            _ => None,
        }
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, RpcError::Timeout { .. })
    }

    /// True when the message certainly reached no server, so sending it again is safe.
    pub fn is_not_sent(&self) -> bool {
        matches!(
            self,
            RpcError::NotConnected(_)
                | RpcError::Unroutable { .. }
                | RpcError::Refused
                | RpcError::Exchange { .. }
                | RpcError::Publish(_)
        )
    }

    /// True when the broker (not the remote method) is at fault: the channel is down.
    pub fn is_unavailable(&self) -> bool {
        self.is_not_sent() || matches!(self, RpcError::Disconnected(_) | RpcError::Unconfirmed(_))
    }
}
