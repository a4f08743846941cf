//! TLS on the SQL channel end to end: the real `quartet` binary (run `cargo build -p
//! quartet` first), `psql` (libpq) as the client, the real PostgreSQL on 127.0.0.1:5432
//! (trust, database `test`, `ssl = on`, as Debian's cluster has it with the snakeoil
//! certificate) as the server.
//!
//! - toward clients: a listener with `tls = { cert, key }` answers `SSLRequest` with TLS
//!   (psql `sslmode=verify-full` against the test CA), one without answers `N`
//!   (psql `sslmode=require` refused);
//! - toward the server: `sslmode=require` and `verify-ca` (against the cluster's own
//!   certificate) give TLS server connections (`pg_stat_ssl`), `verify-full` with a
//!   certificate that does not name the host refuses the login with class 08.

use quartet_tests::*;
use std::path::Path;

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const START_HINT: &str = "PostgreSQL is not reachable on 127.0.0.1:5432; start it with \
    `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`";

/// Fails (never skips) when PostgreSQL is down or has no TLS; returns its certificate
/// file (`ssl_cert_file`).
async fn require_postgres_tls() -> String {
    let (client, conn) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test",
        tokio_postgres::NoTls,
    )
    .await
    .unwrap_or_else(|e| panic!("{START_HINT}: {e}"));
    tokio::spawn(conn);
    let ssl: String = client
        .query_one("show ssl", &[])
        .await
        .expect("show ssl")
        .get(0);
    assert_eq!(
        ssl, "on",
        "PostgreSQL on 127.0.0.1:5432 has ssl = off; set `ssl = on` with a certificate in \
         its postgresql.conf (Debian: the snakeoil one) and reload it"
    );
    client
        .query_one("show ssl_cert_file", &[])
        .await
        .expect("show ssl_cert_file")
        .get(0)
}

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
connect_attempts = 1
{extra}
"#
    )
}

fn tls_keys(pki: &Pki) -> String {
    format!(
        "tls = {{ cert = {:?}, key = {:?} }}",
        pki.cert_path.display().to_string(),
        pki.key_path.display().to_string()
    )
}

/// Runs psql with `conninfo` and one command per `-c`; (success, stdout, stderr).
async fn psql(conninfo: &str, commands: &[&str]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new("psql");
    cmd.arg(conninfo).args(["-X", "-A", "-t"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    cmd.env("PGPASSWORD", "secret")
        .env("PGCONNECT_TIMEOUT", "10");
    let out = bounded("psql", cmd.output()).await.expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const SERVER_SSL: &str = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";

#[tokio::test]
async fn psql_verify_full_to_the_listener_and_tls_to_postgres() {
    require_postgres_tls().await;
    let dir = tempdir();
    let pki = Pki::generate(dir.path());
    let config = format!(
        "{SERVER}{}{}",
        listener(
            "tls",
            &format!("{PG_URL}?sslmode=require"),
            &format!("pool_mode = \"transaction\"\n{}", tls_keys(&pki))
        ),
        listener("plain", PG_URL, "")
    );
    let gw = Gateway::start(&config).await;
    let addr = gw.sql_addr("tls");

    // libpq checks the listener's certificate against the test CA and its name.
    let conninfo = format!(
        "host=127.0.0.1 port={} user=app dbname=test sslmode=verify-full sslrootcert={}",
        addr.port(),
        pki.ca_path.display()
    );
    let (ok, out, err) = psql(&conninfo, &["\\conninfo", SERVER_SSL]).await;
    assert!(ok, "psql over tls failed: {err}");
    assert!(out.contains("SSL connection"), "not tls to quartet: {out}");
    assert!(
        out.lines().any(|l| l.trim() == "t"),
        "quartet's server connection is not tls (sslmode=require): {out}"
    );

    // TLS is offered, not imposed: a plain client logs in too.
    let conninfo = format!(
        "host=127.0.0.1 port={} user=app dbname=test sslmode=disable",
        addr.port()
    );
    let (ok, out, err) = psql(&conninfo, &["select 40 + 2"]).await;
    assert!(ok && out.trim() == "42", "plain client: {out}{err}");

    // A listener without tls answers N: a client that requires TLS is refused, and a
    // backend url without sslmode gives a plain server connection.
    let plain = gw.sql_addr("plain");
    let conninfo = format!(
        "host=127.0.0.1 port={} user=app dbname=test sslmode=require",
        plain.port()
    );
    let (ok, _, err) = psql(&conninfo, &["select 1"]).await;
    assert!(!ok, "sslmode=require accepted by a listener without tls");
    assert!(err.contains("SSL"), "{err}");
    let conninfo = format!(
        "host=127.0.0.1 port={} user=app dbname=test sslmode=prefer",
        plain.port()
    );
    let (ok, out, err) = psql(&conninfo, &[SERVER_SSL]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "f", "a url without sslmode gave tls");
}

#[tokio::test]
async fn verify_ca_against_the_cluster_certificate_and_verify_full_refused_by_name() {
    let cert = require_postgres_tls().await;
    assert!(
        Path::new(&cert).is_file(),
        "the cluster's ssl_cert_file {cert} is not readable here"
    );
    let config = format!(
        "{SERVER}{}{}",
        listener(
            "ca",
            &format!("{PG_URL}?sslmode=verify-ca&sslrootcert={cert}"),
            ""
        ),
        // Debian's snakeoil certificate names the machine, not 127.0.0.1.
        listener(
            "full",
            &format!("{PG_URL}?sslmode=verify-full&sslrootcert={cert}"),
            ""
        )
    );
    let gw = Gateway::start(&config).await;

    let ca = gw.sql_addr("ca");
    let conninfo = format!("host=127.0.0.1 port={} user=app dbname=test", ca.port());
    let (ok, out, err) = psql(&conninfo, &[SERVER_SSL]).await;
    assert!(ok, "verify-ca: {err}");
    assert_eq!(out.trim(), "t", "verify-ca server connection not tls");

    let full = gw.sql_addr("full");
    let conninfo = format!("host=127.0.0.1 port={} user=app dbname=test", full.port());
    let (ok, _, err) = psql(&conninfo, &["select 1"]).await;
    assert!(!ok, "verify-full accepted a certificate for another name");
    assert!(err.contains("tls"), "the client is told why: {err}");
    // The process serves on.
    let (ok, _, err) = psql(
        &format!("host=127.0.0.1 port={} user=app dbname=test", ca.port()),
        &["select 1"],
    )
    .await;
    assert!(ok, "{err}");
}

#[tokio::test]
async fn a_missing_certificate_file_is_a_config_error_naming_the_key() {
    let config = format!(
        "{SERVER}{}",
        listener(
            "tls",
            PG_URL,
            "tls = { cert = \"/nonexistent/cert.pem\", key = \"/nonexistent/key.pem\" }"
        )
    );
    let dir = tempdir();
    let path = dir.path().join("quartet.toml");
    std::fs::write(&path, &config).expect("write config");
    let out = std::process::Command::new(quartet_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run quartet check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("sql.listeners[0].tls.cert: no such file"),
        "{stderr}"
    );
}
