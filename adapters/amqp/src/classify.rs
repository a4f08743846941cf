//! How the RPC channel classifies its results for retry and breaker.
//!
//! | result | class | why |
//! | --- | --- | --- |
//! | a reply, a confirmed cast | `Success` | |
//! | a remote exception (`failure` in the reply) | `Success` (default) | see below |
//! | not connected, unroutable (`basic.return`), nack, exchange unusable, publish failed before sending | `NotSent` | no server can have seen the message: always safe to retry |
//! | timeout waiting for the reply, connection lost in flight, confirm lost, bad reply | `Sent` | the server may have run the method: retried only when the target is idempotent |
//! | invalid request, client shut down | `Local` | the gateway's own doing: neither retried nor counted |
//!
//! **Remote exceptions count as successes by default.** A `failure` reply proves that the
//! broker routed the call, a server took it and answered in time: the channel and the
//! backend are healthy, and the application chose to raise (`NotFound`, `ValueError`,
//! `NoSuchMethod`). Counting those would let one client's bad arguments open the breaker
//! for everyone, and retrying them would run a failing method again. Deployments whose
//! servers raise for their own outages (a database down behind nova-conductor) can count
//! them with [`RpcClassify::count_remote_failures`]; they are then `Sent` (the method ran,
//! so a retry needs an idempotent target).

use crate::client::RpcResponse;
use crate::error::RpcError;
use quartet_policies::classify::{classify_policy_error, Class, Classify, Replay};
use quartet_policies::BoxError;

#[derive(Clone, Copy, Debug, Default)]
pub struct RpcClassify {
    remote_failures_count: bool,
}

impl RpcClassify {
    /// Remote exceptions count as failures of the backend (class `Sent`).
    pub fn count_remote_failures(mut self) -> Self {
        self.remote_failures_count = true;
        self
    }

    /// The class of one of this crate's errors.
    pub fn classify_error(&self, err: &RpcError) -> Class {
        match err {
            RpcError::Remote(_) if self.remote_failures_count => Class::Sent,
            RpcError::Remote(_) => Class::Success,
            RpcError::NotConnected(_)
            | RpcError::Unroutable { .. }
            | RpcError::Refused
            | RpcError::Exchange { .. }
            | RpcError::Publish(_) => Class::NotSent,
            RpcError::Disconnected(_)
            | RpcError::Unconfirmed(_)
            | RpcError::Timeout { .. }
            | RpcError::BadReply(_) => Class::Sent,
            RpcError::InvalidRequest { .. } | RpcError::Shutdown => Class::Local,
        }
    }
}

impl Classify<RpcResponse> for RpcClassify {
    fn classify(&self, result: &Result<RpcResponse, BoxError>) -> Class {
        let err = match result {
            Ok(_) => return Class::Success,
            Err(e) => e,
        };
        if let Some(class) = classify_policy_error(err) {
            return class;
        }
        match err.downcast_ref::<RpcError>() {
            Some(e) => self.classify_error(e),
            // Not ours and not the stack's: assume the worst that is still honest.
            None => Class::Sent,
        }
    }
}

/// Replays RPC requests: every attempt gets fresh `_msg_id` and `_unique_id`, so a clone
/// is a new message. `idempotent_target` is the topic's `idempotent = true`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcReplay {
    pub idempotent_target: bool,
}

impl Replay<crate::client::RpcRequest> for RpcReplay {
    type Kept = crate::client::RpcRequest;
    fn replay(&self, req: &crate::client::RpcRequest) -> Option<crate::client::RpcRequest> {
        Some(req.clone())
    }

    fn again(&self, kept: crate::client::RpcRequest) -> Option<crate::client::RpcRequest> {
        Some(kept)
    }

    fn idempotent(&self, _req: &crate::client::RpcRequest) -> bool {
        self.idempotent_target
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::RemoteFailure;
    use std::time::Duration;

    fn class(c: RpcClassify, e: RpcError) -> Class {
        c.classify(&Err(Box::new(e)))
    }

    #[test]
    fn classes() {
        let c = RpcClassify::default();
        assert_eq!(c.classify(&Ok(RpcResponse::Sent)), Class::Success);
        assert_eq!(class(c, RpcError::NotConnected(None)), Class::NotSent);
        assert_eq!(class(c, RpcError::Refused), Class::NotSent);
        let unroutable = || RpcError::Unroutable {
            exchange: "openstack".into(),
            routing_key: "t".into(),
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
        };
        assert_eq!(class(c, unroutable()), Class::NotSent);
        let timeout = RpcError::Timeout {
            msg_id: "m".into(),
            after: Duration::from_secs(1),
            monitor: false,
        };
        assert_eq!(class(c, timeout), Class::Sent);
        assert_eq!(class(c, RpcError::Disconnected(None)), Class::Sent);
        let remote =
            || RpcError::Remote(Box::new(RemoteFailure::new("ValueError", "builtins", "x")));
        assert_eq!(class(c, remote()), Class::Success);
        assert_eq!(class(c.count_remote_failures(), remote()), Class::Sent);
        let invalid = RpcError::InvalidRequest {
            reason: "x",
            source: None,
        };
        assert_eq!(class(c, invalid), Class::Local);
    }
}
