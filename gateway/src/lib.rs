//! The Quartet gateway: config, assembly of the policy stack, routes, admin listener.

pub mod config;
