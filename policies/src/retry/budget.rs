//! The retry budget: retries may be at most a share of recent requests, plus a floor.

use crate::spec::RetrySpec;

#[derive(Debug)]
pub struct Budget {
    _spec: RetrySpec,
}

impl Budget {
    pub fn new(spec: &RetrySpec) -> Self {
        Self {
            _spec: spec.clone(),
        }
    }

    /// Records one original request (not a retry).
    pub fn deposit(&self) {
        todo!("budget")
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn withdraw(&self) -> bool {
        todo!("budget")
    }
}
