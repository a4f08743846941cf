//! The driver model: a driver is a named set of operations, each taking JSON arguments and
//! answering JSON, like a Cinder volume driver's methods or an ML2 mechanism driver's
//! postcommit calls.

use crate::error::DriverError;
use futures_util::future::BoxFuture;
use serde_json::Value;
use std::sync::Arc;

/// One operation a driver declares.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Operation {
    pub name: String,
    /// Whether doing it twice is the same as doing it once (deleting a volume that may be
    /// gone already, reading stats). Only idempotent operations are retried after the
    /// request may have reached the backend.
    pub idempotent: bool,
}

impl Operation {
    pub fn new(name: impl Into<String>, idempotent: bool) -> Self {
        Self {
            name: name.into(),
            idempotent,
        }
    }
}

/// A driver: an operation name and JSON arguments in, JSON out.
///
/// `call` is only ever given an operation the driver declares in [`Driver::operations`]
/// (the dispatcher refuses the others with [`crate::error::UnknownOperation`]). The
/// returned future may be dropped at any await point (a timeout, a client gone): a driver
/// must leave its backend consistent then, and kill any process it started.
pub trait Driver: Send + Sync + 'static {
    /// The kind named in the config (`"qemu-img"`, `"http"`, `"exec"`).
    fn kind(&self) -> &'static str;
    /// Every operation this instance answers.
    fn operations(&self) -> &[Operation];
    fn call<'a>(
        &'a self,
        operation: &'a str,
        args: Value,
    ) -> BoxFuture<'a, Result<Value, DriverError>>;
}

/// One call to a driver instance, as it flows through the policy stack. Cheap to clone, so
/// the retry layer can keep a copy for another attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct NativeCall {
    pub operation: Arc<str>,
    pub args: Arc<Value>,
}

impl NativeCall {
    pub fn new(operation: impl Into<Arc<str>>, args: Value) -> Self {
        Self {
            operation: operation.into(),
            args: Arc::new(args),
        }
    }
}

/// The arguments of a call as an object (a missing or `null` argument list counts as `{}`).
pub(crate) fn args_object(args: &Value) -> Result<&serde_json::Map<String, Value>, DriverError> {
    static EMPTY: std::sync::OnceLock<serde_json::Map<String, Value>> = std::sync::OnceLock::new();
    match args {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(EMPTY.get_or_init(serde_json::Map::new)),
        _ => Err(DriverError::invalid("arguments must be a JSON object")),
    }
}

/// A required string argument.
pub(crate) fn arg_str<'a>(args: &'a Value, key: &str) -> Result<&'a str, DriverError> {
    match args_object(args)?.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(DriverError::invalid(format!(
            "argument {key} must be a string"
        ))),
        None => Err(DriverError::invalid(format!("argument {key} is required"))),
    }
}

/// A required whole-number argument.
pub(crate) fn arg_u64(args: &Value, key: &str) -> Result<u64, DriverError> {
    match args_object(args)?.get(key) {
        Some(v) => v.as_u64().ok_or_else(|| {
            DriverError::invalid(format!(
                "argument {key} must be a whole number of 0 or more"
            ))
        }),
        None => Err(DriverError::invalid(format!("argument {key} is required"))),
    }
}
