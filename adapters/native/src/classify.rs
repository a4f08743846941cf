//! How driver results look to the policy stack.
//!
//! # The choice
//!
//! | result | breaker and metrics ([`NativeClassify::Breaker`]) | retry ([`NativeClassify::Retry`]) |
//! | --- | --- | --- |
//! | `Ok` | `Success` | `Success`: done |
//! | `Transient`, nothing sent | `NotSent`: a failure | `NotSent`: always safe to retry |
//! | `Transient`, sent | `Sent`: a failure | `Sent`: retried for idempotent operations only |
//! | `Permanent` | `Sent`: a failure | `Local`: never retried |
//! | `NotFound`, `Conflict`, `InvalidInput`, unknown operation | `Success` | `Success`: never retried |
//!
//! Why: a not-found, a conflict or invalid arguments are the caller's problem: the backend
//! answered correctly, so they must not open the breaker of a healthy device (a client
//! asking for a missing volume in a loop would otherwise cut everyone else off), just as an
//! HTTP 4xx does not. A permanent error (a tool exiting non-zero, credentials refused) is
//! the backend's failure, so the breaker counts it, but another attempt would fail the same
//! way, so the retry layer is told it is not worth retrying. [`Class`] has no "failed, do
//! not retry" value, so the two layers get two views of the same result; the errors raised
//! by the policy layers themselves are classified by `classify_policy_error` in both.

use crate::driver::NativeCall;
use crate::error::{find_driver_error, DriverError, UnknownOperation};
use quartet_policies::classify::{classify_policy_error, Class, Classify, Replay};
use quartet_policies::BoxError;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;

/// Classifies driver results; the variant says for which layer (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NativeClassify {
    /// For the breaker, the observe layer and metrics: permanent errors are failures.
    Breaker,
    /// For the retry layer: permanent errors are final.
    Retry,
}

impl Classify<Value> for NativeClassify {
    fn classify(&self, result: &Result<Value, BoxError>) -> Class {
        let err = match result {
            Ok(_) => return Class::Success,
            Err(e) => e,
        };
        if let Some(class) = classify_policy_error(err) {
            return class;
        }
        if err.is::<UnknownOperation>() {
            return Class::Success;
        }
        match find_driver_error(&**err) {
            Some(DriverError::Transient { sent: false, .. }) => Class::NotSent,
            Some(DriverError::Transient { sent: true, .. }) => Class::Sent,
            Some(DriverError::Permanent { .. }) => match self {
                NativeClassify::Breaker => Class::Sent,
                NativeClassify::Retry => Class::Local,
            },
            Some(_) => Class::Success,
            // An error nobody classified: count it against the backend, never resend it.
            None => match self {
                NativeClassify::Breaker => Class::Sent,
                NativeClassify::Retry => Class::Local,
            },
        }
    }
}

/// Replays native calls: every call can be sent again (its arguments are kept), and it is
/// idempotent when its operation is declared so by the driver.
#[derive(Clone, Debug)]
pub struct NativeReplay {
    idempotent: Arc<HashSet<String>>,
}

impl NativeReplay {
    pub fn new<'a>(operations: impl IntoIterator<Item = &'a crate::driver::Operation>) -> Self {
        Self {
            idempotent: Arc::new(
                operations
                    .into_iter()
                    .filter(|op| op.idempotent)
                    .map(|op| op.name.clone())
                    .collect(),
            ),
        }
    }
}

impl Replay<NativeCall> for NativeReplay {
    type Kept = NativeCall;
    fn replay(&self, req: &NativeCall) -> Option<NativeCall> {
        Some(req.clone())
    }
    fn again(&self, kept: NativeCall) -> Option<NativeCall> {
        Some(kept)
    }
    fn idempotent(&self, req: &NativeCall) -> bool {
        self.idempotent.contains(&*req.operation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::Operation;
    use quartet_policies::error::{Elapsed, Overloaded, TimeoutKind};
    use std::time::Duration;

    fn err(e: impl std::error::Error + Send + Sync + 'static) -> Result<Value, BoxError> {
        Err(Box::new(e))
    }

    #[test]
    fn each_kind_has_its_class_in_each_view() {
        use NativeClassify::{Breaker, Retry};
        let cases: Vec<(Result<Value, BoxError>, Class, Class)> = vec![
            (Ok(Value::Null), Class::Success, Class::Success),
            (
                err(DriverError::transient_not_sent("refused", None)),
                Class::NotSent,
                Class::NotSent,
            ),
            (
                err(DriverError::transient_sent("503", None)),
                Class::Sent,
                Class::Sent,
            ),
            (
                err(DriverError::permanent("exit 1", None)),
                Class::Sent,
                Class::Local,
            ),
            (
                err(DriverError::not_found("volume v1")),
                Class::Success,
                Class::Success,
            ),
            (
                err(DriverError::conflict("has snapshots")),
                Class::Success,
                Class::Success,
            ),
            (
                err(DriverError::invalid("bad id")),
                Class::Success,
                Class::Success,
            ),
            (
                err(UnknownOperation {
                    driver: "d".into(),
                    operation: "o".into(),
                }),
                Class::Success,
                Class::Success,
            ),
            (
                err(Elapsed {
                    kind: TimeoutKind::PerTry,
                    after: Duration::from_secs(1),
                }),
                Class::Sent,
                Class::Sent,
            ),
            (err(Overloaded { limit: 1 }), Class::Local, Class::Local),
        ];
        for (result, breaker, retry) in &cases {
            assert_eq!(Breaker.classify(result), *breaker, "{result:?}");
            assert_eq!(Retry.classify(result), *retry, "{result:?}");
        }
    }

    #[test]
    fn idempotence_comes_from_the_declaration() {
        let ops = [
            Operation::new("get_volume", true),
            Operation::new("create_volume", false),
        ];
        let replay = NativeReplay::new(&ops);
        let get = NativeCall::new("get_volume", serde_json::json!({"id": "v1"}));
        let create = NativeCall::new("create_volume", serde_json::json!({"id": "v1"}));
        assert!(replay.idempotent(&get));
        assert!(!replay.idempotent(&create));
        assert!(!replay.idempotent(&NativeCall::new("nope", Value::Null)));
        assert_eq!(replay.replay(&create), Some(create.clone()));
    }
}
