//! `exorelay demo`: the relay on 127.0.0.1:2525 with a built-in configuration and a temporary
//! spool, for trying it out with swaks on a fresh machine.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::config::Config;

/// The built-in configuration; `@SPOOL@` is replaced by a temporary directory.
const DEMO_CONFIG: &str = include_str!("demo.toml");

/// Runs the relay with the built-in configuration until Ctrl-C.
pub fn run() -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir().context("cannot create a temporary spool directory")?;
    let spool = dir.path().join("spool");
    let text = DEMO_CONFIG.replace("@SPOOL@", &spool.display().to_string());
    let config = Config::parse(&text, Path::new("(built-in demo configuration)"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "exorelay demo: listening on 127.0.0.1:2525, spool {}\n\
         try: swaks --server 127.0.0.1:2525 --from app@contoso.com --to someone@example.net\n\
         then: exorelay queue list --spool {}\n\
         stop with Ctrl-C",
        spool.display(),
        spool.display()
    );
    super::serve::serve(config)
}
