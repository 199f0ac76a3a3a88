//! `exorelay config check FILE`: validate a configuration and print the effective settings.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;

/// Prints the effective configuration, or the one error with its file, line and field.
pub fn run(file: &Path) -> anyhow::Result<ExitCode> {
    match Config::load(file) {
        Ok(config) => {
            println!("{config}");
            println!("configuration OK");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
