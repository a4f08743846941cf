//! The MySQL listener with real clients (the `mysql` command, sqlx) against the real
//! MariaDB on 127.0.0.1:3306 (root over TCP, no password).

mod common;

use common::wait_for;
use quartet_sql::{ListenerSpec, PgListener, SqlContext, SqlHandle, SqlListener};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::oneshot;

const MARIADB_URL: &str = "mysql://root@127.0.0.1:3306";
const START_HINT: &str = "MariaDB is not reachable on 127.0.0.1:3306; start it with \
    `service mariadb start` (or `mysqld_safe &`)";
const BOUND: Duration = Duration::from_secs(20);

struct MyProxy {
    addr: SocketAddr,
    handle: SqlHandle,
    stop: oneshot::Sender<()>,
}

async fn mariadb_up() {
    let r = tokio::net::TcpStream::connect("127.0.0.1:3306").await;
    assert!(r.is_ok(), "{START_HINT}");
}

fn spec(backends: Vec<String>) -> ListenerSpec {
    let mut s = ListenerSpec::new("127.0.0.1:0".parse().unwrap(), backends);
    s.protocol = quartet_sql::config::Protocol::Mysql;
    s.health_interval = Duration::from_millis(200);
    s.connect_timeout = Duration::from_secs(5);
    s
}

async fn start(spec: ListenerSpec) -> MyProxy {
    mariadb_up().await;
    let l = SqlListener::bind(spec, SqlContext::default())
        .await
        .expect("bind");
    let addr = l.local_addr();
    let handle = l.handle();
    let (stop, rx) = oneshot::channel::<()>();
    tokio::spawn(l.run(async {
        let _ = rx.await;
    }));
    MyProxy { addr, handle, stop }
}

async fn sqlx_conn(addr: SocketAddr) -> Result<sqlx::mysql::MySqlConnection, sqlx::Error> {
    use sqlx::Connection;
    sqlx::mysql::MySqlConnection::connect(&format!("mysql://root@127.0.0.1:{}/", addr.port())).await
}

#[tokio::test]
async fn mysql_command_line_client_through_quartet() {
    let proxy = start(spec(vec![MARIADB_URL.into()])).await;
    let out = tokio::process::Command::new("mysql")
        .args([
            "--protocol=TCP",
            "-h",
            "127.0.0.1",
            "-P",
            &proxy.addr.port().to_string(),
            "-uroot",
            "-N",
            "-B",
            "-e",
            "select 40 + 2; select @@port",
        ])
        .output()
        .await
        .expect("run mysql");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.lines().collect::<Vec<_>>(), vec!["42", "3306"]);
    let _ = proxy.stop.send(());
}

#[tokio::test]
async fn sqlx_through_quartet_with_transactions() {
    use sqlx::{Acquire, Row};
    let proxy = start(spec(vec![MARIADB_URL.into()])).await;
    let mut c = sqlx_conn(proxy.addr).await.expect("sqlx through quartet");
    let row = sqlx::query("select ? + 1")
        .bind(41i64)
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(row.get::<i64, _>(0), 42);
    let mut tx = c.begin().await.unwrap();
    let v: i64 = sqlx::query_scalar("select 7")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(v, 7);
    tx.commit().await.unwrap();
    let _ = proxy.stop.send(());
}

#[tokio::test]
async fn an_unreachable_first_backend_is_skipped_and_marked_down() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let proxy = start(spec(vec![
        format!("mysql://root@127.0.0.1:{closed}"),
        MARIADB_URL.into(),
    ]))
    .await;
    let handle = proxy.handle.clone();
    wait_for(BOUND, "the writer elected", || {
        let st = handle.state();
        async move {
            st.backends[0].healthy == Some(false)
                && st.backends[1].role == quartet_sql::backend::BackendRole::Primary
        }
    })
    .await;
    let mut c = sqlx_conn(proxy.addr).await.expect("reach the writer");
    let port: i64 = sqlx::query_scalar("select cast(@@port as signed)")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(port, 3306);
    let _ = proxy.stop.send(());
}

#[tokio::test]
async fn no_writer_answers_an_err_packet_at_once() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut s = spec(vec![format!("mysql://root@127.0.0.1:{closed}")]);
    s.connect_attempts = 1;
    let proxy = start(s).await;
    let Err(err) = tokio::time::timeout(BOUND, sqlx_conn(proxy.addr))
        .await
        .expect("an answer, not a hang")
    else {
        panic!("a dead backend let a client in");
    };
    let db = err.as_database_error().expect("an ERR packet");
    assert_eq!(db.code().as_deref(), Some("08S01"), "{err}");
    let _ = proxy.stop.send(());
}

#[tokio::test]
async fn postgres_listener_refuses_a_mysql_spec() {
    let s = spec(vec![MARIADB_URL.into()]);
    assert!(PgListener::bind(s, SqlContext::default()).await.is_err());
}

/// The listener's fault on a MySQL listener: an abort refuses logins with an ERR packet,
/// and the connection-level toxics act on the relay to MariaDB (the same `Toxic` as the
/// PostgreSQL side): latency lets queries through, a reset ends an open session.
#[tokio::test]
async fn faults_abort_logins_and_toxics_act_on_mysql_sessions() {
    use quartet_policies::spec::FaultSpec;
    mariadb_up().await;
    let mut s = spec(vec![MARIADB_URL.into()]);
    s.name = Some("my".into());
    let ctx = SqlContext::default();
    let metrics = ctx.metrics.clone();
    let l = SqlListener::bind(s, ctx).await.expect("bind");
    let addr = l.local_addr();
    let fault = l.handle().fault();
    let (stop, rx) = oneshot::channel::<()>();
    tokio::spawn(l.run(async {
        let _ = rx.await;
    }));
    let injected = |kind: &str| {
        metrics
            .faults_injected
            .with_label_values(&["sql", "my", kind])
            .get()
    };
    let set = |toml_text: &str| {
        let spec: FaultSpec = toml::from_str(toml_text).expect("fault spec");
        fault.set(Some(spec));
    };

    set("abort_percent = 100.0");
    let err = tokio::time::timeout(BOUND, sqlx_conn(addr))
        .await
        .expect("an answer, not a hang")
        .map(drop)
        .expect_err("login refused by the fault");
    let db = err.as_database_error().expect("an ERR packet");
    assert_eq!(db.code().as_deref(), Some("08S01"), "{err}");
    assert!(injected("abort") >= 1);

    set("[[connection]]\nkind = \"latency\"\nlatency = \"20ms\"");
    let mut c = sqlx_conn(addr).await.expect("login with latency");
    let v: i64 = sqlx::query_scalar("select 42")
        .fetch_one(&mut c)
        .await
        .expect("a query with latency");
    assert_eq!(v, 42);
    assert!(injected("latency") >= 1);

    set("[[connection]]\nkind = \"reset\"");
    let r = tokio::time::timeout(
        BOUND,
        sqlx::query_scalar::<_, i64>("select 1").fetch_one(&mut c),
    )
    .await
    .expect("an answer, not a hang");
    assert!(r.is_err(), "a reset session still answered");
    assert!(injected("reset") >= 1);

    fault.set(None);
    let mut c = sqlx_conn(addr).await.expect("login after the fault");
    let v: i64 = sqlx::query_scalar("select 7")
        .fetch_one(&mut c)
        .await
        .expect("query after the fault");
    assert_eq!(v, 7);
    let _ = stop.send(());
}
