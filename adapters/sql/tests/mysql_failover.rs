//! The MySQL listener follows the writer between two throwaway MariaDB instances
//! (mariadb-install-db in temp dirs, their own ports): one writer at a time, read_only
//! moves it, a stopped writer moves it, and clients of the old writer are closed.

mod common;

use common::{unique, wait_for};
use quartet_sql::backend::BackendRole;
use quartet_sql::{ListenerSpec, SqlContext, SqlListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(30);

struct Maria {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Maria {
    fn start() -> Maria {
        let dir = std::env::temp_dir().join(unique("quartet_maria"));
        // Each instance keeps its temporary tables in its own directory: two bootstraps
        // sharing /tmp once collided on a `#sql-temptable-…` name and one of them failed.
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let _ = Command::new("chown")
            .args(["-R", "mysql"])
            .arg(&dir)
            .status();
        let data = dir.join("data");
        let out = Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=mysql", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            .arg("--auth-root-authentication-method=normal")
            .arg(format!("--tmpdir={}", tmp.display()))
            .output()
            .expect("mariadb-install-db (apt-get install mariadb-server)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new("mariadbd")
            .args([
                "--no-defaults",
                "--user=mysql",
                "--bind-address=127.0.0.1",
                "--skip-grant-tables",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=8M",
                "--innodb-use-native-aio=0",
            ])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={port}"))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .arg(format!("--log-error={}", dir.join("err.log").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd");
        Maria {
            dir,
            port,
            child: Some(child),
        }
    }

    fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    async fn ready(&self) {
        let deadline = tokio::time::Instant::now() + BOUND;
        while sqlx_conn(self.port).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("err.log")).unwrap_or_default();
                panic!("mariadbd on port {} did not start:\n{log}", self.port);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Maria {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn sqlx_conn(port: u16) -> Result<sqlx::mysql::MySqlConnection, sqlx::Error> {
    use sqlx::Connection;
    sqlx::mysql::MySqlConnection::connect(&format!("mysql://root@127.0.0.1:{port}/")).await
}

async fn port_of(c: &mut sqlx::mysql::MySqlConnection) -> Result<u16, sqlx::Error> {
    let p: i64 = sqlx::query_scalar("select cast(@@port as signed)")
        .fetch_one(c)
        .await?;
    Ok(p as u16)
}

async fn set_read_only(port: u16, on: bool) {
    let mut c = sqlx_conn(port).await.expect("direct");
    sqlx::query(if on {
        "set global read_only = 1"
    } else {
        "set global read_only = 0"
    })
    .execute(&mut c)
    .await
    .unwrap();
}

#[tokio::test]
async fn the_listener_follows_the_writer() {
    let a = Maria::start();
    let mut b = Maria::start();
    a.ready().await;
    b.ready().await;
    let mut spec = ListenerSpec::new("127.0.0.1:0".parse().unwrap(), vec![a.url(), b.url()]);
    spec.protocol = quartet_sql::config::Protocol::Mysql;
    spec.health_interval = Duration::from_millis(100);
    let listener = SqlListener::bind(spec, SqlContext::default())
        .await
        .unwrap();
    let port = listener.local_addr().port();
    let handle = listener.handle();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(listener.run(async {
        let _ = rx.await;
    }));
    let writer_is = |i: usize| {
        let handle = handle.clone();
        move || {
            let st = handle.state();
            async move {
                st.backends[i].role == BackendRole::Primary
                    && st
                        .backends
                        .iter()
                        .filter(|b| b.role == BackendRole::Primary)
                        .count()
                        == 1
            }
        }
    };
    wait_for(BOUND, "a the writer", writer_is(0)).await;
    let mut on_a = sqlx_conn(port).await.unwrap();
    assert_eq!(port_of(&mut on_a).await.unwrap(), a.port);

    // a turns read-only: b takes over, a's clients are closed, new clients reach b.
    set_read_only(a.port, true).await;
    wait_for(BOUND, "b the writer", writer_is(1)).await;
    let lost = tokio::time::timeout(BOUND, port_of(&mut on_a))
        .await
        .expect("an answer, not a hang");
    assert!(lost.is_err(), "a client of the old writer is closed");
    let mut on_b = sqlx_conn(port).await.unwrap();
    assert_eq!(port_of(&mut on_b).await.unwrap(), b.port);

    // a writable again: b stays the writer (one writer at a time, no flapping).
    set_read_only(a.port, false).await;
    wait_for(BOUND, "a healthy and writable again", || {
        let handle = handle.clone();
        async move { handle.state().backends[0].healthy == Some(true) }
    })
    .await;
    let mut c = sqlx_conn(port).await.unwrap();
    assert_eq!(port_of(&mut c).await.unwrap(), b.port);

    // b dies: a takes over.
    b.kill();
    let lost = tokio::time::timeout(BOUND, port_of(&mut on_b))
        .await
        .expect("an answer, not a hang");
    assert!(lost.is_err());
    wait_for(BOUND, "a the writer again", writer_is(0)).await;
    let mut c = sqlx_conn(port).await.unwrap();
    assert_eq!(port_of(&mut c).await.unwrap(), a.port);
    let _ = stop.send(());
}
