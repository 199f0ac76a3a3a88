//! An attribution refusal is a configuration fault, not a message fault: when the upstream
//! answers `550 5.7.64 TenantAttribution; Relay Access Denied` to RCPT, the message is held
//! (moved to the spool's hold/), not bounced; the daemon's log and `exorelay queue show` give
//! the cause and the fix; once the upstream accepts, `exorelay queue release` (through the
//! daemon's control socket) makes it due again and it is delivered.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;
mod upstream;

use std::time::{Duration, Instant};

use common::{Client, Relay};
use upstream::FakeUpstream;

#[test]
fn tenant_attribution_refusal_holds_until_released() {
    let started = Instant::now();
    let fake = FakeUpstream::builder()
        .rcpt_reply(|_| "550 5.7.64 TenantAttribution; Relay Access Denied [test]".into())
        .start();
    let config = upstream::relay_config(
        common::BASE_CONFIG,
        &upstream::plain_upstream("exo", fake.port(), ""),
    );
    let relay = Relay::start_with(&config);
    let spool = relay.spool.display().to_string();

    let from = "app@contoso.com";
    let to = "someone@example.net";
    let mut c = Client::session(relay.addr);
    let reply = c.mail(
        from,
        &[to],
        &common::small_message(from, to, "<held@test>", "held"),
    );
    c.expect("QUIT", "221");
    let id = common::queue_id_of(&reply);

    common::wait_until_for("the message to be held", Duration::from_secs(30), || {
        common::spool_entries(&relay.spool)
            .iter()
            .any(|(e, held)| *held && e.id.to_string() == id)
    });
    let held_at = started.elapsed();
    let entries = common::spool_entries(&relay.spool);
    assert_eq!(
        entries.len(),
        1,
        "no DSN queued for a held message: {entries:?}"
    );
    let reason = entries[0].0.held_reason.clone().expect("held_reason");
    println!("held after {held_at:?}; held_reason = {reason:?}");
    assert!(reason.contains("5.7.64"), "{reason}");
    assert!(reason.contains("cause: TenantAttribution"), "{reason}");
    assert!(
        reason.contains("fix: ") && reason.contains("client_cert"),
        "{reason}"
    );
    assert!(reason.contains("exorelay queue release"), "{reason}");

    relay.wait_for_log("held:");
    let log = relay.log();
    let line = log.lines().find(|l| l.contains("held:")).unwrap();
    println!("log: {line}");
    assert!(
        line.contains(&id) && line.contains("5.7.64") && line.contains("fix:"),
        "{line}"
    );
    assert!(
        !log.contains("DSN queued"),
        "a held message must not bounce:\n{log}"
    );

    let show = common::exorelay_cli(&["queue", "show", &id, "--spool", &spool]);
    let shown = String::from_utf8_lossy(&show.stdout);
    println!("exorelay queue show {id}:\n{shown}");
    assert!(show.status.success(), "{show:?}");
    assert!(
        shown.contains("held_reason") && shown.contains("5.7.64"),
        "{shown}"
    );
    assert!(
        shown.contains("cause: TenantAttribution") && shown.contains("fix: "),
        "{shown}"
    );
    let list = common::exorelay_cli(&["queue", "list", "--spool", &spool]);
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        listed
            .lines()
            .any(|l| l.contains(&id) && l.contains("held")),
        "{listed}"
    );
    let tries = fake.connection_count();

    // Not retried while held.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(fake.connection_count(), tries, "a held message was retried");

    fake.set_rcpt_reply(|_| "250 2.1.5 Ok".into());
    let released = Instant::now();
    let release = common::exorelay_cli(&["queue", "release", &id, "--spool", &spool]);
    println!(
        "exorelay queue release {id}: {}{}",
        String::from_utf8_lossy(&release.stdout),
        String::from_utf8_lossy(&release.stderr)
    );
    assert!(release.status.success(), "{release:?}");
    fake.wait_for("the released message", Duration::from_secs(30), |m| {
        !m.is_empty()
    });
    let delivered_after = released.elapsed();
    let m = &fake.messages()[0];
    assert_eq!(m.mail_from, from);
    assert_eq!(m.rcpts, vec![to.to_string()]);
    assert_eq!(m.message_id().as_deref(), Some("<held@test>"));
    common::wait_until("the spool to empty", || {
        common::spool_entries(&relay.spool).is_empty()
    });
    println!(
        "delivered {delivered_after:?} after `queue release` was started; whole test {:?}",
        started.elapsed()
    );
}
