//! Keystone token validation as keystonemiddleware's `auth_token` does it, without
//! sockets: the header rules ([`headers`]), a validated token's facts ([`TokenInfo`]),
//! the [`Validator`] trait the identity adapters implement, the [`TokenCache`] keyed by
//! SHA-256, and the [`RequireToken`] tower middleware that puts them together.
//!
//! Tokens are never logged: the cache holds their hashes, and errors never carry them.

pub mod body;
pub mod cache;
pub mod headers;
mod layer;
pub mod time;
mod token;
mod validator;

pub use cache::{CacheConfig, TokenCache};
pub use layer::{
    AuthMode, Decision, Identity, RequireToken, RequireTokenConfig, RequireTokenLayer,
};
pub use token::{Endpoint, IdName, Scope, Service, TokenInfo, User};
pub use validator::{Chain, InvalidReason, ValidateError, Validator};

#[cfg(test)]
mod tests;
