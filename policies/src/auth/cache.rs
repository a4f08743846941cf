//! The token cache: keyed by the SHA-256 of the token, never serving an entry past the
//! token's `expires_at`, with a TTL (keystonemiddleware's `token_cache_time`, 300 s),
//! invalid tokens remembered briefly, and one backend call per token however many
//! requests carry it at once (single flight).
//!
//! Time is tokio's [`Instant`] (so tests run with paused time) for the cache's own
//! clock, and [`SystemTime`] for the token's wall-clock expiry; the functions that
//! decide take both as arguments.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::token::TokenInfo;
use super::validator::{InvalidReason, ValidateError, Validator};

/// What the cache remembers about a token.
pub type Outcome = Result<Arc<TokenInfo>, ValidateError>;

/// The cache key: SHA-256 of the token, so the cache never holds a usable token.
pub type Key = [u8; 32];

pub fn key(token: &str) -> Key {
    Sha256::digest(token.as_bytes()).into()
}

/// keystonemiddleware's memcache key for the same token: `tokens/` + SHA-256 hex.
pub fn keystonemiddleware_key(token: &str) -> String {
    format!("tokens/{}", hex::encode(key(token)))
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// How long a valid token is trusted without asking again (`token_cache_time`).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How long an invalid token is answered from the cache.
    #[serde(with = "humantime_serde")]
    pub invalid_ttl: Duration,
    /// Entries kept at most; expired ones are dropped first when it is reached.
    pub max_entries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            invalid_ttl: Duration::from_secs(10),
            max_entries: 100_000,
        }
    }
}

enum Slot {
    Ready {
        outcome: Outcome,
        deadline: Instant,
        /// The outcome of an `allow_expired` validation: a refusal then holds for both
        /// kinds of request, while an ordinary refusal (maybe only "expired") does not
        /// answer an `allow_expired` request.
        allow_expired: bool,
    },
    Pending {
        flight: u64,
        shared: Shared<BoxFuture<'static, Outcome>>,
    },
}

#[derive(Default)]
struct State {
    slots: HashMap<Key, Slot>,
    flights: u64,
}

/// The token cache; cheap to share behind an `Arc`.
pub struct TokenCache {
    config: CacheConfig,
    state: Mutex<State>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("config", &self.config)
            .field("entries", &self.len())
            .finish()
    }
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new(CacheConfig::default())
    }
}

impl TokenCache {
    pub fn new(config: CacheConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::default()),
        }
    }

    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves only cache entries behind: keep going.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Entries held (pending validations included).
    pub fn len(&self) -> usize {
        self.state().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Until when an outcome may be served from the cache, or `None` when it must not be
    /// cached: a valid token until the earlier of now + TTL and its `expires_at`; an
    /// invalid one for the invalid TTL; an unavailable backend never.
    pub fn deadline(&self, outcome: &Outcome, now: Instant, wall: SystemTime) -> Option<Instant> {
        match outcome {
            Ok(info) => {
                let left = info.expires_at.duration_since(wall).ok()?;
                if left.is_zero() {
                    return None;
                }
                Some(now + left.min(self.config.ttl))
            }
            Err(ValidateError::Invalid(_)) if !self.config.invalid_ttl.is_zero() => {
                Some(now + self.config.invalid_ttl)
            }
            Err(_) => None,
        }
    }

    /// The cached outcome for `token` at `now`, if there is a live one.
    pub fn lookup(&self, token: &str, now: Instant) -> Option<Outcome> {
        let key = key(token);
        let mut state = self.state();
        match state.slots.get(&key) {
            Some(Slot::Ready {
                outcome, deadline, ..
            }) if *deadline > now => Some(outcome.clone()),
            Some(Slot::Ready { .. }) => {
                state.slots.remove(&key);
                None
            }
            _ => None,
        }
    }

    /// Remembers an outcome (if it may be cached).
    pub fn insert(&self, token: &str, outcome: Outcome, now: Instant, wall: SystemTime) {
        self.insert_as(token, outcome, now, wall, false);
    }

    fn insert_as(
        &self,
        token: &str,
        outcome: Outcome,
        now: Instant,
        wall: SystemTime,
        allow_expired: bool,
    ) {
        let key = key(token);
        let mut state = self.state();
        match self.deadline(&outcome, now, wall) {
            Some(deadline) => {
                self.make_room(&mut state, now);
                state.slots.insert(
                    key,
                    Slot::Ready {
                        outcome,
                        deadline,
                        allow_expired,
                    },
                );
            }
            None => {
                if matches!(state.slots.get(&key), Some(Slot::Ready { .. })) {
                    state.slots.remove(&key);
                }
            }
        }
    }

    /// Forgets a token (it was revoked here).
    pub fn invalidate(&self, token: &str) {
        self.state().slots.remove(&key(token));
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.state().slots.clear();
    }

    fn make_room(&self, state: &mut State, now: Instant) {
        if state.slots.len() < self.config.max_entries {
            return;
        }
        state.slots.retain(|_, slot| match slot {
            Slot::Ready { deadline, .. } => *deadline > now,
            Slot::Pending { .. } => true,
        });
        if state.slots.len() >= self.config.max_entries {
            // Still full of live entries: drop the ready ones; they will be validated again.
            state
                .slots
                .retain(|_, slot| matches!(slot, Slot::Pending { .. }));
        }
    }

    /// The cached outcome, or the validator's answer, with concurrent callers for the same
    /// token sharing one validation. Expired tokens are refused even if a validator
    /// confirmed them.
    pub async fn get_or_validate(&self, token: &str, validator: Arc<dyn Validator>) -> Outcome {
        let key = key(token);
        let (flight, shared) = {
            let mut state = self.state();
            let now = Instant::now();
            match state.slots.get(&key) {
                Some(Slot::Ready {
                    outcome, deadline, ..
                }) if *deadline > now => {
                    return still_valid(outcome.clone(), SystemTime::now());
                }
                Some(Slot::Pending { flight, shared }) => (*flight, shared.clone()),
                _ => {
                    state.flights += 1;
                    let flight = state.flights;
                    let owned = token.to_owned();
                    let fut: BoxFuture<'static, Outcome> =
                        Box::pin(async move { validator.validate(&owned).await.map(Arc::new) });
                    let shared = fut.shared();
                    state.slots.insert(
                        key,
                        Slot::Pending {
                            flight,
                            shared: shared.clone(),
                        },
                    );
                    (flight, shared)
                }
            }
        };
        let outcome = shared.await;
        let (now, wall) = (Instant::now(), SystemTime::now());
        {
            let mut state = self.state();
            if matches!(state.slots.get(&key), Some(Slot::Pending { flight: f, .. }) if *f == flight)
            {
                match self.deadline(&outcome, now, wall) {
                    Some(deadline) => {
                        self.make_room(&mut state, now);
                        state.slots.insert(
                            key,
                            Slot::Ready {
                                outcome: outcome.clone(),
                                deadline,
                                allow_expired: false,
                            },
                        );
                    }
                    None => {
                        state.slots.remove(&key);
                    }
                }
            }
        }
        still_valid(outcome, wall)
    }
}

impl TokenCache {
    /// For a user token that came with a valid service token (keystonemiddleware's
    /// `allow_expired`): a cached valid entry, or a refusal from an earlier
    /// `allow_expired` validation, is served from the cache; otherwise the validator is
    /// asked with [`Validator::validate_allow_expired`], without sharing a flight with
    /// ordinary validations (whose refusal may only mean "expired": a remote Keystone
    /// answers 404 for an expired token). A confirmed token that has not expired yet is
    /// cached as usual; one past its `expires_at` is not (an entry never outlives the
    /// token), so each such request asks again; a refusal is cached briefly, as any other.
    pub async fn get_or_validate_allow_expired(
        &self,
        token: &str,
        validator: Arc<dyn Validator>,
    ) -> Outcome {
        let cached = {
            let state = self.state();
            match state.slots.get(&key(token)) {
                Some(Slot::Ready {
                    outcome,
                    deadline,
                    allow_expired,
                }) if *deadline > Instant::now() && (outcome.is_ok() || *allow_expired) => {
                    Some(outcome.clone())
                }
                _ => None,
            }
        };
        if let Some(outcome) = cached {
            return outcome;
        }
        let outcome = validator.validate_allow_expired(token).await.map(Arc::new);
        self.insert_as(
            token,
            outcome.clone(),
            Instant::now(),
            SystemTime::now(),
            true,
        );
        outcome
    }
}

fn still_valid(outcome: Outcome, wall: SystemTime) -> Outcome {
    match outcome {
        Ok(info) if info.is_expired(wall) => Err(ValidateError::Invalid(InvalidReason::Expired)),
        other => other,
    }
}
