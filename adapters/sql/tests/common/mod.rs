//! Helpers for the end-to-end tests against the real PostgreSQL on 127.0.0.1:5432
//! (trust auth, database `test`). A test that finds it down fails and says how to start it.

#![allow(dead_code)]

pub mod cluster;

use quartet_sql::{
    AuthMethod, ListenerSpec, PgListener, PoolMode, SqlContext, SqlHandle, UserSpec,
};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::oneshot;

pub const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const START_HINT: &str = "PostgreSQL is not reachable on 127.0.0.1:5432; start it with \
    `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`";

/// A direct connection to PostgreSQL (not through Quartet).
pub async fn direct() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test",
        tokio_postgres::NoTls,
    )
    .await
    .unwrap_or_else(|e| panic!("{START_HINT}: {e}"));
    tokio::spawn(conn);
    client
}

pub fn spec(mode: PoolMode, pool_size: usize) -> ListenerSpec {
    let mut s = ListenerSpec::new("127.0.0.1:0".parse().unwrap(), vec![PG_URL.to_string()]);
    s.pool_mode = mode;
    s.pool_size = pool_size;
    s.users = vec![UserSpec {
        name: "app".into(),
        password: "secret".into(),
    }];
    s.auth = AuthMethod::ScramSha256;
    s.connect_timeout = Duration::from_secs(5);
    s.health_interval = Duration::from_millis(200);
    s
}

pub struct Proxy {
    pub addr: SocketAddr,
    pub handle: SqlHandle,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    pub async fn start(spec: ListenerSpec) -> Proxy {
        Self::start_with(spec, SqlContext::default()).await
    }

    pub async fn start_with(spec: ListenerSpec, ctx: SqlContext) -> Proxy {
        // Fail early, with the hint, when PostgreSQL is down.
        let _ = direct().await;
        let listener = PgListener::bind(spec, ctx).await.expect("bind");
        let addr = listener.local_addr();
        let handle = listener.handle();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(listener.run(async {
            let _ = rx.await;
        }));
        Proxy {
            addr,
            handle,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn conn_str(&self, user: &str, password: &str, app: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname=test application_name={app}",
            self.addr.port()
        )
    }

    pub async fn connect(&self, app: &str) -> tokio_postgres::Client {
        self.try_connect("app", "secret", app)
            .await
            .expect("connect through quartet")
    }

    pub async fn try_connect(
        &self,
        user: &str,
        password: &str,
        app: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) =
            tokio_postgres::connect(&self.conn_str(user, password, app), tokio_postgres::NoTls)
                .await?;
        tokio::spawn(conn);
        Ok(client)
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

/// Waits for `cond` to hold, checking every 20 ms, at most `limit`; panics with `what`.
pub async fn wait_for<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (at most `limit`) until the server runs `select pg_sleep(30)` for the client
/// whose application_name is `app`: a query that can then be cancelled.
pub async fn wait_for_sleep(direct: &tokio_postgres::Client, app: &str, limit: Duration) {
    wait_for(limit, "pg_sleep to run", || async {
        direct
            .query_one(
                "select count(*) from pg_stat_activity where application_name = $1 and query like '%pg_sleep(30)%' and state = 'active'",
                &[&app],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == 1)
            .unwrap_or(false)
    })
    .await;
}

/// Server connections whose application_name is `app`.
pub async fn server_conns(direct: &tokio_postgres::Client, app: &str) -> i64 {
    direct
        .query_one(
            "select count(*) from pg_stat_activity where application_name = $1",
            &[&app],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// A unique name for this test run.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}_{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Takes the first whole backend message (tag, length, body) off `buf`, if there is one.
pub fn take_frame(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    if buf.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize + 1;
    (buf.len() >= len).then(|| buf.drain(..len).collect())
}
