//! The `keyward` command.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}

// mimalloc: allocation was a tenth of keyward's CPU under load with glibc malloc (see
// benches/RESULTS.md); it costs about 20 MiB more RSS at 1,000 idle connections.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
