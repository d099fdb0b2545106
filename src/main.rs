use std::process::ExitCode;

use clap::Parser;
use tripmine::cli::{Cli, execute, exit_code, init_logging, reexec_with_passive_openmp};

fn main() -> ExitCode {
    reexec_with_passive_openmp();
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
