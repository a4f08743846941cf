//! The scenarios of `drills/` end to end, one per channel and one across channels: the
//! real `quartet` binary (run `cargo build -p quartet` first) serving the scenario's own
//! Quartet config, in front of the real RabbitMQ (127.0.0.1:5672), PostgreSQL
//! (127.0.0.1:5432, plus a throwaway primary made with initdb) and real processes, and
//! `quartet drill` run on the scenario file as a user runs it, its exit status checked.
//!
//! The files are read from `drills/` and only their addresses are rewritten (port 0 for
//! Quartet's listeners, the test's own upstream, a topic of this run, a temporary
//! directory). Each scenario runs twice: with the policy in its config (the drill passes,
//! exit 0), and with a deliberately wrong policy (no timeout; for SQL, the listener's
//! defaults: no query timeout, 15 s to connect): the same drill fails (exit 1), by a wide
//! margin (calls held 3-6 s where 2-3 s are allowed, breakers never open).
//!
//! The drills are timed load, so they run one at a time (a lock), and each is short
//! (13-14 s; the eight take about 2 minutes). A missing service fails the test with what
//! to start.

use quartet_tests::*;
use reqwest::StatusCode;
use serde_json::Value;
use std::path::{Path, PathBuf};

// The throwaway PostgreSQL clusters of the SQL proxy's own tests (initdb, pg_ctl as the
// postgres user), reused as they are.
#[path = "../adapters/sql/tests/common/cluster.rs"]
mod cluster;

/// One drill at a time: their thresholds assume the machine is not running another one.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn drills_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../drills")
}

/// The text of `drills/NAME`.
fn drill_file(name: &str) -> String {
    let path = drills_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `text` with `from` replaced by `to`, which must be there (so a scenario edited
/// upstream of this test cannot silently stop being rewritten).
fn swap(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "`{from}` is no longer in the drill file; update tests/drills.rs"
    );
    text.replace(from, to)
}

/// The scenario's Quartet config with both listeners on port 0.
fn quartet_config(name: &str) -> String {
    let c = drill_file(name);
    let c = swap(
        &c,
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:0\"",
    );
    swap(
        &c,
        "admin_listen = \"127.0.0.1:9090\"",
        "admin_listen = \"127.0.0.1:0\"\ngrace_period = \"1s\"",
    )
}

/// The scenario pointed at this Quartet.
fn scenario_for(name: &str, gw: &Gateway) -> String {
    let s = drill_file(name);
    let s = swap(
        &s,
        "public = \"127.0.0.1:8080\"",
        &format!("public = \"{}\"", gw.public),
    );
    swap(
        &s,
        "admin = \"127.0.0.1:9090\"",
        &format!("admin = \"{}\"", gw.admin),
    )
}

/// Gives the SQL listener port 0 in a config, and its bound port in a scenario.
fn sql_port_0(config: &str) -> String {
    swap(
        config,
        "listen = \"127.0.0.1:6432\"",
        "listen = \"127.0.0.1:0\"",
    )
}

/// What `quartet drill` did.
struct Drill {
    code: i32,
    /// The `*.result.json` it wrote.
    result: Value,
    /// Its output (the table of expectations).
    output: String,
}

impl Drill {
    /// The verdict of the `[[expect]]` numbered `n` (from 1).
    fn expect(&self, n: usize) -> &Value {
        &self.result["expectations"][n - 1]
    }

    fn passed(&self, n: usize) -> bool {
        self.expect(n)["pass"] == true
    }
}

/// Runs `quartet drill` on `scenario` (the text of drills/`file`) written into `dir`.
async fn run_drill(dir: &Path, file: &str, scenario: &str) -> Drill {
    let path = dir.join(file);
    std::fs::write(&path, scenario).expect("write the scenario");
    let cwd = dir.to_path_buf();
    let finished = tokio::task::spawn_blocking(move || {
        run_quartet([std::ffi::OsStr::new("drill"), path.as_os_str()], &cwd)
    })
    .await
    .expect("the drill's thread");
    let output = finished.output();
    eprintln!("---- quartet drill {file} ----\n{output}");
    let code = finished
        .status
        .code()
        .unwrap_or_else(|| panic!("quartet drill was killed: {output}"));
    let stem = file.trim_end_matches(".toml");
    let result_path = dir.join(format!("{stem}.result.json"));
    let result = std::fs::read(&result_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| {
            panic!(
                "no result at {} (exit {code}): {output}",
                result_path.display()
            )
        });
    Drill {
        code,
        result,
        output,
    }
}

/// The drill left no fault behind on the admin API.
async fn no_fault_left(gw: &Gateway) {
    let (status, faults) = gw.admin_json("/admin/faults").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(faults, serde_json::json!([]), "faults left behind");
}

async fn postgres_up() {
    if let Err(e) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test",
        tokio_postgres::NoTls,
    )
    .await
    {
        panic!(
            "PostgreSQL is not reachable on 127.0.0.1:5432 (start it with `pg_ctlcluster \
             --skip-systemctl-redirect $(ls /etc/postgresql) main start`): {e}"
        );
    }
}

/// Waits until `/readyz` says the channel is ready (the RPC client and servers connected).
async fn channel_ready(gw: &Gateway, channel: &str) {
    eventually(
        &format!("/readyz shows the {channel} channel ready"),
        WAIT,
        || async {
            let (_, body) = gw.admin_json("/readyz").await;
            (body["channels"][channel]["state"] == "ready").then_some(())
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// rpc-slow-server

/// The config's policy `calls` with no timeout to speak of.
const RPC_NO_TIMEOUT: (&str, &str) = (
    "timeout = \"1s\"\nper_try_timeout = \"800ms\"",
    "timeout = \"1h\"\nper_try_timeout = \"1h\"",
);

async fn rpc_slow_server(wrong: bool) -> Drill {
    quartet_tests::broker_up();
    let upstream = Upstream::start("backend").await;
    let topic = quartet_tests::unique("drill_slow");
    let mut config = swap(
        &quartet_config("rpc.quartet.toml"),
        "http://127.0.0.1:8000",
        &upstream.url(),
    );
    config = swap(&config, "\"drill_slow\"", &format!("\"{topic}\""));
    if wrong {
        config = swap(&config, RPC_NO_TIMEOUT.0, RPC_NO_TIMEOUT.1);
    }
    let gw = Gateway::start(&config).await;
    channel_ready(&gw, "rpc").await;
    let scenario = swap(
        &scenario_for("rpc-slow-server.toml", &gw),
        "drill_slow",
        &topic,
    );
    let d = run_drill(gw.dir.path(), "rpc-slow-server.toml", &scenario).await;
    no_fault_left(&gw).await;
    assert!(
        upstream.hits() > 100,
        "the calls reached the RPC server's upstream"
    );
    d
}

#[tokio::test]
async fn rpc_slow_server_passes_with_its_policy() {
    let _one = SERIAL.lock().await;
    let d = rpc_slow_server(false).await;
    assert_eq!(d.code, 0, "the drill should pass:\n{}", d.output);
    assert_eq!(d.result["pass"], true);
}

#[tokio::test]
async fn rpc_slow_server_fails_without_a_timeout() {
    let _one = SERIAL.lock().await;
    let d = rpc_slow_server(true).await;
    assert_eq!(d.code, 1, "the drill should fail:\n{}", d.output);
    // No 504: the callers waited for the slow server instead...
    assert!(!d.passed(2), "{}", d.output);
    // ...the breaker never opened...
    assert!(!d.passed(3), "{}", d.output);
    assert_eq!(d.expect(3)["measured"], "never seen open", "{}", d.output);
    // ...and calls were held far longer than the 2 s allowed (the delay is 3 s).
    assert!(!d.passed(6), "{}", d.output);
    let held = d.expect(6)["value"].as_f64().unwrap_or(0.0);
    assert!(held > 2.5, "{}", d.output);
}

// ---------------------------------------------------------------------------------------
// pg-primary-gone

/// The SQL listener's defaults instead of its failover policy: no query timeout, 15 s to
/// connect.
const PG_DEFAULTS: (&str, &str) = ("connect_timeout = \"1s\"\nquery_timeout = \"1s\"\n", "");

async fn pg_primary_gone(wrong: bool) -> Drill {
    postgres_up().await;
    let primary = tokio::task::spawn_blocking(cluster::Cluster::start)
        .await
        .expect("initdb a throwaway primary");
    {
        let (c, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                primary.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .expect("the throwaway primary");
        tokio::spawn(conn);
        c.batch_execute("create database test")
            .await
            .expect("create database test");
    }
    let mut config = sql_port_0(&quartet_config("pg.quartet.toml"));
    config = swap(
        &config,
        "127.0.0.1:5433/test",
        &format!("127.0.0.1:{}/test", primary.port),
    );
    if wrong {
        config = swap(&config, PG_DEFAULTS.0, PG_DEFAULTS.1);
    }
    let gw = Gateway::start(&config).await;
    let addr = gw.sql_addr("pg");
    // Both backends seen healthy before the drill starts.
    eventually("both backends healthy", WAIT, || async {
        let (_, body) = gw.admin_json("/readyz").await;
        let backends = body["channels"]["sql"]["listeners"]["pg"]["backends"].clone();
        let all = backends
            .as_array()
            .is_some_and(|b| b.len() == 2 && b.iter().all(|b| b["healthy"] == true));
        all.then_some(())
    })
    .await;
    let mut scenario = scenario_for("pg-primary-gone.toml", &gw);
    scenario = swap(&scenario, "127.0.0.1:6432", &addr.to_string());
    // The commands freeze and thaw this primary's processes.
    scenario = swap(
        &scenario,
        "/tmp/quartet-drill-pg",
        &primary.dir.display().to_string(),
    );
    let d = run_drill(gw.dir.path(), "pg-primary-gone.toml", &scenario).await;
    // The primary is back: the undo command thawed it.
    let back = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=test",
            primary.port
        ),
        tokio_postgres::NoTls,
    )
    .await;
    assert!(back.is_ok(), "the primary was not thawed");
    drop(primary);
    d
}

#[tokio::test]
async fn pg_primary_gone_passes_with_its_failover_policy() {
    let _one = SERIAL.lock().await;
    let d = pg_primary_gone(false).await;
    assert_eq!(d.code, 0, "the drill should pass:\n{}", d.output);
    assert_eq!(d.result["pass"], true);
}

#[tokio::test]
async fn pg_primary_gone_fails_with_the_sql_defaults() {
    let _one = SERIAL.lock().await;
    let d = pg_primary_gone(true).await;
    assert_eq!(d.code, 1, "the drill should fail:\n{}", d.output);
    // The statements on the frozen primary waited until it thawed (6 s; 3 s allowed).
    assert!(!d.passed(4), "{}", d.output);
    let held = d.expect(4)["value"].as_f64().unwrap_or(0.0);
    assert!(held > 4.5, "{}", d.output);
}

// ---------------------------------------------------------------------------------------
// driver-hanging

const DRIVER_NO_TIMEOUT: (&str, &str) = (
    "timeout = \"1s\"\nper_try_timeout = \"800ms\"",
    "timeout = \"1h\"\nper_try_timeout = \"1h\"",
);

async fn driver_hanging(wrong: bool) -> Drill {
    let share = tempdir();
    std::fs::write(share.path().join("status"), "ok\n").expect("status file");
    let share_path = share.path().display().to_string();
    let mut config = swap(
        &quartet_config("driver.quartet.toml"),
        "/tmp/quartet-drill-driver",
        &share_path,
    );
    if wrong {
        config = swap(&config, DRIVER_NO_TIMEOUT.0, DRIVER_NO_TIMEOUT.1);
    }
    let gw = Gateway::start(&config).await;
    let scenario = swap(
        &scenario_for("driver-hanging.toml", &gw),
        "/tmp/quartet-drill-driver",
        &share_path,
    );
    let d = run_drill(gw.dir.path(), "driver-hanging.toml", &scenario).await;
    // The share is back: a plain file again.
    let status = std::fs::read_to_string(share.path().join("status")).expect("status");
    assert_eq!(status.trim(), "ok");
    d
}

#[tokio::test]
async fn driver_hanging_passes_with_its_policy() {
    let _one = SERIAL.lock().await;
    let d = driver_hanging(false).await;
    assert_eq!(d.code, 0, "the drill should pass:\n{}", d.output);
    assert_eq!(d.result["pass"], true);
}

#[tokio::test]
async fn driver_hanging_fails_without_a_timeout() {
    let _one = SERIAL.lock().await;
    let d = driver_hanging(true).await;
    assert_eq!(d.code, 1, "the drill should fail:\n{}", d.output);
    // The breaker never opened, callers were held until the share came back.
    assert!(!d.passed(3), "{}", d.output);
    assert!(!d.passed(5), "{}", d.output);
    let held = d.expect(5)["value"].as_f64().unwrap_or(0.0);
    assert!(held > 3.0, "{}", d.output);
    // The other driver served all along, with or without the timeout.
    assert!(d.passed(6), "{}", d.output);
}

// ---------------------------------------------------------------------------------------
// cross-channel

/// No query timeout on the SQL listener (its default).
const CROSS_NO_TIMEOUT: (&str, &str) = ("query_timeout = \"1s\"\n", "");

async fn cross_channel(wrong: bool) -> Drill {
    quartet_tests::broker_up();
    postgres_up().await;
    let upstream = Upstream::start("echo").await;
    let topic = quartet_tests::unique("drill_cross");
    let mut config = swap(
        &quartet_config("cross.quartet.toml"),
        "http://127.0.0.1:8000",
        &upstream.url(),
    );
    config = sql_port_0(&config);
    config = swap(&config, "\"drill_cross\"", &format!("\"{topic}\""));
    if wrong {
        config = swap(&config, CROSS_NO_TIMEOUT.0, CROSS_NO_TIMEOUT.1);
    }
    let gw = Gateway::start(&config).await;
    channel_ready(&gw, "rpc").await;
    let addr = gw.sql_addr("pg");
    let mut scenario = scenario_for("cross-channel.toml", &gw);
    scenario = swap(&scenario, "drill_cross", &topic);
    scenario = swap(&scenario, "127.0.0.1:6432", &addr.to_string());
    let d = run_drill(gw.dir.path(), "cross-channel.toml", &scenario).await;
    no_fault_left(&gw).await;
    assert!(
        upstream.hits() > 400,
        "REST and RPC calls reached the upstream"
    );
    d
}

#[tokio::test]
async fn cross_channel_passes_with_its_policy() {
    let _one = SERIAL.lock().await;
    let d = cross_channel(false).await;
    assert_eq!(d.code, 0, "the drill should pass:\n{}", d.output);
    assert_eq!(d.result["pass"], true);
}

#[tokio::test]
async fn cross_channel_fails_without_a_query_timeout() {
    let _one = SERIAL.lock().await;
    let d = cross_channel(true).await;
    assert_eq!(d.code, 1, "the drill should fail:\n{}", d.output);
    // The SQL statements waited out the stall (5 s; 3 s allowed)...
    assert!(!d.passed(2), "{}", d.output);
    let held = d.expect(2)["value"].as_f64().unwrap_or(0.0);
    assert!(held > 4.0, "{}", d.output);
    // ...while REST and RPC were unaffected either way.
    for n in [4, 5, 6, 7] {
        assert!(d.passed(n), "expectation {n}: {}", d.output);
    }
}
