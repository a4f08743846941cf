//! Idle clients parked outside tokio (`client_park_after`): they are served again when
//! they send, bytes that arrive while they are parked are not lost, a client that closes
//! while parked is cleaned up, cancels still reach the right query, and the drain at
//! shutdown serves and then closes them.

mod common;

use common::*;
use quartet_sql::{AuthMethod, PgListener, PoolMode, SqlContext, SqlHandle};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;

const BOUND: Duration = Duration::from_secs(20);

/// Transaction mode, trust, clients parked after 20 ms of quiet.
fn parking_spec() -> quartet_sql::ListenerSpec {
    let mut s = spec(PoolMode::Transaction, 2);
    s.auth = AuthMethod::Trust;
    s.users.clear();
    s.client_park_after = Duration::from_millis(20);
    s
}

async fn parked(handle: &SqlHandle, n: usize) {
    wait_for(BOUND, &format!("{n} parked clients"), || async {
        handle.state().clients_parked == n
    })
    .await;
}

fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    let mut f = vec![b'Q'];
    f.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    f.extend_from_slice(&body);
    f
}

/// Reads frames until `ReadyForQuery`; returns the `DataRow` values (first column, text)
/// and the SQLSTATE of an error, if one came. `None` when the connection ended.
async fn answer(s: &mut TcpStream) -> Option<(Vec<String>, Option<String>)> {
    answers(s, 1).await
}

/// Like [`answer`], for `n` queries sent at once: their rows together.
async fn answers(s: &mut TcpStream, mut n: usize) -> Option<(Vec<String>, Option<String>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (mut rows, mut error) = (Vec::new(), None);
    loop {
        while let Some(frame) = take_frame(&mut buf) {
            match frame[0] {
                b'Z' => {
                    n -= 1;
                    if n == 0 {
                        return Some((rows, error));
                    }
                }
                b'D' => {
                    let n = i32::from_be_bytes([frame[7], frame[8], frame[9], frame[10]]);
                    let v = &frame[11..11 + n.max(0) as usize];
                    rows.push(String::from_utf8_lossy(v).into_owned());
                }
                b'E' => {
                    let body = &frame[5..];
                    let i = body.iter().position(|b| *b == b'C').unwrap_or(0);
                    error = Some(String::from_utf8_lossy(&body[i + 1..i + 6]).into_owned());
                }
                _ => {}
            }
        }
        let n = tokio::time::timeout(BOUND, s.read(&mut chunk))
            .await
            .expect("an answer from quartet")
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn login(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let startup =
        quartet_sql::pg::codec::startup_message(&[("user", "postgres"), ("database", "test")]);
    s.write_all(&startup).await.unwrap();
    let (_, error) = answer(&mut s).await.expect("login answered");
    assert_eq!(error, None, "login");
    s
}

#[tokio::test]
async fn parked_clients_are_served_again_and_nothing_they_send_is_lost() {
    let proxy = Proxy::start(parking_spec()).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(login(proxy.addr).await);
    }
    parked(&proxy.handle, 5).await;
    assert_eq!(proxy.handle.state().clients, 5);

    // A whole query sent to a parked client.
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(&query(&format!("select {i}"))).await.unwrap();
        let (rows, error) = answer(c).await.expect("answered");
        assert_eq!((rows, error), (vec![i.to_string()], None));
    }
    parked(&proxy.handle, 5).await;

    // Half a message: the client wakes up, keeps the half, parks again; the other
    // half, sent while it is parked, completes it.
    let msg = query("select 'split'");
    let (head, tail) = msg.split_at(7);
    clients[0].write_all(head).await.unwrap();
    wait_for(BOUND, "the half message to be read", || async {
        proxy.handle.state().clients_parked < 5
    })
    .await;
    parked(&proxy.handle, 5).await;
    clients[0].write_all(tail).await.unwrap();
    let (rows, error) = answer(&mut clients[0]).await.expect("answered");
    assert_eq!((rows, error), (vec!["split".to_string()], None));

    // Two queries back to back into a parked client's socket: both answered, in order.
    parked(&proxy.handle, 5).await;
    let mut two = query("select 'one'");
    two.extend_from_slice(&query("select 'two'"));
    clients[1].write_all(&two).await.unwrap();
    let (rows, error) = answers(&mut clients[1], 2).await.expect("answered");
    assert_eq!((rows, error), (vec!["one".to_string(), "two".into()], None));
    proxy.stop().await;
}

#[tokio::test]
async fn a_client_that_closes_while_parked_is_cleaned_up() {
    let mut s = parking_spec();
    s.max_clients = 3;
    let proxy = Proxy::start(s).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(login(proxy.addr).await);
    }
    parked(&proxy.handle, 3).await;
    // Full: a fourth is refused.
    let mut extra = TcpStream::connect(proxy.addr).await.unwrap();
    let startup =
        quartet_sql::pg::codec::startup_message(&[("user", "postgres"), ("database", "test")]);
    let _ = extra.write_all(&startup).await;
    let refused = answer(&mut extra).await;
    assert!(
        matches!(&refused, None | Some((_, Some(_)))),
        "refused: {refused:?}"
    );

    // Two close while parked: their places under max_clients come back.
    clients.truncate(1);
    wait_for(BOUND, "the closed clients to be gone", || async {
        let st = proxy.handle.state();
        st.clients == 1 && st.clients_parked == 1
    })
    .await;
    let mut again = login(proxy.addr).await;
    again.write_all(&query("select 7")).await.unwrap();
    assert_eq!(answer(&mut again).await.unwrap().0, vec!["7"]);
    proxy.stop().await;
}

#[tokio::test]
async fn cancel_reaches_a_query_of_a_client_that_was_parked() {
    let app = unique("quartet_park_cancel");
    let proxy = Proxy::start(parking_spec()).await;
    let direct = direct().await;
    let conn_str = format!(
        "host=127.0.0.1 port={} user=postgres dbname=test application_name={app}",
        proxy.addr.port()
    );
    let (c, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
        .await
        .expect("login");
    tokio::spawn(conn);
    let token = c.cancel_token();
    parked(&proxy.handle, 1).await;
    // A cancel for a parked client has nothing to stop, and leaves it alone.
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel of an idle client");
    c.simple_query("select 1").await.expect("served after it");
    parked(&proxy.handle, 1).await;

    let sleeper = tokio::spawn(async move { c.simple_query("select pg_sleep(30)").await });
    wait_for_sleep(&direct, &app, BOUND).await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel through quartet");
    let err = tokio::time::timeout(BOUND, sleeper)
        .await
        .expect("query ended")
        .unwrap()
        .expect_err("cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED));
    proxy.stop().await;
}

#[tokio::test]
async fn the_drain_serves_parked_clients_then_ends_when_they_leave() {
    let _ = direct().await;
    let listener = PgListener::bind(parking_spec(), SqlContext::default())
        .await
        .expect("bind");
    let (addr, handle) = (listener.local_addr(), listener.handle());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(listener.run_with_grace(
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(3600),
    ));
    let mut a = login(addr).await;
    let b = login(addr).await;
    parked(&handle, 2).await;
    let _ = stop.send(());
    // No new clients once draining...
    wait_for(BOUND, "the listener to stop accepting", || async {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    // ...but a parked one that sends is served.
    a.write_all(&query("select 'draining'")).await.unwrap();
    assert_eq!(answer(&mut a).await.unwrap().0, vec!["draining"]);
    assert!(!run.is_finished());
    // Once every client has left, the listener ends, long before the grace period.
    drop(a);
    drop(b);
    tokio::time::timeout(BOUND, run)
        .await
        .expect("the listener ended when its clients left")
        .unwrap();
}

#[tokio::test]
async fn shutdown_without_grace_closes_parked_clients() {
    let proxy = Proxy::start(parking_spec()).await;
    let mut c = login(proxy.addr).await;
    parked(&proxy.handle, 1).await;
    proxy.stop().await;
    let mut rest = Vec::new();
    // End of stream or a reset: either way closed, not left hanging.
    let _ = tokio::time::timeout(BOUND, c.read_to_end(&mut rest))
        .await
        .expect("the parked client was closed");
}

#[tokio::test]
async fn a_new_client_that_stays_quiet_is_parked_soon_whatever_client_park_after_says() {
    let mut s = parking_spec();
    s.client_park_after = Duration::from_secs(3600);
    let proxy = Proxy::start(s).await;
    let mut c = login(proxy.addr).await;
    // Parked after 10 ms of quiet following its login, not after an hour.
    parked(&proxy.handle, 1).await;
    c.write_all(&query("select 'awake'")).await.unwrap();
    let (rows, error) = answer(&mut c).await.expect("answered");
    assert_eq!((rows, error), (vec!["awake".to_string()], None));
    proxy.stop().await;
}
