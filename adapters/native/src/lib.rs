//! Quartet's native-API channel: calls to third-party tools and devices, as Cinder volume
//! drivers and Neutron mechanism drivers make them, with the same policies as every other
//! channel.
//!
//! - [`driver`]: the [`Driver`] trait (an operation name and JSON arguments in, JSON out),
//!   the operations a driver declares and which are idempotent, and [`NativeCall`];
//! - [`error`]: [`DriverError`] and its kinds (transient, permanent, not found, conflict,
//!   invalid input), and how the edge should map them;
//! - [`spec`]: `[[native.drivers]]` as serde types with `validate()`;
//! - [`registry`]: the [`Registry`] of driver instances and each instance as a plain tower
//!   service ([`DriverService`]);
//! - [`classify`]: [`NativeClassify`] and [`NativeReplay`], how the policy stack reads
//!   driver results and resends calls;
//! - [`stack`]: [`NativeService`], an instance behind the policy stack the gateway builds;
//! - [`drivers`]: the built-in `qemu-img`, `http` and `exec` drivers;
//! - [`jobs`]: the SQL store of asynchronous calls, which survives a restart;
//! - [`process`]: running a tool with no shell and no orphan.
//!
//! No axum, no config file: the gateway mounts `/native/{driver}/{operation}` and maps
//! errors to statuses.

pub mod classify;
pub mod driver;
pub mod drivers;
pub mod error;
pub mod jobs;
pub mod process;
pub mod registry;
pub mod spec;
pub mod stack;

pub use classify::{NativeClassify, NativeReplay};
pub use driver::{Driver, NativeCall, Operation};
pub use error::{ConfigError, DriverError, ErrorKind, UnknownDriver, UnknownOperation};
pub use jobs::{Job, JobState, Jobs};
pub use quartet_policies::BoxError;
pub use registry::{DriverInstance, DriverService, Registry};
pub use spec::DriverSpec;
pub use stack::NativeService;
