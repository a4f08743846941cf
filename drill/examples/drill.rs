//! Runs a drill without the gateway's CLI (which calls the same function):
//!
//! ```sh
//! cargo run -p quartet-drill --example drill -- drills/rest-half-failing.toml [--result FILE] [--report FILE]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let mut scenario = None;
    let mut options = quartet_drill::Options::default();
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--result") => options.result_path = args.next().map(PathBuf::from),
            Some("--report") => options.report_path = args.next().map(PathBuf::from),
            _ if scenario.is_none() => scenario = Some(PathBuf::from(a)),
            _ => {
                eprintln!("usage: drill SCENARIO.toml [--result FILE] [--report FILE]");
                return ExitCode::from(quartet_drill::EXIT_INVALID);
            }
        }
    }
    let Some(scenario) = scenario else {
        eprintln!("usage: drill SCENARIO.toml [--result FILE] [--report FILE]");
        return ExitCode::from(quartet_drill::EXIT_INVALID);
    };
    quartet_drill::run(&scenario, &options)
}
