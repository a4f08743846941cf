//! psql and pgbench, clients nobody here wrote, through Quartet in transaction mode.

mod common;

use common::*;
use quartet_sql::PoolMode;
use std::path::PathBuf;
use std::process::Output;

const DB: &str = "quartet_pgbench";

/// A PostgreSQL client program: on PATH, or under /usr/lib/postgresql/*/bin.
fn tool(name: &str) -> PathBuf {
    if let Ok(dirs) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut found: Vec<PathBuf> = dirs
            .flatten()
            .map(|d| d.path().join("bin").join(name))
            .filter(|p| p.exists())
            .collect();
        found.sort();
        if let Some(p) = found.pop() {
            return p;
        }
    }
    PathBuf::from(name)
}

async fn run(cmd: &mut tokio::process::Command) -> Output {
    let out = cmd
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A database of its own with pgbench's tables, made directly (not through Quartet), once
/// per test binary: the tests run at once, and `pgbench -i` drops and recreates the tables
/// another test may be using.
async fn prepare_db() {
    static PREPARED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    PREPARED.get_or_init(initialize_db).await;
}

async fn initialize_db() {
    let direct = direct().await;
    if let Err(e) = direct.batch_execute(&format!("create database {DB}")).await {
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE),
            "{e}"
        );
    }
    run(tokio::process::Command::new(tool("pgbench")).args([
        "-i",
        "-q",
        "-s",
        "1",
        "-h",
        "127.0.0.1",
        "-p",
        "5432",
        "-U",
        "postgres",
        DB,
    ]))
    .await;
}

fn bench_through(port: u16, mode: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(tool("pgbench"));
    cmd.env("PGPASSWORD", "secret").args([
        "-n",
        "-c",
        "8",
        "-j",
        "2",
        "-T",
        "5",
        "-M",
        mode,
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "app",
        DB,
    ]);
    cmd
}

fn tps(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("tps"))
        .unwrap_or("tps unknown")
        .to_string()
}

fn failed_transactions(out: &Output) -> Option<u64> {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("number of failed transactions"))?;
    line.split(':')
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[tokio::test]
async fn pgbench_extended_and_prepared_in_transaction_mode() {
    prepare_db().await;
    let proxy = Proxy::start(spec(PoolMode::Transaction, 4)).await;
    for mode in ["extended", "prepared", "simple"] {
        let out = run(&mut bench_through(proxy.addr.port(), mode)).await;
        assert_eq!(failed_transactions(&out), Some(0), "pgbench -M {mode}");
        eprintln!("pgbench -M {mode} through quartet: {}", tps(&out));
    }
    let state = proxy.handle.state();
    assert!(state.pools[0].servers_idle <= 4);
    assert!(state.stats.local_prepares > 0, "{:?}", state.stats);
    assert!(state.stats.transactions > 0, "{:?}", state.stats);
    proxy.stop().await;
}

#[tokio::test]
async fn psql_through_quartet_in_both_modes() {
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let proxy = Proxy::start(spec(mode, 2)).await;
        let out = run(tokio::process::Command::new(tool("psql"))
            .env("PGPASSWORD", "secret")
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &proxy.addr.port().to_string(),
                "-U",
                "app",
                "-d",
                "test",
                "-c",
                "select 40 + 2",
                "-c",
                "begin; select 'in tx'; commit",
            ]))
        .await;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("42"), "{text}");
        assert!(text.contains("in tx"), "{text}");
        proxy.stop().await;
    }
}

/// Session mode: each pgbench client holds its own server connection (reset with
/// `DISCARD ALL` when it leaves), every protocol mode, no failed transaction.
#[tokio::test]
async fn pgbench_in_session_mode() {
    prepare_db().await;
    let proxy = Proxy::start(spec(PoolMode::Session, 8)).await;
    for mode in ["simple", "extended", "prepared"] {
        let out = run(&mut bench_through(proxy.addr.port(), mode)).await;
        assert_eq!(failed_transactions(&out), Some(0), "pgbench -M {mode}");
        eprintln!("pgbench -M {mode} through quartet (session): {}", tps(&out));
    }
    let state = proxy.handle.state();
    assert!(state.pools[0].servers_idle <= 8, "{:?}", state.pools);
    assert!(state.stats.transactions > 0, "{:?}", state.stats);
    proxy.stop().await;
}
