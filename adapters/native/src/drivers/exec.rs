//! `kind = "exec"`: command-line tools under an allow-list, in the manner of oslo.rootwrap's
//! `RegExpFilter`.
//!
//! Each operation is one allowed command: an absolute executable and one regular
//! expression per argument, anchored at both ends, with exactly that many arguments. A call
//! passes `{"args": ["...", ...]}`. Everything is checked before a process starts; a call
//! that does not match is refused with `InvalidInput` and nothing runs. No shell is ever
//! involved, so `;`, `|` or `$(...)` in an argument are just characters, and an argument
//! only gets past its pattern when the pattern says so.
//!
//! The result is the command's standard output: JSON when it parses as JSON, a string
//! otherwise. A non-zero exit is a `Permanent` error carrying the tail of standard error.

use crate::driver::{args_object, Driver, Operation};
use crate::error::{ConfigError, DriverError};
use crate::process;
use crate::spec::ExecSpec;
use futures_util::future::BoxFuture;
use regex::Regex;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The anchored form of an argument pattern: `^(?:pattern)$`.
pub(crate) fn anchored(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

struct Command {
    executable: PathBuf,
    args: Vec<Regex>,
}

pub struct ExecDriver {
    commands: BTreeMap<String, Command>,
    operations: Vec<Operation>,
}

impl ExecDriver {
    /// Compiles the patterns and checks each executable exists and is a file.
    pub fn new(spec: &ExecSpec) -> Result<Self, ConfigError> {
        spec.validate()?;
        let mut commands = BTreeMap::new();
        let mut operations = Vec::new();
        for (name, cmd) in &spec.commands {
            let key = |k: &str| format!("commands.{name}.{k}");
            if !cmd.executable.is_file() {
                return Err(ConfigError::new(
                    key("executable"),
                    format!("{} is not a file", cmd.executable.display()),
                ));
            }
            let mut args = Vec::with_capacity(cmd.args.len());
            for (i, pattern) in cmd.args.iter().enumerate() {
                args.push(anchored(pattern).map_err(|e| {
                    ConfigError::new(
                        key(&format!("args[{i}]")),
                        format!("is not a valid regular expression: {e}"),
                    )
                })?);
            }
            commands.insert(
                name.clone(),
                Command {
                    executable: cmd.executable.clone(),
                    args,
                },
            );
            operations.push(Operation::new(name.clone(), cmd.idempotent));
        }
        Ok(Self {
            commands,
            operations,
        })
    }

    /// The argument list of a call, when the allow-list lets it through.
    fn check<'a>(&self, operation: &str, args: &'a Value) -> Result<Vec<&'a str>, DriverError> {
        let command = self
            .commands
            .get(operation)
            .ok_or_else(|| DriverError::invalid(format!("command {operation} is not allowed")))?;
        let map = args_object(args)?;
        if let Some(extra) = map.keys().find(|k| k.as_str() != "args") {
            return Err(DriverError::invalid(format!("unknown argument {extra}")));
        }
        let given: Vec<&str> = match map.get("args") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| DriverError::invalid("every argument must be a string"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(DriverError::invalid("args must be an array of strings")),
        };
        if given.len() != command.args.len() {
            return Err(DriverError::invalid(format!(
                "command {operation} takes {} arguments, {} given",
                command.args.len(),
                given.len()
            )));
        }
        for (i, (arg, pattern)) in given.iter().zip(&command.args).enumerate() {
            // NUL cannot reach a process's argv; refuse it here rather than fail at spawn.
            if arg.contains('\0') || !pattern.is_match(arg) {
                return Err(DriverError::invalid(format!(
                    "argument {i} of command {operation} is not allowed"
                )));
            }
        }
        Ok(given)
    }

    async fn run(&self, operation: &str, args: Value) -> Result<Value, DriverError> {
        let argv = self.check(operation, &args)?;
        let executable = match self.commands.get(operation) {
            Some(c) => &c.executable,
            None => return Err(DriverError::invalid("command is not allowed")),
        };
        let finished = process::run(process::command(executable, &argv))
            .await
            .map_err(|e| match e {
                process::ProcessError::Spawn { .. } => {
                    DriverError::permanent(format!("cannot start {operation}"), Some(e.into()))
                }
                _ => DriverError::permanent(format!("{operation} failed"), Some(e.into())),
            })?;
        if !finished.status.success() {
            return Err(DriverError::permanent(
                format!(
                    "{operation} exited with {}: {}",
                    finished.status,
                    finished.stderr_text()
                ),
                None,
            ));
        }
        Ok(output_value(finished.stdout))
    }
}

/// Standard output as JSON when it parses, as a string otherwise.
fn output_value(stdout: Vec<u8>) -> Value {
    if let Ok(v) = serde_json::from_slice::<Value>(&stdout) {
        return v;
    }
    match String::from_utf8(stdout) {
        Ok(s) => Value::String(s),
        Err(e) => Value::String(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

impl Driver for ExecDriver {
    fn kind(&self) -> &'static str {
        "exec"
    }
    fn operations(&self) -> &[Operation] {
        &self.operations
    }
    fn call<'a>(
        &'a self,
        operation: &'a str,
        args: Value,
    ) -> BoxFuture<'a, Result<Value, DriverError>> {
        Box::pin(self.run(operation, args))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ExecCommandSpec;
    use serde_json::json;

    fn driver() -> ExecDriver {
        let mut commands = BTreeMap::new();
        commands.insert(
            "echo".to_string(),
            ExecCommandSpec {
                executable: "/bin/echo".into(),
                args: vec!["-n".into(), "[a-z]+".into()],
                idempotent: true,
            },
        );
        ExecDriver::new(&ExecSpec { commands }).expect("driver")
    }

    #[test]
    fn patterns_are_anchored() {
        let re = anchored("[a-z]+").expect("regex");
        assert!(re.is_match("abc"));
        assert!(!re.is_match("abc;rm"));
        assert!(!re.is_match("x abc"));
        // `$` is the end of the text, not of a line: no trailing newline slips through.
        assert!(!re.is_match("abc\n"));
        assert!(!re.is_match("abc\nrm"));
        // An alternation cannot escape the anchors.
        let re = anchored("a|b.*").expect("regex");
        assert!(!re.is_match("a; rm -rf /"));
    }

    #[test]
    fn checks_count_type_and_pattern() {
        let d = driver();
        assert_eq!(
            d.check("echo", &json!({"args": ["-n", "abc"]}))
                .expect("ok"),
            vec!["-n", "abc"]
        );
        let refused = [
            json!({"args": ["-n"]}),
            json!({"args": ["-n", "abc", "def"]}),
            json!({"args": ["-n", 5]}),
            json!({"args": "-n abc"}),
            json!({"args": ["-n", "abc"], "env": {}}),
            json!({"args": ["-e", "abc"]}),
            json!({"args": ["-n", "a\u{0}b"]}),
            json!([1]),
        ];
        for args in &refused {
            let err = d.check("echo", args).expect_err("refused");
            assert!(matches!(err, DriverError::InvalidInput { .. }), "{args}");
        }
    }

    #[test]
    fn output_is_json_when_it_parses() {
        assert_eq!(output_value(b"{\"a\": 1}\n".to_vec()), json!({"a": 1}));
        assert_eq!(output_value(b"hello\n".to_vec()), json!("hello\n"));
        assert_eq!(output_value(vec![0xff, b'a']), json!("\u{fffd}a"));
    }

    #[test]
    fn refuses_relative_and_missing_executables() {
        let mut commands = BTreeMap::new();
        commands.insert(
            "x".to_string(),
            ExecCommandSpec {
                executable: "echo".into(),
                args: vec![],
                idempotent: false,
            },
        );
        let err = ExecDriver::new(&ExecSpec {
            commands: commands.clone(),
        })
        .err()
        .expect("relative refused");
        assert_eq!(err.key, "commands.x.executable");
        commands.get_mut("x").expect("x").executable = "/nonexistent/tool".into();
        let err = ExecDriver::new(&ExecSpec { commands })
            .err()
            .expect("missing refused");
        assert_eq!(err.key, "commands.x.executable");
    }
}
