//! The `intercom` binary: the library's command line, with no filters of its own.

use std::process::ExitCode;

/// mimalloc: fewer cycles per request than glibc's allocator under many small,
/// short-lived allocations across worker threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    intercom::cli::run(intercom::filter::FilterRegistry::new())
}
