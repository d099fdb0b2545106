use std::process::ExitCode;

use clap::Parser;
use tripmine::cli::{Cli, execute, exit_code, init_logging, reexec_with_passive_openmp};

fn main() -> ExitCode {
    reexec_with_passive_openmp();
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
