//! Shared test helpers: temporary databases on the real servers, the Python venv.

#![allow(dead_code)]

use std::path::PathBuf;

use sqlx::{Connection, Executor};

pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const MARIADB: &str = "mysql://root@127.0.0.1:3306/test";

/// A database created for one test and dropped by [`TempDb::drop_db`].
pub struct TempDb {
    pub url: String,
    admin: String,
    name: String,
}

impl TempDb {
    pub async fn sqlite(dir: &tempfile::TempDir) -> Self {
        Self {
            url: format!("sqlite://{}", dir.path().join("identity.db").display()),
            admin: String::new(),
            name: String::new(),
        }
    }

    /// `CREATE DATABASE quartet_it_<uuid>` on the server behind `admin`.
    pub async fn create(admin: &str, what: &str) -> Self {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(admin)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{what} is not reachable at {admin} ({e}): start it with `bash tests/run.sh` \
                 (or `docker-compose up -d postgres mariadb`)"
                )
            });
        let name = format!("quartet_it_{}", uuid::Uuid::new_v4().simple());
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create test database");
        conn.close().await.ok();
        let base = admin.rsplit_once('/').expect("url with database").0;
        Self {
            url: format!("{base}/{name}"),
            admin: admin.to_owned(),
            name,
        }
    }

    pub async fn drop_db(self) {
        if self.name.is_empty() {
            return;
        }
        let mut conn = sqlx::AnyConnection::connect(&self.admin)
            .await
            .expect("reconnect to drop the test database");
        conn.execute(format!("DROP DATABASE {}", self.name).as_str())
            .await
            .expect("drop test database");
        conn.close().await.ok();
    }
}

/// The Python interpreter of the test venv: `$QUARTET_VENV/bin/python`, default
/// `.venv` at the workspace root.
pub fn python() -> PathBuf {
    let venv = std::env::var_os("QUARTET_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv"));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "no Python interpreter at {} (QUARTET_VENV or .venv at the workspace root): run `bash tests/run.sh` to create it with the real peers",
        python.display()
    );
    python
}
