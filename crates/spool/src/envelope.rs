//! The envelope record: everything about a queued message except its content.
//!
//! Stored beside the content as `ID.env`, in TOML so an operator can read it with `cat`, with
//! `version = 1` on its first line so a future format can be told apart. It carries the
//! per-recipient delivery state and the next attempt time, so the queue manager rewrites only
//! this small file after each attempt (chasquid's queue item works the same way). Choosing
//! *when* to retry is the queue manager's job; this module only stores the answer.
//!
//! Unknown fields are ignored when reading; a change that older builds must not misread bumps
//! [`ENVELOPE_VERSION`] instead, and a file with a version this build does not know is
//! quarantined rather than guessed at.
//!
//! Integers are written in plain decimal. The TOML specification stops at `i64::MAX`; the
//! `toml` crate reads and writes the whole `u64` range, so nothing is altered, but other TOML
//! tools may refuse such a file (no real time or size comes near it).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, QueueId};

/// The envelope format version this build writes and reads.
pub const ENVELOPE_VERSION: u32 = 1;

/// The largest envelope file the spool will read. A real one is a few KiB (500 recipients with
/// long replies stay well below 1 MiB); anything bigger is damage, not mail.
pub const MAX_ENVELOPE_BYTES: u64 = 8 * 1024 * 1024;

/// A message's envelope and delivery state, as stored in `ID.env`.
///
/// Fields are declared in the order they appear in the file: plain values first, then the
/// `[params]` table and the `[[recipients]]` array (TOML puts tables last).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Format version; [`ENVELOPE_VERSION`] for everything this build writes.
    pub version: u32,
    /// The message's id; must match the file name.
    pub id: QueueId,
    /// When the message was accepted, Unix seconds.
    pub received_at: u64,
    /// The client's address as the relay saw it (after PROXY protocol), e.g. `10.20.0.5`.
    pub client_ip: String,
    /// Name of the `[[client]]` rule that let the client relay.
    pub client_name: String,
    /// The EHLO/HELO argument the client gave.
    pub helo: String,
    /// Whether the message arrived over TLS.
    pub tls: bool,
    /// Envelope sender used for delivery; `""` is the null sender `<>`.
    pub mail_from: String,
    /// The sender the client gave, when the relay rewrote it; `None` when unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_mail_from: Option<String>,
    /// Delivery attempts made for the message as a whole.
    pub attempts: u32,
    /// When the message is next due for delivery, Unix seconds.
    pub next_attempt: u64,
    /// Size of the content file in bytes; set by the spool at commit.
    pub size: u64,
    /// CRC-32 (IEEE) of the content file; set by the spool at commit, checked before a
    /// message this process did not write itself is delivered. `None` in older envelopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_crc32: Option<u32>,
    /// Why the message is held, when it is (set by `Spool::hold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_reason: Option<String>,
    /// ESMTP parameters of MAIL FROM, to pass on upstream.
    #[serde(default)]
    pub params: MailParameters,
    /// The recipients, each with its own delivery state.
    pub recipients: Vec<Recipient>,
}

/// ESMTP parameters given with MAIL FROM that must travel with the message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailParameters {
    /// `SIZE=` as declared by the client (RFC 1870).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// `BODY=`: `"7BIT"`, `"8BITMIME"` (RFC 6152) or `"BINARYMIME"` (RFC 3030).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// `SMTPUTF8` was given (RFC 6531).
    #[serde(default)]
    pub smtputf8: bool,
    /// DSN `RET=` (`"FULL"` or `"HDRS"`, RFC 3461 §4.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<String>,
    /// DSN `ENVID=` (RFC 3461 §4.4), still xtext-encoded as received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
}

/// One recipient and where its delivery stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The forward path, without angle brackets.
    pub address: String,
    /// DSN `NOTIFY=` (RFC 3461 §4.1), e.g. `"FAILURE,DELAY"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
    /// DSN `ORCPT=` (RFC 3461 §4.2), as received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<String>,
    /// Delivery state.
    pub state: RecipientState,
    /// The last reply (or local error) seen for this recipient, for DSNs and `queue show`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reply: Option<String>,
    /// Delivery attempts made for this recipient.
    pub attempts: u32,
}

/// Delivery state of one recipient; written in lower case (`state = "pending"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientState {
    /// Not tried yet.
    #[default]
    Pending,
    /// Accepted by the upstream; nothing more to do.
    Delivered,
    /// Failed temporarily; will be tried again at `next_attempt`.
    Deferred,
    /// Failed permanently (5xx or expiry); a DSN is due or sent.
    Failed,
}

impl RecipientState {
    /// Whether delivery to this recipient is finished, one way or the other.
    pub fn is_final(self) -> bool {
        matches!(self, RecipientState::Delivered | RecipientState::Failed)
    }
}

impl Envelope {
    /// A fresh envelope for message `id` received at `received_at` (Unix seconds), due at once,
    /// with no sender, recipients or parameters yet.
    pub fn new(id: QueueId, received_at: u64) -> Envelope {
        Envelope {
            version: ENVELOPE_VERSION,
            id,
            received_at,
            client_ip: String::new(),
            client_name: String::new(),
            helo: String::new(),
            tls: false,
            mail_from: String::new(),
            original_mail_from: None,
            attempts: 0,
            next_attempt: received_at,
            size: 0,
            content_crc32: None,
            held_reason: None,
            params: MailParameters::default(),
            recipients: Vec::new(),
        }
    }

    /// Whether every recipient is delivered or failed, so the message can leave the queue.
    pub fn is_finished(&self) -> bool {
        self.recipients.iter().all(|r| r.state.is_final())
    }

    /// The TOML text of this envelope, as written to `ID.env`.
    ///
    /// `path` only names the file in the error.
    pub fn to_toml(&self, path: &Path) -> Result<String, Error> {
        toml::to_string(self).map_err(|e| Error::Serialize {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Parses an envelope file's text, checking its version first so that a newer format
    /// is reported as such, not as a confusing missing field. `path` names the file in
    /// errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Envelope, Error> {
        match toml::from_str::<Envelope>(text) {
            Ok(envelope) if envelope.version == ENVELOPE_VERSION => Ok(envelope),
            Ok(envelope) => Err(Error::UnsupportedVersion {
                path: path.to_owned(),
                version: envelope.version,
            }),
            Err(parse_error) => {
                // Only the version, leniently: a future format may differ in every other field.
                #[derive(Deserialize)]
                struct VersionOnly {
                    version: u32,
                }
                match toml::from_str::<VersionOnly>(text) {
                    Ok(v) if v.version != ENVELOPE_VERSION => Err(Error::UnsupportedVersion {
                        path: path.to_owned(),
                        version: v.version,
                    }),
                    _ => Err(Error::Parse {
                        path: path.to_owned(),
                        reason: parse_error.to_string().trim_end().to_owned(),
                    }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::PathBuf;

    pub(super) fn sample() -> Envelope {
        Envelope {
            version: ENVELOPE_VERSION,
            id: QueueId::generate(),
            received_at: 1_700_000_000,
            client_ip: "10.20.0.5".into(),
            client_name: "printers".into(),
            helo: "printer-3.lan".into(),
            tls: true,
            mail_from: "scanner@contoso.com".into(),
            original_mail_from: Some("root@printer-3.lan".into()),
            attempts: 1,
            next_attempt: 1_700_000_300,
            size: 12345,
            content_crc32: Some(0x1234_5678),
            held_reason: None,
            params: MailParameters {
                size: Some(12000),
                body: Some("8BITMIME".into()),
                smtputf8: false,
                ret: Some("HDRS".into()),
                envid: Some("abc+2Bdef".into()),
            },
            recipients: vec![
                Recipient {
                    address: "alice@contoso.com".into(),
                    notify: Some("FAILURE".into()),
                    orcpt: Some("rfc822;alice@contoso.com".into()),
                    state: RecipientState::Delivered,
                    last_reply: Some("250 2.6.0 Queued mail for delivery".into()),
                    attempts: 1,
                },
                Recipient {
                    address: "bob@contoso.com".into(),
                    notify: None,
                    orcpt: None,
                    state: RecipientState::Deferred,
                    last_reply: Some("451 4.4.3 Temporary\r\nsecond line".into()),
                    attempts: 1,
                },
            ],
        }
    }

    fn path() -> PathBuf {
        PathBuf::from("queue/X.env")
    }

    #[test]
    fn text_is_human_readable() {
        let envelope = sample();
        let text = envelope.to_toml(&path()).unwrap();
        assert!(text.starts_with("version = 1\n"), "{text}");
        assert!(
            text.contains("mail_from = \"scanner@contoso.com\"\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!("id = \"{}\"\n", envelope.id)),
            "{text}"
        );
        assert!(text.contains("state = \"deferred\"\n"), "{text}");
        assert!(text.contains("[params]\n"), "{text}");
        assert!(text.contains("[[recipients]]\n"), "{text}");
        assert!(
            !text.contains("held_reason"),
            "None fields are left out: {text}"
        );
        assert_eq!(Envelope::from_toml(&text, &path()).unwrap(), envelope);
    }

    #[test]
    fn unknown_version_is_reported_as_such() {
        let text = sample()
            .to_toml(&path())
            .unwrap()
            .replace("version = 1\n", "version = 99\n");
        assert!(matches!(
            Envelope::from_toml(&text, &path()),
            Err(Error::UnsupportedVersion { version: 99, .. })
        ));
        // A future format with entirely different fields still says "version", not "missing field".
        assert!(matches!(
            Envelope::from_toml("version = 2\nsomething = \"else\"\n", &path()),
            Err(Error::UnsupportedVersion { version: 2, .. })
        ));
    }

    #[test]
    fn garbage_is_a_parse_error_naming_the_file() {
        for text in [
            "",
            "not toml at all",
            "version = 1\n",
            "version = \"one\"\n",
        ] {
            match Envelope::from_toml(text, &path()) {
                Err(Error::Parse { path: p, reason }) => {
                    assert_eq!(p, path());
                    assert!(!reason.is_empty());
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn whole_u64_range_round_trips() {
        let mut envelope = sample();
        envelope.next_attempt = u64::MAX;
        envelope.params.size = Some(u64::MAX);
        let text = envelope.to_toml(&path()).unwrap();
        assert!(
            text.contains("next_attempt = 18446744073709551615\n"),
            "{text}"
        );
        assert_eq!(Envelope::from_toml(&text, &path()).unwrap(), envelope);
    }

    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-z0-9.\"'\\\\ \r\n\t<>@+=,;]{0,40}",
            Just(String::new()),
            Just("\"\"\"'''\\u0000\n".to_owned()),
        ]
    }

    fn any_state() -> impl Strategy<Value = RecipientState> {
        prop_oneof![
            Just(RecipientState::Pending),
            Just(RecipientState::Delivered),
            Just(RecipientState::Deferred),
            Just(RecipientState::Failed),
        ]
    }

    fn any_recipient() -> impl Strategy<Value = Recipient> {
        (
            any_text(),
            proptest::option::of(any_text()),
            proptest::option::of(any_text()),
            any_state(),
            proptest::option::of(any_text()),
            any::<u32>(),
        )
            .prop_map(
                |(address, notify, orcpt, state, last_reply, attempts)| Recipient {
                    address,
                    notify,
                    orcpt,
                    state,
                    last_reply,
                    attempts,
                },
            )
    }

    fn any_envelope() -> impl Strategy<Value = Envelope> {
        let head = (
            any::<u128>(),
            any::<u64>(),
            any_text(),
            any_text(),
            any_text(),
            any::<bool>(),
            any_text(),
            proptest::option::of(any_text()),
        );
        let tail = (
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(any_text()),
            (
                proptest::option::of(any::<u64>()),
                proptest::option::of(any_text()),
                any::<bool>(),
                proptest::option::of(any_text()),
                proptest::option::of(any_text()),
            ),
            proptest::collection::vec(any_recipient(), 0..4),
        );
        (head, tail).prop_map(
            |(
                (id, received_at, client_ip, client_name, helo, tls, mail_from, original),
                (attempts, next_attempt, size, held_reason, params, recipients),
            )| Envelope {
                version: ENVELOPE_VERSION,
                id: QueueId::from_ulid(ulid::Ulid(id)),
                received_at,
                client_ip,
                client_name,
                helo,
                tls,
                mail_from,
                original_mail_from: original,
                attempts,
                next_attempt,
                size,
                content_crc32: None,
                held_reason,
                params: MailParameters {
                    size: params.0,
                    body: params.1,
                    smtputf8: params.2,
                    ret: params.3,
                    envid: params.4,
                },
                recipients,
            },
        )
    }

    proptest! {
        #[test]
        fn toml_round_trip(envelope in any_envelope()) {
            let text = envelope.to_toml(&path()).unwrap();
            prop_assert!(text.starts_with("version = 1\n"));
            let back = Envelope::from_toml(&text, &path()).unwrap();
            prop_assert_eq!(back, envelope);
        }
    }
}
