//! `quartet`: args -> config -> tracing -> build -> serve (see `quartet::cli`).

use clap::Parser;

/// mimalloc: fewer CPU cycles per request than the system allocator on the REST path
/// (bench/README.md). `quartet_alloc` calls it without the aligned path for the ordinary
/// alignments, which the `mimalloc` crate takes for every allocation.
#[global_allocator]
static ALLOCATOR: quartet_alloc::Mimalloc = quartet_alloc::Mimalloc;

fn main() -> std::process::ExitCode {
    quartet::cli::main(quartet::cli::Cli::parse())
}
