//! Streaming and connection reuse:
//! - a 35 MiB message is relayed (over STARTTLS with a client certificate, BDAT) while the
//!   daemon's resident memory (`VmRSS`, sampled every 20 ms) grows by less than 16 MiB: the
//!   message is streamed from the client to the spool and from the spool to the upstream,
//!   never held in memory;
//! - 50 small messages sent one after another over one client session are delivered over far
//!   fewer than 50 upstream connections (the fake upstream counts them).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;
mod upstream;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Client, Relay};
use upstream::{FakeUpstream, TlsDelivery};

const MIB: u64 = 1024 * 1024;
const LARGE: usize = 35 * 1024 * 1024;
const LIMIT: Duration = Duration::from_secs(60);

/// A message of exactly `size` bytes: headers, then 78-byte lines (some starting with a dot).
fn large_message(size: usize) -> Vec<u8> {
    let mut m = b"From: <app@contoso.com>\r\nTo: <archive@example.net>\r\nSubject: large\r\n\
        Message-ID: <large@test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
        .to_vec();
    let mut n: u64 = 0;
    while m.len() < size {
        let dot = if n.is_multiple_of(97) { "." } else { "x" };
        let line = format!(
            "{dot}{n:012} {}\r\n",
            "abcdefghijklmnopqrstuvwxyz0123456789".repeat(2)
        );
        m.extend_from_slice(line.as_bytes());
        n += 1;
    }
    m.truncate(size - 2);
    m.extend_from_slice(b"\r\n");
    m
}

/// Samples a process's VmRSS every 20 ms until stopped; returns the peak in KiB.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(AtomicU64::new(0));
        let (s, p, n) = (stop.clone(), peak.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if let Some(kib) = common::vm_rss_kib(pid) {
                    p.fetch_max(kib, Ordering::SeqCst);
                    n.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssSampler {
            stop,
            peak,
            samples,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (
            self.peak.load(Ordering::SeqCst),
            self.samples.load(Ordering::SeqCst),
        )
    }
}

#[test]
fn a_35_mib_message_is_relayed_with_bounded_memory() {
    let started = Instant::now();
    let tls = TlsDelivery::new();
    let fake = tls
        .fake()
        .require_client_cert(&tls.pki.ca_file)
        .record_limit(64 * 1024)
        .start();
    let relay = tls.relay(
        &common::BASE_CONFIG.replace(
            "max_message_size = \"1MiB\"",
            "max_message_size = \"40MiB\"",
        ),
        &tls.upstream("exo", fake.port(), ""),
    );
    let pid = relay.pid().unwrap();

    // Warm up: one small message end to end, so the baseline includes the delivery path.
    let from = "app@contoso.com";
    let to = "archive@example.net";
    let mut c = Client::session(relay.addr);
    c.mail(
        from,
        &[to],
        &common::small_message(from, to, "<warm-up@test>", "warm up"),
    );
    fake.wait_for("the warm-up message", LIMIT, |m| m.len() == 1);
    std::thread::sleep(Duration::from_millis(200));
    let baseline = (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            common::vm_rss_kib(pid).unwrap()
        })
        .max()
        .unwrap();

    let data = large_message(LARGE);
    let stuffed = common::dot_stuffed(&data);
    let sampler = RssSampler::start(pid);
    let sending = Instant::now();
    c.expect(&format!("MAIL FROM:<{from}> SIZE={}", data.len()), "250");
    c.expect(&format!("RCPT TO:<{to}>"), "250");
    c.expect("DATA", "354");
    c.send(&stuffed);
    let reply = c.reply();
    assert!(reply.starts_with("250 "), "{reply}");
    let accepted = sending.elapsed();
    drop(stuffed);
    c.expect("QUIT", "221");
    fake.wait_for("the 35 MiB message", LIMIT, |m| m.len() == 2);
    let relayed = sending.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    let (peak, samples) = sampler.finish();

    let id = common::queue_id_of(&reply);
    let envelope = spool::Envelope::new(id.parse().unwrap(), 0);
    fake.with_messages(|m| {
        let large = &m[1];
        assert!(large.tls && large.bdat, "over TLS with BDAT");
        let body = common::after_relay_received(&large.content, &envelope, "relay.test");
        assert_eq!(body.len(), data.len(), "size at the upstream");
        assert!(body == data.as_slice(), "content changed on the way");
    });
    let growth = peak.saturating_sub(baseline);
    println!(
        "35 MiB ({} bytes): accepted in {accepted:?}, at the upstream after {relayed:?}; relay VmRSS \
         baseline {baseline} KiB, peak {peak} KiB, growth {growth} KiB ({:.1} MiB) over {samples} \
         samples; whole test {:?}",
        data.len(),
        growth as f64 / 1024.0,
        started.elapsed()
    );
    assert!(samples >= 5, "too few RSS samples: {samples}");
    assert!(
        growth < 16 * 1024,
        "the relay's RSS grew by {growth} KiB (> 16 MiB) relaying a 35 MiB message"
    );
    assert!((LARGE as u64) > 34 * MIB);
}

#[test]
fn many_small_messages_reuse_connections() {
    let started = Instant::now();
    let fake = FakeUpstream::builder().chunking(false).start();
    let relay = Relay::start_with(&upstream::relay_config(
        common::BASE_CONFIG,
        &upstream::plain_upstream("exo", fake.port(), ""),
    ));
    let from = "app@contoso.com";
    let to = "someone@example.net";
    let mut c = Client::session(relay.addr);
    let ids: Vec<String> = (0..50).map(|n| format!("<reuse-{n}@test>")).collect();
    for id in &ids {
        c.mail(from, &[to], &common::small_message(from, to, id, "reuse"));
    }
    c.expect("QUIT", "221");
    fake.wait_for("50 messages", LIMIT, |m| m.len() >= 50);
    common::wait_until("the spool to empty", || {
        common::spool_entries(&relay.spool).is_empty()
    });
    let mut got: Vec<String> = fake
        .messages()
        .iter()
        .map(|m| m.message_id().unwrap())
        .collect();
    got.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(got, expected, "each message exactly once");
    let connections = fake.connection_count();
    let per_connection: Vec<usize> = (0..connections)
        .map(|i| fake.with_messages(|m| m.iter().filter(|m| m.connection == i).count()))
        .collect();
    println!(
        "50 messages over {connections} upstream connection(s) (messages per connection: \
         {per_connection:?}); whole test {:?}",
        started.elapsed()
    );
    assert!(
        connections < 50,
        "no connection reuse: {connections} connections"
    );
}
