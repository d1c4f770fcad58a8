//! The `keyward` command.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}

// Many small, short-lived allocations per request: mimalloc serves them faster than glibc.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
