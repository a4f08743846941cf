//! Quartet's own credentials toward servers that ask for them: SCRAM-SHA-256 and md5,
//! against a throwaway PostgreSQL cluster whose TCP logins need a password.

mod common;

use common::cluster::Cluster;
use common::*;
use quartet_sql::PoolMode;
use tokio_postgres::error::SqlState;

#[tokio::test]
async fn quartet_logs_in_to_servers_with_scram_and_md5() {
    let _ = direct().await;
    let pwfile = std::env::temp_dir().join(unique("quartet_pwfile"));
    std::fs::write(&pwfile, "serverpw\n").unwrap();
    let cluster = Cluster::start_with(&[
        "--auth-host=scram-sha-256",
        "--auth-local=trust",
        "--pwfile",
        pwfile.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&pwfile);
    {
        let (c, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres password=serverpw dbname=postgres",
                cluster.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .expect("scram login to the throwaway cluster");
        tokio::spawn(conn);
        for sql in [
            "set password_encryption = 'md5'",
            "create role md5user login password 'md5pw'",
            "create database test",
        ] {
            c.batch_execute(sql).await.unwrap();
        }
        // md5user logs in with md5 over TCP; everyone else with SCRAM.
        let hba = cluster.dir.join("data").join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(&hba, format!("host all md5user 127.0.0.1/32 md5\n{old}")).unwrap();
        c.batch_execute("select pg_reload_conf()").await.unwrap();
    }
    let cases = [
        ("postgres", "serverpw", "scram-sha-256"),
        ("md5user", "md5pw", "md5"),
    ];
    for (user, password, method) in cases {
        let mut s = spec(PoolMode::Transaction, 2);
        s.backends = vec![format!(
            "postgres://{user}:{password}@127.0.0.1:{}/test",
            cluster.port
        )];
        let proxy = Proxy::start(s).await;
        let c = proxy.connect("server_auth").await;
        let who: String = c
            .query_one("select current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, user, "{method}");
        proxy.stop().await;
    }
    // A wrong server password: the client hears the server's refusal.
    let mut s = spec(PoolMode::Transaction, 2);
    s.backends = vec![format!(
        "postgres://postgres:wrong@127.0.0.1:{}/test",
        cluster.port
    )];
    let proxy = Proxy::start(s).await;
    let Err(err) = proxy.try_connect("app", "secret", "server_auth_bad").await else {
        panic!("a wrong server password let a client in");
    };
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err:?}");
    proxy.stop().await;
}
