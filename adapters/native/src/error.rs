//! Errors of the native-API channel: typed at the leaves, boxed in the trunk, mapped once at
//! the gateway's edge.
//!
//! [`DriverError`] is what a driver says about one call. Its kind decides both the class the
//! policy stack sees (see [`crate::classify`]) and the status the edge answers with:
//!
//! | kind | who is to blame | retried | breaker counts it | edge |
//! | --- | --- | --- | --- | --- |
//! | `Transient` | the backend, for now | when nothing was sent, or the operation is idempotent | yes | 502 |
//! | `Permanent` | the backend | never | yes | 500 |
//! | `NotFound` | the caller | never | no | 404 |
//! | `Conflict` | the caller | never | no | 409 |
//! | `InvalidInput` | the caller | never | no | 400 |

use crate::BoxError;

/// How a driver call failed. Messages are lowercase and safe to log; the edge decides what
/// reaches the client.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The backend failed in a way another attempt may cure (connection refused, 5xx,
    /// a lock held by someone else). `sent` says whether the request may have reached the
    /// backend: when it did not, a retry is always safe; when it did, only for idempotent
    /// operations.
    #[error("backend temporarily failed: {message}")]
    Transient {
        message: String,
        sent: bool,
        #[source]
        source: Option<BoxError>,
    },
    /// The backend failed and will fail the same way again (a tool that exits non-zero,
    /// credentials refused, a corrupt image).
    #[error("backend failed: {message}")]
    Permanent {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The thing the call names does not exist.
    #[error("{what} not found")]
    NotFound { what: String },
    /// The call conflicts with the backend's state (a volume that has snapshots, an id
    /// that is taken).
    #[error("conflict: {message}")]
    Conflict { message: String },
    /// The arguments are wrong: missing, of the wrong type, refused by an allow-list.
    #[error("invalid input: {message}")]
    InvalidInput { message: String },
}

/// The kind of a [`DriverError`], without its details: what the edge maps to a status and
/// the jobs store keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Transient,
    Permanent,
    NotFound,
    Conflict,
    InvalidInput,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::InvalidInput => "invalid_input",
        }
    }
}

impl DriverError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            DriverError::Transient { .. } => ErrorKind::Transient,
            DriverError::Permanent { .. } => ErrorKind::Permanent,
            DriverError::NotFound { .. } => ErrorKind::NotFound,
            DriverError::Conflict { .. } => ErrorKind::Conflict,
            DriverError::InvalidInput { .. } => ErrorKind::InvalidInput,
        }
    }

    /// Whether the caller is to blame (not found, conflict, invalid input): not a failure
    /// of the backend.
    pub fn is_caller_error(&self) -> bool {
        matches!(
            self,
            DriverError::NotFound { .. }
                | DriverError::Conflict { .. }
                | DriverError::InvalidInput { .. }
        )
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        DriverError::InvalidInput {
            message: message.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        DriverError::NotFound { what: what.into() }
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        DriverError::Conflict {
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>, source: impl Into<Option<BoxError>>) -> Self {
        DriverError::Permanent {
            message: message.into(),
            source: source.into(),
        }
    }

    /// A transient failure after the request may have reached the backend.
    pub fn transient_sent(message: impl Into<String>, source: impl Into<Option<BoxError>>) -> Self {
        DriverError::Transient {
            message: message.into(),
            sent: true,
            source: source.into(),
        }
    }

    /// A transient failure where nothing reached the backend.
    pub fn transient_not_sent(
        message: impl Into<String>,
        source: impl Into<Option<BoxError>>,
    ) -> Self {
        DriverError::Transient {
            message: message.into(),
            sent: false,
            source: source.into(),
        }
    }
}

/// The call names an operation its driver does not declare. Edge: 404. The caller's
/// problem: not a failure of the backend, never retried.
#[derive(Debug, thiserror::Error)]
#[error("driver {driver} has no operation {operation}")]
pub struct UnknownOperation {
    pub driver: String,
    pub operation: String,
}

/// No driver instance has this name. Edge: 404.
#[derive(Debug, thiserror::Error)]
#[error("no driver named {name}")]
pub struct UnknownDriver {
    pub name: String,
}

/// A `[[native.drivers]]` entry that cannot be used. `key` names the offending key, relative
/// to the config's root when the entry's index is known (`native.drivers[1].root`).
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The same error with its key put under `prefix` (`root` -> `native.drivers[1].root`).
    pub fn under(self, prefix: &str) -> Self {
        Self {
            key: format!("{prefix}.{}", self.key),
            message: self.message,
        }
    }
}

/// The first [`DriverError`] in an error's source chain, if any (the policy layers box the
/// driver's error; some wrap it).
pub fn find_driver_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a DriverError> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if let Some(d) = e.downcast_ref::<DriverError>() {
            return Some(d);
        }
        cause = e.source();
    }
    None
}
