//! The service type of a driver instance behind its policy stack.
//!
//! The stack itself is built by the gateway (`gateway/src/stack.rs`, the one place where
//! the order of layers is decided, through `quartet::native::driver_service`): this
//! adapter only provides the innermost service ([`crate::DriverService`]), how the stack
//! reads its results ([`crate::NativeClassify`], [`crate::NativeReplay`]), and takes the
//! built stack where it runs calls itself ([`crate::Jobs::submit`]).

use crate::driver::NativeCall;
use serde_json::Value;

/// The stack the gateway calls: one per driver instance, cheap to clone; every
/// clone shares the instance's limit, breaker, budget and fault.
pub type NativeService = quartet_policies::SharedStack<NativeCall, Value>;
