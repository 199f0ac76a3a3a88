//! `kill -9` under load: ten parallel sessions send numbered messages while the relay is killed
//! with SIGKILL after a few hundred have been acknowledged. After a restart on the same spool
//! (whose startup runs recovery) every message that got a 250 must be there, byte-exact, and
//! nothing else may be — except messages whose end of data was on the wire when the relay
//! died and whose reply never came back: the client could not know, so those may be either.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Client, LoadClient, LoadOutcome, Relay};

/// Parallel client sessions.
const SESSIONS: usize = 10;
/// Messages each session tries to send: the load is `SESSIONS * PER_SESSION` messages.
const PER_SESSION: usize = 80;
/// The relay is killed once this many messages have been acknowledged (so the load it dies
/// under is at least this many messages, with more still being sent).
const KILL_AFTER_ACKS: usize = 500;
/// Socket read/write timeout for the load clients.
const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// The message-id of message `seq` of `session` in run `run`.
fn message_id(run: &str, session: usize, seq: usize) -> String {
    format!("<crash-{run}-{session}-{seq}@load.test>")
}

/// FNV-1a, 64 bits: enough to tell a damaged body from an intact one.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The exact message for (`session`, `seq`): the headers RFC 5322 asks for (so no header
/// repair applies), a body of varying length (a few hundred bytes to ~20 KiB, some lines
/// starting with a dot) and a last line `X-Checksum: HEX`, the FNV-1a of everything above it.
fn message(run: &str, session: usize, seq: usize) -> Vec<u8> {
    let mut m = format!(
        "From: load@contoso.com\r\nTo: sink@example.net\r\nSubject: load {session}/{seq}\r\n\
         Date: Sat, 28 Nov 2026 06:16:49 +0000\r\nMessage-ID: {}\r\n\r\n",
        message_id(run, session, seq)
    )
    .into_bytes();
    let mut x = (session as u64 + 1) * 1_000_003 + seq as u64 * 7919;
    let lines = 4 + (x % 250) as usize;
    for line in 0..lines {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let dot = if line % 17 == 3 { "." } else { "" };
        m.extend_from_slice(
            format!(
                "{dot}line {line} of {session}/{seq}: {x:016x} {}\r\n",
                "z".repeat((x >> 58) as usize)
            )
            .as_bytes(),
        );
    }
    let sum = fnv1a(&m);
    m.extend_from_slice(format!("X-Checksum: {sum:016x}\r\n").as_bytes());
    m
}

/// Whether `content` ends with a checksum line matching the bytes above it.
fn checksum_ok(content: &[u8]) -> bool {
    let Some(start) = content[..content.len().saturating_sub(2)]
        .windows(2)
        .rposition(|w| w == b"\r\n")
        .map(|p| p + 2)
    else {
        return false;
    };
    let last = String::from_utf8_lossy(&content[start..]);
    last.strip_prefix("X-Checksum: ")
        .and_then(|h| u64::from_str_radix(h.trim_end(), 16).ok())
        == Some(fnv1a(&content[..start]))
}

/// One session: sends its messages in turn until done or the connection breaks.
fn session(
    addr: SocketAddr,
    run: &str,
    session: usize,
    acked: &AtomicUsize,
    stop: &AtomicBool,
) -> Vec<(String, LoadOutcome)> {
    let mut log = Vec::new();
    let Ok(mut client) = LoadClient::connect(addr, IO_TIMEOUT) else {
        return log;
    };
    if client.reply().is_err() || client.command("EHLO load.test", "250").is_err() {
        return log;
    }
    for seq in 0..PER_SESSION {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let (outcome, go_on) = client.send(&message(run, session, seq));
        if matches!(outcome, LoadOutcome::Acked(_)) {
            acked.fetch_add(1, Ordering::SeqCst);
        }
        log.push((message_id(run, session, seq), outcome));
        if !go_on {
            break;
        }
    }
    log
}

#[test]
fn kill9_under_load_loses_no_acknowledged_message_and_invents_none() {
    let started = Instant::now();
    let mut relay = Relay::start();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let run = format!("{}-{nanos}", std::process::id());
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let logs = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..SESSIONS)
        .map(|s| {
            let (addr, run, acked, stop, logs) = (
                relay.addr,
                run.clone(),
                acked.clone(),
                stop.clone(),
                logs.clone(),
            );
            std::thread::spawn(move || {
                let log = session(addr, &run, s, &acked, &stop);
                logs.lock().unwrap().extend(log);
            })
        })
        .collect();

    // Kill once enough messages are acknowledged, while the sessions are still sending.
    common::wait_until("acknowledged messages before the kill", || {
        acked.load(Ordering::SeqCst) >= KILL_AFTER_ACKS
    });
    relay.kill9();
    let acked_at_kill = acked.load(Ordering::SeqCst);
    let load_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("load session panicked");
    }
    let logs = std::mem::take(&mut *logs.lock().unwrap());
    let outcomes: HashMap<String, LoadOutcome> = logs.into_iter().collect();

    // What the kill left half-written — content files in queue/ whose envelope was never
    // written, and anything in tmp/ — recovery must remove (files written later by the
    // restarted relay's own work are not counted).
    let partial_at_kill = half_written(&relay.spool);

    // Restart on the same spool; startup runs recovery (in the background: wait for its end).
    let relay = Relay::start_in(relay.dir.clone(), common::BASE_CONFIG);
    relay.wait_for_log("recovered");
    let log = relay.log();
    let removed = log.matches("recovery: removed incomplete").count();
    let recovered = log
        .lines()
        .find(|l| l.contains(" recovered"))
        .map(strip_ansi)
        .unwrap_or_default();
    let queued = relay.queued();

    let count = |f: fn(&LoadOutcome) -> bool| outcomes.values().filter(|o| f(o)).count();
    let acked_total = count(|o| matches!(o, LoadOutcome::Acked(_)));
    let in_flight = count(|o| matches!(o, LoadOutcome::InFlight(_)));
    let not_accepted = count(|o| matches!(o, LoadOutcome::NotAccepted(_)));
    println!(
        "load: {SESSIONS} sessions x {PER_SESSION} messages; killed after {acked_at_kill} acks at {load_time:?}"
    );
    println!(
        "client log: {} attempted, {acked_total} acknowledged, {in_flight} in flight (unknown), {not_accepted} not accepted",
        outcomes.len()
    );
    for (id, outcome) in &outcomes {
        if !matches!(outcome, LoadOutcome::Acked(_)) {
            println!("  {id}: {outcome:?}");
        }
    }
    println!(
        "recovery: {} half-written files at the kill, log says removed {removed}; {recovered}",
        partial_at_kill.len()
    );

    // Everything in the spool: known, intact, once, and not a message that was refused.
    let mut found = HashSet::new();
    let mut in_flight_found = 0;
    for (envelope, content) in &queued {
        let body = common::after_relay_received(content, envelope, "relay.test");
        let id_line = body
            .split(|&b| b == b'\n')
            .find(|l| l.starts_with(b"Message-ID: "))
            .map(|l| String::from_utf8_lossy(&l[12..]).trim_end().to_string())
            .unwrap_or_else(|| panic!("{}: no Message-ID in the spooled message", envelope.id));
        assert!(
            found.insert(id_line.clone()),
            "{id_line} is in the spool twice"
        );
        let outcome = outcomes.get(&id_line).unwrap_or_else(|| {
            panic!(
                "{id_line} ({}) is in the spool but was never sent",
                envelope.id
            )
        });
        match outcome {
            LoadOutcome::Acked(_) => {}
            LoadOutcome::InFlight(_) => in_flight_found += 1,
            LoadOutcome::NotAccepted(why) => {
                panic!(
                    "{id_line} ({}) is in the spool but was not accepted: {why}",
                    envelope.id
                )
            }
        }
        let (session, seq) = parse_id(&id_line);
        let sent = message(&run, session, seq);
        let differ = |what: &str| {
            let at = body.iter().zip(&sent).position(|(a, b)| a != b);
            let at = at.unwrap_or(body.len().min(sent.len()));
            let around = |b: &[u8]| {
                String::from_utf8_lossy(&b[at.saturating_sub(40)..(at + 40).min(b.len())])
                    .into_owned()
            };
            format!(
                "{id_line} ({}): {what}: {} bytes spooled, {} sent, first difference at byte {at}:\n  spooled {:?}\n  sent    {:?}\n  spool file {}",
                envelope.id,
                body.len(),
                sent.len(),
                around(body),
                around(&sent),
                relay
                    .spool
                    .join("queue")
                    .join(format!("{}.msg", envelope.id))
                    .display()
            )
        };
        assert!(
            checksum_ok(body),
            "{}",
            differ("checksum line does not match the body")
        );
        assert!(
            body == sent,
            "{}",
            differ("content differs from what was sent")
        );
        assert_eq!(envelope.mail_from, "load@contoso.com");
        assert_eq!(envelope.recipients.len(), 1);
        assert_eq!(envelope.recipients[0].address, "sink@example.net");
    }
    // Every acknowledged message survived.
    let mut lost: Vec<&String> = outcomes
        .iter()
        .filter(|(id, o)| matches!(o, LoadOutcome::Acked(_)) && !found.contains(*id))
        .map(|(id, _)| id)
        .collect();
    lost.sort();
    assert!(
        lost.is_empty(),
        "{} acknowledged messages are missing after restart: {lost:?}",
        lost.len()
    );
    assert!(
        outcomes.len() < SESSIONS * PER_SESSION,
        "the load finished before the kill; nothing was interrupted"
    );
    assert!(
        acked_total >= KILL_AFTER_ACKS,
        "the load did not reach the kill point"
    );

    let reader = spool::SpoolReader::open(&relay.spool).unwrap();
    let corrupt = reader.corrupt().unwrap();
    assert!(corrupt.is_empty(), "quarantined after kill -9: {corrupt:?}");
    // A lone content file of a message the journal still held (killed while it was being
    // written out) is replaced by a complete copy from the journal, at the same path: that
    // copy is checked with the others above, and is not the partial file.
    let restored_from_journal = |p: &std::path::Path| {
        p.file_stem().and_then(|s| s.to_str()).is_some_and(|id| {
            log.contains(&format!("recovery: restored {id} from the commit journal"))
                && p.with_extension("env").exists()
        })
    };
    let left: Vec<_> = partial_at_kill
        .iter()
        .filter(|p| p.exists() && !restored_from_journal(p))
        .collect();
    assert!(
        left.is_empty(),
        "partial files from before the kill survived recovery: {left:?}"
    );

    // The restarted relay takes mail again.
    let mut c = Client::session(relay.addr);
    let reply = c.mail(
        "load@contoso.com",
        &["sink@example.net"],
        b"Subject: after restart\r\n\r\nok\r\n",
    );
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    assert_eq!(relay.queued().len(), queued.len() + 1);

    println!(
        "spool after restart: {} messages = {acked_total} acknowledged + {in_flight_found} of {in_flight} in flight; all intact; \
         none refused or unknown; whole test {:?}",
        queued.len(),
        started.elapsed()
    );
}

/// (session, seq) from a message-id made by [`message_id`].
fn parse_id(id: &str) -> (usize, usize) {
    let inner = id.trim_start_matches('<').split('@').next().unwrap();
    let parts: Vec<&str> = inner.rsplitn(3, '-').collect();
    (parts[1].parse().unwrap(), parts[0].parse().unwrap())
}

/// `line` without terminal colour escapes (`ESC [ ... m`), for readable test output.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Files of messages cut off by the kill: every file in `tmp/`, and every `queue/ID.msg` without
/// its `queue/ID.env` (the envelope is written last).
fn half_written(spool: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut partial = files_in(&spool.join("tmp"));
    partial.extend(
        files_in(&spool.join("queue"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "msg"))
            .filter(|p| !p.with_extension("env").exists()),
    );
    partial
}

/// The files in `dir` (none if it does not exist).
fn files_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default()
}
