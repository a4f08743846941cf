//! `[[native.drivers]]` as data: serde types with defaults, unknown keys rejected, and a
//! `validate()` that names the offending key.
//!
//! ```toml
//! [[native.drivers]]
//! name = "volumes"
//! kind = "qemu-img"
//! root = "./data/volumes"
//!
//! [[native.drivers]]
//! name = "array"
//! kind = "http"
//! policy = "storage"
//! base_url = "https://array.example/api/v1"
//! auth = { header = "X-Auth-Token", value = "secret" }
//! [native.drivers.operations.create_volume]
//! method = "POST"
//! path = "/volumes"
//! body = { name = "{id}", size_gb = "{size_gb}" }
//!
//! [[native.drivers]]
//! name = "targets"
//! kind = "exec"
//! [native.drivers.commands.list_target]
//! executable = "/usr/bin/targetcli"
//! args = ["ls", "/iscsi/iqn\\.2010-10\\.org\\.openstack:[a-z0-9-]{1,64}"]
//! idempotent = true
//! ```
//!
//! The settings of a kind sit beside `name`, `kind` and `policy` in the same table, as in
//! the design's config shape.

use crate::error::ConfigError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// One `[[native.drivers]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawDriverSpec")]
pub struct DriverSpec {
    /// The instance's name: `/native/{name}/...`, the breaker's and the metrics' target.
    pub name: String,
    /// The `[policies.NAME]` its calls pass; absent means `default`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// How callers of `/native/{name}/...` are checked: `required`, `delay` or `none`
    /// (absent: `required` with `[identity]`, else `none`). Not `auth`: the `http` kind's
    /// `auth` is the credentials Quartet sends to the vendor's API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_auth: Option<quartet_policies::auth::AuthMode>,
    /// oslo.policy rules per operation (`create_volume = "role:admin"`); `"*"` is the rule
    /// of every operation not listed.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub access: BTreeMap<String, String>,
    /// `kind` and the kind's own settings.
    #[serde(flatten)]
    pub settings: DriverSettings,
}

/// The settings of each kind, chosen by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum DriverSettings {
    QemuImg(QemuImgSpec),
    Http(HttpDriverSpec),
    Exec(ExecSpec),
}

impl DriverSettings {
    pub fn kind(&self) -> &'static str {
        match self {
            DriverSettings::QemuImg(_) => "qemu-img",
            DriverSettings::Http(_) => "http",
            DriverSettings::Exec(_) => "exec",
        }
    }
}

/// What serde reads first: the common keys, and the rest of the table for the kind.
/// (`deny_unknown_fields` does not mix with `flatten`, so the kind's settings are read in a
/// second step, where unknown keys are rejected.)
#[derive(Deserialize)]
struct RawDriverSpec {
    name: String,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    caller_auth: Option<quartet_policies::auth::AuthMode>,
    #[serde(default)]
    access: BTreeMap<String, String>,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

impl TryFrom<RawDriverSpec> for DriverSpec {
    type Error = ConfigError;
    fn try_from(raw: RawDriverSpec) -> Result<Self, ConfigError> {
        let kind = match raw.rest.get("kind") {
            Some(Value::String(k)) => k.clone(),
            Some(_) => return Err(ConfigError::new("kind", "must be a string")),
            None => {
                return Err(ConfigError::new(
                    "kind",
                    "is required (\"qemu-img\", \"http\" or \"exec\")",
                ))
            }
        };
        let settings = serde_json::from_value(Value::Object(raw.rest)).map_err(|e| {
            ConfigError::new(
                "native.drivers",
                format!("driver {:?} of kind {kind:?}: {e}", raw.name),
            )
        })?;
        Ok(DriverSpec {
            name: raw.name,
            policy: raw.policy,
            caller_auth: raw.caller_auth,
            access: raw.access,
            settings,
        })
    }
}

/// `kind = "qemu-img"`: volumes and snapshots as qcow2 files in `root`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuImgSpec {
    /// The directory holding the images; created when missing.
    pub root: PathBuf,
    /// The `qemu-img` binary, an absolute path.
    #[serde(default = "default_qemu_img")]
    pub qemu_img: PathBuf,
    /// Largest volume size accepted, in GiB.
    #[serde(default = "default_max_size_gb")]
    pub max_size_gb: u64,
}

fn default_qemu_img() -> PathBuf {
    PathBuf::from("/usr/bin/qemu-img")
}
fn default_max_size_gb() -> u64 {
    16 * 1024
}

/// `kind = "http"`: a vendor's REST API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpDriverSpec {
    /// `http(s)://host[:port][/base]`; operation paths are joined to it.
    pub base_url: String,
    #[serde(default)]
    pub auth: Option<HttpAuth>,
    /// PEM file of CA certificates for an `https://` base URL; the system's roots
    /// otherwise. Certificates are always verified.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(
        default = "default_connect_timeout",
        with = "quartet_policies::duration"
    )]
    pub connect_timeout: Duration,
    /// Headers sent with every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Largest response body read, in bytes.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    pub operations: BTreeMap<String, HttpOperationSpec>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_response_bytes() -> usize {
    4 * 1024 * 1024
}

/// How the `http` driver authenticates: a header with a fixed value (a vendor's API key,
/// a Keystone token), or HTTP basic authentication.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HttpAuth {
    Header(HeaderAuth),
    Basic(BasicAuth),
}

/// `auth = { header = "X-Auth-Token", value = "..." }`
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderAuth {
    pub header: String,
    pub value: String,
}

/// `auth = { username = "...", password = "..." }`
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

// Secrets never reach a log.
impl std::fmt::Debug for HeaderAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderAuth")
            .field("header", &self.header)
            .field("value", &"<redacted>")
            .finish()
    }
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// One operation of an `http` driver.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpOperationSpec {
    /// `GET`, `POST`, `PUT`, `PATCH`, `DELETE`, `HEAD`.
    pub method: String,
    /// Joined to the base URL; `{var}` is replaced by the argument `var`, URL-encoded.
    pub path: String,
    /// A JSON template: a string that is exactly `"{var}"` becomes the argument's value
    /// (any JSON type); `{var}` inside a longer string is replaced by its text. Absent: no
    /// body.
    #[serde(default)]
    pub body: Option<Value>,
    /// Absent: idempotent for GET, HEAD, PUT and DELETE, not for POST and PATCH.
    #[serde(default)]
    pub idempotent: Option<bool>,
}

/// `kind = "exec"`: command-line tools under an allow-list, in the manner of
/// oslo.rootwrap's `RegExpFilter`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    /// Operation name -> the one command it may run.
    pub commands: BTreeMap<String, ExecCommandSpec>,
}

/// One allowed command: an absolute executable and exactly one pattern per argument.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecCommandSpec {
    pub executable: PathBuf,
    /// One regular expression per argument, anchored at both ends; the call must pass
    /// exactly this many arguments.
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub idempotent: bool,
}

/// A name of a driver, an operation or a command: what can appear in a URL path segment
/// and a metric label.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

const METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];

impl DriverSpec {
    /// Checks what serde cannot. Keys are named relative to the entry (`root`,
    /// `operations.create_volume.method`); [`validate_drivers`] puts them under
    /// `native.drivers[i]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !valid_name(&self.name) {
            return Err(ConfigError::new(
                "name",
                "must be 1 to 64 letters, digits, '-' or '_'",
            ));
        }
        if let Some(p) = &self.policy {
            if p.is_empty() {
                return Err(ConfigError::new("policy", "must not be empty"));
            }
        }
        match &self.settings {
            DriverSettings::QemuImg(s) => s.validate(),
            DriverSettings::Http(s) => s.validate(),
            DriverSettings::Exec(s) => s.validate(),
        }
    }
}

/// Validates every entry and that names are unique; keys are named from the config's root.
pub fn validate_drivers(specs: &[DriverSpec]) -> Result<(), ConfigError> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, spec) in specs.iter().enumerate() {
        let prefix = format!("native.drivers[{i}]");
        spec.validate().map_err(|e| e.under(&prefix))?;
        if !seen.insert(spec.name.as_str()) {
            return Err(ConfigError::new(
                format!("{prefix}.name"),
                format!("{:?} is used by another driver", spec.name),
            ));
        }
    }
    Ok(())
}

impl QemuImgSpec {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.root.as_os_str().is_empty() {
            return Err(ConfigError::new("root", "must not be empty"));
        }
        if !self.qemu_img.is_absolute() {
            return Err(ConfigError::new("qemu_img", "must be an absolute path"));
        }
        // Sizes are computed in bytes as u64: keep GiB * 2^30 from overflowing.
        if self.max_size_gb == 0 || self.max_size_gb > u64::MAX >> 30 {
            return Err(ConfigError::new(
                "max_size_gb",
                format!("must be between 1 and {}", u64::MAX >> 30),
            ));
        }
        Ok(())
    }
}

impl HttpDriverSpec {
    pub fn validate(&self) -> Result<(), ConfigError> {
        quartet_http::endpoint::parse_endpoint(&self.base_url)
            .map_err(|e| ConfigError::new("base_url", e.message))?;
        if let Some(HttpAuth::Header(a)) = &self.auth {
            http::HeaderName::try_from(a.header.as_str())
                .map_err(|_| ConfigError::new("auth.header", "is not a valid header name"))?;
            http::HeaderValue::try_from(a.value.as_str())
                .map_err(|_| ConfigError::new("auth.value", "is not a valid header value"))?;
        }
        for (name, value) in &self.headers {
            http::HeaderName::try_from(name.as_str()).map_err(|_| {
                ConfigError::new(format!("headers.{name}"), "is not a valid header name")
            })?;
            http::HeaderValue::try_from(value.as_str()).map_err(|_| {
                ConfigError::new(format!("headers.{name}"), "is not a valid header value")
            })?;
        }
        if self.operations.is_empty() {
            return Err(ConfigError::new("operations", "must name at least one"));
        }
        for (name, op) in &self.operations {
            let key = |k: &str| format!("operations.{name}.{k}");
            if !valid_name(name) {
                return Err(ConfigError::new(
                    format!("operations.{name}"),
                    "an operation's name must be 1 to 64 letters, digits, '-' or '_'",
                ));
            }
            if !METHODS.contains(&op.method.as_str()) {
                return Err(ConfigError::new(
                    key("method"),
                    format!("must be one of {}", METHODS.join(", ")),
                ));
            }
            if !op.path.starts_with('/') {
                return Err(ConfigError::new(key("path"), "must start with '/'"));
            }
            crate::drivers::http::Template::parse(&op.path)
                .map_err(|m| ConfigError::new(key("path"), m))?;
            if let Some(body) = &op.body {
                crate::drivers::http::check_body_template(body)
                    .map_err(|m| ConfigError::new(key("body"), m))?;
            }
        }
        Ok(())
    }
}

impl ExecSpec {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.commands.is_empty() {
            return Err(ConfigError::new("commands", "must name at least one"));
        }
        for (name, cmd) in &self.commands {
            if !valid_name(name) {
                return Err(ConfigError::new(
                    format!("commands.{name}"),
                    "a command's name must be 1 to 64 letters, digits, '-' or '_'",
                ));
            }
            if !cmd.executable.is_absolute() {
                return Err(ConfigError::new(
                    format!("commands.{name}.executable"),
                    "must be an absolute path",
                ));
            }
            for (i, pattern) in cmd.args.iter().enumerate() {
                crate::drivers::exec::anchored(pattern).map_err(|e| {
                    ConfigError::new(
                        format!("commands.{name}.args[{i}]"),
                        format!("is not a valid regular expression: {e}"),
                    )
                })?;
            }
        }
        Ok(())
    }
}
