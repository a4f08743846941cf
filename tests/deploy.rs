//! The multi-node setup: compose.yaml must be accepted by Docker Compose, and the image it
//! builds must be the release binary of this workspace.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `docker compose config` where the compose v2 plugin exists, `docker-compose config`
/// (v1) otherwise; tests/run.sh installs the latter when neither is there.
#[test]
fn compose_file_is_accepted_by_docker_compose() {
    let root = root();
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let mut cmd = if v2 {
        let mut c = Command::new("docker");
        c.arg("compose");
        c
    } else {
        Command::new("docker-compose")
    };
    let out = cmd
        .args(["-f", "compose.yaml", "config"])
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "neither `docker compose` nor `docker-compose` could run ({e}); \
                 install one (`apt-get install docker-compose`, or run bash tests/run.sh)"
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "compose.yaml refused:\n{}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    for service in ["quartet:", "rabbitmq:", "postgres:", "mariadb:"] {
        assert!(
            stdout.contains(service),
            "service {service} missing in:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("replicas: 2"),
        "quartet must run as two replicas:\n{stdout}"
    );
}

#[test]
fn dockerfile_builds_the_release_binary_with_the_compose_config() {
    let root = root();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile exists");
    assert!(dockerfile.contains("cargo build --release -p quartet"));
    let config = root.join("deploy/quartet.compose.toml");
    assert!(config.exists(), "deploy/quartet.compose.toml is missing");
    // The config the image runs passes `quartet check`.
    let bin = quartet_tests::quartet_bin();
    let out = Command::new(bin)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("quartet runs");
    assert!(
        out.status.success(),
        "quartet check refused the compose config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
