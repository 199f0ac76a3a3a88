//! The `Received:` trace header the relay prepends to every message (RFC 5321 §4.4), built only
//! from validated tokens: the EHLO name the parser accepted, the peer's IP address, our own host
//! name and the queue id.

use std::net::IpAddr;

use smtp::Transaction;

/// The `Received:` header for a message arriving in `transaction`, folded, ending in CRLF.
pub fn received_header(
    transaction: &Transaction,
    client_ip: IpAddr,
    hostname: &str,
    queue_id: &str,
    now_unix: u64,
) -> String {
    let protocol = match (transaction.tls, transaction.mail_params.smtputf8) {
        (true, true) => "UTF8SMTPS",
        (true, false) => "ESMTPS",
        (false, true) => "UTF8SMTP",
        (false, false) => "ESMTP",
    };
    let ip = crate::config::canonical_ip(client_ip);
    format!(
        "Received: from {helo} ([{ip}])\r\n\tby {hostname} (exorelay) with {protocol}\r\n\tid {queue_id}; {date}\r\n",
        helo = transaction.helo,
        date = rfc5322_date(now_unix),
    )
}

/// Formats a Unix time as an RFC 5322 §3.3 date in UTC, e.g. `Sat, 28 Nov 2026 06:16:49 +0000`.
pub fn rfc5322_date(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (year, month, day) = civil_from_days(days);
    let weekday = DAYS.get((days % 7) as usize).copied().unwrap_or("Thu");
    let month_name = MONTHS
        .get(month.saturating_sub(1) as usize)
        .copied()
        .unwrap_or("Jan");
    format!(
        "{weekday}, {day} {month_name} {year} {:02}:{:02}:{:02} +0000",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to (year, month 1–12, day 1–31), Howard Hinnant's civil calendar method.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_known_values() {
        let cases = [
            (0, "Thu, 1 Jan 1970 00:00:00 +0000"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 +0000"),
            (1_795_846_609, "Sat, 28 Nov 2026 06:16:49 +0000"),
        ];
        for (unix, expected) in cases {
            assert_eq!(rfc5322_date(unix), expected);
        }
    }
}
