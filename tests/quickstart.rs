//! README.md's quick start, run as it is written: the shell block between the
//! `quickstart:begin` and `quickstart:end` markers is run with bash in an empty directory,
//! with the built `quartet` first on `PATH`. It starts `quartet serve` on the embedded
//! default config (fixed ports 8080 and 9090), gets a token from the embedded identity,
//! creates a volume through `POST /rpc/cinder-volume` (RabbitMQ, Quartet's own reverse
//! bridge, the `qemu-img` driver) and snapshots it over `/native`. The test then checks
//! the files with `qemu-img info`. Needs RabbitMQ on 127.0.0.1:5672, `/usr/bin/qemu-img`,
//! `curl` and `awk`; a missing one is a failure that says so.

use quartet_tests::quartet_bin;
use serde_json::Value;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the whole quick start may take before the test gives up (it waits for
/// RabbitMQ and the store; the steps themselves are quick).
const LIMIT: Duration = Duration::from_secs(180);

fn require(what: &str, ok: bool, hint: &str) {
    assert!(ok, "the quick start needs {what}: {hint}");
}

fn wait_port_free(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "port {port} is taken on this machine; the quick start's default config needs it: \
             find the owner with `ss -ltnp 'sport = :{port}'` and stop it"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The shell block of README.md's quick start, as written.
fn quick_start_block() -> String {
    let readme = include_str!("../README.md");
    let start = readme
        .find("<!-- quickstart:begin")
        .expect("README.md has a <!-- quickstart:begin --> marker");
    let end = readme[start..]
        .find("<!-- quickstart:end -->")
        .expect("README.md has a <!-- quickstart:end --> marker")
        + start;
    let section = &readme[start..end];
    let body = section
        .split_once("```sh\n")
        .expect("a ```sh block in the quick start")
        .1;
    body.split_once("```")
        .expect("the ```sh block ends")
        .0
        .to_string()
}

fn qemu_info(path: &Path, chain: bool) -> Value {
    let mut cmd = Command::new("/usr/bin/qemu-img");
    cmd.args(["info", "--output=json", "-U"]);
    if chain {
        cmd.arg("--backing-chain");
    }
    let out = cmd.arg(path).output().expect("qemu-img info");
    assert!(
        out.status.success(),
        "qemu-img info {}: {out:?}",
        path.display()
    );
    serde_json::from_slice(&out.stdout).expect("qemu-img info's JSON")
}

#[test]
fn the_readme_quick_start_runs_as_written() {
    require(
        "RabbitMQ on 127.0.0.1:5672",
        std::net::TcpStream::connect_timeout(
            &"127.0.0.1:5672".parse().expect("address"),
            Duration::from_secs(2),
        )
        .is_ok(),
        "start it with `rabbitmq-server -detached` (or `bash tests/run.sh`)",
    );
    require(
        "/usr/bin/qemu-img",
        Path::new("/usr/bin/qemu-img").is_file(),
        "apt-get install qemu-utils",
    );
    for tool in ["curl", "awk", "bash"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        require(tool, found, "install it");
    }
    wait_port_free(8080);
    wait_port_free(9090);

    let dir = quartet_tests::tempdir();
    let bin = quartet_bin();
    let bin_dir = bin.parent().expect("the binary's directory");
    // The block as written, stopping at the first failing step. The `quartet serve &` it
    // starts is stopped with the script's process group below.
    let script = format!("set -euo pipefail\n{}\n", quick_start_block());
    let path = std::env::var("PATH").unwrap_or_default();
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", format!("{}:{path}", bin_dir.display()))
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (key, _) in std::env::vars() {
        if key.starts_with("QUARTET_") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd.spawn().expect("run bash");
    let pgid = child.id();
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bash") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Whatever happened, nothing the script started outlives the test.
    let _ = Command::new("kill")
        .args(["-TERM", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
    let stdout = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    let tail: String = stderr
        .lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    let status = status.unwrap_or_else(|| {
        panic!("the quick start did not finish within {LIMIT:?}:\n{stdout}\n--- stderr:\n{tail}")
    });
    assert!(
        status.success(),
        "the quick start failed ({status}):\n{stdout}\n--- stderr (last lines):\n{tail}"
    );

    // The token came from the embedded identity and validates as admin's.
    assert!(
        stdout.contains(r#""token":"#) && stdout.contains(r#""name":"admin""#),
        "the token step got a token of user admin:\n{stdout}"
    );
    // The RPC call's answer is the driver's result.
    assert!(
        stdout.contains(r#"{"result":{"id":"v1""#),
        "the RPC call returned the driver's result:\n{stdout}"
    );
    assert!(stdout.contains("volume-v1.qcow2"), "{stdout}");
    // The files the driver made, as qemu-img sees them.
    let volumes = dir.path().join("data/volumes");
    let info = qemu_info(&volumes.join("volume-v1.qcow2"), true);
    let chain = info.as_array().expect("a backing chain");
    assert_eq!(chain.len(), 2, "the volume sits on its snapshot: {info}");
    assert_eq!(chain[0]["format"], "qcow2");
    assert_eq!(chain[0]["virtual-size"], 1u64 << 30, "{info}");
    assert!(
        chain[1]["filename"]
            .as_str()
            .unwrap_or_default()
            .ends_with("volume-v1.snapshot-s1.qcow2"),
        "{info}"
    );
    assert!(
        stdout.contains(r#"quartet_requests_total{channel="native""#),
        "the metrics step printed the native target's counters:\n{stdout}"
    );
}
