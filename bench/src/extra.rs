//! The measurements beside the throughput matrix: exorelay's RSS with 1,000 idle connections,
//! its RSS growth while relaying one 35 MiB message, and its time from start to ready with a
//! large queue already in the spool.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use spool::{Envelope, Recipient, RecipientState, Spool, SpoolOptions};

use crate::relay::{ExoExtra, Exorelay, RssSampler, rss_kib};
use crate::sink::Sink;
use crate::{FROM, TO, Workload};

/// Idle connections held open.
const IDLE_CONNECTIONS: usize = 1000;
/// The large message's payload (smtp-source `-l`).
const BIG: usize = 35 << 20;

/// Runs every extra measurement and returns its Markdown section.
pub fn all(
    exorelay: &Path,
    sink: &Sink,
    work: &Path,
    spool_messages: usize,
    smtp_source: &Path,
) -> anyhow::Result<String> {
    let mut out = String::from(
        "\n### Memory and start-up (exorelay)\n\n| measurement | result | target |\n|---|---|---|\n",
    );
    let rows: [(String, &str, anyhow::Result<String>); 3] = [
        (
            format!("{IDLE_CONNECTIONS} idle connections"),
            "< 100 MiB",
            idle(exorelay, sink, &work.join("idle")),
        ),
        (
            "one 35 MiB message".into(),
            "< 16 MiB growth",
            big(exorelay, sink, &work.join("big"), smtp_source),
        ),
        (
            format!("start-up with {spool_messages} queued"),
            "< 5 s",
            startup(exorelay, sink, &work.join("startup"), spool_messages),
        ),
    ];
    for (what, target, result) in rows {
        match result {
            Ok(lines) => out.push_str(&lines),
            Err(e) => {
                let _ = writeln!(out, "| {what} | failed: {e:#} | {target} |");
            }
        }
    }
    Ok(out)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// RSS after start, then with 1,000 connections that read the greeting and stay idle.
fn idle(exorelay: &Path, sink: &Sink, dir: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let extra = ExoExtra {
        server: format!(
            "max_connections = {n}\nmax_connections_per_ip = {n}\n",
            n = IDLE_CONNECTIONS + 100
        ),
        ..ExoExtra::default()
    };
    let relay = Exorelay::start(exorelay, dir, sink.port, &extra)?;
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(relay.pid());
    let started = Instant::now();
    let mut conns = Vec::with_capacity(IDLE_CONNECTIONS);
    for i in 0..IDLE_CONNECTIONS {
        let mut s = TcpStream::connect(("127.0.0.1", relay.port))
            .with_context(|| format!("connection {i} (is `ulimit -n` above 1100?)"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf)?;
        if !buf[..n].starts_with(b"220") {
            anyhow::bail!(
                "connection {i} got {:?} instead of a 220 greeting",
                String::from_utf8_lossy(&buf[..n])
            );
        }
        conns.push(s);
    }
    let opened = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let with = (0..10)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            rss_kib(relay.pid())
        })
        .max()
        .unwrap_or(0);
    drop(conns);
    Ok(format!(
        "| {IDLE_CONNECTIONS} idle connections (greeted, then silent) | {:.1} MiB RSS ({:.1} MiB before; {:.1} KiB per connection; opened in {:.2} s) | < 100 MiB |\n",
        mib(with),
        mib(before),
        (with.saturating_sub(before)) as f64 / IDLE_CONNECTIONS as f64,
        opened.as_secs_f64()
    ))
}

/// RSS growth (peak minus the RSS after a warm-up message) while one 35 MiB message is relayed.
fn big(exorelay: &Path, sink: &Sink, dir: &Path, smtp_source: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let extra = ExoExtra {
        server: "max_message_size = \"40MiB\"\n".into(),
        ..ExoExtra::default()
    };
    let relay = Exorelay::start(exorelay, dir, sink.port, &extra)?;
    let warm = Workload {
        size: 1024,
        sessions: 1,
        reuse: false,
        messages: 1,
        tls: false,
    };
    crate::drive(&warm, sink, relay.port, smtp_source)?;
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(relay.pid());
    let sampler = RssSampler::start(relay.pid(), false, Duration::from_millis(5));
    let bytes_before = sink
        .counters
        .bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    let wl = Workload {
        size: BIG,
        sessions: 1,
        reuse: false,
        messages: 1,
        tls: false,
    };
    let (secs, _) = crate::drive(&wl, sink, relay.port, smtp_source)?;
    let peak = sampler.finish();
    let delivered = sink
        .counters
        .bytes
        .load(std::sync::atomic::Ordering::Relaxed)
        - bytes_before;
    Ok(format!(
        "| one 35 MiB message ({:.1} MiB delivered, in {:.2} s) | +{:.1} MiB RSS growth (peak {:.1} MiB, {:.1} MiB before) | < 16 MiB growth |\n",
        delivered as f64 / (1 << 20) as f64,
        secs,
        mib(peak.saturating_sub(before)),
        mib(peak),
        mib(before)
    ))
}

/// Start-up time with `count` messages already queued (deferred, due in an hour, as after an
/// upstream outage); the upstream is a closed port. Measured with the page cache warm (right
/// after writing) and, when this process may drop caches (root), cold.
fn startup(exorelay: &Path, sink: &Sink, dir: &Path, count: usize) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let spool_dir = dir.join("spool");
    let made = Instant::now();
    make_spool(&spool_dir, count)?;
    let made = made.elapsed();
    let extra = ExoExtra {
        upstream_closed: true,
        ..ExoExtra::default()
    };
    let mut out = String::new();
    let mut relay = Exorelay::start(exorelay, dir, sink.port, &extra)?;
    let rss = rss_kib(relay.pid());
    // The queue scan may run after the listener opens (it does since commit 48e6b55): wait
    // for its log line, "spool DIR recovered".
    let scanned = scan_done(&relay);
    let rss_scanned = rss_kib(relay.pid());
    let recovered = recovery_line(&relay);
    relay.stop();
    let _ = writeln!(
        out,
        "| start-up with {count} queued, warm page cache | ready (first 220) in {:.2} s; `listening on` logged at {:.2} s; queue scan done at {}; RSS {:.1} MiB at ready, {:.1} MiB after the scan | < 5 s |",
        relay.to_greeting.as_secs_f64(),
        relay.to_listening.as_secs_f64(),
        scanned,
        mib(rss),
        mib(rss_scanned)
    );
    let dropped = std::process::Command::new("sh")
        .args(["-c", "sync && echo 3 > /proc/sys/vm/drop_caches"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if dropped {
        let mut relay = Exorelay::start(exorelay, dir, sink.port, &extra)?;
        let scanned = scan_done(&relay);
        relay.stop();
        let _ = writeln!(
            out,
            "| start-up with {count} queued, cold page cache (drop_caches) | ready in {:.2} s; `listening on` at {:.2} s; queue scan done at {} | < 5 s |",
            relay.to_greeting.as_secs_f64(),
            relay.to_listening.as_secs_f64(),
            scanned
        );
    } else {
        let _ = writeln!(
            out,
            "| start-up, cold page cache | not measured (cannot write /proc/sys/vm/drop_caches) | < 5 s |"
        );
    }
    let _ = writeln!(
        out,
        "\nThe {count}-message spool was written in {:.1} s through the spool crate (sync off). Recovery log: `{}`",
        made.as_secs_f64(),
        recovered.trim()
    );
    Ok(out)
}

/// Seconds from spawn until the recovery scan's log line, or why not known.
fn scan_done(relay: &Exorelay) -> String {
    match relay.wait_log(" recovered", Duration::from_secs(120)) {
        Some(t) => format!("{:.2} s", t.as_secs_f64()),
        None if !recovery_line(relay).is_empty() => "before listening".into(),
        None => "not logged within 120 s".into(),
    }
}

/// The log line that reports the recovery scan's result.
fn recovery_line(relay: &Exorelay) -> String {
    relay
        .log()
        .lines()
        .find(|l| l.contains(" recovered"))
        .map(str::to_owned)
        .unwrap_or_default()
}

/// Writes `count` queued 1 KiB messages into the spool at `dir` with the spool crate itself
/// (so the format is exactly the daemon's), without fsync: they are test data.
pub fn make_spool(dir: &Path, count: usize) -> anyhow::Result<()> {
    let (spool, _) = Spool::open(
        dir,
        SpoolOptions {
            sync: false,
            ..SpoolOptions::default()
        },
    )?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut content = format!(
        "From: <{FROM}>\r\nTo: <{TO}>\r\nSubject: queued for the start-up benchmark\r\n\
         Message-ID: <bench@contoso.com>\r\n\r\n"
    )
    .into_bytes();
    while content.len() < 1024 {
        content.extend_from_slice(b"La la la la la la la la la la la la la la la.\r\n");
    }
    let mut waiting = std::collections::VecDeque::new();
    for _ in 0..count {
        let mut writer = spool.create()?;
        writer.write_all(&content)?;
        let mut envelope = Envelope::new(writer.id(), now);
        envelope.client_ip = "127.0.0.1".into();
        envelope.client_name = "bench".into();
        envelope.helo = "client.bench".into();
        envelope.mail_from = FROM.into();
        envelope.attempts = 1;
        envelope.next_attempt = now + 3600;
        envelope.recipients = vec![Recipient {
            address: TO.into(),
            notify: None,
            orcpt: None,
            state: RecipientState::Deferred,
            last_reply: Some("451 4.4.1 cannot connect (benchmark backlog)".into()),
            attempts: 1,
        }];
        waiting.push_back(spool.commit(writer, envelope));
        if waiting.len() >= 1024
            && let Some(handle) = waiting.pop_front()
        {
            let _durable = handle.wait()?;
        }
    }
    for handle in waiting {
        let _durable = handle.wait()?;
    }
    Ok(())
}
