//! Errors of the embedded identity.

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("identity database error")]
    Database(#[from] sqlx::Error),
    #[error("identity database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{kind} `{name}` not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} `{name}` already exists")]
    Conflict { kind: &'static str, name: String },
    #[error("password hashing failed")]
    Hash(#[source] argon2::password_hash::Error),
    #[error("password hashing task failed")]
    Task(#[from] tokio::task::JoinError),
}

impl StoreError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }
}

/// The JWS key repository could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot access key repository {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} is not an ES256 (P-256) key in PEM")]
    BadKey { path: std::path::PathBuf },
    #[error("key repository {path} has no private key (private/private.pem)")]
    NoPrivateKey { path: std::path::PathBuf },
    #[error("cannot write key file {path}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}
