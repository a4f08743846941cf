//! The SQL channel end to end: the real `quartet` binary (run `cargo build -p quartet`
//! first) with `[[sql.listeners]]` in its config, tokio-postgres clients logging in with
//! SCRAM through it, against the real PostgreSQL on 127.0.0.1:5432 (trust, database
//! `test`). A PostgreSQL that is down fails the tests with the command that starts it.
//!
//! The helpers are local to this file, to keep the shared harness untouched.

use quartet_tests::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_postgres::error::SqlState;

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const START_HINT: &str = "PostgreSQL is not reachable on 127.0.0.1:5432; start it with \
    `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`";

/// Fails (never skips) when PostgreSQL is down, saying how to start it.
async fn require_postgres() {
    match tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test",
        tokio_postgres::NoTls,
    )
    .await
    {
        Ok((_client, conn)) => drop(conn),
        Err(e) => panic!("{START_HINT}: {e}"),
    }
}

/// One `[[sql.listeners]]` entry with a SCRAM user `app`/`secret`.
fn listener(name: &str, backend: &str, extra: &str) -> String {
    format!(
        r#"
[[sql.listeners]]
name = "{name}"
listen = "127.0.0.1:0"
backends = ["{backend}"]
auth = "scram-sha-256"
users = [{{ name = "app", password = "secret" }}]
health_interval = "200ms"
connect_timeout = "2s"
{extra}
"#
    )
}

async fn connect(
    addr: SocketAddr,
    app: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    connect_db(addr, app, "test").await
}

async fn connect_db(
    addr: SocketAddr,
    app: &str,
    dbname: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let conn_str = format!(
        "host=127.0.0.1 port={} user=app password=secret dbname={dbname} application_name={app} connect_timeout=10",
        addr.port()
    );
    let (client, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn readyz(gw: &Gateway) -> (StatusCode, Value) {
    gw.admin_json("/readyz").await
}

#[tokio::test]
async fn scram_login_transaction_pooling_readiness_breakers_and_admin_sql() {
    require_postgres().await;
    let config = format!(
        "{SERVER}{}",
        listener("pg", PG_URL, "pool_mode = \"transaction\"\npool_size = 2")
    );
    let gw = Gateway::start(&config).await;
    let addr = gw.sql_addr("pg");

    // Six clients share at most two server connections, each with its own prepared
    // statements inside transactions.
    let mut tasks = Vec::new();
    for i in 0..6i32 {
        tasks.push(tokio::spawn(async move {
            let mut c = connect(addr, &format!("client-{i}"))
                .await
                .expect("login through quartet");
            for round in 0..5i32 {
                let tx = c.transaction().await.expect("begin");
                let stmt = tx.prepare("select $1::int4 * 2").await.expect("prepare");
                let row = tx.query_one(&stmt, &[&(i + round)]).await.expect("query");
                assert_eq!(row.get::<_, i32>(0), (i + round) * 2);
                tx.commit().await.expect("commit");
            }
        }));
    }
    for t in tasks {
        bounded("a pooled client", t).await.expect("client task");
    }

    let (status, sql) = gw.admin_json("/admin/sql").await;
    assert_eq!(status, StatusCode::OK, "{sql}");
    let pg = &sql["listeners"]["pg"];
    assert_eq!(pg["target"], "sql:pg", "{sql}");
    assert_eq!(pg["pool_mode"], "transaction", "{sql}");
    let pools = pg["pools"].as_array().expect("pools");
    assert_eq!(pools.len(), 1, "one (database, user) pool: {sql}");
    assert!(
        pg["stats"]["transactions"].as_u64().unwrap_or(0) >= 30,
        "{sql}"
    );

    // Ready, with the backend seen as the primary by the health check.
    let body = eventually("the sql channel ready with a primary", WAIT, || async {
        let (status, body) = readyz(&gw).await;
        let role = body["channels"]["sql"]["listeners"]["pg"]["backends"][0]["role"].clone();
        (status == StatusCode::OK && role == "primary").then_some(body)
    })
    .await;
    let backend = &body["channels"]["sql"]["listeners"]["pg"]["backends"][0];
    assert_eq!(backend["healthy"], true, "{body}");
    assert_eq!(backend["breaker"], "closed", "{body}");
    assert_eq!(body["channels"]["sql"]["state"], "ready", "{body}");

    // The backend's breaker is listed, and settable, on the admin API.
    let (_, breakers) = gw.admin_json("/admin/breakers").await;
    let sql_breakers: Vec<&Value> = breakers
        .as_array()
        .expect("a list of breakers")
        .iter()
        .filter(|b| b["channel"] == "sql" && b["target"] == "pg")
        .collect();
    assert_eq!(sql_breakers.len(), 1, "one breaker per backend: {breakers}");
    assert_eq!(sql_breakers[0]["state"], "closed", "{breakers}");
    assert_eq!(
        sql_breakers[0]["endpoint"], "127.0.0.1:5432/test",
        "{breakers}"
    );
    let resp = client()
        .post(gw.admin_url("/admin/breakers/sql:pg"))
        .json(&json!({"state": "forced_open"}))
        .send()
        .await
        .expect("POST breaker");
    assert_eq!(resp.status(), StatusCode::OK);
    // Pooled server connections stay usable; a new pool needs a new server connection,
    // which the breaker refuses at once.
    let err = connect_db(addr, "forced-open", "postgres")
        .await
        .map(drop)
        .expect_err("refused while the breaker is forced open");
    let code = err.code().map(|c| c.code().to_string()).unwrap_or_default();
    assert!(
        code.starts_with("08") || code == "57P03",
        "code {code}: {err}"
    );
    let resp = client()
        .post(gw.admin_url("/admin/breakers/sql:pg"))
        .json(&json!({"state": "closed"}))
        .send()
        .await
        .expect("POST breaker");
    assert_eq!(resp.status(), StatusCode::OK);
    let c = connect_db(addr, "closed-again", "postgres")
        .await
        .expect("login again");
    c.simple_query("select 1").await.expect("query");

    // The SQL metrics are in the one registry.
    let metrics = gw.metrics().await;
    assert!(metrics.contains("quartet_sql_clients"), "no sql metrics");
}

#[tokio::test]
async fn backend_down_gives_class_08_at_once_and_readyz_not_ready() {
    require_postgres().await;
    let down = closed_port_url().replace("http://", "postgres://postgres@") + "/test";
    let config = format!(
        "{SERVER}{}{}",
        listener("pg", PG_URL, ""),
        listener("down", &down, "connect_attempts = 1")
    );
    let gw = Gateway::start(&config).await;
    let down_addr = gw.sql_addr("down");
    let started = Instant::now();
    let err = bounded("a login to a listener whose backend is down", async {
        connect(down_addr, "down")
            .await
            .map(drop)
            .expect_err("refused")
    })
    .await;
    let code = err.code().map(|c| c.code().to_string()).unwrap_or_default();
    assert!(
        code.starts_with("08"),
        "expected class 08, got {code:?}: {err}"
    );
    // "At once": well before the connect timeout times the attempts would allow a hang.
    assert!(started.elapsed() < Duration::from_secs(10));

    let body = eventually(
        "/readyz 503 with the sql channel not ready",
        WAIT,
        || async {
            let (status, body) = readyz(&gw).await;
            (status == StatusCode::SERVICE_UNAVAILABLE
                && body["channels"]["sql"]["listeners"]["down"]["ready"] == false)
                .then_some(body)
        },
    )
    .await;
    let sql = &body["channels"]["sql"];
    assert_eq!(sql["state"], "not_ready", "{body}");
    assert!(
        sql["listeners"]["down"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("primary")),
        "{body}"
    );
    // The other listener keeps serving.
    let c = connect(gw.sql_addr("pg"), "still-serving")
        .await
        .expect("the healthy listener serves");
    c.simple_query("select 1").await.expect("query");
}

#[tokio::test]
async fn fault_abort_refuses_logins_until_cleared() {
    require_postgres().await;
    let config = format!("{SERVER}{}", listener("pg", PG_URL, ""));
    let gw = Gateway::start(&config).await;
    let addr = gw.sql_addr("pg");
    connect(addr, "before")
        .await
        .expect("login before the fault");

    put_fault(&gw, "sql:pg", json!({"abort_percent": 100.0})).await;
    let err = connect(addr, "aborted")
        .await
        .map(drop)
        .expect_err("login refused");
    assert_eq!(err.code(), Some(&SqlState::CANNOT_CONNECT_NOW), "{err}");
    let injected = metric_sum(
        &gw.metrics().await,
        "quartet_faults_injected_total",
        &[("channel", "sql"), ("target", "pg"), ("kind", "abort")],
    );
    assert!(injected >= 1.0, "abort not counted");

    delete_fault(&gw, "sql:pg").await;
    let c = connect(addr, "after").await.expect("login after the fault");
    c.simple_query("select 1").await.expect("query");
}

#[tokio::test]
async fn env_override_replaces_backends() {
    require_postgres().await;
    let down = closed_port_url().replace("http://", "postgres://postgres@") + "/test";
    // The file names a closed port; the environment points the listener at PostgreSQL.
    let config = format!("{SERVER}{}", listener("pg", &down, ""));
    let gw = Gateway::start_with_env(
        tempdir(),
        &config,
        &[("QUARTET_SQL_LISTENER_0_BACKENDS", PG_URL)],
    )
    .await;
    let c = connect(gw.sql_addr("pg"), "env")
        .await
        .expect("login through the overridden backend");
    c.simple_query("select 1").await.expect("query");
}

#[tokio::test]
async fn sigterm_with_an_idle_session_exits_within_the_grace_period() {
    require_postgres().await;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ngrace_period = \"2s\"\n{}",
        listener("pg", PG_URL, "")
    );
    let mut gw = Gateway::start(&config).await;
    let addr = gw.sql_addr("pg");
    let c = connect(addr, "idle").await.expect("login");
    c.simple_query("select 1").await.expect("query");
    gw.process.signal("TERM");
    // The grace period plus the time a loaded machine needs to exit.
    let status = gw.process.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}");
    // The idle session was closed, and the listener no longer accepts.
    assert!(c.simple_query("select 1").await.is_err());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

async fn put_fault(gw: &Gateway, target: &str, body: Value) {
    let resp = client()
        .put(gw.admin_url(&format!("/admin/faults/{target}")))
        .json(&body)
        .send()
        .await
        .expect("PUT fault");
    assert_eq!(resp.status(), StatusCode::OK, "PUT /admin/faults/{target}");
}

async fn delete_fault(gw: &Gateway, target: &str) {
    let resp = client()
        .delete(gw.admin_url(&format!("/admin/faults/{target}")))
        .send()
        .await
        .expect("DELETE fault");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}

fn toxics_injected(metrics: &str, kind: &str) -> f64 {
    metric_sum(
        metrics,
        "quartet_faults_injected_total",
        &[("channel", "sql"), ("target", "pg"), ("kind", kind)],
    )
}

#[tokio::test]
async fn latency_and_reset_toxics_act_on_server_connections() {
    require_postgres().await;
    let config = format!(
        "{SERVER}{}",
        listener("pg", PG_URL, "pool_mode = \"transaction\"")
    );
    let gw = Gateway::start(&config).await;
    let addr = gw.sql_addr("pg");

    // Latency: applied to the server connection (counted), the query still succeeds.
    put_fault(
        &gw,
        "sql:pg",
        json!({"connection": [{"kind": "latency", "latency": "20ms"}]}),
    )
    .await;
    let c = connect(addr, "latency").await.expect("login");
    c.simple_query("select 1")
        .await
        .expect("a slow query still answers");
    assert!(
        toxics_injected(&gw.metrics().await, "latency") >= 1.0,
        "the latency toxic was not applied"
    );
    drop(c);

    // Reset: the session fails with an error; the proxy stays up.
    put_fault(&gw, "sql:pg", json!({"connection": [{"kind": "reset"}]})).await;
    let failed = match connect(addr, "reset").await {
        Err(_) => true,
        Ok(c) => c.simple_query("select 1").await.is_err(),
    };
    assert!(failed, "a reset server connection must fail the session");
    assert!(toxics_injected(&gw.metrics().await, "reset") >= 1.0);
    delete_fault(&gw, "sql:pg").await;
    let c = eventually("a session after the reset", WAIT, || async {
        let c = connect(addr, "after-reset").await.ok()?;
        c.simple_query("select 1").await.ok().map(|_| c)
    })
    .await;
    c.simple_query("select 2").await.expect("query");
    let (status, _) = gw.admin_json("/healthz").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn psql_through_the_listener_with_scram() {
    require_postgres().await;
    let config = format!(
        "{SERVER}{}",
        listener("pg", PG_URL, "pool_mode = \"transaction\"")
    );
    let gw = Gateway::start(&config).await;
    let addr = gw.sql_addr("pg");
    let out = tokio::process::Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user=app dbname=test",
            addr.port()
        ))
        .args(["-X", "-A", "-t", "-c", "select 40 + 2"])
        .env("PGPASSWORD", "secret")
        .output();
    let out = bounded("psql through quartet", out)
        .await
        .expect("run psql");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "42");
}

#[tokio::test]
async fn reload_keeps_listeners_breakers_and_faults_and_warns_on_sql_changes() {
    require_postgres().await;
    let config = format!("{SERVER}{}", listener("pg", PG_URL, ""));
    let mut gw = Gateway::start(&config).await;
    let addr = gw.sql_addr("pg");
    let c = connect(addr, "before-reload").await.expect("login");
    put_fault(
        &gw,
        "sql:pg",
        json!({"delay": "10ms", "delay_percent": 100.0}),
    )
    .await;

    let from = gw.log().len();
    gw.rewrite_config(&config.replace("connect_timeout = \"2s\"", "connect_timeout = \"3s\""));
    gw.process.signal("HUP");
    gw.process
        .wait_for_log(from, "the [sql] reload warning", |l| {
            l.contains("[sql] listeners are not changed by a reload")
        })
        .await;
    gw.process
        .wait_for_log(from, "config reloaded", |l| l.contains("config reloaded"))
        .await;

    // The open session and the listener serve on; breakers and the fault are still
    // reachable through the admin API of the new build.
    c.simple_query("select 1").await.expect("the open session");
    let c2 = connect(addr, "after-reload").await.expect("a new login");
    c2.simple_query("select 1").await.expect("query");
    let (_, breakers) = gw.admin_json("/admin/breakers").await;
    assert!(
        breakers.as_array().is_some_and(|l| l
            .iter()
            .any(|b| b["channel"] == "sql" && b["target"] == "pg")),
        "{breakers}"
    );
    let (_, faults) = gw.admin_json("/admin/faults").await;
    assert!(
        faults.as_array().is_some_and(|l| l
            .iter()
            .any(|f| f["channel"] == "sql" && f["target"] == "pg")),
        "{faults}"
    );
    assert!(toxics_injected(&gw.metrics().await, "delay") >= 1.0);
    delete_fault(&gw, "sql:pg").await;
}
