//! The Quartet gateway: the config, the assembly of the policy stack, the public routes,
//! the admin listener, the error edge and the server loop. `main.rs` only reads the
//! arguments and calls into this library, so everything here is testable without a
//! process.

pub mod admin;
pub mod cli;
pub mod config;
pub mod error;
mod h1;
pub mod identity;
pub mod native;
pub mod routes;
pub mod rpc;
pub mod server;
pub mod sql;
pub mod stack;

pub use server::run;

use std::sync::Arc;

/// One built config: the channels and registries, and the public router over them. The
/// server keeps the current one in an `ArcSwap`; a reload swaps in a new one.
pub struct App {
    pub built: Arc<stack::Built>,
    pub router: axum::Router,
}

impl App {
    /// Builds every channel of `config`. Must run inside a tokio runtime.
    pub fn build(
        config: config::Config,
        shared: &stack::Shared,
    ) -> Result<Self, stack::BuildError> {
        let built = Arc::new(stack::Built::build(config, shared)?);
        Ok(Self {
            router: routes::app(built.clone()),
            built,
        })
    }
}
