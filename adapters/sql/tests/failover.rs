//! Failover between two real PostgreSQL clusters on this machine: a second, throwaway
//! cluster (initdb in a temp dir, its own port) listed first, the main cluster on 5432
//! second. Both are primaries (two independent clusters, no streaming replication): the
//! listener prefers the first; when it stops, clients reconnecting through Quartet reach
//! the second and no client hangs.

mod common;

use common::cluster::Cluster;
use common::*;
use quartet_sql::PoolMode;
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(30);

async fn port_of(c: &tokio_postgres::Client) -> Result<String, tokio_postgres::Error> {
    c.query_one("select current_setting('port')", &[])
        .await
        .map(|r| r.get(0))
}

#[tokio::test]
async fn clients_move_to_the_next_primary_when_the_first_stops() {
    let _ = direct().await;
    let mut second = Cluster::start();
    {
        let (c, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                second.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .expect("the throwaway cluster");
        tokio::spawn(conn);
        c.batch_execute("create database test").await.unwrap();
    }
    let mut s = spec(PoolMode::Transaction, 2);
    s.backends = vec![
        format!("postgres://postgres@127.0.0.1:{}/test", second.port),
        PG_URL.to_string(),
    ];
    let proxy = Proxy::start(s).await;
    let handle = proxy.handle.clone();
    wait_for(BOUND, "both backends checked", || {
        let st = handle.state();
        async move { st.backends.iter().all(|b| b.healthy == Some(true)) }
    })
    .await;

    let before = proxy.connect("failover_a").await;
    assert_eq!(port_of(&before).await.unwrap(), second.port.to_string());
    before.batch_execute("begin").await.unwrap();

    second.stop();

    // The client whose server went away hears it at once (no hang).
    let err = tokio::time::timeout(BOUND, port_of(&before))
        .await
        .expect("an answer, not a hang")
        .expect_err("its server is gone");
    let code = err.code().map(|c| c.code().to_string()).unwrap_or_default();
    assert!(
        code.starts_with("08") || code.starts_with("57P"),
        "class 08 or 57P (admin shutdown) expected: {err:?}"
    );

    // New clients reach the remaining primary.
    let after = tokio::time::timeout(BOUND, proxy.connect("failover_b"))
        .await
        .expect("connect after failover");
    assert_eq!(port_of(&after).await.unwrap(), "5432");
    wait_for(BOUND, "the stopped backend marked down", || {
        let st = handle.state();
        async move { st.backends[0].healthy == Some(false) && st.ready() }
    })
    .await;
    for _ in 0..5 {
        let c = proxy.connect("failover_c").await;
        assert_eq!(port_of(&c).await.unwrap(), "5432");
    }
    proxy.stop().await;
}

async fn in_recovery(c: &tokio_postgres::Client) -> bool {
    c.query_one("select pg_is_in_recovery()", &[])
        .await
        .expect("pg_is_in_recovery")
        .get(0)
}

/// The failover: a primary and its streaming replica. Writes go to the primary
/// (whatever the order of the list), a `role = "replica"` listener reads from the
/// replica; the primary stops, clients hear it at once, the replica is promoted and
/// clients reconnecting through the same listener reach it.
#[tokio::test]
async fn streaming_replica_is_used_for_reads_and_reached_after_promotion() {
    use quartet_sql::backend::BackendRole;
    let _ = direct().await;
    let mut primary = Cluster::start();
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
        c.batch_execute("create database test").await.unwrap();
    }
    let replica = Cluster::replica_of(&primary);
    let backends = vec![replica.url(), primary.url()];

    let mut s = spec(PoolMode::Transaction, 2);
    s.backends = backends.clone();
    let writer = Proxy::start(s).await;
    let mut s = spec(PoolMode::Transaction, 2);
    s.backends = backends;
    s.role = quartet_sql::Role::Replica;
    let reader = Proxy::start(s).await;
    for proxy in [&writer, &reader] {
        let handle = proxy.handle.clone();
        wait_for(BOUND, "roles known", || {
            let st = handle.state();
            async move {
                st.backends[0].role == BackendRole::Replica
                    && st.backends[1].role == BackendRole::Primary
                    && st.backends.iter().all(|b| b.healthy == Some(true))
            }
        })
        .await;
    }

    let w = writer.connect("rw").await;
    assert_eq!(port_of(&w).await.unwrap(), primary.port.to_string());
    assert!(!in_recovery(&w).await);
    w.batch_execute("create table if not exists t (x int); insert into t values (1)")
        .await
        .unwrap();
    let r = reader.connect("ro").await;
    assert_eq!(port_of(&r).await.unwrap(), replica.port.to_string());
    assert!(in_recovery(&r).await);
    // Streaming replication is asynchronous: the table must have reached the replica
    // before the primary stops, or the promoted replica would not have it (this failed
    // once under load: `relation "t" does not exist` after the promotion).
    wait_for(BOUND, "the row on the replica", || async {
        r.query_one("select count(*) from t", &[])
            .await
            .is_ok_and(|row| row.get::<_, i64>(0) == 1)
    })
    .await;

    w.batch_execute("begin").await.unwrap();
    primary.stop();
    let err = tokio::time::timeout(BOUND, port_of(&w))
        .await
        .expect("an answer, not a hang")
        .expect_err("its server is gone");
    let code = err.code().map(|c| c.code().to_string()).unwrap_or_default();
    assert!(code.starts_with("08") || code.starts_with("57P"), "{err:?}");

    // Before the promotion a writer client is refused at once, not kept waiting.
    let handle = writer.handle.clone();
    wait_for(BOUND, "the primary marked down", || {
        let st = handle.state();
        async move { st.backends[1].healthy == Some(false) }
    })
    .await;
    let refused = tokio::time::timeout(BOUND, writer.try_connect("app", "secret", "rw2"))
        .await
        .expect("an answer, not a hang");
    let Err(refused) = refused else {
        panic!("a writer reached a replica");
    };
    let code = refused
        .code()
        .map(|c| c.code().to_string())
        .unwrap_or_default();
    assert!(code.starts_with("08") || code == "57P03", "{refused:?}");

    replica.promote();
    wait_for(BOUND, "the promoted replica seen as primary", || {
        let st = handle.state();
        async move { st.backends[0].role == BackendRole::Primary && st.ready() }
    })
    .await;
    let w = writer.connect("rw3").await;
    assert_eq!(port_of(&w).await.unwrap(), replica.port.to_string());
    assert!(!in_recovery(&w).await);
    w.batch_execute("insert into t values (2)").await.unwrap();
    writer.stop().await;
    reader.stop().await;
}
