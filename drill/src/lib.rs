//! `quartet drill SCENARIO.toml`: test a resilience policy before production does.
//!
//! A scenario names a running Quartet (its public and admin addresses), the load to send
//! through it (REST requests, RPC calls, SQL statements or driver operations, at a rate or
//! a concurrency), a timeline of faults set on its admin API (request faults, breaker
//! states) and expectations (success rate, latency percentiles, breakers opening and
//! closing, no request outliving its timeout, the share of a status). The drill runs it,
//! shows a live progress line, then prints a summary table, writes a JSON result and a
//! self-contained HTML report, and exits:
//!
//! - `0` when every expectation holds,
//! - `1` when one fails (or the drill could not run to its end),
//! - `2` when the scenario is invalid (the reason names the file, line and key).
//!
//! The gateway's CLI calls [`run`]; tests and other tools can call [`drill`] for the data:
//!
//! ```no_run
//! # use std::path::Path;
//! let options = quartet_drill::Options::default(); // NAME.result.json, NAME.report.html
//! let status = quartet_drill::run(Path::new("drills/rest-half-failing.toml"), &options);
//! # let _ = status;
//! ```

pub mod admin;
pub mod expect;
pub mod html;
pub mod load;
pub mod location;
pub mod record;
pub mod result;
pub mod runner;
pub mod scenario;

pub use location::KeyPath;
pub use result::DrillResult;
pub use runner::ProgressMode;
pub use scenario::{Plan, ScenarioError};

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit status when every expectation holds.
pub const EXIT_PASS: u8 = 0;
/// Exit status when an expectation fails or the drill could not run to its end.
pub const EXIT_FAIL: u8 = 1;
/// Exit status when the scenario is invalid.
pub const EXIT_INVALID: u8 = 2;

/// How [`run`] and [`drill`] behave beyond the scenario.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Where the JSON result goes (default: `NAME.result.json` beside the scenario).
    pub result_path: Option<PathBuf>,
    /// Where the HTML report goes (default: `NAME.report.html` beside the scenario).
    pub report_path: Option<PathBuf>,
    pub progress: ProgressMode,
    /// Do not stop on Ctrl-C (for callers that handle signals themselves, and tests).
    pub ignore_ctrl_c: bool,
    /// Print nothing on stdout (the summary table).
    pub quiet: bool,
}

/// What a finished drill produced.
#[derive(Debug)]
pub struct Outcome {
    pub result: DrillResult,
    pub result_path: PathBuf,
    pub report_path: PathBuf,
}

impl Outcome {
    pub fn exit_status(&self) -> u8 {
        if self.result.pass {
            EXIT_PASS
        } else {
            EXIT_FAIL
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error("the drill could not run")]
    Run(#[from] runner::RunError),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
}

impl DrillError {
    /// The exit status this error means: 2 for an invalid scenario, 1 otherwise.
    pub fn exit_status(&self) -> u8 {
        match self {
            DrillError::Scenario(_) => EXIT_INVALID,
            DrillError::Run(e) if e.is_invalid_scenario() => EXIT_INVALID,
            _ => EXIT_FAIL,
        }
    }
}

/// An error with its causes, `a: b: c`.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}

/// `NAME.result.json` and `NAME.report.html` beside the scenario, unless the options say.
pub fn output_paths(scenario: &Path, plan: &Plan, options: &Options) -> (PathBuf, PathBuf) {
    let dir = scenario.parent().unwrap_or(Path::new("."));
    let stem: String = plan
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let result = options
        .result_path
        .clone()
        .unwrap_or_else(|| dir.join(format!("{stem}.result.json")));
    let report = options
        .report_path
        .clone()
        .unwrap_or_else(|| dir.join(format!("{stem}.report.html")));
    (result, report)
}

/// Runs a drill: reads the scenario, runs it, evaluates, writes the result and the report.
pub async fn drill(scenario: &Path, options: &Options) -> Result<Outcome, DrillError> {
    let plan = scenario::load(scenario)?;
    let (result_path, report_path) = output_paths(scenario, &plan, options);
    let interrupt = async {
        if options.ignore_ctrl_c {
            std::future::pending::<()>().await
        } else if tokio::signal::ctrl_c().await.is_err() {
            // No signal handling here: never interrupt.
            std::future::pending::<()>().await
        }
    };
    let recording = runner::execute(&plan, options.progress, interrupt).await?;
    let verdicts = expect::evaluate(&plan, &recording);
    let result = result::build(&plan, &recording, verdicts);
    write(
        &result_path,
        serde_json::to_vec_pretty(&result).unwrap_or_default(),
    )?;
    write(&report_path, html::render(&result).into_bytes())?;
    Ok(Outcome {
        result,
        result_path,
        report_path,
    })
}

fn write(path: &Path, bytes: Vec<u8>) -> Result<(), DrillError> {
    std::fs::write(path, bytes).map_err(|source| DrillError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The entry point of `quartet drill SCENARIO.toml`: runs the drill on its own runtime,
/// prints the summary table, and returns 0 (every expectation holds), 1 (one fails, or
/// the drill could not run) or 2 (the scenario is invalid; the reason is on stderr).
pub fn run(scenario: &Path, options: &Options) -> ExitCode {
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(DrillError::Runtime)
        .and_then(|rt| rt.block_on(drill(scenario, options)));
    match outcome {
        Ok(o) => {
            if !options.quiet {
                print!("{}", result::table(&o.result));
                println!(
                    "result: {}\nreport: {}",
                    o.result_path.display(),
                    o.report_path.display()
                );
            }
            ExitCode::from(o.exit_status())
        }
        Err(DrillError::Scenario(e)) => {
            // Already `FILE:LINE: KEY: message`, its cause included.
            eprintln!("quartet drill: {e}");
            ExitCode::from(EXIT_INVALID)
        }
        Err(e) => {
            eprintln!("quartet drill: {}", Chain(&e));
            ExitCode::from(e.exit_status())
        }
    }
}
