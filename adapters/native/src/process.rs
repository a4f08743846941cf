//! Running a tool: no shell, a clean environment, bounded output, and no orphan when the
//! call is dropped.
//!
//! Why a guard on top of `kill_on_drop(true)`: tokio's `kill_on_drop` sends SIGKILL when the
//! `Child` is dropped but leaves the reaping to a best-effort background queue, so for a
//! while the process stays a zombie in the process table. [`Running`] kills it and hands
//! the `Child` to a task that waits for it, so a timed-out call leaves nothing behind.
//! `kill_on_drop(true)` stays set for the case where no runtime is there to run that task.
//!
//! Each tool runs in a process group of its own, and the whole group is killed: a tool that
//! started helpers of its own (a Python CLI calling `iscsiadm`, a script) leaves none of
//! them behind either.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

/// Most bytes of standard output kept; a tool writing more fails the call.
pub const MAX_STDOUT: usize = 4 * 1024 * 1024;
/// Bytes of standard error kept (its tail, where tools put the reason they failed).
pub const STDERR_TAIL: usize = 4 * 1024;

/// The `PATH` a tool runs with (its environment is cleared first), as oslo.rootwrap does.
const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How a finished process went.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    /// The last [`STDERR_TAIL`] bytes of standard error.
    pub stderr_tail: Vec<u8>,
}

impl Finished {
    /// The standard error's tail as text, trimmed, for messages.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr_tail)
            .trim()
            .to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the output of {program} failed")]
    Io {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} wrote more than {limit} bytes to standard output")]
    OutputTooLarge { program: String, limit: usize },
}

/// A command for `program` with `args`: never through a shell, standard input closed, the
/// environment cleared but for a safe `PATH` and the C locale.
pub fn command<I, S>(program: &Path, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", SAFE_PATH)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

/// Runs `cmd` to its end and collects its output. Dropping the returned future kills the
/// process and reaps it.
pub async fn run(mut cmd: Command) -> Result<Finished, ProcessError> {
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
        program: program.clone(),
        source,
    })?;
    let mut running = Running { child: Some(child) };
    let child = running.child.as_mut().ok_or_else(|| ProcessError::Io {
        program: program.clone(),
        source: std::io::Error::other("child already taken"),
    })?;
    tracing::debug!(program = %program, pid = ?child.id(), "process started");
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let io_err = |source| ProcessError::Io {
        program: program.clone(),
        source,
    };
    // `try_join!`: too much output ends the wait at once (the process is then killed as
    // `running` drops), rather than waiting for a standard error that never closes.
    let (stdout, stderr_tail) = match tokio::try_join!(read_capped(stdout), read_tail(stderr)) {
        Ok(both) => both,
        Err(ReadError::TooLarge) => {
            return Err(ProcessError::OutputTooLarge {
                program: program.clone(),
                limit: MAX_STDOUT,
            })
        }
        Err(ReadError::Io(e)) => return Err(io_err(e)),
    };
    let status = child.wait().await.map_err(io_err)?;
    running.child = None;
    Ok(Finished {
        status,
        stdout,
        stderr_tail,
    })
}

enum ReadError {
    Io(std::io::Error),
    TooLarge,
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// Reads a pipe to its end, refusing more than [`MAX_STDOUT`] bytes.
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>) -> Result<Vec<u8>, ReadError> {
    let Some(pipe) = pipe else {
        return Ok(Vec::new());
    };
    let mut buf = Vec::new();
    let limit = u64::try_from(MAX_STDOUT).unwrap_or(u64::MAX);
    pipe.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .await?;
    if buf.len() > MAX_STDOUT {
        return Err(ReadError::TooLarge);
    }
    Ok(buf)
}

/// Reads a pipe to its end, keeping its last [`STDERR_TAIL`] bytes.
async fn read_tail(pipe: Option<impl AsyncRead + Unpin>) -> Result<Vec<u8>, ReadError> {
    let Some(mut pipe) = pipe else {
        return Ok(Vec::new());
    };
    let mut tail = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = pipe.read(&mut chunk).await?;
        if n == 0 {
            return Ok(tail);
        }
        tail.extend_from_slice(&chunk[..n]);
        if tail.len() > STDERR_TAIL {
            let cut = tail.len() - STDERR_TAIL;
            tail.drain(..cut);
        }
    }
}

/// A started process that is killed and reaped if it is dropped before it ended.
struct Running {
    child: Option<Child>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let pid = child.id();
        // The group first (its id is the tool's pid, see `process_group(0)`), so helpers
        // the tool started go too; then the tool itself, in case it left the group.
        if let Some(group) = pid
            .and_then(|p| i32::try_from(p).ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            if let Err(e) =
                rustix::process::kill_process_group(group, rustix::process::Signal::KILL)
            {
                tracing::debug!(?pid, error = %e, "cannot kill an abandoned process group");
            }
        }
        if let Err(e) = child.start_kill() {
            tracing::warn!(?pid, error = %e, "cannot kill an abandoned process");
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(e) = child.wait().await {
                        tracing::warn!(?pid, error = %e, "cannot reap a killed process");
                    }
                });
            }
            // No runtime: `kill_on_drop` and tokio's orphan queue take over.
            Err(_) => drop(child),
        }
        tracing::debug!(?pid, "abandoned process killed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn collects_output_and_status() {
        let f = run(command(
            Path::new("/bin/sh"),
            ["-c", "echo out; echo err >&2; exit 3"],
        ))
        .await
        .expect("runs");
        assert_eq!(f.status.code(), Some(3));
        assert_eq!(f.stdout, b"out\n");
        assert_eq!(f.stderr_text(), "err");
    }

    #[tokio::test]
    async fn the_environment_is_clean() {
        let f = run(command(Path::new("/usr/bin/env"), Vec::<&str>::new()))
            .await
            .expect("runs");
        let mut vars: Vec<String> = String::from_utf8_lossy(&f.stdout)
            .lines()
            .map(|l| l.split('=').next().unwrap_or_default().to_string())
            .collect();
        vars.sort();
        assert_eq!(vars, vec!["LC_ALL", "PATH"]);
    }

    #[tokio::test]
    async fn endless_output_is_cut_not_awaited() {
        let err = run(command(Path::new("/usr/bin/yes"), Vec::<&str>::new()))
            .await
            .expect_err("too much");
        assert!(matches!(err, ProcessError::OutputTooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let err = run(command(Path::new("/nonexistent/tool"), Vec::<&str>::new()))
            .await
            .expect_err("no such program");
        assert!(matches!(err, ProcessError::Spawn { .. }), "{err}");
    }
}
