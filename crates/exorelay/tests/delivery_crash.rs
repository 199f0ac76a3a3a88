//! `kill -9` in the middle of a 1,000-message flow while deliveries run: ten client sessions
//! send numbered messages to the relay, which delivers them to the fake upstream as they come.
//! The relay is killed with SIGKILL once a few hundred have been acknowledged and restarted on
//! the same spool (and the same listening port, so the clients carry on). Afterwards every
//! message that got a 250 must have reached the upstream — counted by Message-ID there — and a
//! message may arrive twice only if its delivery was in flight at the kill: the upstream had
//! accepted it, but the relay had not recorded that yet (its envelope was still in the spool,
//! with the recipient undelivered, when the process died). The test reports how many.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;
mod upstream;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{LoadClient, LoadOutcome, Relay};
use upstream::FakeUpstream;

/// Parallel client sessions.
const SESSIONS: usize = 10;
/// Messages per session: 1,000 in all.
const PER_SESSION: usize = 100;
/// The relay is killed once this many messages have been acknowledged.
const KILL_AFTER_ACKS: usize = 400;
/// Socket timeouts of the load clients.
const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a client keeps trying to reconnect while the relay is down.
const RECONNECT_FOR: Duration = Duration::from_secs(30);

fn message_id(session: usize, seq: usize) -> String {
    format!("<dcrash-{session}-{seq}@load.test>")
}

fn message(session: usize, seq: usize) -> Vec<u8> {
    let mut m = format!(
        "From: <load@contoso.com>\r\nTo: <sink@example.net>\r\nSubject: load {session}/{seq}\r\n\
         Message-ID: {}\r\n\r\n",
        message_id(session, seq)
    )
    .into_bytes();
    for line in 0..(4 + (session * 7 + seq * 13) % 40) {
        let dot = if line % 11 == 5 { "." } else { "" };
        m.extend_from_slice(format!("{dot}line {line} of message {session}/{seq}\r\n").as_bytes());
    }
    m
}

/// Connects, reads the greeting and says EHLO; retries while the relay is down.
fn open(addr: SocketAddr) -> Option<LoadClient> {
    let deadline = Instant::now() + RECONNECT_FOR;
    while Instant::now() < deadline {
        if let Ok(mut c) = LoadClient::connect(addr, IO_TIMEOUT)
            && c.reply().is_ok_and(|r| r.starts_with("220"))
            && c.command("EHLO load.test", "250").is_ok()
        {
            return Some(c);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// One client: sends its messages in turn, reconnecting after the relay died.
fn client(addr: SocketAddr, session: usize, acked: &AtomicUsize) -> Vec<(String, LoadOutcome)> {
    let mut log = Vec::new();
    let mut conn: Option<LoadClient> = None;
    for seq in 0..PER_SESSION {
        if conn.is_none() {
            conn = open(addr);
        }
        let Some(c) = conn.as_mut() else {
            log.push((
                message_id(session, seq),
                LoadOutcome::NotAccepted("no connection".into()),
            ));
            continue;
        };
        let (outcome, go_on) = c.send(&message(session, seq));
        if matches!(outcome, LoadOutcome::Acked(_)) {
            acked.fetch_add(1, Ordering::SeqCst);
        }
        log.push((message_id(session, seq), outcome));
        if !go_on {
            conn = None;
        }
    }
    if let Some(mut c) = conn {
        let _ = c.command("QUIT", "221");
    }
    log
}

/// The Message-ID header of `content`.
fn id_of(content: &[u8]) -> String {
    upstream::header_value(content, "Message-ID").unwrap_or_default()
}

#[test]
fn kill9_during_delivery_loses_nothing_and_duplicates_only_in_flight() {
    let started = Instant::now();
    let fake = FakeUpstream::builder().start();
    let port = common::free_port();
    let config = upstream::relay_config(
        &common::BASE_CONFIG.replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
        &upstream::plain_upstream("exo", fake.port(), ""),
    );
    let mut relay = Relay::start_with(&config);
    let addr = relay.addr;
    let acked = Arc::new(AtomicUsize::new(0));
    let logs = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..SESSIONS)
        .map(|s| {
            let (acked, logs) = (acked.clone(), logs.clone());
            std::thread::spawn(move || {
                let log = client(addr, s, &acked);
                logs.lock().unwrap().extend(log);
            })
        })
        .collect();

    common::wait_until_for(
        "acknowledged messages before the kill",
        Duration::from_secs(60),
        || acked.load(Ordering::SeqCst) >= KILL_AFTER_ACKS,
    );
    let delivered_before = fake.message_count();
    relay.kill9();
    let killed_at = started.elapsed();
    let acked_at_kill = acked.load(Ordering::SeqCst);
    // The fake upstream sees the relay's connections end; nothing more can arrive from it.
    common::wait_until("the killed relay's connections to end", || {
        fake.connections().iter().all(|c| c.closed)
    });
    let before_restart: Vec<String> =
        fake.with_messages(|m| m.iter().map(|m| id_of(&m.content)).collect());
    // Messages the relay still had to deliver when it died (the spool cannot change now).
    let undelivered_at_kill: HashSet<String> = common::queued_messages(&relay.spool)
        .iter()
        .filter(|(e, _)| e.recipients.iter().any(|r| !r.state.is_final()))
        .map(|(_, content)| id_of(content))
        .collect();
    let before: HashSet<&String> = before_restart.iter().collect();
    let in_flight: HashSet<&String> = before
        .iter()
        .copied()
        .filter(|id| undelivered_at_kill.contains(*id))
        .collect();
    assert_eq!(
        before.len(),
        before_restart.len(),
        "a message arrived twice before the kill"
    );

    let relay = Relay::start_in(relay.dir.clone(), &config);
    let restarted_at = started.elapsed();
    for t in threads {
        t.join().expect("a load client panicked");
    }
    let outcomes: HashMap<String, LoadOutcome> = std::mem::take(&mut *logs.lock().unwrap())
        .into_iter()
        .collect();
    let acked_ids: Vec<&String> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, LoadOutcome::Acked(_)))
        .map(|(id, _)| id)
        .collect();
    fake.wait_for("every acknowledged message", Duration::from_secs(60), |m| {
        let got: HashSet<String> = m.iter().map(|m| id_of(&m.content)).collect();
        acked_ids.iter().all(|id| got.contains(*id))
    });
    common::wait_until_for("the spool to empty", Duration::from_secs(60), || {
        common::spool_entries(&relay.spool).is_empty()
    });
    let all_delivered = started.elapsed();

    let mut counts: HashMap<String, usize> = HashMap::new();
    for id in fake.with_messages(|m| m.iter().map(|m| id_of(&m.content)).collect::<Vec<_>>()) {
        *counts.entry(id).or_default() += 1;
    }
    let unknown = outcomes
        .values()
        .filter(|o| matches!(o, LoadOutcome::InFlight(_)))
        .count();
    let refused = outcomes
        .values()
        .filter(|o| matches!(o, LoadOutcome::NotAccepted(_)))
        .count();
    for (id, n) in &counts {
        match outcomes.get(id) {
            Some(LoadOutcome::Acked(_) | LoadOutcome::InFlight(_)) => {}
            Some(LoadOutcome::NotAccepted(why)) => {
                panic!("{id} was refused ({why}) but delivered {n}x")
            }
            None => panic!("{id} delivered but never sent"),
        }
    }
    let missing: Vec<&&String> = acked_ids
        .iter()
        .filter(|id| !counts.contains_key(**id))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but never delivered: {missing:?}"
    );
    let mut duplicates: Vec<(&String, usize)> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (id, *n))
        .collect();
    duplicates.sort();
    println!(
        "flow: {SESSIONS} sessions x {PER_SESSION} = {} messages; kill -9 at {killed_at:?} after \
         {acked_at_kill} acks and {delivered_before}+ deliveries; restarted at {restarted_at:?}",
        outcomes.len()
    );
    println!(
        "clients: {} acknowledged, {unknown} unknown (end of data sent, no reply), {refused} not \
         accepted; upstream: {} distinct messages, {} receptions",
        acked_ids.len(),
        counts.len(),
        counts.values().sum::<usize>()
    );
    println!(
        "in flight at the kill (accepted upstream, unrecorded in the spool): {}; duplicates: {} {:?}",
        in_flight.len(),
        duplicates.len(),
        duplicates
    );
    for (id, n) in &duplicates {
        assert_eq!(*n, 2, "{id} delivered {n} times");
        assert!(
            in_flight.contains(id),
            "{id} was delivered twice but its delivery was not in flight at the kill"
        );
    }
    assert!(acked_ids.len() >= KILL_AFTER_ACKS);
    assert!(delivered_before > 0, "no delivery ran before the kill");
    println!("all delivered at {all_delivered:?}");
}
