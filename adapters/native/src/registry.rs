//! The registry of driver instances, built from `[[native.drivers]]`, and the dispatcher:
//! each instance as a plain tower `Service<NativeCall>`.

use crate::driver::{Driver, NativeCall, Operation};
use crate::error::{ConfigError, UnknownDriver, UnknownOperation};
use crate::spec::{validate_drivers, DriverSettings, DriverSpec};
use quartet_policies::BoxError;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::task::{Context, Poll};

/// One driver instance: its name, the policy its calls pass, and the driver.
#[derive(Clone)]
pub struct DriverInstance {
    name: Arc<str>,
    policy: Option<String>,
    driver: Arc<dyn Driver>,
}

impl DriverInstance {
    pub fn new(name: impl Into<Arc<str>>, policy: Option<String>, driver: Arc<dyn Driver>) -> Self {
        Self {
            name: name.into(),
            policy,
            driver,
        }
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The `[policies.NAME]` named by the entry; `None` means `default`.
    pub fn policy(&self) -> Option<&str> {
        self.policy.as_deref()
    }
    pub fn kind(&self) -> &'static str {
        self.driver.kind()
    }
    pub fn operations(&self) -> &[Operation] {
        self.driver.operations()
    }
    pub fn operation(&self, name: &str) -> Option<&Operation> {
        self.driver.operations().iter().find(|op| op.name == name)
    }
    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.driver
    }
    /// The instance as a tower service, the innermost layer of its policy stack.
    pub fn service(&self) -> DriverService {
        DriverService {
            instance: self.clone(),
        }
    }
}

impl std::fmt::Debug for DriverInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverInstance")
            .field("name", &self.name)
            .field("kind", &self.kind())
            .field("policy", &self.policy)
            .finish()
    }
}

/// Every driver instance of the config, by name.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    drivers: BTreeMap<String, DriverInstance>,
}

impl Registry {
    /// Validates the entries and builds each driver (a `qemu-img` root is created, an
    /// `exec` command's executable must exist, an `http` driver's client is built). Errors
    /// name the key from the config's root.
    pub fn build(specs: &[DriverSpec]) -> Result<Self, ConfigError> {
        validate_drivers(specs)?;
        let mut registry = Registry::default();
        for (i, spec) in specs.iter().enumerate() {
            let prefix = format!("native.drivers[{i}]");
            let driver: Arc<dyn Driver> = match &spec.settings {
                DriverSettings::QemuImg(s) => Arc::new(
                    crate::drivers::qemu::QemuImgDriver::new(&spec.name, s)
                        .map_err(|e| e.under(&prefix))?,
                ),
                DriverSettings::Http(s) => Arc::new(
                    crate::drivers::http::HttpDriver::new(s).map_err(|e| e.under(&prefix))?,
                ),
                DriverSettings::Exec(s) => Arc::new(
                    crate::drivers::exec::ExecDriver::new(s).map_err(|e| e.under(&prefix))?,
                ),
            };
            registry.insert(DriverInstance::new(
                spec.name.as_str(),
                spec.policy.clone(),
                driver,
            ));
        }
        Ok(registry)
    }

    /// Adds (or replaces) an instance: for drivers built outside the config.
    pub fn insert(&mut self, instance: DriverInstance) {
        self.drivers.insert(instance.name().to_string(), instance);
    }

    pub fn get(&self, name: &str) -> Result<&DriverInstance, UnknownDriver> {
        self.drivers.get(name).ok_or_else(|| UnknownDriver {
            name: name.to_string(),
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &DriverInstance> {
        self.drivers.values()
    }

    pub fn len(&self) -> usize {
        self.drivers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.drivers.is_empty()
    }
}

/// A driver instance as a tower service: refuses operations the driver does not declare,
/// calls the driver otherwise. Errors are [`UnknownOperation`] or the driver's
/// [`crate::error::DriverError`], boxed.
#[derive(Clone, Debug)]
pub struct DriverService {
    instance: DriverInstance,
}

impl tower::Service<NativeCall> for DriverService {
    type Response = Value;
    type Error = BoxError;
    type Future = futures_util::future::BoxFuture<'static, Result<Value, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: NativeCall) -> Self::Future {
        let instance = self.instance.clone();
        Box::pin(async move {
            if instance.operation(&call.operation).is_none() {
                return Err(UnknownOperation {
                    driver: instance.name().to_string(),
                    operation: call.operation.to_string(),
                }
                .into());
            }
            let args = Arc::unwrap_or_clone(call.args);
            let driver = instance.driver.clone();
            driver
                .call(&call.operation, args)
                .await
                .map_err(BoxError::from)
        })
    }
}
