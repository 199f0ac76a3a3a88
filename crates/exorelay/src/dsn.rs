//! Delivery status notifications (RFC 3464): the `multipart/report` bounce the relay sends from
//! `<>` when it gives up on recipients (or, optionally, when delivery is delayed). Written
//! straight into a spool writer, copying the original from its file in bounded chunks, so
//! returning a 35 MiB message (`RET=FULL`) never holds it in memory. A hand-written writer rather
//! than a MIME builder for that reason: a DSN is a fixed template.

use std::io::{self, BufRead, BufReader, Read, Write};

use spool::{Envelope, Recipient};

use crate::inbound::received::rfc5322_date;

/// Largest original returned in full; above it only the headers are returned (RFC 3461 §4.3
/// lets the MTA return less than asked).
pub const MAX_RETURNED_FULL: u64 = 10 * 1024 * 1024;

/// What happened to the recipients a DSN reports on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Delivery failed permanently (RFC 3464 `Action: failed`).
    Failed,
}

impl Action {
    fn keyword(self) -> &'static str {
        match self {
            Action::Failed => "failed",
        }
    }
}

/// One recipient's line in the report.
#[derive(Debug, Clone)]
pub struct RecipientReport<'a> {
    /// The recipient as stored.
    pub recipient: &'a Recipient,
    /// Enhanced status code, e.g. `5.7.64`.
    pub status: String,
    /// The upstream's reply (`smtp; 550 5.7.64 …`) or the local reason.
    pub diagnostic: String,
    /// The upstream that answered, when one did.
    pub remote_mta: Option<String>,
}

/// Everything a DSN says besides the original message.
#[derive(Debug)]
pub struct Report<'a> {
    /// Our host name (`Reporting-MTA`, the From address's domain).
    pub reporting_mta: &'a str,
    /// The original message's envelope.
    pub envelope: &'a Envelope,
    /// Failed or delayed.
    pub action: Action,
    /// The recipients reported on.
    pub recipients: Vec<RecipientReport<'a>>,
    /// Who receives the DSN (the original sender, or the postmaster).
    pub to: &'a str,
    /// Unix time of the report.
    pub now: u64,
}

/// Writes the DSN for `report` to `out`, returning the original `content` in full or as headers
/// per the message's `RET` and [`MAX_RETURNED_FULL`].
pub fn write<W: Write, R: Read>(report: &Report<'_>, content: R, out: &mut W) -> io::Result<()> {
    let boundary = format!("{}/{}", report.envelope.id, report.reporting_mta);
    let full = report.envelope.params.ret.as_deref() == Some("FULL")
        && report.envelope.size <= MAX_RETURNED_FULL;
    write_headers(report, &boundary, out)?;
    write!(
        out,
        "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    )?;
    write_explanation(report, out)?;
    write!(
        out,
        "\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
    )?;
    write_status(report, out)?;
    if full {
        write!(
            out,
            "\r\n--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n"
        )?;
        io::copy(&mut BufReader::new(content), out)?;
    } else {
        write!(
            out,
            "\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        )?;
        copy_header_section(content, out)?;
    }
    write!(out, "\r\n--{boundary}--\r\n")
}

fn write_headers<W: Write>(report: &Report<'_>, boundary: &str, out: &mut W) -> io::Result<()> {
    let subject = match report.action {
        Action::Failed => "Undelivered Mail Returned to Sender",
    };
    write!(
        out,
        "From: Mail Delivery System <MAILER-DAEMON@{mta}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.dsn@{mta}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\r\n",
        mta = report.reporting_mta,
        to = report.to,
        date = rfc5322_date(report.now),
        id = report.envelope.id,
    )
}

fn write_explanation<W: Write>(report: &Report<'_>, out: &mut W) -> io::Result<()> {
    let sender = display_sender(&report.envelope.mail_from);
    match report.action {
        Action::Failed => write!(
            out,
            "This is the mail relay at {}.\r\n\r\nYour message from {sender} could not be delivered to one or more\r\nrecipients. It has been given up on for these:\r\n\r\n",
            report.reporting_mta
        )?,
    }
    for r in &report.recipients {
        write!(
            out,
            "<{}>: {}\r\n",
            r.recipient.address,
            one_line(&r.diagnostic)
        )?;
    }
    Ok(())
}

fn write_status<W: Write>(report: &Report<'_>, out: &mut W) -> io::Result<()> {
    write!(out, "Reporting-MTA: dns; {}\r\n", report.reporting_mta)?;
    if let Some(envid) = &report.envelope.params.envid {
        write!(out, "Original-Envelope-Id: {envid}\r\n")?;
    }
    write!(
        out,
        "Arrival-Date: {}\r\n",
        rfc5322_date(report.envelope.received_at)
    )?;
    for r in &report.recipients {
        write!(
            out,
            "\r\nFinal-Recipient: rfc822; {}\r\n",
            r.recipient.address
        )?;
        if let Some(orcpt) = &r.recipient.orcpt {
            write!(
                out,
                "Original-Recipient: {}\r\n",
                orcpt.replacen(';', "; ", 1)
            )?;
        }
        write!(
            out,
            "Action: {}\r\nStatus: {}\r\n",
            report.action.keyword(),
            r.status
        )?;
        if let Some(mta) = &r.remote_mta {
            write!(out, "Remote-MTA: dns; {mta}\r\n")?;
        }
        write!(
            out,
            "Diagnostic-Code: smtp; {}\r\n",
            one_line(&r.diagnostic)
        )?;
        write!(out, "Last-Attempt-Date: {}\r\n", rfc5322_date(report.now))?;
    }
    Ok(())
}

/// Copies the original's header section (up to the first empty line), bounded to 1 MiB.
fn copy_header_section<R: Read, W: Write>(content: R, out: &mut W) -> io::Result<()> {
    const MAX_HEADER_BYTES: usize = 1024 * 1024;
    let mut reader = BufReader::new(content);
    let mut line = Vec::new();
    let mut copied = 0;
    loop {
        line.clear();
        let n = reader.by_ref().take(1000).read_until(b'\n', &mut line)?;
        if n == 0 || line == b"\r\n" || copied + n > MAX_HEADER_BYTES {
            return Ok(());
        }
        out.write_all(&line)?;
        copied += n;
    }
}

/// Text safe for one header line: control characters become spaces, length bounded.
fn one_line(text: &str) -> String {
    text.chars()
        .take(900)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn display_sender(mail_from: &str) -> String {
    if mail_from.is_empty() {
        "<>".to_string()
    } else {
        format!("<{mail_from}>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spool::{QueueId, RecipientState};

    fn envelope(ret: Option<&str>) -> Envelope {
        let mut e = Envelope::new(QueueId::generate(), 1_795_846_609);
        e.mail_from = "app@contoso.com".into();
        e.params.ret = ret.map(str::to_string);
        e.params.envid = Some("batch-42".into());
        e.size = 60;
        e.recipients = vec![Recipient {
            address: "someone@example.net".into(),
            notify: None,
            orcpt: Some("rfc822;someone@example.net".into()),
            state: RecipientState::Failed,
            last_reply: None,
            attempts: 1,
        }];
        e
    }

    fn render(envelope: &Envelope) -> String {
        let report = Report {
            reporting_mta: "relay.contoso.com",
            envelope,
            action: Action::Failed,
            recipients: vec![RecipientReport {
                recipient: &envelope.recipients[0],
                status: "5.7.64".into(),
                diagnostic: "550 5.7.64 TenantAttribution; Relay Access Denied\r\nX".into(),
                remote_mta: Some("contoso-com.mail.protection.outlook.com".into()),
            }],
            to: "app@contoso.com",
            now: 1_795_850_000,
        };
        let original = b"Subject: hello\r\nMessage-ID: <m1@contoso.com>\r\n\r\nsecret body\r\n";
        let mut out = Vec::new();
        write(&report, &original[..], &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn failed_dsn_has_the_rfc3464_fields() {
        let text = render(&envelope(None));
        for needle in [
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Auto-Submitted: auto-replied",
            "Reporting-MTA: dns; relay.contoso.com",
            "Original-Envelope-Id: batch-42",
            "Final-Recipient: rfc822; someone@example.net",
            "Original-Recipient: rfc822; someone@example.net",
            "Action: failed",
            "Status: 5.7.64",
            "Remote-MTA: dns; contoso-com.mail.protection.outlook.com",
            "Diagnostic-Code: smtp; 550 5.7.64 TenantAttribution; Relay Access Denied  X",
            "Content-Type: text/rfc822-headers",
            "Message-ID: <m1@contoso.com>",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(!text.contains("secret body"), "headers only by default");
        assert!(
            text.split("\r\n")
                .all(|l| !l.contains('\n') && !l.contains('\r')),
            "bare CR/LF"
        );
        assert!(text.ends_with("--\r\n"));
    }

    #[test]
    fn ret_full_returns_the_whole_message() {
        let text = render(&envelope(Some("FULL")));
        assert!(text.contains("Content-Type: message/rfc822"), "{text}");
        assert!(text.contains("secret body"), "{text}");
    }
}
