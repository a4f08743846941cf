//! `quartet`: args -> config -> tracing -> build -> serve (see `quartet::cli`).

use clap::Parser;

/// mimalloc: fewer CPU cycles per request than the system allocator on the REST path
/// (bench/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    quartet::cli::main(quartet::cli::Cli::parse())
}
