//! `quartet`: args -> config -> tracing -> build -> serve (see `quartet::cli`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    quartet::cli::main(quartet::cli::Cli::parse())
}
