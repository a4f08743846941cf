//! Durations as the config and the admin API write them (`"250ms"`, `"5s"`, `"1h"`), with
//! one upper bound for all of them.
//!
//! Every duration Quartet reads ends up added to a clock reading somewhere (a deadline, a
//! cache entry's expiry, a reconnect time). `Instant + Duration` panics when the sum leaves
//! the clock's range, and `humantime` accepts up to `u64::MAX` seconds, so a typo such as
//! `invalid_ttl = "18446744073709551615s"` used to be accepted by `quartet check` and then
//! panic a request. Refusing what no deployment means (more than ten years) where the value
//! is read keeps every such sum in range, whichever code adds it, and the config error
//! names the key and the line as every other one does.
//!
//! Use it as `#[serde(with = "quartet_policies::duration")]` on a `Duration` or an
//! `Option<Duration>` field, where `humantime_serde` was used.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

/// The longest duration accepted anywhere: ten years (`"3650d"`).
pub const MAX: Duration = Duration::from_secs(3650 * 24 * 60 * 60);

/// What the refusal says, for tests and docs.
pub const TOO_LONG: &str = "a duration of at most 3650d (ten years)";

/// A field type this module can bound: a duration, or an optional one.
pub trait Bounded {
    /// The duration held, if any.
    fn held(&self) -> Option<Duration>;
}

impl Bounded for Duration {
    fn held(&self) -> Option<Duration> {
        Some(*self)
    }
}

impl Bounded for Option<Duration> {
    fn held(&self) -> Option<Duration> {
        *self
    }
}

/// Reads a duration written as `humantime` does, refusing one longer than [`MAX`].
pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
where
    T: Bounded,
    humantime_serde::Serde<T>: Deserialize<'de>,
    D: Deserializer<'de>,
{
    let value: T = humantime_serde::deserialize(d)?;
    match value.held() {
        Some(held) if held > MAX => Err(D::Error::custom(format!(
            "{} is too long: expected {TOO_LONG}",
            humantime_serde::re::humantime::format_duration(held)
        ))),
        _ => Ok(value),
    }
}

/// Writes a duration as `humantime` does (`"1m 30s"`), so it reads back the same.
pub fn serialize<T, S>(value: &T, s: S) -> Result<S::Ok, S::Error>
where
    for<'a> humantime_serde::Serde<&'a T>: Serialize,
    S: Serializer,
{
    humantime_serde::serialize(value, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Spec {
        #[serde(with = "super")]
        every: Duration,
        #[serde(default, with = "super")]
        within: Option<Duration>,
    }

    #[test]
    fn reads_writes_and_bounds_durations() {
        let spec: Spec = toml::from_str("every = \"250ms\"\nwithin = \"3650d\"").unwrap();
        assert_eq!(spec.every, Duration::from_millis(250));
        assert_eq!(spec.within, Some(MAX));
        let back: Spec = toml::from_str(&toml::to_string(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
        let none: Spec = toml::from_str("every = \"1s\"").unwrap();
        assert_eq!(none.within, None);

        for text in [
            "every = \"3651d\"",
            "every = \"18446744073709551615s\"",
            "every = \"1s\"\nwithin = \"500000years\"",
        ] {
            let err = toml::from_str::<Spec>(text).unwrap_err().to_string();
            assert!(err.contains(TOO_LONG), "{text}: {err}");
        }
        let err = toml::from_str::<Spec>("every = \"soon\"").unwrap_err();
        assert!(!err.to_string().contains(TOO_LONG), "{err}");
    }
}
