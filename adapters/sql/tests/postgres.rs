//! Quartet's PostgreSQL proxy with real clients (tokio-postgres, sqlx) against the real
//! PostgreSQL on 127.0.0.1:5432.

mod common;

use common::*;
use quartet_sql::{AuthMethod, PoolMode};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;

const BOUND: Duration = Duration::from_secs(20);

#[tokio::test]
async fn scram_login_simple_and_extended_queries() {
    let proxy = Proxy::start(spec(PoolMode::Session, 4)).await;
    let c = proxy.connect("scram").await;
    let rows = c.simple_query("select 1 as one").await.unwrap();
    assert!(
        matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("1"))
    );
    let row = c.query_one("select $1::int4 + 1", &[&41i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    let user: String = c
        .query_one("select current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        user, "postgres",
        "server connections log in with the backend url's user"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn md5_login_works() {
    let mut s = spec(PoolMode::Transaction, 2);
    s.auth = AuthMethod::Md5;
    let proxy = Proxy::start(s).await;
    let c = proxy.connect("md5").await;
    let row = c.query_one("select 'md5 ok'::text", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "md5 ok");
    proxy.stop().await;
}

#[tokio::test]
async fn wrong_password_is_refused_with_28p01() {
    for auth in [AuthMethod::ScramSha256, AuthMethod::Md5] {
        let mut s = spec(PoolMode::Session, 2);
        s.auth = auth;
        let proxy = Proxy::start(s).await;
        for (user, password) in [("app", "wrong"), ("nobody", "secret")] {
            let err = proxy.try_connect(user, password, "badpw").await.err();
            let code = err.as_ref().and_then(|e| e.code());
            assert_eq!(
                code,
                Some(&SqlState::INVALID_PASSWORD),
                "{auth:?} {user}: {err:?}"
            );
        }
        // The proxy still serves the right password.
        proxy
            .connect("goodpw")
            .await
            .simple_query("select 1")
            .await
            .unwrap();
        proxy.stop().await;
    }
}

#[tokio::test]
async fn transaction_pooling_twenty_clients_over_two_server_connections() {
    let app = unique("quartet_tx20");
    let proxy = Proxy::start(spec(PoolMode::Transaction, 2)).await;
    let direct = direct().await;
    let mut tasks = Vec::new();
    for i in 0..20i32 {
        let c = proxy.connect(&app).await;
        tasks.push(tokio::spawn(async move {
            for j in 0..10i32 {
                let row = c.query_one("select $1::int4 * $2::int4", &[&i, &j]).await?;
                assert_eq!(row.get::<_, i32>(0), i * j);
                c.batch_execute("begin; select 1; commit").await?;
            }
            Ok::<_, tokio_postgres::Error>(c)
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap().expect("every client succeeds"));
    }
    // All 20 clients are still connected; only two server connections exist.
    assert_eq!(clients.len(), 20);
    assert_eq!(server_conns(&direct, &app).await, 2);
    let state = proxy.handle.state();
    assert_eq!(state.clients, 20);
    assert_eq!(state.pools[0].servers_idle, 2);
    proxy.stop().await;
}

#[tokio::test]
async fn named_prepared_statements_across_pooled_server_connections() {
    let app = unique("quartet_prep");
    let proxy = Proxy::start(spec(PoolMode::Transaction, 2)).await;
    let direct = direct().await;
    let mut tasks = Vec::new();
    for i in 0..8i32 {
        let c = proxy.connect(&app).await;
        tasks.push(tokio::spawn(async move {
            // tokio-postgres names its statements s0, s1, ... per connection: every
            // client uses the same names for different queries.
            let add = c.prepare(&format!("select $1::int4 + {i}")).await?;
            let mul = c.prepare("select $1::int4 * 2").await?;
            for j in 0..25i32 {
                assert_eq!(c.query_one(&add, &[&j]).await?.get::<_, i32>(0), j + i);
                assert_eq!(c.query_one(&mul, &[&j]).await?.get::<_, i32>(0), j * 2);
            }
            // Closing a statement and preparing again keeps working.
            drop(add);
            let again = c.prepare(&format!("select $1::int4 - {i}")).await?;
            assert_eq!(c.query_one(&again, &[&10]).await?.get::<_, i32>(0), 10 - i);
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    for t in tasks {
        t.await
            .unwrap()
            .expect("prepared statements work in transaction mode");
    }
    assert!(server_conns(&direct, &app).await <= 2);
    let stats = proxy.handle.state().stats;
    assert!(
        stats.reprepares > 0,
        "statements were prepared again: {stats:?}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn sqlx_pool_with_statement_cache_in_transaction_mode() {
    use sqlx::postgres::PgPoolOptions;
    let proxy = Proxy::start(spec(PoolMode::Transaction, 2)).await;
    let url = format!("postgres://app:secret@127.0.0.1:{}/test", proxy.addr.port());
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect(&url)
        .await
        .expect("sqlx through quartet");
    let mut tasks = Vec::new();
    for i in 0..10i64 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..20i64 {
                let v: i64 = sqlx::query_scalar("select $1::int8 + $2::int8")
                    .bind(i)
                    .bind(j)
                    .fetch_one(&pool)
                    .await?;
                assert_eq!(v, i + j);
                let mut tx = pool.begin().await?;
                let v: i64 = sqlx::query_scalar("select $1::int8")
                    .bind(j)
                    .fetch_one(&mut *tx)
                    .await?;
                assert_eq!(v, j);
                tx.commit().await?;
            }
            Ok::<_, sqlx::Error>(())
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("sqlx queries succeed");
    }
    pool.close().await;
    proxy.stop().await;
}

#[tokio::test]
async fn session_mode_resets_with_discard_all() {
    let proxy = Proxy::start(spec(PoolMode::Session, 1)).await;
    let a = proxy.connect("session_a").await;
    a.batch_execute("set statement_timeout = '12345ms'")
        .await
        .unwrap();
    let pid_a: i32 = a
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let v: String = a
        .query_one("show statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "12345ms", "a SET lasts for the session");
    drop(a);
    // The pool has one server connection: b waits for a's to come back, reset.
    let b = proxy.connect("session_b").await;
    let pid_b: i32 = b
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid_a, pid_b, "the same server connection serves b");
    let v: String = b
        .query_one("show statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "0", "DISCARD ALL reset the SET");
    proxy.stop().await;
}

#[tokio::test]
async fn cancel_request_stops_the_running_query() {
    let app = unique("quartet_cancel");
    let proxy = Proxy::start(spec(PoolMode::Transaction, 2)).await;
    let direct = direct().await;
    let c = proxy.connect(&app).await;
    let token = c.cancel_token();
    let sleeper = tokio::spawn(async move { c.simple_query("select pg_sleep(30)").await });
    wait_for_sleep(&direct, &app, BOUND).await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel through quartet");
    let result = tokio::time::timeout(BOUND, sleeper)
        .await
        .expect("query ended")
        .unwrap();
    let err = result.expect_err("cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED));
    proxy.stop().await;
}

#[tokio::test]
async fn query_timeout_cancels_the_query() {
    let mut s = spec(PoolMode::Transaction, 2);
    s.query_timeout = Some(Duration::from_millis(200));
    let proxy = Proxy::start(s).await;
    let c = proxy.connect("qtimeout").await;
    let err = tokio::time::timeout(BOUND, c.simple_query("select pg_sleep(30)"))
        .await
        .expect("query ended")
        .expect_err("timed out");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED));
    // The client goes on with the next query.
    c.simple_query("select 1").await.unwrap();
    proxy.stop().await;
}

#[tokio::test]
async fn idle_in_transaction_timeout_ends_the_client() {
    let mut s = spec(PoolMode::Transaction, 2);
    s.idle_transaction_timeout = Some(Duration::from_millis(200));
    let proxy = Proxy::start(s).await;
    let (client, conn) = tokio_postgres::connect(
        &proxy.conn_str("app", "secret", "idletx"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    client.batch_execute("begin").await.unwrap();
    let ended = tokio::time::timeout(BOUND, conn)
        .await
        .expect("connection ended")
        .unwrap();
    let err = ended.expect_err("ended by quartet");
    assert_eq!(
        err.code(),
        Some(&SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT)
    );
    // The proxy keeps serving.
    proxy
        .connect("idletx2")
        .await
        .simple_query("select 1")
        .await
        .unwrap();
    proxy.stop().await;
}

/// Reads frames until `ReadyForQuery`, an `ErrorResponse` or the end; returns the
/// SQLSTATE of an error if one came.
async fn read_until_ready(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(frame) = take_frame(&mut buf) {
            match frame[0] {
                b'Z' => return None,
                b'E' => {
                    let body = &frame[5..];
                    let i = body.iter().position(|b| *b == b'C').unwrap();
                    return Some(String::from_utf8_lossy(&body[i + 1..i + 6]).into_owned());
                }
                _ => {}
            }
        }
        let n = tokio::time::timeout(BOUND, s.read(&mut chunk))
            .await
            .expect("answer")
            .unwrap_or(0);
        if n == 0 {
            return Some("EOF".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn trust_login(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let startup = quartet_sql::pg::codec::startup_message(&[("user", "app"), ("database", "test")]);
    s.write_all(&startup).await.unwrap();
    assert_eq!(read_until_ready(&mut s).await, None, "login");
    s
}

#[tokio::test]
async fn the_login_reports_the_servers_parameters_and_the_clients_application_name() {
    let mut sp = spec(PoolMode::Transaction, 2);
    sp.auth = AuthMethod::Trust;
    let proxy = Proxy::start(sp).await;
    for app in ["first-probe", "second-probe"] {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        let startup = quartet_sql::pg::codec::startup_message(&[
            ("user", "app"),
            ("database", "test"),
            ("application_name", app),
        ]);
        s.write_all(&startup).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut status = Vec::new();
        'login: loop {
            while let Some(frame) = take_frame(&mut buf) {
                match frame[0] {
                    b'Z' => break 'login,
                    b'S' => {
                        let mut parts = frame[5..].split(|b| *b == 0);
                        let k = String::from_utf8_lossy(parts.next().unwrap()).into_owned();
                        let v = String::from_utf8_lossy(parts.next().unwrap()).into_owned();
                        status.push((k, v));
                    }
                    _ => {}
                }
            }
            let n = tokio::time::timeout(BOUND, s.read(&mut chunk))
                .await
                .expect("answer")
                .unwrap();
            assert!(n > 0, "the proxy closed during the login");
            buf.extend_from_slice(&chunk[..n]);
        }
        let get = |k: &str| {
            status
                .iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("application_name"), vec![app], "{status:?}");
        assert_eq!(get("server_version").len(), 1, "{status:?}");
        assert_eq!(get("client_encoding"), vec!["UTF8"], "{status:?}");
    }
    proxy.stop().await;
}

async fn ends(s: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    tokio::time::timeout(BOUND, s.read_to_end(&mut rest))
        .await
        .is_ok()
}

#[tokio::test]
async fn malformed_input_ends_only_that_client() {
    let mut sp = spec(PoolMode::Transaction, 2);
    sp.auth = AuthMethod::Trust;
    sp.max_message_size = 1 << 20;
    let proxy = Proxy::start(sp).await;
    let good = proxy.connect("survivor").await;
    good.simple_query("select 1").await.unwrap();

    // A message length of 2 GB.
    let mut s = trust_login(proxy.addr).await;
    s.write_all(b"Q\x7f\xff\xff\xff").await.unwrap();
    assert_eq!(read_until_ready(&mut s).await.as_deref(), Some("08P01"));
    assert!(ends(&mut s).await);

    // A length shorter than the length field itself.
    let mut s = trust_login(proxy.addr).await;
    s.write_all(b"Q\x00\x00\x00\x02").await.unwrap();
    assert_eq!(read_until_ready(&mut s).await.as_deref(), Some("08P01"));

    // An unknown message type.
    let mut s = trust_login(proxy.addr).await;
    s.write_all(b"\x01\x00\x00\x00\x04").await.unwrap();
    assert_eq!(read_until_ready(&mut s).await.as_deref(), Some("08P01"));

    // Garbage instead of a startup packet.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"\xde\xad\xbe\xef garbage garbage")
        .await
        .unwrap();
    assert_eq!(read_until_ready(&mut s).await.as_deref(), Some("08P01"));

    // A truncated startup packet, then the client goes away.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let startup = quartet_sql::pg::codec::startup_message(&[("user", "app")]);
    s.write_all(&startup[..7]).await.unwrap();
    drop(s);

    // A malformed Parse.
    let mut s = trust_login(proxy.addr).await;
    s.write_all(b"P\x00\x00\x00\x06ab").await.unwrap();
    assert_eq!(read_until_ready(&mut s).await.as_deref(), Some("08P01"));

    // SSLRequest is answered N, and the login goes on in plain text.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut n = [0u8; 1];
    s.read_exact(&mut n).await.unwrap();
    assert_eq!(&n, b"N");

    // The others are still served, the old client and a new one.
    good.simple_query("select 1").await.unwrap();
    proxy
        .connect("newcomer")
        .await
        .simple_query("select 1")
        .await
        .unwrap();
    proxy.stop().await;
}

#[tokio::test]
async fn max_clients_refuses_with_53300() {
    let mut s = spec(PoolMode::Transaction, 2);
    s.max_clients = 1;
    let proxy = Proxy::start(s).await;
    let first = proxy.connect("first").await;
    let err = proxy.try_connect("app", "secret", "second").await.err();
    assert_eq!(
        err.as_ref().and_then(|e| e.code()),
        Some(&SqlState::TOO_MANY_CONNECTIONS),
        "{err:?}"
    );
    first.simple_query("select 1").await.unwrap();
    proxy.stop().await;
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn backend_down_answers_class_08_at_once() {
    let mut s = spec(PoolMode::Transaction, 2);
    s.backends = vec![format!(
        "postgres://postgres@127.0.0.1:{}/test",
        closed_port()
    )];
    let proxy = Proxy::start(s).await;
    let Err(err) = tokio::time::timeout(BOUND, proxy.try_connect("app", "secret", "down"))
        .await
        .expect("an answer, not a hang")
    else {
        panic!("a backend on a closed port let a client in");
    };
    let code = err.code().expect("an ErrorResponse").code().to_string();
    assert!(code.starts_with("08"), "{code}");
    proxy.stop().await;
}

#[tokio::test]
async fn failover_skips_an_unreachable_first_backend() {
    let mut s = spec(PoolMode::Transaction, 2);
    s.backends = vec![
        format!("postgres://postgres@127.0.0.1:{}/test", closed_port()),
        PG_URL.to_string(),
    ];
    let proxy = Proxy::start(s).await;
    let c = proxy.connect("failover").await;
    c.simple_query("select 1").await.unwrap();
    // The health task finds the first down and the second primary.
    let handle = proxy.handle.clone();
    wait_for(BOUND, "health checks", || {
        let st = handle.state();
        async move {
            st.backends[0].healthy == Some(false)
                && st.backends[1].healthy == Some(true)
                && st.backends[1].role == quartet_sql::backend::BackendRole::Primary
        }
    })
    .await;
    assert!(proxy.handle.state().ready());
    for _ in 0..5 {
        proxy
            .connect("failover")
            .await
            .simple_query("select 1")
            .await
            .unwrap();
    }
    proxy.stop().await;
}

#[tokio::test]
async fn replica_listener_falls_back_to_the_primary() {
    // role = "replica" on a single primary: reads fall back to the primary.
    let mut s = spec(PoolMode::Transaction, 2);
    s.role = quartet_sql::Role::Replica;
    let proxy = Proxy::start(s).await;
    proxy
        .connect("replica_role")
        .await
        .simple_query("select 1")
        .await
        .unwrap();
    proxy.stop().await;
}

#[tokio::test]
async fn breaker_opens_for_a_dead_backend_and_refuses_at_once() {
    use quartet_policies::breaker::BreakerState;
    let mut s = spec(PoolMode::Transaction, 2);
    s.backends = vec![format!(
        "postgres://postgres@127.0.0.1:{}/test",
        closed_port()
    )];
    s.connect_attempts = 1;
    let proxy = Proxy::start(s).await;
    // The default breaker opens after 5 failures in a row.
    for _ in 0..5 {
        let r = tokio::time::timeout(BOUND, proxy.try_connect("app", "secret", "brk")).await;
        assert!(r.expect("an answer").is_err());
    }
    assert_eq!(proxy.handle.state().backends[0].breaker, BreakerState::Open);
    let Err(err) = proxy.try_connect("app", "secret", "brk").await else {
        panic!("a dead backend let a client in");
    };
    assert_eq!(
        err.code(),
        Some(&SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION)
    );
    assert!(!proxy.handle.state().ready());
    let stats = proxy.handle.state().stats;
    assert_eq!(stats.errors_by_class.get("08"), Some(&6));
    proxy.stop().await;
}

#[tokio::test]
async fn client_login_timeout_ends_a_silent_client() {
    let mut s = spec(PoolMode::Transaction, 2);
    s.client_login_timeout = Duration::from_millis(200);
    let proxy = Proxy::start(s).await;
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(
        read_until_ready(&mut silent).await.as_deref(),
        Some("08P01")
    );
    assert!(ends(&mut silent).await);
    proxy
        .connect("after_silent")
        .await
        .simple_query("select 1")
        .await
        .unwrap();
    proxy.stop().await;
}

#[tokio::test]
async fn full_pool_wait_timeout_answers_53300() {
    let mut s = spec(PoolMode::Transaction, 1);
    s.query_wait_timeout = Duration::from_millis(200);
    let proxy = Proxy::start(s).await;
    let holder = proxy.connect("holder").await;
    holder.batch_execute("begin").await.unwrap();
    // The login is answered from the pool's parameters, as PgBouncer's is; the query
    // waits for the only server connection and is refused when the wait is over.
    let waiter = proxy.connect("waiter").await;
    let err = waiter
        .simple_query("select 1")
        .await
        .expect_err("a second client got the only server connection");
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));
    holder.batch_execute("commit").await.unwrap();
    // Once the transaction ended, the server connection serves others again.
    proxy
        .connect("waiter")
        .await
        .simple_query("select 1")
        .await
        .unwrap();
    proxy.stop().await;
}

#[tokio::test]
async fn pipelined_queries_keep_their_server_until_synced() {
    let proxy = Proxy::start(spec(PoolMode::Transaction, 2)).await;
    let mut tasks = Vec::new();
    for i in 0..6i32 {
        let c = proxy.connect("pipeline").await;
        tasks.push(tokio::spawn(async move {
            let stmt = c.prepare("select $1::int4 * 10").await?;
            for _ in 0..10 {
                // tokio-postgres pipelines concurrent queries on one connection.
                let futs = (0..8i32).map(|j| {
                    let c = &c;
                    let stmt = &stmt;
                    async move {
                        let v = i * 100 + j;
                        let row = c.query_one(stmt, &[&v]).await?;
                        assert_eq!(row.get::<_, i32>(0), v * 10);
                        Ok::<_, tokio_postgres::Error>(())
                    }
                });
                for r in futures_util::future::join_all(futs).await {
                    r?;
                }
            }
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("pipelined queries succeed");
    }
    proxy.stop().await;
}

/// Frames of an unnamed extended-protocol query with no parameters, without `Sync`.
fn extended_query(sql: &str) -> Vec<u8> {
    use quartet_sql::pg::codec;
    let mut rest = sql.as_bytes().to_vec();
    rest.extend_from_slice(&[0, 0, 0]);
    let mut out = codec::build_parse("", &rest).to_vec();
    out.extend_from_slice(&codec::build_bind("", "", &[0, 0, 0, 0, 0, 0]));
    out.extend_from_slice(&codec::frame(b'E', &[0, 0, 0, 0, 0]));
    out
}

/// Reads frames until `ReadyForQuery`; returns the text of every `DataRow`'s first column.
async fn read_rows(s: &mut TcpStream) -> Vec<String> {
    let mut rows = Vec::new();
    loop {
        let mut head = [0u8; 5];
        tokio::time::timeout(BOUND, s.read_exact(&mut head))
            .await
            .expect("an answer")
            .expect("a frame");
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
        match head[0] {
            b'D' => {
                let n = u32::from_be_bytes([body[2], body[3], body[4], body[5]]) as usize;
                rows.push(String::from_utf8_lossy(&body[6..6 + n]).into_owned());
            }
            b'E' => panic!("error: {}", String::from_utf8_lossy(&body)),
            b'Z' => return rows,
            _ => {}
        }
    }
}

#[tokio::test]
async fn messages_after_the_last_sync_keep_the_server_with_the_client() {
    let mut sp = spec(PoolMode::Transaction, 1);
    sp.auth = AuthMethod::Trust;
    let proxy = Proxy::start(sp).await;
    let mut a = trust_login(proxy.addr).await;
    // One batch synced, a second one not yet.
    let mut batch = extended_query("select 1");
    batch.extend_from_slice(&quartet_sql::pg::codec::frame(b'S', &[]));
    batch.extend_from_slice(&extended_query("select 2"));
    a.write_all(&batch).await.unwrap();
    assert_eq!(read_rows(&mut a).await, vec!["1"]);
    // Another client wants the only server connection meanwhile.
    let proxy_conn = proxy.conn_str("app", "secret", "other");
    let other = tokio::spawn(async move {
        let (c, conn) = tokio_postgres::connect(&proxy_conn, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let row = c.query_one("select 42", &[]).await?;
        Ok::<i32, tokio_postgres::Error>(row.get(0))
    });
    // It must wait for the server (or, were the server wrongly released, get it now).
    let handle = proxy.handle.clone();
    wait_for(BOUND, "the other client to wait or finish", || {
        let waiting = handle.state().pools.iter().any(|p| p.clients_waiting == 1);
        let done = other.is_finished();
        async move { waiting || done }
    })
    .await;
    a.write_all(&quartet_sql::pg::codec::frame(b'S', &[]))
        .await
        .unwrap();
    assert_eq!(
        read_rows(&mut a).await,
        vec!["2"],
        "the second batch's answers reach a"
    );
    a.write_all(&quartet_sql::pg::codec::terminate())
        .await
        .unwrap();
    let v = tokio::time::timeout(BOUND, other)
        .await
        .expect("other ends")
        .unwrap();
    assert_eq!(v.expect("other client served cleanly"), 42);
    proxy.stop().await;
}

#[tokio::test]
async fn a_shared_statement_prepared_again_leaves_the_unnamed_statement_alone() {
    use quartet_sql::pg::codec;
    let mut sp = spec(PoolMode::Transaction, 1);
    sp.auth = AuthMethod::Trust;
    let proxy = Proxy::start(sp).await;
    let mut s = trust_login(proxy.addr).await;
    let parse = |name: &str, sql: &str| {
        let mut rest = sql.as_bytes().to_vec();
        rest.extend_from_slice(&[0, 0, 0]);
        codec::build_parse(name, &rest).to_vec()
    };
    let bind_exec_sync = |stmt: &str| {
        let mut out = codec::build_bind("", stmt, &[0, 0, 0, 0, 0, 0]).to_vec();
        out.extend_from_slice(&codec::frame(b'E', &[0, 0, 0, 0, 0]));
        out.extend_from_slice(&codec::frame(b'S', &[]));
        out
    };
    // "select 1" becomes prepared on the only server connection.
    let mut batch = parse("a", "select 1");
    batch.extend(bind_exec_sync("a"));
    s.write_all(&batch).await.unwrap();
    assert_eq!(read_rows(&mut s).await, vec!["1"]);
    // The unnamed statement, then the same "select 1" under another name: the
    // connection has it already, and the unnamed statement must survive.
    let mut batch = parse("", "select 'unnamed'");
    batch.extend(parse("b", "select 1"));
    batch.extend(bind_exec_sync(""));
    s.write_all(&batch).await.unwrap();
    assert_eq!(read_rows(&mut s).await, vec!["unnamed"]);
    let mut batch = bind_exec_sync("b");
    batch.extend(bind_exec_sync("a"));
    s.write_all(&batch).await.unwrap();
    assert_eq!(read_rows(&mut s).await, vec!["1"]);
    assert_eq!(read_rows(&mut s).await, vec!["1"]);
    proxy.stop().await;
}

#[tokio::test]
async fn min_idle_is_kept_and_idle_servers_time_out() {
    let app = unique("quartet_minidle");
    let mut s = spec(PoolMode::Transaction, 4);
    s.min_idle = 3;
    let proxy = Proxy::start(s).await;
    let direct = direct().await;
    proxy
        .connect(&app)
        .await
        .simple_query("select 1")
        .await
        .unwrap();
    // The maintenance task opens connections up to min_idle.
    wait_for(BOUND, "at least three server connections", || {
        let d = &direct;
        let app = app.clone();
        async move { server_conns(d, &app).await >= 3 }
    })
    .await;
    proxy.stop().await;

    let app = unique("quartet_idletimeout");
    let mut s = spec(PoolMode::Transaction, 4);
    s.server_idle_timeout = Duration::from_millis(100);
    let proxy = Proxy::start(s).await;
    let c = proxy.connect(&app).await;
    c.simple_query("select 1").await.unwrap();
    assert_eq!(server_conns(&direct, &app).await, 1);
    wait_for(BOUND, "the idle server connection closed", || {
        let d = &direct;
        let app = app.clone();
        async move { server_conns(d, &app).await == 0 }
    })
    .await;
    // The client is still there and gets a fresh server connection.
    c.simple_query("select 1").await.unwrap();
    proxy.stop().await;
}

#[tokio::test]
async fn a_pooled_server_connection_the_server_ended_is_not_lent() {
    let proxy = Proxy::start(spec(PoolMode::Transaction, 1)).await;
    let c = proxy.connect("terminated").await;
    let pid = |c: tokio_postgres::Client| async move {
        let pid: i32 = c
            .query_one("select pg_backend_pid()", &[])
            .await
            .expect("a query through the proxy")
            .get(0);
        (c, pid)
    };
    let (c, first) = pid(c).await;
    // The server ends the idle pooled connection (as a restart or an administrator would).
    let direct = direct().await;
    direct
        .execute("select pg_terminate_backend($1)", &[&first])
        .await
        .unwrap();
    let gone = tokio::time::timeout(BOUND, async {
        while direct
            .query_opt("select 1 from pg_stat_activity where pid = $1", &[&first])
            .await
            .unwrap()
            .is_some()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the server did not end pid {first}");
    // The client's next transaction gets a live connection, not the dead one.
    let (_c, second) = pid(c).await;
    assert_ne!(first, second);
    proxy.stop().await;
}

#[tokio::test]
async fn server_lifetime_retires_old_connections() {
    let mut s = spec(PoolMode::Transaction, 1);
    s.server_lifetime = Duration::ZERO;
    let proxy = Proxy::start(s).await;
    let c = proxy.connect("lifetime").await;
    let mut pids = std::collections::HashSet::new();
    for _ in 0..3 {
        let pid: i32 = c
            .query_one("select pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        pids.insert(pid);
    }
    assert_eq!(
        pids.len(),
        3,
        "each transaction got a new server connection"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn prometheus_metrics_count_clients_queries_and_errors() {
    use prometheus::Encoder;
    let registry = prometheus::Registry::new();
    let ctx = quartet_sql::SqlContext {
        sql_metrics: Some(quartet_sql::SqlMetrics::register(&registry).unwrap()),
        ..Default::default()
    };
    let proxy = Proxy::start_with(spec(PoolMode::Transaction, 2), ctx).await;
    let c = proxy.connect("metrics").await;
    c.simple_query("select 1").await.unwrap();
    let err = c.simple_query("selec 1").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::SYNTAX_ERROR));
    let mut text = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut text)
        .unwrap();
    let text = String::from_utf8(text).unwrap();
    let listener = proxy.addr.to_string();
    let has = |line: &str| text.lines().any(|l| l == line);
    assert!(
        has(&format!("quartet_sql_clients{{listener=\"{listener}\"}} 1")),
        "{text}"
    );
    assert!(
        has(&format!(
            "quartet_sql_queries_total{{listener=\"{listener}\"}} 2"
        )),
        "{text}"
    );
    assert!(
        has(&format!(
            "quartet_sql_errors_total{{class=\"42\",listener=\"{listener}\"}} 1"
        )),
        "{text}"
    );
    assert!(
        has(&format!(
            "quartet_sql_server_connects_total{{listener=\"{listener}\",outcome=\"success\"}} 1"
        )),
        "{text}"
    );
    // Server connections by state, sampled every health_interval: the one server
    // connection is back in the pool (transaction mode, client idle).
    let idle_line =
        format!("quartet_sql_server_connections{{listener=\"{listener}\",state=\"idle\"}} 1");
    wait_for(BOUND, "the sampled server connection gauges", || {
        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        let ok = text.lines().any(|l| l == idle_line)
            && text.contains(&format!(
                "quartet_sql_clients_waiting{{listener=\"{listener}\"}} 0"
            ));
        async move { ok }
    })
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn queries_and_transactions_are_counted_per_pool() {
    use prometheus::Encoder;
    let registry = prometheus::Registry::new();
    let ctx = quartet_sql::SqlContext {
        sql_metrics: Some(quartet_sql::SqlMetrics::register(&registry).unwrap()),
        ..Default::default()
    };
    let mut s = spec(PoolMode::Transaction, 2);
    s.users.push(quartet_sql::UserSpec {
        name: "app2".into(),
        password: "secret2".into(),
    });
    let proxy = Proxy::start_with(s, ctx).await;
    // Pool (test, app): two queries, each its own transaction.
    let a = proxy.connect("pool_counts_a").await;
    a.simple_query("select 1").await.unwrap();
    a.simple_query("select 2").await.unwrap();
    // Pool (test, app2): three queries, one transaction.
    let b = proxy
        .try_connect("app2", "secret2", "pool_counts_b")
        .await
        .expect("login as app2");
    b.batch_execute("begin").await.unwrap();
    b.simple_query("select 1").await.unwrap();
    b.batch_execute("commit").await.unwrap();

    let pools = proxy.handle.state().pools;
    let counts = |user: &str| {
        let p = pools
            .iter()
            .find(|p| p.user == user && p.database == "test")
            .unwrap_or_else(|| panic!("no pool for {user}: {pools:?}"));
        (p.queries, p.transactions)
    };
    assert_eq!(counts("app"), (2, 2));
    assert_eq!(counts("app2"), (3, 1));
    // The listener's totals are the sum.
    let stats = proxy.handle.state().stats;
    assert_eq!((stats.queries, stats.transactions), (5, 3));

    let mut text = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut text)
        .unwrap();
    let text = String::from_utf8(text).unwrap();
    let listener = proxy.addr.to_string();
    for (user, queries, transactions) in [("app", 2, 2), ("app2", 3, 1)] {
        let labels = format!("database=\"test\",listener=\"{listener}\",user=\"{user}\"");
        for line in [
            format!("quartet_sql_pool_queries_total{{{labels}}} {queries}"),
            format!("quartet_sql_pool_transactions_total{{{labels}}} {transactions}"),
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
    }
    proxy.stop().await;
}

#[tokio::test]
async fn sql_prepare_in_transaction_mode_keeps_the_server_until_deallocate_all() {
    let proxy = Proxy::start(spec(PoolMode::Transaction, 2)).await;
    let active = |proxy: &Proxy| {
        proxy
            .handle
            .state()
            .pools
            .iter()
            .map(|p| p.servers_active)
            .sum::<usize>()
    };
    let a = proxy.connect("sql_prepare_a").await;
    let b = proxy.connect("sql_prepare_b").await;
    a.batch_execute("PREPARE q(int) AS SELECT $1 + 1")
        .await
        .expect("prepare");
    // `a` keeps its server: `b` opening a transaction takes the other one, and `a`'s
    // statement is still where its EXECUTE goes.
    assert_eq!(active(&proxy), 1);
    b.batch_execute("begin").await.unwrap();
    for i in 0..3 {
        let rows = a
            .simple_query(&format!("EXECUTE q({i})"))
            .await
            .expect("execute on the server that prepared it");
        let value = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        assert_eq!(value, Some((i + 1).to_string()));
    }
    b.batch_execute("commit").await.unwrap();
    // DEALLOCATE ALL: nothing prepared by SQL is left, `a` shares servers again.
    a.batch_execute("DEALLOCATE ALL").await.unwrap();
    assert_eq!(active(&proxy), 0);
    proxy.stop().await;

    // A pinned client that leaves: its server is cleaned with DEALLOCATE ALL before it
    // serves anyone else (one server, so the next client gets the same one).
    let proxy = Proxy::start(spec(PoolMode::Transaction, 1)).await;
    let a = proxy.connect("sql_prepare_c").await;
    a.batch_execute("prepare r as select 1").await.unwrap();
    drop(a);
    wait_for(BOUND, "the pinned server back in the pool", || async {
        active(&proxy) == 0
    })
    .await;
    let c = proxy.connect("sql_prepare_d").await;
    c.batch_execute("prepare r as select 2")
        .await
        .expect("the name is free on the reused server connection");
    proxy.stop().await;
}

#[tokio::test]
async fn auth_query_looks_users_up_in_the_database() {
    let direct = direct().await;
    for (role, password, encryption) in [
        ("quartet_aq_scram", "aqscram", "scram-sha-256"),
        ("quartet_aq_md5", "aqmd5", "md5"),
    ] {
        direct
            .batch_execute(&format!(
                "DO $$ BEGIN CREATE ROLE {role} LOGIN; \
                 EXCEPTION WHEN duplicate_object THEN NULL; END $$;
                 SET password_encryption = '{encryption}';
                 ALTER ROLE {role} PASSWORD '{password}';
                 RESET password_encryption;"
            ))
            .await
            .unwrap();
    }
    for (auth, role, password) in [
        (AuthMethod::ScramSha256, "quartet_aq_scram", "aqscram"),
        (AuthMethod::Md5, "quartet_aq_md5", "aqmd5"),
    ] {
        let mut s = spec(PoolMode::Transaction, 2);
        s.auth = auth;
        s.users = vec![];
        s.auth_query =
            Some("SELECT usename::text, passwd::text FROM pg_shadow WHERE usename = $1".into());
        let proxy = Proxy::start(s).await;
        let c = proxy
            .try_connect(role, password, "auth_query")
            .await
            .unwrap_or_else(|e| panic!("{auth:?} {role}: {e:?}"));
        c.simple_query("select 1").await.unwrap();
        let err = proxy.try_connect(role, "wrong", "auth_query").await.err();
        assert_eq!(
            err.as_ref().and_then(|e| e.code()),
            Some(&SqlState::INVALID_PASSWORD),
            "{auth:?}: {err:?}"
        );
        let err = proxy
            .try_connect("quartet_no_such_role", "x", "auth_query")
            .await
            .err();
        assert_eq!(
            err.as_ref().and_then(|e| e.code()),
            Some(&SqlState::INVALID_PASSWORD)
        );
        proxy.stop().await;
    }
}

#[tokio::test]
async fn login_fault_aborts_with_57p03_then_clears() {
    let mut s = spec(PoolMode::Transaction, 2);
    s.name = Some("faulty".into());
    let proxy = Proxy::start(s).await;
    assert_eq!(proxy.handle.target().to_string(), "sql:faulty");
    let fault = proxy.handle.fault();
    fault.set(Some(quartet_policies::spec::FaultSpec {
        abort_percent: 100.0,
        ..Default::default()
    }));
    let err = proxy
        .try_connect("app", "secret", "fault")
        .await
        .map(drop)
        .expect_err("login refused");
    assert_eq!(err.code(), Some(&SqlState::CANNOT_CONNECT_NOW), "{err}");
    fault.set(None);
    let c = proxy.connect("fault-cleared").await;
    c.simple_query("select 1").await.unwrap();
    proxy.stop().await;
}

#[tokio::test]
async fn reset_toxic_fails_the_query_and_the_proxy_keeps_serving() {
    use quartet_policies::spec::{FaultSpec, ToxicSpec};
    let proxy = Proxy::start(spec(PoolMode::Session, 2)).await;
    let fault = proxy.handle.fault();
    let toxic: ToxicSpec = toml::from_str("kind = \"reset\"").expect("a reset toxic");
    fault.set(Some(FaultSpec {
        connection: vec![toxic],
        ..Default::default()
    }));
    // The toxic applies to server connections made from now on (after their login).
    let c = proxy.connect("reset").await;
    assert!(
        c.simple_query("select 1").await.is_err(),
        "query through a reset"
    );
    fault.set(None);
    let c = proxy.connect("after-reset").await;
    c.simple_query("select 1").await.unwrap();
    proxy.stop().await;
}
