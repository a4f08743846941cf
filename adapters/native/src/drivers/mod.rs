//! The built-in drivers.

pub mod exec;
pub mod http;
pub mod qemu;
