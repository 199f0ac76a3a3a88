//! `relay-bench`: exorelay against a private Postfix 3.7, side by side, in one run.
//!
//! Both relays forward into the same counting SMTP sink (`sink`); Postfix's `smtp-source`
//! generates the load. For each workload (message size × parallel sessions × connection per
//! message or reused), runs alternate `direct` (smtp-source straight into the sink: the ceiling),
//! exorelay, Postfix, repeated `--reps` times, each relay started fresh on a fresh queue
//! directory. In the TLS workloads both relays must use STARTTLS to the sink (the hop to EXO in
//! production); smtp-source → relay, and `direct`, stay plaintext. The time measured runs from
//! starting smtp-source until the sink has received every message. Medians, the exorelay/Postfix
//! throughput ratio and exorelay's share of the ceiling are printed as Markdown tables, followed
//! by the memory and start-up measurements (`extra`). With `--sides direct,lean,exorelay,postfix`
//! a fourth side, `lean` (a lean durable reference relay, `lean.rs`), runs in the plaintext
//! workloads too, and its own table compares it with `direct` and exorelay.
//!
//! Every loop is bounded in count and time; everything listens on 127.0.0.1 only. The entry
//! point for humans is `bench/relay-vs-postfix.sh`.

mod extra;
mod lean;
mod relay;
mod sink;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use crate::relay::{ExoExtra, Exorelay, Postfix, RssSampler};
use crate::sink::Sink;

/// Envelope sender and recipient of every generated message.
const FROM: &str = "from@contoso.com";
const TO: &str = "to@example.net";

/// Longest one measured run may take before it is abandoned (and reported as failed).
const RUN_DEADLINE: Duration = Duration::from_secs(240);

#[derive(Parser)]
#[command(about = "exorelay vs Postfix relay benchmark (see bench/relay-vs-postfix.sh)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the matrix and the extra measurements; prints Markdown tables on stdout.
    Run(RunArgs),
    /// Runs only the counting sink on 127.0.0.1 (for profiling by hand); prints its port,
    /// then the message count every second, for at most `--seconds`.
    Sink {
        /// How long to run.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
    /// Runs the lean durable reference relay (the `lean` side) in the foreground, until killed.
    Lean {
        /// Its port on 127.0.0.1.
        #[arg(long)]
        port: u16,
        /// The sink's port on 127.0.0.1.
        #[arg(long)]
        upstream_port: u16,
        /// Its journal file (created, 16 MiB).
        #[arg(long)]
        journal: PathBuf,
    },
    /// Fills a spool directory with COUNT queued 1 KiB messages (deferred, due in an hour).
    MakeSpool {
        /// The spool directory (created).
        dir: PathBuf,
        /// How many messages.
        count: usize,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Small message counts, fewer workloads (about 2 minutes instead of about 11).
    #[arg(long)]
    quick: bool,
    /// Repetitions per relay and workload (at least 3 for published numbers).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// The exorelay release binary.
    #[arg(long, default_value = "target/release/exorelay")]
    exorelay: PathBuf,
    /// Postfix's `postfix` command.
    #[arg(long, default_value = "/usr/sbin/postfix")]
    postfix: PathBuf,
    /// Postfix's `smtp-source`.
    #[arg(long, default_value = "/usr/sbin/smtp-source")]
    smtp_source: PathBuf,
    /// Only workloads whose label contains this (e.g. `1KiB/10/`).
    #[arg(long)]
    only: Option<String>,
    /// Only these sides, comma-separated: direct,exorelay,postfix (for investigation; the
    /// published tables need all three), and `lean`, the lean durable reference relay (its
    /// own table).
    #[arg(long, default_value = "direct,exorelay,postfix")]
    sides: String,
    /// Skip the throughput matrix.
    #[arg(long)]
    no_matrix: bool,
    /// Skip the memory and start-up measurements.
    #[arg(long)]
    no_extra: bool,
    /// Messages in the spool for the start-up measurement.
    #[arg(long)]
    spool_messages: Option<usize>,
    /// Where to keep run directories (default: a temporary directory, removed at the end).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

/// One workload of the matrix.
#[derive(Debug, Clone, Copy)]
struct Workload {
    size: usize,
    sessions: usize,
    reuse: bool,
    messages: usize,
    /// The relays deliver to the sink over STARTTLS (smtp-source → relay stays plaintext).
    tls: bool,
}

impl Workload {
    fn label(&self) -> String {
        format!(
            "{}/{}/{}{}",
            size_label(self.size),
            self.sessions,
            if self.reuse { "reuse" } else { "conn" },
            if self.tls { "/tls" } else { "" }
        )
    }
}

/// Which side a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Direct,
    Lean,
    Exorelay,
    Postfix,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Direct => "direct",
            Side::Lean => "lean",
            Side::Exorelay => "exorelay",
            Side::Postfix => "postfix",
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, Copy)]
struct Sample {
    secs: f64,
    peak_rss_kib: u64,
    peak_pss_kib: u64,
    /// CPU time of the relay (all its processes) during the run, in clock ticks.
    cpu_ticks: u64,
    upstream_connections: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run(args) => run(&args),
        Cmd::Sink { seconds } => {
            let sink = Sink::start()?;
            println!("sink listening on 127.0.0.1:{}", sink.port);
            for _ in 0..seconds {
                std::thread::sleep(Duration::from_secs(1));
                println!(
                    "messages {} connections {}",
                    sink.messages(),
                    sink.connections()
                );
            }
            Ok(())
        }
        Cmd::Lean {
            port,
            upstream_port,
            journal,
        } => lean::Lean::bind(port, upstream_port, &journal)?.run(),
        Cmd::MakeSpool { dir, count } => {
            let started = Instant::now();
            extra::make_spool(&dir, count)?;
            println!(
                "{count} messages written to {} in {:.1}s",
                dir.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

fn size_label(size: usize) -> String {
    if size >= 1 << 20 {
        format!("{}MiB", size >> 20)
    } else {
        format!("{}KiB", size >> 10)
    }
}

/// The matrix. Counts are chosen so that a run lasts a few seconds at the throughput measured
/// on the reference machine (docs/PERFORMANCE.md): full run (matrix and extras) about 11
/// minutes, `--quick` (1 and 20 KiB at 10 and 50 sessions, one connection per message, no TLS)
/// about 2 minutes. The full matrix ends with the TLS rows: 1 and 20 KiB at 10 and 50
/// sessions, one connection per message.
fn workloads(quick: bool) -> Vec<Workload> {
    let mut list = Vec::new();
    for reuse in [false, true] {
        for size in [1 << 10, 20 << 10, 1 << 20] {
            for sessions in [1, 10, 50] {
                if quick && (sessions == 1 || size == 1 << 20 || reuse) {
                    continue;
                }
                let messages = match (size, sessions) {
                    _ if quick => 800,
                    (1024, 1) => 1000,
                    (1024, _) => 3000,
                    (s, 1) if s < 1 << 20 => 1000,
                    (s, _) if s < 1 << 20 => 2000,
                    (_, 1) => 100,
                    (_, _) => 300,
                };
                list.push(Workload {
                    size,
                    sessions,
                    reuse,
                    messages,
                    tls: false,
                });
            }
        }
    }
    if !quick {
        for size in [1 << 10, 20 << 10] {
            for sessions in [10, 50] {
                list.push(Workload {
                    size,
                    sessions,
                    reuse: false,
                    messages: if size == 1 << 10 { 3000 } else { 2000 },
                    tls: true,
                });
            }
        }
    }
    list
}

fn run(args: &RunArgs) -> anyhow::Result<()> {
    for tool in [&args.exorelay, &args.postfix, &args.smtp_source] {
        if !tool.exists() {
            bail!(
                "{} not found (run bench/relay-vs-postfix.sh)",
                tool.display()
            );
        }
    }
    let exorelay = std::fs::canonicalize(&args.exorelay)?;
    let temp;
    let work = match &args.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("relay-bench.")
                .tempdir_in("/var/tmp")?;
            temp.path().to_owned()
        }
    };
    let sink = Sink::start()?;
    // The relays trust the sink's STARTTLS certificate through this CA (TLS workloads).
    let ca_file = work.join("sink-ca.pem");
    sink.write_ca(&ca_file)?;
    let started = Instant::now();
    eprintln!(
        "relay-bench: sink on 127.0.0.1:{}, work dir {}",
        sink.port,
        work.display()
    );
    let mut out = String::new();
    if !args.no_matrix {
        let list: Vec<Workload> = workloads(args.quick)
            .into_iter()
            .filter(|w| args.only.as_ref().is_none_or(|o| w.label().contains(o)))
            .collect();
        let mut results = Vec::new();
        let mut run_no = 0;
        let mut run_dirs = Vec::new();
        for wl in &list {
            let mut samples: Vec<(Side, Result<Sample, String>)> = Vec::new();
            for rep in 0..args.reps {
                for side in [Side::Direct, Side::Lean, Side::Exorelay, Side::Postfix] {
                    if !args.sides.split(',').any(|s| s.trim() == side.name())
                        || (side == Side::Lean && wl.tls)
                    {
                        continue;
                    }
                    run_no += 1;
                    let dir = work.join(format!("run{run_no:04}-{}", side.name()));
                    std::fs::create_dir_all(&dir)?;
                    run_dirs.push(dir.clone());
                    let result = measure(side, wl, &sink, &ca_file, &dir, &exorelay, args)
                        .map_err(|e| format!("{e:#}"));
                    match &result {
                        Ok(s) => eprintln!(
                            "[{:>5.0}s] {:<16} rep {} {:<8} {:>8.1} msg/s  {:>6.2}s  CPU {:>4.0} us/msg  peak RSS {:>7.1} MiB (Pss {:.1})  upstream conns {}",
                            started.elapsed().as_secs_f64(),
                            wl.label(),
                            rep + 1,
                            side.name(),
                            wl.messages as f64 / s.secs,
                            s.secs,
                            cpu_us_per_message(s.cpu_ticks, wl.messages),
                            s.peak_rss_kib as f64 / 1024.0,
                            s.peak_pss_kib as f64 / 1024.0,
                            s.upstream_connections,
                        ),
                        Err(e) => eprintln!(
                            "[{:>5.0}s] {:<16} rep {} {:<8} FAILED: {e}",
                            started.elapsed().as_secs_f64(),
                            wl.label(),
                            rep + 1,
                            side.name()
                        ),
                    }
                    samples.push((side, result));
                }
            }
            results.push((*wl, samples));
        }
        // Removed only now, not between runs: deleting a run's files just before the next
        // timed run slows that run's file creation (freed inodes), and with the fixed order
        // that would always penalise the side that follows exorelay.
        if !keep_run_dirs() {
            for dir in &run_dirs {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        out.push_str(&tables(&results, args.reps));
    }
    if !args.no_extra {
        let n = args
            .spool_messages
            .unwrap_or(if args.quick { 20_000 } else { 100_000 });
        out.push_str(&extra::all(&exorelay, &sink, &work, n, &args.smtp_source)?);
    }
    let _ = writeln!(
        out,
        "\nTotal benchmark time: {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    println!("{out}");
    Ok(())
}

/// Whether to keep the matrix's run directories (configurations, logs, spools and queues)
/// after the matrix instead of removing them: when `RELAY_BENCH_KEEP` is set.
fn keep_run_dirs() -> bool {
    std::env::var_os("RELAY_BENCH_KEEP").is_some()
}

/// CPU microseconds per message from a CPU time in clock ticks.
fn cpu_us_per_message(ticks: u64, messages: usize) -> f64 {
    ticks as f64 * 1e6 / relay::USER_HZ as f64 / messages as f64
}

/// One run of `wl` against `side`: start it fresh, drive smtp-source, wait for the sink.
/// `ca_file`: the sink's CA, for the relays' STARTTLS in TLS workloads.
fn measure(
    side: Side,
    wl: &Workload,
    sink: &Sink,
    ca_file: &Path,
    dir: &Path,
    exorelay: &Path,
    args: &RunArgs,
) -> anyhow::Result<Sample> {
    let mut exo = None;
    let mut pfx = None;
    let mut lean = None;
    let (port, pid, tree) = match side {
        Side::Direct => (sink.port, 0, false),
        Side::Lean => {
            let l = lean::LeanProcess::start(dir, sink.port)?;
            let (port, pid) = (l.port, l.pid());
            lean = Some(l);
            (port, pid, false)
        }
        Side::Exorelay => {
            let extra = ExoExtra {
                upstream_ca: wl.tls.then(|| ca_file.to_owned()),
                ..ExoExtra::default()
            };
            let r = Exorelay::start(exorelay, dir, sink.port, &extra)?;
            let (port, pid) = (r.port, r.pid());
            exo = Some(r);
            (port, pid, false)
        }
        Side::Postfix => {
            let p = Postfix::start(&args.postfix, dir, sink.port, wl.tls.then_some(ca_file))?;
            let (port, pid) = (p.port, p.master_pid());
            pfx = Some(p);
            (port, pid, true)
        }
    };
    // A process tree (Postfix) is sampled less often: walking /proc costs CPU on the same cores
    // (and Pss, costlier still, only every `relay::PSS_EVERY`th sample).
    let every = Duration::from_millis(if tree { 100 } else { 25 });
    let sampler = (pid != 0).then(|| RssSampler::start(pid, tree, every));
    let cpu_before = if pid != 0 {
        relay::cpu_ticks(pid, tree)
    } else {
        0
    };
    let result = drive(wl, sink, port, &args.smtp_source);
    let cpu = if pid != 0 {
        relay::cpu_ticks(pid, tree).saturating_sub(cpu_before)
    } else {
        0
    };
    let (peak, peak_pss) = sampler.map_or((0, 0), RssSampler::finish_both);
    if let Some(mut r) = exo {
        if result.is_err() {
            eprintln!("---- exorelay log tail ----\n{}", tail(&r.log(), 20));
        }
        r.stop();
    }
    if let Some(mut l) = lean {
        l.stop();
    }
    if let Some(mut p) = pfx {
        if result.is_err() {
            let log = std::fs::read_to_string(dir.join("maillog")).unwrap_or_default();
            eprintln!("---- postfix maillog tail ----\n{}", tail(&log, 20));
        }
        p.stop(&args.postfix);
    }
    let (secs, conns) = result?;
    Ok(Sample {
        secs,
        peak_rss_kib: peak,
        peak_pss_kib: peak_pss,
        cpu_ticks: cpu,
        upstream_connections: conns,
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The smtp-source command line for `wl` against `port`.
pub(crate) fn smtp_source_args(wl: &Workload, port: u16) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "-s".into(),
        wl.sessions.to_string(),
        "-m".into(),
        wl.messages.to_string(),
        "-l".into(),
        wl.size.to_string(),
        "-M".into(),
        "client.bench".into(),
        "-f".into(),
        FROM.into(),
        "-t".into(),
        TO.into(),
    ];
    if wl.reuse {
        // -d: "Don't disconnect after sending a message; send the next message over the
        // same connection." Without it every message gets its own connection.
        a.push("-d".into());
    }
    a.push(format!("127.0.0.1:{port}"));
    a
}

/// Runs smtp-source and waits until the sink has counted every message. Returns the seconds
/// and the sink connections made meanwhile.
fn drive(wl: &Workload, sink: &Sink, port: u16, smtp_source: &Path) -> anyhow::Result<(f64, u64)> {
    let before = sink.messages();
    let conns_before = sink.connections();
    let want = before + wl.messages as u64;
    let started = Instant::now();
    let mut child = Command::new(smtp_source)
        .args(smtp_source_args(wl, port))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start smtp-source")?;
    let mut source_done = false;
    loop {
        if sink.messages() >= want {
            break;
        }
        if !source_done && let Some(status) = child.try_wait()? {
            source_done = true;
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read as _;
                    let _ = e.read_to_string(&mut err);
                }
                bail!("smtp-source failed ({status}): {}", err.trim());
            }
        }
        if started.elapsed() > RUN_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "timeout: sink has {} of {} after {RUN_DEADLINE:?}",
                sink.messages() - before,
                wl.messages
            );
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let secs = started.elapsed().as_secs_f64();
    // smtp-source is done once its last 250 arrived; wait for it to exit (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.wait();
    Ok((secs, sink.connections() - conns_before))
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

type Results = Vec<(Workload, Vec<(Side, Result<Sample, String>)>)>;

/// Median throughput (msg/s) and peak RSS (max over runs, KiB) of one side.
fn summary(wl: &Workload, samples: &[(Side, Result<Sample, String>)], side: Side) -> Summary {
    let ok: Vec<Sample> = samples
        .iter()
        .filter(|(s, _)| *s == side)
        .filter_map(|(_, r)| r.as_ref().ok().copied())
        .collect();
    let failed = samples
        .iter()
        .filter(|(s, r)| *s == side && r.is_err())
        .count();
    Summary {
        rate: median(ok.iter().map(|s| wl.messages as f64 / s.secs).collect()),
        secs: median(ok.iter().map(|s| s.secs).collect()),
        cpu_us: median(
            ok.iter()
                .map(|s| cpu_us_per_message(s.cpu_ticks, wl.messages))
                .collect(),
        ),
        rss: ok.iter().map(|s| s.peak_rss_kib).max(),
        pss: ok.iter().map(|s| s.peak_pss_kib).max(),
        conns: median(ok.iter().map(|s| s.upstream_connections as f64).collect()),
        failed,
    }
}

struct Summary {
    rate: Option<f64>,
    secs: Option<f64>,
    /// Median CPU microseconds per message.
    cpu_us: Option<f64>,
    rss: Option<u64>,
    pss: Option<u64>,
    conns: Option<f64>,
    failed: usize,
}

fn fmt_rate(s: &Summary) -> String {
    match (s.rate, s.failed) {
        (Some(r), 0) => format!("{r:.0}"),
        (Some(r), f) => format!("{r:.0} ({f} failed)"),
        (None, _) => "failed".into(),
    }
}

/// `a` as a whole percentage of `b`, or `-` when either is missing.
fn percent(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:.0} %", 100.0 * a / b),
        _ => "-".into(),
    }
}

/// A value rounded to a whole number, or `-` when missing.
fn rounded(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

fn tables(results: &Results, reps: usize) -> String {
    let mut out = String::new();
    // (reuse, tls, title, header of the direct column, note after the common explanation)
    for (reuse, tls, title, direct, note) in [
        (
            false,
            false,
            "one connection per message (smtp-source without -d)",
            "direct msg/s",
            "",
        ),
        (
            true,
            false,
            "connection reuse (smtp-source -d)",
            "direct msg/s",
            "",
        ),
        (
            false,
            true,
            "relay → sink over STARTTLS (one connection per message)",
            "direct (plaintext) msg/s",
            " Both relays must use STARTTLS to the sink (TLS 1.3, rustls server with an ECDSA \
             P-256 certificate): exorelay `tls = \"required\"` with `ca_file` (certificate \
             verified), Postfix `smtp_tls_security_level = encrypt` with `smtp_tls_CAfile` (TLS \
             mandatory, certificate not enforced; Postfix's default `smtp_tls_connection_reuse = \
             no` means one connection per message); smtp-source → \
             relay stays plaintext. direct is smtp-source into the sink without TLS, so % direct \
             is against the plaintext ceiling.",
        ),
    ] {
        let rows: Vec<_> = results
            .iter()
            .filter(|(w, _)| w.reuse == reuse && w.tls == tls)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "\n### Throughput, {title}\n\nMedian of {reps} runs each, messages/second from starting \
             smtp-source to the last message in the sink. ratio = exorelay/Postfix throughput \
             (>1: exorelay faster); % direct = exorelay / direct ceiling. RSS (Pss) = highest peak \
             over the runs: RSS sampled every 25 ms (Postfix: sum over its master and all its \
             children, every 100 ms), Pss on every {pss_every}th sample and whenever the RSS \
             reached a new peak (Pss divides shared pages among the processes sharing them). \
             conns = connections the relay opened to the sink (median). CPU = median CPU time of \
             the relay per message (user + system, all its processes, from /proc; 10 ms \
             ticks).{note}\n",
            pss_every = relay::PSS_EVERY
        );
        let _ = writeln!(
            out,
            "| size | sessions | msgs | {direct} | exorelay msg/s | Postfix msg/s | ratio | % direct | exorelay s | Postfix s | CPU µs/msg exo/pfx | exorelay RSS (Pss) MiB | Postfix RSS (Pss) MiB | conns exo/pfx |"
        );
        let _ = writeln!(
            out,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (wl, samples) in rows {
            let d = summary(wl, samples, Side::Direct);
            let e = summary(wl, samples, Side::Exorelay);
            let p = summary(wl, samples, Side::Postfix);
            let ratio = match (e.rate, p.rate) {
                (Some(a), Some(b)) => format!("{:.2}", a / b),
                _ => "-".into(),
            };
            let pct = percent(e.rate, d.rate);
            let mib = |k: Option<u64>, p: Option<u64>| match (k, p) {
                (Some(k), Some(p)) => {
                    format!("{:.0} ({:.0})", k as f64 / 1024.0, p as f64 / 1024.0)
                }
                _ => "-".into(),
            };
            let secs = |s: Option<f64>| s.map_or("-".into(), |s| format!("{s:.2}"));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} | {} | {}/{} |",
                size_label(wl.size),
                wl.sessions,
                wl.messages,
                fmt_rate(&d),
                fmt_rate(&e),
                fmt_rate(&p),
                ratio,
                pct,
                secs(e.secs),
                secs(p.secs),
                rounded(e.cpu_us),
                rounded(p.cpu_us),
                mib(e.rss, e.pss),
                mib(p.rss, p.pss),
                rounded(e.conns),
                rounded(p.conns),
            );
        }
    }
    out.push_str(&lean_table(results, reps));
    out
}

/// The table of the lean durable reference relay against `direct` and exorelay, when the run
/// had the `lean` side (empty otherwise).
fn lean_table(results: &Results, reps: usize) -> String {
    let rows: Vec<_> = results
        .iter()
        .filter(|(_, samples)| samples.iter().any(|(side, _)| *side == Side::Lean))
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\n### Reference: a lean durable relay\n\nMedian of {reps} runs each, as above. lean = \
         `relay-bench lean`: receive, journal with group commit (`fdatasync` before `250`), \
         forward in one flight, nothing else (no queue, logs, checks or recovery). CPU = median \
         CPU time per message of each relay.\n\n\
         | size | sessions | connections | direct msg/s | lean msg/s | exorelay msg/s | lean % direct | exorelay % direct | exorelay % lean | CPU µs/msg lean/exo |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for (wl, samples) in rows {
        let d = summary(wl, samples, Side::Direct);
        let l = summary(wl, samples, Side::Lean);
        let e = summary(wl, samples, Side::Exorelay);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} |",
            size_label(wl.size),
            wl.sessions,
            if wl.reuse {
                "reused"
            } else {
                "one per message"
            },
            fmt_rate(&d),
            fmt_rate(&l),
            fmt_rate(&e),
            percent(l.rate, d.rate),
            percent(e.rate, d.rate),
            percent(e.rate, l.rate),
            rounded(l.cpu_us),
            rounded(e.cpu_us),
        );
    }
    out
}
