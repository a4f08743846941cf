//! Quartet's HTTP adapter: the pooled upstream client, endpoint services, load balancing
//! over endpoints (skipping those whose breaker or health check says no), active health
//! checks, and the header handling of a reverse proxy. Plain `http`/`hyper` types and tower
//! `Service`s; no axum, no config file.
//!
//! How the gateway uses it, per upstream: one [`client::HttpClient`]; per endpoint an
//! [`endpoint::EndpointService`] wrapped (per-try timeout, breaker) and kept as a
//! [`balance::EndpointStack`]; one [`balance::Balancer`] over the slots, its health flags
//! driven by [`health::spawn`]; above it the retry layer with [`classify::HttpClassify`]
//! and [`classify::HttpReplay`]. Per request, before the stack: [`proxy::request_id`],
//! [`proxy::prepare_request`], an `Arc<CallInfo>` in the extensions (the call's facts),
//! [`body::buffer_for_replay`] (which keeps the body in it); after it: [`proxy::prepare_response`]. Upgrades: see [`proxy`].
//!
//! A pitfall when calling these services from an `async` block that must be `Send`
//! (`tokio::spawn`, an axum handler): awaiting `svc.oneshot(req)` there can fail to compile
//! with "implementation of `Service` is not general enough" (a rustc limitation with the
//! `Box<dyn Error + Send + Sync>` inside [`ProxyBody`]). Box the future first:
//! `let fut: BoxFuture<'static, _> = Box::pin(svc.oneshot(req)); fut.await`.

pub mod balance;
pub mod body;
pub mod classify;
pub mod client;
pub mod endpoint;
pub mod error;
pub mod h1;
pub mod health;
pub mod pool;
pub mod proxy;
pub mod raw;
pub mod spec;

pub use body::ProxyBody;
pub use quartet_policies::BoxError;
