//! Quartet's HTTP adapter: the pooled upstream client, endpoint services, load balancing
//! over endpoints (skipping those whose breaker or health check says no), active health
//! checks, and the header handling of a reverse proxy. Plain `http`/`hyper` types and tower
//! `Service`s; no axum, no config file.

pub mod balance;
pub mod body;
pub mod classify;
pub mod client;
pub mod endpoint;
pub mod error;
pub mod health;
pub mod proxy;
pub mod spec;

pub use body::ProxyBody;
pub use quartet_policies::BoxError;
