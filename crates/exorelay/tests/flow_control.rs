//! Flow control (`[queue] in_flow_delay`): new mail is held back — never refused — while the
//! queue manager's window of new messages (8 × the upstreams' `max_connections` together, at
//! least 64) waits for a first attempt, and old mail found at start-up, waiting for its retry
//! time, does not count as such a backlog.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;
mod upstream;

use std::io::Write;
use std::net::TcpListener;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::{BASE_CONFIG, Client, Relay};
use spool::{Envelope, Recipient, RecipientState, Spool, SpoolOptions};

/// `exorelay_queue_waiting_messages` from the running daemon's metrics.
fn waiting(relay: &Relay) -> usize {
    let config = relay.config.to_str().unwrap();
    let out = common::exorelay_cli(&["queue", "metrics", "--config", config]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("exorelay_queue_waiting_messages "))
        .expect("the gauge is listed")
        .trim()
        .parse()
        .unwrap()
}

fn config(upstream_port: u16, extra_queue: &str) -> String {
    upstream::relay_config(
        &BASE_CONFIG.replace(
            "retry = [\"1s\"]",
            &format!("retry = [\"1s\"]\n{extra_queue}"),
        ),
        &upstream::plain_upstream("exo", upstream_port, "max_connections = 1"),
    )
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn send_one(c: &mut Client, n: usize) -> String {
    let data = common::small_message(
        "app@contoso.com",
        "someone@example.net",
        &format!("<flow-{n}@test>"),
        "flow",
    );
    c.mail("app@contoso.com", &["someone@example.net"], &data)
}

#[test]
fn deferred_mail_found_at_start_is_not_a_backlog() {
    const OLD: usize = 200;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    {
        let options = SpoolOptions {
            sync: false,
            ..SpoolOptions::default()
        };
        let (spool, _) = Spool::open(&dir.path().join("spool"), options).unwrap();
        let in_an_hour = now_unix() + 3600;
        for _ in 0..OLD {
            let mut writer = spool.create().unwrap();
            writer
                .write_all(b"Subject: old\r\n\r\nwaiting for the upstream\r\n")
                .unwrap();
            let mut envelope = Envelope::new(writer.id(), in_an_hour - 7200);
            envelope.mail_from = "app@contoso.com".into();
            envelope.next_attempt = in_an_hour;
            envelope.attempts = 3;
            envelope.recipients = vec![Recipient {
                address: "someone@example.net".into(),
                notify: None,
                orcpt: None,
                state: RecipientState::Deferred,
                last_reply: None,
                attempts: 3,
            }];
            let durable = spool.commit(writer, envelope).wait().unwrap();
            assert_eq!(durable.envelope().next_attempt, in_an_hour);
        }
    }
    let closed = common::free_port();
    // A long delay, so that being held back could not pass for a slow disk.
    let relay = Relay::start_in(dir, &config(closed, "in_flow_delay = \"30s\""));
    relay.wait_for_log(&format!("recovered queued={OLD}"));
    assert_eq!(
        waiting(&relay),
        0,
        "{OLD} messages due in an hour are no backlog"
    );

    let mut c = Client::session(relay.addr);
    let started = Instant::now();
    assert!(send_one(&mut c, 0).starts_with("250"));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "new mail was held back: {:?}",
        started.elapsed()
    );
    c.expect("QUIT", "221");
}

#[test]
fn new_mail_waits_while_the_upstream_does_not_take_it() {
    // An upstream that accepts connections and never says a word: every delivery hangs
    // waiting for its greeting.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    silent.set_nonblocking(true).unwrap();
    let port = silent.local_addr().unwrap().port();
    let (stop, stopped) = mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline && stopped.try_recv().is_err() {
            if let Ok((stream, _)) = silent.accept() {
                held.push(stream);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        held.len()
    });

    let relay = Relay::start_with(&config(port, "in_flow_delay = \"300ms\""));
    // One upstream connection: 64 messages in flight (the manager's minimum window), then
    // up to 64 more may wait without slowing anyone; beyond that each new message waits.
    let mut c = Client::session(relay.addr);
    let mut times = Vec::new();
    for n in 0..134 {
        let started = Instant::now();
        let reply = send_one(&mut c, n);
        assert!(reply.starts_with("250"), "message {n}: {reply}");
        times.push(started.elapsed());
    }
    // Backlogged now: a client that pipelines its next transaction behind the end of data
    // gets the 250 for its message at once; only the reply to the next DATA is held back.
    c.begin_data("app@contoso.com", &["someone@example.net"]);
    let data = common::small_message(
        "app@contoso.com",
        "someone@example.net",
        "<flow-pipelined@test>",
        "flow",
    );
    let mut flight = common::dot_stuffed(&data);
    flight.extend_from_slice(
        b"MAIL FROM:<app@contoso.com>\r\nRCPT TO:<someone@example.net>\r\nDATA\r\n",
    );
    let sent = Instant::now();
    c.send(&flight);
    let stored = c.reply();
    let answered = sent.elapsed();
    assert!(stored.starts_with("250 "), "{stored}");
    assert!(
        answered < Duration::from_millis(300),
        "the 250 waited for the in-flow delay of the next message: {answered:?}"
    );
    assert!(c.reply().starts_with("250"));
    assert!(c.reply().starts_with("250"));
    assert!(c.reply().starts_with("354"));
    c.send(&common::dot_stuffed(&data));
    assert!(c.reply().starts_with("250 "));
    c.expect("QUIT", "221");
    let backlog = waiting(&relay);
    assert!(backlog >= 64, "backlog {backlog}");
    let first: Duration = times[..64].iter().sum();
    let last: Duration = times[130..].iter().sum();
    println!("first 64 messages {first:?}, last 4 {last:?}, waiting {backlog}");
    // Below the window nothing waits: each of the first messages is answered well within the
    // in-flow delay (a limit of 0 would pause every one of them for 300 ms).
    for (n, time) in times[..64].iter().enumerate() {
        assert!(
            *time < Duration::from_millis(300),
            "message {n}, below the window, was held back: {time:?}"
        );
    }
    assert!(
        last >= Duration::from_millis(4 * 300),
        "the last 4 messages should each wait the in-flow delay: {last:?}"
    );
    stop.send(()).unwrap();
    assert!(
        holder.join().unwrap() >= 1,
        "the relay connected to the upstream"
    );
}
