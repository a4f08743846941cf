//! The `exec` driver's allow-list: what it refuses never starts a process.

use quartet_native::drivers::exec::ExecDriver;
use quartet_native::spec::{ExecCommandSpec, ExecSpec};
use quartet_native::{
    Driver, DriverError, DriverInstance, ErrorKind, NativeCall, UnknownOperation,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tower::ServiceExt;

fn command(executable: &str, args: &[&str], idempotent: bool) -> ExecCommandSpec {
    ExecCommandSpec {
        executable: executable.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        idempotent,
    }
}

/// `touch` may create `marker-[a-z]+` files in `dir` and nothing else; `echo` prints JSON;
/// `fail` exits non-zero with a message.
fn driver(dir: &Path) -> ExecDriver {
    let dir_re = regex::escape(&dir.display().to_string());
    let marker = format!("{dir_re}/marker-[a-z]+");
    let mut commands = BTreeMap::new();
    commands.insert(
        "touch".to_string(),
        command("/usr/bin/touch", &[&marker], false),
    );
    commands.insert(
        "echo".to_string(),
        command("/bin/echo", &[r#"\{"size_gb": [0-9]+\}"#], true),
    );
    commands.insert("say".to_string(), command("/bin/echo", &["[a-z ]+"], true));
    commands.insert(
        "fail".to_string(),
        command("/bin/ls", &["/nonexistent-[a-z]+"], true),
    );
    ExecDriver::new(&ExecSpec { commands }).expect("driver")
}

#[tokio::test]
async fn refused_calls_start_no_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = driver(dir.path());
    let base = dir.path().display().to_string();

    let attempts = [
        // A shell separator: a shell would run `touch .../marker-a` then `touch .../marker-b`.
        vec![format!("{base}/marker-a; touch {base}/marker-b")],
        // Command substitution.
        vec![format!("{base}/marker-$(touch {base}/marker-c)")],
        vec![format!("{base}/marker-`touch {base}/marker-d`")],
        // Leaving the directory.
        vec![format!("{base}/../marker-e")],
        vec![format!("{base}/sub/../marker-f")],
        // An extra option, and an option in place of the argument.
        vec!["-d".to_string(), format!("{base}/marker-g")],
        vec![format!("--reference=/etc/passwd")],
        // An extra argument.
        vec![format!("{base}/marker-h"), format!("{base}/marker-i")],
        // No argument.
        vec![],
    ];
    for args in &attempts {
        let err = d
            .call("touch", json!({ "args": args }))
            .await
            .expect_err("refused");
        assert!(
            matches!(err, DriverError::InvalidInput { .. }),
            "{args:?}: {err}"
        );
    }
    // An executable that is not on the list.
    let err = d
        .call("rm", json!({"args": [format!("{base}/marker-a")]}))
        .await
        .expect_err("refused");
    assert!(matches!(err, DriverError::InvalidInput { .. }), "{err}");
    // Through the dispatcher, an undeclared operation never reaches the driver.
    let instance = DriverInstance::new("tools", None, Arc::new(driver(dir.path())));
    let err = instance
        .service()
        .oneshot(NativeCall::new("rm", json!({"args": ["x"]})))
        .await
        .expect_err("unknown");
    assert!(err.is::<UnknownOperation>(), "{err}");

    // Nothing ran: no marker anywhere, not in the directory, not above it.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "files created: {left:?}");
    let parent = dir.path().parent().expect("parent");
    assert!(!parent.join("marker-e").exists());

    // The control: the allowed form does create its marker, so the refusals above prove
    // that no process started.
    let out = d
        .call("touch", json!({"args": [format!("{base}/marker-ok")]}))
        .await
        .expect("allowed");
    assert_eq!(out, json!(""));
    assert!(dir.path().join("marker-ok").is_file());
}

#[tokio::test]
async fn output_is_json_or_text_and_failures_carry_stderr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = driver(dir.path());
    let out = d
        .call("echo", json!({"args": [r#"{"size_gb": 3}"#]}))
        .await
        .expect("echo");
    assert_eq!(out, json!({"size_gb": 3}));
    let out = d
        .call("say", json!({"args": ["hello world"]}))
        .await
        .expect("say");
    assert_eq!(out, json!("hello world\n"));

    let err = d
        .call("fail", json!({"args": ["/nonexistent-x"]}))
        .await
        .expect_err("ls fails");
    assert_eq!(err.kind(), ErrorKind::Permanent);
    let msg = err.to_string();
    assert!(msg.contains("No such file or directory"), "{msg}");
    assert!(msg.contains("exit status"), "{msg}");
}

#[test]
fn declared_operations_and_idempotence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = driver(dir.path());
    let mut ops: Vec<_> = d
        .operations()
        .iter()
        .map(|o| (o.name.as_str(), o.idempotent))
        .collect();
    ops.sort();
    assert_eq!(
        ops,
        vec![
            ("echo", true),
            ("fail", true),
            ("say", true),
            ("touch", false)
        ]
    );
}
