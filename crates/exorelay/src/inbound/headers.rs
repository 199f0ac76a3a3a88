//! Header repair for LAN devices that send incomplete messages: scan the header section (held
//! back, bounded, while the body streams to the spool) and add a missing `Date:`, `Message-ID:`
//! or `From:` (RFC 5322 §3.6 requires Date and From; Message-ID is expected by every mail
//! system). Optionally, a `From:` whose display name contains an address — the classic spoof
//! shape `"ceo@bank.example" <x@lan>` — loses its display name; the original is kept in
//! `X-Exorelay-Original-From:`. Parsing uses mail-parser, so RFC 2047 encoded names count too.

use mail_parser::MessageParser;

/// Largest header section held back for repair; a longer one is passed through unchanged.
pub const MAX_HEADER_SECTION: usize = 64 * 1024;

/// What to repair, from the client's rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairRules {
    /// Add missing Date, Message-ID and From.
    pub add_missing: bool,
    /// Drop a From display name that contains an address.
    pub strip_spoofed_display_name: bool,
}

/// Facts the added headers are made of.
#[derive(Debug, Clone)]
pub struct MessageFacts<'a> {
    /// RFC 5322 date of reception.
    pub date: &'a str,
    /// The queue id (unique), for the Message-ID's left part.
    pub queue_id: &'a str,
    /// Our host name, for the Message-ID's right part.
    pub hostname: &'a str,
    /// The envelope sender as delivered ("" = null sender).
    pub sender: &'a str,
}

/// Returns the header section to write instead of `section` (which ends with its empty line,
/// or is a header-only message). Unchanged when nothing needs repair.
pub fn repair(section: &[u8], rules: RepairRules, facts: &MessageFacts<'_>) -> Vec<u8> {
    if !rules.add_missing && !rules.strip_spoofed_display_name {
        return section.to_vec();
    }
    let parsed = MessageParser::new().parse_headers(section);
    let has = |name: &str| has_field(section, name);
    let mut added = String::new();
    if rules.add_missing {
        if !has("Date") {
            added.push_str(&format!("Date: {}\r\n", facts.date));
        }
        if !has("Message-ID") {
            added.push_str(&format!(
                "Message-ID: <{}@{}>\r\n",
                facts.queue_id, facts.hostname
            ));
        }
        let from_address = parsed
            .as_ref()
            .and_then(|m| m.from())
            .and_then(|a| a.first())
            .and_then(|a| a.address());
        if from_address.is_none_or(|a| !a.contains('@')) && !facts.sender.is_empty() {
            if has("From") {
                return with_replaced_from(section, &added, &format!("<{}>", facts.sender));
            }
            added.push_str(&format!("From: <{}>\r\n", facts.sender));
        }
    }
    if rules.strip_spoofed_display_name {
        let from = parsed
            .as_ref()
            .and_then(|m| m.from())
            .and_then(|a| a.first());
        if let Some((name, address)) = from.and_then(|a| Some((a.name()?, a.address()?)))
            && name.contains('@')
            && address.contains('@')
        {
            return with_replaced_from(section, &added, &format!("<{address}>"));
        }
    }
    let mut out = added.into_bytes();
    out.extend_from_slice(section);
    out
}

/// Whether the header section has a field `name` (case-insensitive, at a line start).
fn has_field(section: &[u8], name: &str) -> bool {
    header_lines(section).any(|line| field_name(line).is_some_and(|n| n.eq_ignore_ascii_case(name)))
}

fn header_lines(section: &[u8]) -> impl Iterator<Item = &[u8]> {
    section
        .split_inclusive(|&b| b == b'\n')
        .take_while(|line| *line != b"\r\n" && *line != b"\n")
}

fn field_name(line: &[u8]) -> Option<&str> {
    if line.first().is_some_and(|b| b.is_ascii_whitespace()) {
        return None;
    }
    let colon = line.iter().position(|&b| b == b':')?;
    std::str::from_utf8(line.get(..colon)?)
        .ok()
        .map(str::trim_end)
}

/// The section with `added` first, the From field (with its continuation lines) replaced by
/// `From: value` and the original kept as `X-Exorelay-Original-From:`.
fn with_replaced_from(section: &[u8], added: &str, value: &str) -> Vec<u8> {
    let mut out = added.as_bytes().to_vec();
    let mut in_from = false;
    let lines = section.split_inclusive(|&b| b == b'\n');
    let mut in_headers = true;
    for line in lines {
        if in_headers && (line == b"\r\n" || line == b"\n") {
            in_headers = false;
        }
        let is_continuation = line.first().is_some_and(|&b| b == b' ' || b == b'\t');
        if in_headers && !is_continuation {
            in_from = field_name(line).is_some_and(|n| n.eq_ignore_ascii_case("From"));
            if in_from {
                out.extend_from_slice(format!("From: {value}\r\n").as_bytes());
                out.extend_from_slice(b"X-Exorelay-Original-");
                out.extend_from_slice(line);
                continue;
            }
        }
        if in_headers && in_from && is_continuation {
            out.extend_from_slice(line);
            continue;
        }
        out.extend_from_slice(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FACTS: MessageFacts<'static> = MessageFacts {
        date: "Sat, 28 Nov 2026 06:16:49 +0000",
        queue_id: "01ABC",
        hostname: "relay.contoso.com",
        sender: "scanner@contoso.com",
    };
    const ALL: RepairRules = RepairRules {
        add_missing: true,
        strip_spoofed_display_name: true,
    };

    fn fixed(section: &str, rules: RepairRules) -> String {
        String::from_utf8(repair(section.as_bytes(), rules, &FACTS)).unwrap()
    }

    #[test]
    fn complete_messages_are_unchanged() {
        let m = "From: Alice <alice@contoso.com>\r\nDate: Sat, 28 Nov 2026 06:00:00 +0000\r\nMessage-ID: <a@b>\r\nSubject: x\r\n\r\n";
        assert_eq!(fixed(m, ALL), m);
    }

    #[test]
    fn missing_fields_are_added() {
        let out = fixed("Subject: scan\r\n\r\n", ALL);
        assert!(out.starts_with("Date: Sat, 28 Nov 2026 06:16:49 +0000\r\nMessage-ID: <01ABC@relay.contoso.com>\r\nFrom: <scanner@contoso.com>\r\nSubject: scan\r\n\r\n"), "{out}");
        let none = RepairRules {
            add_missing: false,
            strip_spoofed_display_name: false,
        };
        assert_eq!(
            fixed("Subject: scan\r\n\r\n", none),
            "Subject: scan\r\n\r\n"
        );
    }

    #[test]
    fn invalid_from_is_replaced_and_kept() {
        let out = fixed("From: scanner\r\nDate: x\r\nMessage-ID: <a@b>\r\n\r\n", ALL);
        assert!(
            out.contains("From: <scanner@contoso.com>\r\nX-Exorelay-Original-From: scanner\r\n"),
            "{out}"
        );
        assert_eq!(
            out.matches("\r\nFrom:").count() + usize::from(out.starts_with("From:")),
            1,
            "{out}"
        );
    }

    #[test]
    fn spoofed_display_names_are_stripped_even_when_encoded() {
        let cases = [
            "From: \"ceo@bank.example\" <x@lan.contoso.com>\r\nDate: x\r\nMessage-ID: <a@b>\r\n\r\n",
            "From: =?utf-8?q?ceo=40bank.example?=\r\n <x@lan.contoso.com>\r\nDate: x\r\nMessage-ID: <a@b>\r\n\r\n",
        ];
        for m in cases {
            let out = fixed(m, ALL);
            assert!(
                out.starts_with("From: <x@lan.contoso.com>\r\nX-Exorelay-Original-From: "),
                "{out}"
            );
            assert!(!out.contains("\r\nFrom: \""), "{out}");
        }
        let honest =
            "From: Alice Smith <alice@contoso.com>\r\nDate: x\r\nMessage-ID: <a@b>\r\n\r\n";
        assert_eq!(fixed(honest, ALL), honest);
    }
}
