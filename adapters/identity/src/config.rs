//! The `[identity]` section of the config, as data with a validator.

use std::path::PathBuf;
use std::time::Duration;

use quartet_policies::auth::CacheConfig;
use serde::{Deserialize, Serialize};

/// Where tokens come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Quartet answers the Keystone v3 token API itself, from its own store.
    #[default]
    Embedded,
    /// A real Keystone issues tokens; Quartet validates them.
    Keystone,
}

/// `[identity]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    #[serde(default)]
    pub mode: Mode,
    /// `sqlite://FILE` (created if missing), `postgres://...` or `mysql://...`.
    #[serde(default = "default_database")]
    pub database: String,
    /// Keystone's JWS key layout: `private/private.pem`, `public/*.pem`; created if missing.
    #[serde(default = "default_key_repository")]
    pub key_repository: PathBuf,
    /// Lifetime of issued tokens (Keystone's `[token] expiration`, 1 h).
    #[serde(default = "default_expiration", with = "quartet_policies::duration")]
    pub token_expiration: Duration,
    /// Keystone's `[token] allow_expired_window` (48 h): how long past its expiry the
    /// embedded identity still confirms a token when asked with `allow_expired` (a user
    /// token that came with a service token carrying the `service` role).
    #[serde(
        default = "default_allow_expired_window",
        with = "quartet_policies::duration"
    )]
    pub allow_expired_window: Duration,
    /// How often an instance reads revocations other instances wrote.
    #[serde(
        default = "default_revocation_poll",
        with = "quartet_policies::duration"
    )]
    pub revocation_poll: Duration,
    /// The public URL of the `/v3` API, for `WWW-Authenticate` and the version document;
    /// by default taken from each request's `Host`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// The remote Keystone, for `mode = "keystone"`.
    #[serde(default)]
    pub keystone: Option<RemoteKeystone>,
    /// The token cache of the RequireToken middleware.
    #[serde(default)]
    pub cache: CacheConfig,
    /// An oslo.policy file (YAML or JSON) whose rules routes name with `rule:NAME`.
    #[serde(default)]
    pub policy_file: Option<PathBuf>,
}

/// `[identity.keystone]`: where a real Keystone is and the service user Quartet
/// validates tokens with (it needs the `service` role).
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteKeystone {
    /// The identity endpoint, e.g. `http://keystone:5000/v3`.
    pub url: String,
    pub username: String,
    pub password: String,
    #[serde(default = "default_domain")]
    pub user_domain_name: String,
    #[serde(default)]
    pub project_name: Option<String>,
    #[serde(default = "default_domain")]
    pub project_domain_name: String,
    /// Keystone's JWS public keys, to check its JWS tokens offline first.
    #[serde(default)]
    pub jws_public_key_repository: Option<PathBuf>,
}

/// The password never appears in logs.
impl std::fmt::Debug for RemoteKeystone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeystone")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &"***")
            .field("user_domain_name", &self.user_domain_name)
            .field("project_name", &self.project_name)
            .field("project_domain_name", &self.project_domain_name)
            .field("jws_public_key_repository", &self.jws_public_key_repository)
            .finish()
    }
}

fn default_database() -> String {
    "sqlite://quartet.db".to_owned()
}
fn default_key_repository() -> PathBuf {
    PathBuf::from("jws-keys")
}
fn default_expiration() -> Duration {
    Duration::from_secs(3600)
}
fn default_allow_expired_window() -> Duration {
    crate::identity::DEFAULT_ALLOW_EXPIRED_WINDOW
}
fn default_revocation_poll() -> Duration {
    Duration::from_secs(5)
}
fn default_domain() -> String {
    "Default".to_owned()
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            mode: Mode::default(),
            database: default_database(),
            key_repository: default_key_repository(),
            token_expiration: default_expiration(),
            allow_expired_window: default_allow_expired_window(),
            revocation_poll: default_revocation_poll(),
            public_url: None,
            keystone: None,
            cache: CacheConfig::default(),
            policy_file: None,
        }
    }
}

/// A config value that cannot work; `key` is its dotted name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("identity.{key}: {problem}")]
pub struct ConfigError {
    pub key: &'static str,
    pub problem: &'static str,
}

impl IdentityConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key, problem| Err(ConfigError { key, problem });
        let known = ["sqlite:", "postgres:", "postgresql:", "mysql:", "mariadb:"];
        if !known.iter().any(|p| self.database.starts_with(p)) {
            return err(
                "database",
                "must be a sqlite://, postgres:// or mysql:// url",
            );
        }
        if self.token_expiration < Duration::from_secs(1) {
            return err("token_expiration", "must be at least 1s");
        }
        if self.revocation_poll < Duration::from_millis(10) {
            return err("revocation_poll", "must be at least 10ms");
        }
        if self.cache.max_entries == 0 {
            return err("cache.max_entries", "must be at least 1");
        }
        match (&self.mode, &self.keystone) {
            (Mode::Keystone, None) => {
                return err("keystone", "mode = \"keystone\" needs [identity.keystone]")
            }
            (_, Some(k)) if !(k.url.starts_with("http://") || k.url.starts_with("https://")) => {
                return err("keystone.url", "must be an http:// or https:// url")
            }
            _ => {}
        }
        if let Some(url) = &self.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return err("public_url", "must be an http:// or https:// url");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Root {
        identity: IdentityConfig,
    }

    #[test]
    fn defaults_and_keys() {
        let root: Root =
            toml_like(r#"{"identity": {"mode": "embedded", "database": "sqlite://quartet.db"}}"#);
        assert_eq!(root.identity, IdentityConfig::default());
        assert!(root.identity.validate().is_ok());
        let full: Root = toml_like(
            r#"{"identity": {"mode": "keystone", "token_expiration": "2h", "revocation_poll": "250ms",
                "cache": {"ttl": "60s"},
                "keystone": {"url": "http://ks:5000/v3", "username": "quartet", "password": "p"}}}"#,
        );
        assert_eq!(full.identity.token_expiration, Duration::from_secs(7200));
        assert_eq!(full.identity.cache.ttl, Duration::from_secs(60));
        assert_eq!(
            full.identity.keystone.as_ref().unwrap().user_domain_name,
            "Default"
        );
        assert!(full.identity.validate().is_ok());
        assert!(
            !format!("{:?}", full.identity).contains("\"p\""),
            "password redacted"
        );
    }

    #[test]
    fn rejects_unknown_and_bad_values() {
        assert!(serde_json::from_str::<IdentityConfig>(r#"{"databse": "x"}"#).is_err());
        let bad = IdentityConfig {
            mode: Mode::Keystone,
            ..IdentityConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "keystone");
        let bad = IdentityConfig {
            database: "oracle://x".into(),
            ..IdentityConfig::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "identity.database: must be a sqlite://, postgres:// or mysql:// url"
        );
    }

    fn toml_like<T: serde::de::DeserializeOwned>(json: &str) -> T {
        serde_json::from_str(json).expect("config")
    }
}
