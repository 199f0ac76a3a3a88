//! What EXO sees of one SMTP transaction: the connection facts (exo-attribution.md §2.1) and
//! the envelope and header From (§2.2), plus the rule set to judge them by (§2.4).
//!
//! These are plain values; where they come from (a live session, a pre-flight, a scenario file)
//! is the caller's business.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The facts of the SMTP connection (§2.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    /// Which EXO endpoint the client connected to.
    pub endpoint: Endpoint,
    /// The address EXO sees.
    pub source_ip: IpAddr,
    /// The EHLO/HELO name; not used for attribution (§9 \[MODEL\]).
    #[serde(default)]
    pub ehlo: String,
    /// The TLS version negotiated by STARTTLS, or none.
    #[serde(default)]
    pub tls: TlsVersion,
    /// The client certificate presented during the handshake, if any.
    #[serde(default)]
    pub client_cert: Option<ClientCert>,
    /// EXO's opinion of the source IP (service state, §5.1, §5.2, §5.6b).
    #[serde(default)]
    pub ip_reputation: IpReputation,
    /// SMTP AUTH on the submission endpoint (§6); ignored on the MX endpoint.
    #[serde(default)]
    pub auth: Option<Auth>,
}

/// The EXO endpoint of the connection (§2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// The tenant's MX host on port 25: connector relay, direct send and internet mail.
    Mx,
    /// `smtp.office365.com`, port 587 or 25: SMTP AUTH client submission (§6).
    Submission,
}

/// The TLS version of the session (§2.1).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum TlsVersion {
    /// No STARTTLS.
    #[default]
    #[serde(rename = "none")]
    None,
    /// TLS 1.0.
    #[serde(rename = "1.0")]
    V1_0,
    /// TLS 1.1.
    #[serde(rename = "1.1")]
    V1_1,
    /// TLS 1.2.
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3.
    #[serde(rename = "1.3")]
    V1_3,
}

impl TlsVersion {
    /// Whether EXO's mail-flow endpoints complete a handshake at this version: 1.2 or later.
    /// Below that the handshake fails and the session is plaintext (§7.2 \[MODEL\]).
    pub fn is_modern(self) -> bool {
        self >= Self::V1_2
    }

    /// The version as written in the vectors: `none`, `1.0` … `1.3`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::V1_0 => "1.0",
            Self::V1_1 => "1.1",
            Self::V1_2 => "1.2",
            Self::V1_3 => "1.3",
        }
    }
}

/// The client certificate (§2.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCert {
    /// The subject common name.
    pub subject_cn: String,
    /// The DNS names of the subject alternative name extension.
    #[serde(default)]
    pub san: Vec<String>,
    /// Chains to a public CA, chain sent complete, not expired, not revoked (§3.2).
    pub trusted: bool,
}

/// EXO's reputation of the source IP (service state, §2.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpReputation {
    /// Nothing special.
    #[default]
    Ok,
    /// On the block list: 5.7.606 (§5.1).
    Banned,
    /// Graylisted: 4.7.500 (§5.2).
    Throttled,
    /// Low reputation: Originating mail to external recipients is refused, 5.7.708 (§5.6b).
    Low,
}

/// SMTP AUTH on the submission endpoint (§6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// The authenticated user (a mailbox address).
    pub user: String,
    /// How the client authenticated.
    pub mechanism: AuthMechanism,
    /// Addresses the user has Send As rights for.
    #[serde(default)]
    pub send_as: Vec<String>,
}

/// The SMTP AUTH mechanism family (§6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMechanism {
    /// OAuth 2.0 (XOAUTH2).
    Oauth,
    /// Basic authentication (LOGIN/PLAIN with a password).
    Basic,
}

/// The envelope and the header From (§2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// The `MAIL FROM` address (P1), without angle brackets; empty = null sender `<>`.
    pub mail_from: String,
    /// The `RCPT TO` addresses, in order, without angle brackets.
    pub rcpt_to: Vec<String>,
    /// The address in the `From:` header (P2); `None` when unknown or absent.
    #[serde(default)]
    pub header_from: Option<String>,
}

impl Message {
    /// Whether P1 is the null sender `<>`.
    pub fn is_null_sender(&self) -> bool {
        self.mail_from.is_empty()
    }
}

/// Which relay rules apply (§2.4): the only difference is the P2 criterion of §3.5 step 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ruleset {
    /// Before the change announced for 1 November 2023: the header From domain counts.
    Before,
    /// The current rules: certificate domain or P1 domain only.
    After,
}
