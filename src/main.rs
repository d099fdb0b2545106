use std::process::ExitCode;

use clap::Parser;
use tripmine::cli::{Cli, execute, exit_code, init_logging};
use tripmine::process::{reexec_with_passive_openmp, release_free_heap_between_stages};

fn main() -> ExitCode {
    // The process is the job: its policy is set here, not in the library.
    reexec_with_passive_openmp();
    release_free_heap_between_stages(true);
    quiet_contained_panics();
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.log_format);
    match execute(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// A panic inside a file reader becomes an error naming the file (the library contains it);
/// only other panics, bugs, are printed by the default hook.
fn quiet_contained_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !tripmine::error::panic_is_contained() {
            default(info);
        }
    }));
}
