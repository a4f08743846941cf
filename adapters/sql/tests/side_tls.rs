//! The health check and `auth_query` (sqlx) honour the backend URL's `sslmode`, as the
//! proxy's own server connections do: against a throwaway cluster that accepts TLS
//! connections only (`hostssl` lines alone in its pg_hba.conf, a certificate signed by
//! a CA made here), a backend with `sslmode=verify-ca` is seen healthy, a user found
//! with `auth_query` logs in, and `pg_stat_ssl` shows the health and lookup connections
//! encrypted; the same backend with `sslmode=disable` is seen down.

mod common;

use common::cluster::{as_postgres, bin, Cluster};
use common::*;
use quartet_sql::{AuthMethod, PoolMode};
use std::path::Path;
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(30);

/// A CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, cert, key) paths.
fn pki(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Quartet side-channel test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
        .expect("self-sign the CA");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let key = KeyPair::generate().expect("server key");
    let cert = params.signed_by(&key, &ca).expect("sign the server cert");
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.crt"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// A cluster that refuses plain TCP: TLS with a certificate of `pki`, `hostssl` only, a
/// SCRAM user `tls_app` (password `tls-secret`) for `auth_query` to find.
fn tls_only_cluster() -> (Cluster, std::path::PathBuf) {
    let mut c = Cluster::start();
    let data = c.dir.join("data");
    let (ca, cert, key) = pki(&data);
    for f in [&cert, &key] {
        let _ = std::process::Command::new("chown")
            .arg("postgres:postgres")
            .arg(f)
            .status();
    }
    let _ = std::process::Command::new("chmod")
        .arg("600")
        .arg(&key)
        .status();
    let psql = |sql: &str| {
        as_postgres(
            &bin("psql"),
            &[
                "-X",
                "-q",
                "-h",
                c.dir.to_str().unwrap(),
                "-p",
                &c.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ],
        )
    };
    psql("create database test");
    psql("create role tls_app login password 'tls-secret'");
    psql("alter system set ssl = on");
    psql(&format!(
        "alter system set ssl_cert_file = '{}'",
        cert.display()
    ));
    psql(&format!(
        "alter system set ssl_key_file = '{}'",
        key.display()
    ));
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    c.stop();
    c.run();
    (c, ca)
}

#[tokio::test]
async fn health_check_and_auth_query_use_tls_as_the_url_says() {
    let (cluster, ca) = tls_only_cluster();
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/test?sslmode=verify-ca&sslrootcert={}",
        cluster.port,
        ca.display()
    );
    let mut s = spec(PoolMode::Transaction, 2);
    s.backends = vec![url];
    s.users.clear();
    s.auth = AuthMethod::ScramSha256;
    s.auth_query = Some("SELECT usename, passwd FROM pg_shadow WHERE usename = $1".into());
    let proxy = Proxy::start(s).await;
    wait_for(BOUND, "the backend to be seen healthy over tls", || async {
        proxy.handle.state().backends[0].healthy == Some(true)
    })
    .await;

    // tls_app is not in `users`: auth_query finds its SCRAM verifier over TLS.
    let c = proxy
        .try_connect("tls_app", "tls-secret", "side_tls")
        .await
        .expect("login of a user found by auth_query");
    let encrypted: Vec<(String, bool)> = c
        .query(
            "select a.application_name, s.ssl from pg_stat_activity a \
             join pg_stat_ssl s using (pid) \
             where a.application_name in ('quartet-health', 'quartet-auth') order by 1",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        encrypted.iter().any(|(a, _)| a == "quartet-health")
            && encrypted.iter().any(|(a, _)| a == "quartet-auth"),
        "health and auth_query connections: {encrypted:?}"
    );
    assert!(
        encrypted.iter().all(|(_, ssl)| *ssl),
        "not encrypted: {encrypted:?}"
    );
    proxy.stop().await;

    // The same server asked for in plain: refused by its pg_hba.conf, so seen down.
    let mut s = spec(PoolMode::Transaction, 2);
    s.backends = vec![format!(
        "postgres://postgres@127.0.0.1:{}/test?sslmode=disable",
        cluster.port
    )];
    let proxy = Proxy::start(s).await;
    wait_for(BOUND, "the plain backend to be seen down", || async {
        proxy.handle.state().backends[0].healthy == Some(false)
    })
    .await;
    proxy.stop().await;
}
