//! The token cache: keyed by the SHA-256 of the token, never serving an entry past the
//! token's `expires_at`, with a TTL (keystonemiddleware's `token_cache_time`, 300 s),
//! invalid tokens remembered briefly, and one backend call per token however many
//! requests carry it at once (single flight).
//!
//! A cache hit is served from a small copy the thread keeps ([`front`]): no lock, and
//! nothing another core writes to (each thread has its own copy of the token's facts and
//! of the headers built from them), so serving threads on different cores do not bounce
//! cache lines between each other on every request. Revocations and `clear` reach every
//! thread's copy through a generation number (see [`TokenCache::invalidate`]).
//!
//! Time is tokio's [`Instant`] (so tests run with paused time) for the cache's own
//! clock, and [`SystemTime`] for the token's wall-clock expiry; the functions that
//! decide take both as arguments.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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
    #[serde(with = "crate::duration")]
    pub ttl: Duration,
    /// How long an invalid token is answered from the cache.
    #[serde(with = "crate::duration")]
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
    /// Tells this cache's entries apart from other caches' in the threads' front copies.
    id: u64,
    /// Bumped (under the `state` lock) whenever an answer is withdrawn before its
    /// deadline: a front copy made under an older generation is not served.
    generation: AtomicU64,
}

/// Where cache ids come from.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The thread's own copies of valid cached tokens.
///
/// Each entry is a deep copy of the shared entry's [`TokenInfo`] (its own `Arc`, its own
/// header values), made on the first hit in the shared map on this thread, and served
/// until the shared entry's deadline, as long as the cache's generation has not moved.
/// Only valid answers are copied; a refusal, a pending validation or an `allow_expired`
/// request always goes to the shared map.
mod front {
    use super::*;

    /// Tokens kept per thread, all caches together; past it the copies are dropped and
    /// made again on the next hits (the shared map still holds the answers).
    pub(super) const MAX_ENTRIES: usize = 256;

    pub(super) struct Entry {
        pub(super) info: Arc<TokenInfo>,
        pub(super) deadline: Instant,
        pub(super) generation: u64,
    }

    /// The tokens' hasher: foldhash, randomly seeded, about six times fewer instructions
    /// than std's SipHash on a 200-byte token (callgrind). Its resistance to crafted
    /// collisions is lower than SipHash's; a thread's map holds at most
    /// [`MAX_ENTRIES`] and is emptied when full, so collisions could cost a lookup at
    /// most that many comparisons.
    pub(super) type TokenHasher = foldhash::fast::RandomState;

    /// One cache's copies on this thread, by the token itself.
    pub(super) type Tokens = HashMap<Box<[u8]>, Entry, TokenHasher>;

    thread_local! {
        /// By cache id (a process has one or two caches: a list, where a map hashed the
        /// id with SipHash on every hit), then by the token itself: a hit costs a hash of
        /// the token, not its SHA-256 (the shared map's key).
        pub(super) static FRONT: RefCell<Vec<(u64, Tokens)>> = const { RefCell::new(Vec::new()) };
    }
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
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(0),
        }
    }

    /// This thread's copy of a valid answer for `key`, if it is still good at `now`.
    fn front_get(&self, token: &[u8], now: Instant) -> Option<Arc<TokenInfo>> {
        let generation = self.generation.load(Ordering::Acquire);
        front::FRONT.with(|front| {
            let front = front.borrow();
            let (_, tokens) = front.iter().find(|(id, _)| *id == self.id)?;
            let entry = tokens.get(token)?;
            (entry.generation == generation && entry.deadline > now).then(|| entry.info.clone())
        })
    }

    /// Keeps this thread's own copy of a valid answer read from the shared map at
    /// `generation`, until `deadline`. Returns the copy.
    fn front_put(
        &self,
        token: &str,
        info: &TokenInfo,
        deadline: Instant,
        generation: u64,
    ) -> Arc<TokenInfo> {
        // A deep copy: its `Arc` count and its header values are this thread's alone.
        let copy = Arc::new(info.clone());
        front::FRONT.with(|front| {
            let mut front = front.borrow_mut();
            if front.iter().map(|(_, t)| t.len()).sum::<usize>() >= front::MAX_ENTRIES {
                front.clear();
            }
            let at = match front.iter().position(|(id, _)| *id == self.id) {
                Some(at) => at,
                None => {
                    front.push((self.id, front::Tokens::default()));
                    front.len() - 1
                }
            };
            front[at].1.insert(
                token.as_bytes().into(),
                front::Entry {
                    info: copy.clone(),
                    deadline,
                    generation,
                },
            );
        });
        copy
    }

    /// Withdraws every answer given so far from the threads' front copies. Called with
    /// the `state` lock held, after the shared map changed: a thread that read the old
    /// shared entry read the old generation too (both under the lock).
    fn withdraw(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The cached answer for `token`, if there is a live one: what
    /// [`get_or_validate`](Self::get_or_validate) would answer without asking the
    /// validator, or `None` when it would have to ask (or wait for a validation under
    /// way). Never calls the validator, never waits.
    pub fn cached(&self, token: &str) -> Option<Outcome> {
        self.cached_raw(token.as_bytes())
    }

    /// [`cached`](Self::cached) for a token as the request carried it: this thread's
    /// copies are found by its bytes, with no check that they are text; the shared map
    /// is asked with the token as [`headers::user_token`](super::headers::user_token)
    /// reads it. `None` as well for a token that is not text: the validators' way refuses
    /// it.
    pub fn cached_raw(&self, token: &[u8]) -> Option<Outcome> {
        let now = Instant::now();
        if let Some(info) = self.front_get(token, now) {
            return Some(still_valid(Ok(info), SystemTime::now()));
        }
        let token = std::str::from_utf8(token).ok()?.trim();
        if token.is_empty() {
            return None;
        }
        self.shared_hit(token, key(token), now)
            .map(|outcome| still_valid(outcome, SystemTime::now()))
    }

    /// A live `Ready` entry of the shared map; a valid one is also copied to this
    /// thread's front.
    fn shared_hit(&self, token: &str, key: Key, now: Instant) -> Option<Outcome> {
        let (outcome, deadline, generation) = {
            let state = self.state();
            match state.slots.get(&key) {
                Some(Slot::Ready {
                    outcome, deadline, ..
                }) if *deadline > now => (
                    outcome.clone(),
                    *deadline,
                    self.generation.load(Ordering::Acquire),
                ),
                _ => return None,
            }
        };
        Some(match outcome {
            Ok(info) => Ok(self.front_put(token, &info, deadline, generation)),
            refused => refused,
        })
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

    /// Remembers an outcome (if it may be cached), replacing what was known (the
    /// threads' front copies of a valid answer it replaces are withdrawn).
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
        let replaced = match self.deadline(&outcome, now, wall) {
            Some(deadline) => {
                self.make_room(&mut state, now);
                state.slots.insert(
                    key,
                    Slot::Ready {
                        outcome,
                        deadline,
                        allow_expired,
                    },
                )
            }
            None => {
                if matches!(state.slots.get(&key), Some(Slot::Ready { .. })) {
                    state.slots.remove(&key)
                } else {
                    None
                }
            }
        };
        // A valid answer replaced before its deadline may have front copies.
        if matches!(replaced, Some(Slot::Ready { outcome: Ok(_), .. })) {
            self.withdraw();
        }
    }

    /// Forgets a token (it was revoked here). The threads' front copies of every token
    /// are dropped too (they cannot be told apart from here without the token's key in
    /// each thread; revocations are rare, and the copies are made again on the next hit).
    pub fn invalidate(&self, token: &str) {
        let mut state = self.state();
        state.slots.remove(&key(token));
        self.withdraw();
    }

    /// Forgets everything.
    pub fn clear(&self) {
        let mut state = self.state();
        state.slots.clear();
        self.withdraw();
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
        let now = Instant::now();
        if let Some(info) = self.front_get(token.as_bytes(), now) {
            return still_valid(Ok(info), SystemTime::now());
        }
        let key = key(token);
        if let Some(outcome) = self.shared_hit(token, key, now) {
            return still_valid(outcome, SystemTime::now());
        }
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
