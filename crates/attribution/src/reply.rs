//! The replies EXO gives in the model, each text in one place (exo-attribution.md §4–§6).
//!
//! Texts are as EXO sends them, without the bracketed server name EXO appends (§ preamble
//! \[OBS\]); whoever writes them to a socket (the simulator) may append its own.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

/// An SMTP reply: basic code, enhanced status code and text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Reply {
    /// The three-digit basic code, e.g. 550.
    pub code: u16,
    /// The enhanced status code, e.g. `5.7.64`.
    pub enhanced: String,
    /// The human-readable text.
    pub text: String,
}

impl Reply {
    fn new(code: u16, enhanced: &str, text: impl Into<String>) -> Self {
        Self {
            code,
            enhanced: enhanced.to_owned(),
            text: text.into(),
        }
    }

    /// Whether the client should retry later (4xx, §7.4).
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// §5.1: the source IP is on Microsoft's block list \[DOC code\].
    pub fn banned_ip(ip: IpAddr) -> Self {
        Self::new(
            550,
            "5.7.606",
            format!("Access denied, banned sending IP [{ip}]"),
        )
    }

    /// §5.2: the source is graylisted \[DOC\].
    pub fn throttled() -> Self {
        Self::new(451, "4.7.500", "Access denied, please try again later")
    }

    /// §4 step 1, §5.3: no tenant for the recipient \[DOC\].
    pub fn relay_access_denied() -> Self {
        Self::new(550, "5.7.64", "TenantAttribution; Relay Access Denied")
    }

    /// §4 step 2, §5.4: a restricting Partner connector did not admit the connection \[OBS\].
    pub fn partner_restriction() -> Self {
        Self::new(
            550,
            "5.7.51",
            "TenantInboundAttribution; There is a partner connector configured that matched the \
             message's recipient domain. The connector had either the RestrictDomainsToIPAddresses \
             or RestrictDomainsToCertificate set",
        )
    }

    /// §4 step 2: the admitting Partner connector requires TLS and the session has none
    /// \[MODEL: text borrowed from Exchange\].
    pub fn starttls_required() -> Self {
        Self::new(451, "5.7.3", "Must issue a STARTTLS command first")
    }

    /// §4 step 3, §5.5: Reject Direct Send \[DOC\].
    pub fn direct_send_rejected() -> Self {
        Self::new(
            550,
            "5.7.68",
            "TenantInboundAttribution; Direct Send not allowed for this organization from \
             unauthorized sources",
        )
    }

    /// §4 step 4, §5.7: Directory-Based Edge Blocking \[DOC\].
    pub fn unknown_recipient() -> Self {
        Self::new(550, "5.4.1", "Recipient address rejected: Access denied")
    }

    /// §5.6a: the tenant is blocked for outbound spam \[DOC\].
    pub fn tenant_over_threshold() -> Self {
        Self::new(
            550,
            "5.7.705",
            "Access denied, tenant has exceeded threshold",
        )
    }

    /// §5.6b: the source IP has low reputation \[DOC\].
    pub fn low_reputation_ip() -> Self {
        Self::new(
            550,
            "5.7.708",
            "Access denied, traffic not accepted from this IP",
        )
    }

    /// §5.6c: sending from unregistered domains is blocked \[DOC\].
    pub fn unregistered_domain() -> Self {
        Self::new(
            550,
            "5.7.750",
            "Service unavailable. Client blocked from sending from unregistered domains",
        )
    }

    /// §6: TLS 1.0/1.1 on the submission endpoint [text OBS].
    pub fn legacy_tls() -> Self {
        Self::new(
            421,
            "4.7.66",
            "TLS 1.0 and 1.1 are not supported. Please upgrade/update your client to support TLS \
             1.2. Visit https://aka.ms/smtp_auth_tls",
        )
    }

    /// §6: `MAIL FROM` without AUTH on the submission endpoint \[DOC text, OBS code\].
    pub fn not_authenticated() -> Self {
        Self::new(
            530,
            "5.7.57",
            "Client was not authenticated to send anonymous mail during MAIL FROM",
        )
    }

    /// §6: basic authentication retired for client submission \[DOC\].
    pub fn basic_auth_retired() -> Self {
        Self::new(
            550,
            "5.7.30",
            "Basic authentication is not supported for Client Submission.",
        )
    }

    /// The authenticated user belongs to no known tenant. The spec is silent here (§6 says the
    /// tenant is the one covering the user's domain); we answer as a failed AUTH \[MODEL\].
    pub fn authentication_failed() -> Self {
        Self::new(535, "5.7.3", "Authentication unsuccessful")
    }

    /// §6: the sender is neither the user nor one it may send as \[OBS\].
    pub fn send_as_denied(user: &str, sender: &str) -> Self {
        let sender = if sender.is_empty() { "<>" } else { sender };
        Self::new(
            554,
            "5.2.252",
            format!("SendAsDenied; {user} not allowed to send as {sender}"),
        )
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.code, self.enhanced, self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalogue() -> Vec<Reply> {
        vec![
            Reply::banned_ip(IpAddr::from([198, 51, 100, 99])),
            Reply::throttled(),
            Reply::relay_access_denied(),
            Reply::partner_restriction(),
            Reply::starttls_required(),
            Reply::direct_send_rejected(),
            Reply::unknown_recipient(),
            Reply::tenant_over_threshold(),
            Reply::low_reputation_ip(),
            Reply::unregistered_domain(),
            Reply::legacy_tls(),
            Reply::not_authenticated(),
            Reply::basic_auth_retired(),
            Reply::authentication_failed(),
            Reply::send_as_denied("a@contoso.com", "b@contoso.com"),
        ]
    }

    #[test]
    fn basic_code_class_matches_enhanced_class() {
        for reply in catalogue() {
            let class = reply.enhanced.split('.').next().unwrap_or_default();
            // 451 5.7.3 is the one documented mismatch: Exchange's own STARTTLS reply (§4 step 2).
            if reply == Reply::starttls_required() {
                continue;
            }
            assert_eq!(class, (reply.code / 100).to_string(), "{reply}");
        }
    }

    #[test]
    fn display_is_code_enhanced_text() {
        assert_eq!(
            Reply::banned_ip(IpAddr::from([198, 51, 100, 99])).to_string(),
            "550 5.7.606 Access denied, banned sending IP [198.51.100.99]"
        );
        assert_eq!(
            Reply::send_as_denied("scanner@contoso.com", "").to_string(),
            "554 5.2.252 SendAsDenied; scanner@contoso.com not allowed to send as <>"
        );
    }
}
