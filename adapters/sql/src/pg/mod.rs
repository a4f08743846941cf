//! The PostgreSQL side: wire protocol, authentication, server connections, client sessions.

pub mod auth;
pub(crate) mod client;
pub mod codec;
pub mod server;
