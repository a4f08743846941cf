//! Who can tell whether a token is valid: the [`Validator`] trait and its errors.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::token::TokenInfo;

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidReason {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token has been revoked")]
    Revoked,
    #[error("token is not known")]
    NotFound,
    /// Not this validator's kind of token: the next one is asked.
    #[error("token format is not recognised")]
    Unrecognized,
}

/// The answer of a validator that could not confirm a token.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ValidateError {
    /// The token is not valid (401, or `X-Identity-Status: Invalid` under `delay`).
    #[error("invalid token")]
    Invalid(#[source] InvalidReason),
    /// The identity backend could not answer (503, or Invalid under `delay`).
    #[error("identity backend unavailable")]
    Unavailable(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

impl ValidateError {
    pub fn unavailable(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Unavailable(Arc::from(source.into()))
    }

    pub fn is_invalid(&self) -> bool {
        matches!(self, Self::Invalid(_))
    }

    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// The reason, for an invalid token.
    pub fn reason(&self) -> Option<InvalidReason> {
        match self {
            Self::Invalid(reason) => Some(*reason),
            Self::Unavailable(_) => None,
        }
    }
}

impl From<InvalidReason> for ValidateError {
    fn from(reason: InvalidReason) -> Self {
        Self::Invalid(reason)
    }
}

/// Validates a token: offline with Keystone's JWS keys, against a remote Keystone, or
/// with the embedded identity. Implementations never log the token.
pub trait Validator: Send + Sync {
    fn validate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenInfo, ValidateError>>;

    /// As [`validate`](Validator::validate), but a token past its `expires_at` is still
    /// confirmed if the backend's `allow_expired` window allows it (Keystone's
    /// `GET /v3/auth/tokens?allow_expired=1` and `[token] allow_expired_window`). Asked
    /// only for a user token that came with a service token carrying a service role, as
    /// keystonemiddleware does. A validator that knows no such window refuses expired
    /// tokens here too (the default).
    fn validate_allow_expired<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<TokenInfo, ValidateError>> {
        self.validate(token)
    }
}

impl<V: Validator + ?Sized> Validator for Arc<V> {
    fn validate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenInfo, ValidateError>> {
        (**self).validate(token)
    }

    fn validate_allow_expired<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<TokenInfo, ValidateError>> {
        (**self).validate_allow_expired(token)
    }
}

/// Validators tried in order. The first that confirms the token wins; an
/// [`InvalidReason::Unrecognized`] answer asks the next one; any other invalid answer is
/// final. When none confirms, the token is unavailable if a backend was, else invalid.
#[derive(Clone, Default)]
pub struct Chain {
    validators: Vec<Arc<dyn Validator>>,
}

impl Chain {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(mut self, validator: Arc<dyn Validator>) -> Self {
        self.validators.push(validator);
        self
    }

    pub fn len(&self) -> usize {
        self.validators.len()
    }

    pub fn is_empty(&self) -> bool {
        self.validators.is_empty()
    }
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("validators", &self.validators.len())
            .finish()
    }
}

impl Chain {
    async fn first(&self, token: &str, allow_expired: bool) -> Result<TokenInfo, ValidateError> {
        let mut unavailable = None;
        for validator in &self.validators {
            let answer = if allow_expired {
                validator.validate_allow_expired(token).await
            } else {
                validator.validate(token).await
            };
            match answer {
                Ok(info) => return Ok(info),
                Err(ValidateError::Invalid(InvalidReason::Unrecognized)) => {}
                Err(err @ ValidateError::Invalid(_)) => return Err(err),
                Err(err @ ValidateError::Unavailable(_)) => unavailable = Some(err),
            }
        }
        Err(unavailable.unwrap_or(ValidateError::Invalid(InvalidReason::Unrecognized)))
    }
}

impl Validator for Chain {
    fn validate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenInfo, ValidateError>> {
        Box::pin(self.first(token, false))
    }

    fn validate_allow_expired<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<TokenInfo, ValidateError>> {
        Box::pin(self.first(token, true))
    }
}
