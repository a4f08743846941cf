//! Throwaway PostgreSQL clusters (initdb in a temp dir, their own port), stopped and
//! removed on drop.

#![allow(dead_code)]

use super::unique;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn bin(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .flatten()
        .map(|d| d.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| panic!("{name} not found"))
}

/// Runs a PostgreSQL server program as the `postgres` user (servers refuse root).
pub fn as_postgres(program: &Path, args: &[&str]) -> std::process::Output {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    let mut cmd = if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    let out = cmd.args(args).output().expect("run a postgres program");
    assert!(
        out.status.success(),
        "{program:?} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A throwaway cluster; stopped and removed on drop.
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    running: bool,
}

impl Cluster {
    fn new_dir() -> (PathBuf, u16) {
        let dir = std::env::temp_dir().join(unique("quartet_pg2"));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        (dir, port)
    }

    /// A new primary: initdb, then started.
    pub fn start() -> Cluster {
        Self::start_with(&["-A", "trust"])
    }

    /// A new primary made with these extra initdb arguments, then started.
    pub fn start_with(init: &[&str]) -> Cluster {
        let (dir, port) = Self::new_dir();
        let data = dir.join("data");
        as_postgres(
            &bin("initdb"),
            &[
                &["-D", data.to_str().unwrap(), "-U", "postgres", "--no-sync"],
                init,
            ]
            .concat(),
        );
        let mut c = Cluster {
            dir,
            port,
            running: false,
        };
        c.run();
        c
    }

    /// A streaming replica of `primary` (pg_basebackup -R), started.
    pub fn replica_of(primary: &Cluster) -> Cluster {
        let (dir, port) = Self::new_dir();
        let data = dir.join("data");
        as_postgres(
            &bin("pg_basebackup"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-D",
                data.to_str().unwrap(),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
        );
        let mut c = Cluster {
            dir,
            port,
            running: false,
        };
        c.run();
        c
    }

    pub fn run(&mut self) {
        let data = self.dir.join("data");
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log");
        as_postgres(
            &bin("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        self.running = true;
    }

    pub fn promote(&self) {
        let data = self.dir.join("data");
        as_postgres(
            &bin("pg_ctl"),
            &["-D", data.to_str().unwrap(), "-w", "promote"],
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/test", self.port)
    }

    pub fn stop(&mut self) {
        if self.running {
            self.running = false;
            let data = self.dir.join("data");
            as_postgres(
                &bin("pg_ctl"),
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let data = self.dir.join("data");
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bin("pg_ctl"))
                .args(["-D", data.to_str().unwrap_or(""), "-m", "immediate", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
