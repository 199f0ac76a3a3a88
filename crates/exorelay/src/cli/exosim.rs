//! `exorelay exosim`: run the simulated Exchange Online endpoint of [`crate::exosim`] until
//! SIGTERM or SIGINT, printing one line per accepted message on standard output.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use attribution::Ruleset;

use crate::exosim::{self, Options, SourceIp};

/// Flags of `exorelay exosim`.
#[derive(clap::Args)]
pub struct ExosimArgs {
    /// The tenants: a file of `[tenant.<id>]` tables, or a relay configuration.
    #[arg(long, value_name = "FILE")]
    tenants: PathBuf,
    /// Where to listen; port 0 picks a free port. The bound address is printed to standard
    /// error as `exosim listening on ADDR`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2525")]
    listen: SocketAddr,
    /// Server certificate chain (PEM); with --key, STARTTLS is offered.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// CA certificates (PEM) that make a client certificate trusted; repeatable. Without any,
    /// every client certificate counts as untrusted.
    #[arg(long, value_name = "FILE")]
    client_ca: Vec<PathBuf>,
    /// Write each accepted message to DIR/<tenant>/<n>.eml.
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// The rule set: before (until November 2023) or after (current).
    #[arg(long, value_enum, default_value = "after")]
    ruleset: RulesetArg,
    /// The source IP the model sees instead of the real (loopback) peer: `IP` for every
    /// connection, or `PEER=IP` for connections from PEER; repeatable.
    #[arg(long, value_name = "IP|PEER=IP")]
    source_ip: Vec<String>,
    /// Name in the greeting and appended to replies as EXO appends its server name.
    #[arg(long, default_value = "exosim.test")]
    hostname: String,
}

/// `--ruleset` values.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum RulesetArg {
    /// The rules until November 2023: the header From domain counts.
    Before,
    /// The current rules.
    After,
}

impl From<RulesetArg> for Ruleset {
    fn from(value: RulesetArg) -> Ruleset {
        match value {
            RulesetArg::Before => Ruleset::Before,
            RulesetArg::After => Ruleset::After,
        }
    }
}

/// Runs the simulator until a shutdown signal.
pub fn run(args: ExosimArgs) -> anyhow::Result<ExitCode> {
    let world = crate::tenants::load(&args.tenants).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut source_ip = SourceIp::default();
    for text in &args.source_ip {
        source_ip
            .add(text)
            .map_err(|e| anyhow::anyhow!("--source-ip: {e}"))?;
    }
    let (notify, mut received) = tokio::sync::mpsc::unbounded_channel();
    let mut options = Options::new(world, args.listen);
    options.hostname = args.hostname;
    options.server_cert = args.cert.zip(args.key);
    options.client_ca = args.client_ca;
    options.store = args.store;
    options.ruleset = args.ruleset.into();
    options.source_ip = source_ip;
    options.notify = Some(notify);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let printer = tokio::spawn(async move {
            while let Some(r) = received.recv().await {
                let file = r
                    .file
                    .as_ref()
                    .map(|f| format!(" file={}", f.display()))
                    .unwrap_or_default();
                println!(
                    "received tenant={} direction={} decided_by={} from=<{}> to={}{file} ({} bytes)",
                    r.tenant,
                    r.direction,
                    r.verdict.decided_by,
                    r.mail_from,
                    r.recipients.join(","),
                    r.content.len()
                );
            }
        });
        let all = exosim::run(
            options,
            |addr| eprintln!("exosim listening on {addr}"),
            shutdown_signal(),
        )
        .await?;
        printer.abort();
        eprintln!("exosim stopped; {} message(s) accepted", all.len());
        Ok(ExitCode::SUCCESS)
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
