//! The `quartet` binary's command line: exit statuses and what it prints.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_quartet");

static FILES: AtomicUsize = AtomicUsize::new(0);

fn temp_file(contents: &str) -> std::path::PathBuf {
    let n = FILES.fetch_add(1, Ordering::SeqCst);
    let path =
        std::env::temp_dir().join(format!("quartet-cli-test-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn config_default_prints_the_embedded_config() {
    let out = Command::new(BIN)
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        quartet::config::DEFAULT_CONFIG
    );
}

#[test]
fn check_says_ok_or_names_the_key_and_line_with_status_64() {
    let good = temp_file("[server]\nlisten = \"127.0.0.1:0\"\n");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("{}: ok", good.display())
    );

    let bad = temp_file(
        "[upstreams.compute]\nendpoints = [\"http://127.0.0.1:1\"]\n\n[[routes]]\nprefix = \"/c\"\nupstream = \"computee\"\n",
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap().trim(),
        format!(
            "{}:6: routes[0].upstream: no upstream named \"computee\"",
            bad.display()
        )
    );

    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("routes[0].upstream"));
    for p in [good, bad] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn serve_logs_the_listening_line_in_json_and_exits_0_on_sigterm() {
    let cfg = temp_file("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n");
    let mut child = Command::new(BIN)
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut listening = None;
    let mut ready = false;
    while !(listening.is_some() && ready) {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the listening and ready lines");
        let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
        let msg = v["message"].as_str().unwrap_or("").to_string();
        if msg.contains("quartet listening public=") {
            listening = Some(msg);
        } else if msg == "quartet ready" {
            ready = true;
        }
    }
    let listening = listening.unwrap();
    let admin = listening.split("admin=").nth(1).unwrap().trim();
    assert!(!admin.ends_with(":0"), "{listening}");
    let public = listening
        .split("public=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert!(!public.ends_with(":0"), "{listening}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "quartet did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exit.code(), Some(0));
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn check_reports_what_only_building_finds_with_key_and_line() {
    let ca = std::env::temp_dir().join(format!("quartet-cli-test-{}-ca.pem", std::process::id()));
    std::fs::write(&ca, "not a pem\n").unwrap();
    let cfg = temp_file(&format!(
        "[upstreams.a]\nendpoints = [\"https://127.0.0.1:1\"]\nca_file = {:?}\n",
        ca.display().to_string()
    ));
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with(&format!("{}:3: upstreams.a.ca_file: ", cfg.display())),
        "{err}"
    );
    let _ = std::fs::remove_file(cfg);
    let _ = std::fs::remove_file(ca);
}
