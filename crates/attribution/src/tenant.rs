//! Tenant configuration: accepted domains, known recipients, organisation settings, service
//! state and inbound connectors (exo-attribution.md §2.3).
//!
//! These types deserialise from TOML so the relay's tenant configuration and the tenant files of
//! `exorelay check` can use them directly. Field names follow the test-vector format; a
//! connector list is written as `[[tenant.connector]]`. `CloudServicesMailEnabled` and
//! `TreatMessagesAsInternal` are accepted so a copied configuration loads, and are ignored (they
//! do not affect attribution, §2.3 \[MODEL\]); parameters the model does not know are refused.
//! Checking a configuration for EXO's own limits beyond the IP masks is left to the caller.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::domain::{self, Specificity};

/// All tenants the model knows, in configuration order (order breaks ties, §3.5 step 1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct World {
    /// The tenants, in configuration order.
    #[serde(default, rename = "tenant")]
    pub tenants: Vec<Tenant>,
}

/// One Microsoft 365 organisation (§2.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Our name for the tenant; it is what a verdict reports.
    pub id: String,
    /// The tenant's accepted domains.
    pub accepted_domains: Vec<AcceptedDomain>,
    /// Known recipient addresses; empty means every address in an Authoritative domain exists
    /// (§2.3 \[MODEL\]).
    #[serde(default)]
    pub recipients: Vec<String>,
    /// `Set-OrganizationConfig -RejectDirectSend $true` (§4 step 3).
    #[serde(default)]
    pub reject_direct_send: bool,
    /// Service state: the tenant is blocked for outbound spam, 5.7.705 (§5.6a).
    #[serde(default)]
    pub outbound_blocked: bool,
    /// Service state: sending from unregistered domains is blocked, 5.7.750 (§5.6c).
    #[serde(default)]
    pub unregistered_domain_block: bool,
    /// Service state: whether basic authentication still works for client submission (§6).
    #[serde(default)]
    pub basic_auth_submission: BasicAuth,
    /// Inbound connectors, in configuration order.
    #[serde(default, rename = "connector")]
    pub connectors: Vec<Connector>,
}

/// An accepted domain of a tenant (§2.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptedDomain {
    /// The domain name.
    pub domain: String,
    /// Authoritative or InternalRelay.
    #[serde(rename = "type")]
    pub kind: DomainType,
    /// Whether every subdomain is covered too; EXO allows it only on InternalRelay domains.
    #[serde(default)]
    pub match_subdomains: bool,
}

/// The type of an accepted domain (§2.3; EXO has no ExternalRelay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DomainType {
    /// Recipients must exist in the tenant; unknown ones are refused by DBEB (§4 step 4).
    Authoritative,
    /// Unknown recipients are passed on to the on-premises server.
    InternalRelay,
}

/// Whether SMTP AUTH with basic authentication is still accepted for client submission (§6).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BasicAuth {
    /// Basic authentication still works.
    #[default]
    Allowed,
    /// Retired: `550 5.7.30`.
    Retired,
}

/// An inbound connector with the `New-InboundConnector` parameters the model uses (§2.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connector {
    /// `Name`, reported in verdicts.
    pub name: String,
    /// `ConnectorType`.
    #[serde(rename = "type")]
    pub kind: ConnectorType,
    /// `Enabled`; disabled connectors never match.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// `TlsSenderCertificateName`: a domain, or `*.domain` for the domain and its subdomains.
    #[serde(default, deserialize_with = "empty_is_none")]
    pub tls_sender_certificate_name: Option<String>,
    /// `SenderIPAddresses`: IPv4 addresses and ranges.
    #[serde(default)]
    pub sender_ip_addresses: Vec<Ipv4Range>,
    /// `SenderDomains`: `*`, `*.domain` or a domain; the P1 scope of a Partner connector.
    pub sender_domains: Vec<String>,
    /// `AssociatedAcceptedDomains`: the recipient domains the connector applies to; empty = all.
    #[serde(default)]
    pub associated_accepted_domains: Vec<String>,
    /// `RequireTls` (Partner only; ignored on OnPremises connectors, §2.3 \[MODEL\]).
    #[serde(default)]
    pub require_tls: bool,
    /// `RestrictDomainsToCertificate` (Partner only, §4 step 2).
    #[serde(default)]
    pub restrict_domains_to_certificate: bool,
    /// `RestrictDomainsToIPAddresses` (Partner only, §4 step 2).
    #[serde(default)]
    pub restrict_domains_to_ip_addresses: bool,
    /// `CloudServicesMailEnabled`; no effect on attribution (§2.3 \[MODEL\]).
    #[serde(default)]
    pub cloud_services_mail_enabled: bool,
    /// `TreatMessagesAsInternal`; affects authentication, not attribution (§2.3 \[MODEL\]).
    #[serde(default)]
    pub treat_messages_as_internal: bool,
}

/// `ConnectorType` of an inbound connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnectorType {
    /// The tenant's own servers: matching mail may be Originating and relayed (§3).
    OnPremises,
    /// A partner's servers: scopes and restricts Incoming mail (§4 step 2).
    Partner,
}

/// One `SenderIPAddresses` entry: an IPv4 address or CIDR range with a /24–/32 mask, the only
/// masks EXO accepts; IPv6 is not supported (§2.3 \[DOC\]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Range {
    network: Ipv4Addr,
    prefix: u8,
}

/// Why a `SenderIPAddresses` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ipv4RangeError {
    /// Not an IPv4 address (IPv6 is not supported by EXO connectors).
    NotIpv4(String),
    /// The mask is not a number from 24 to 32.
    Mask(String),
}

impl Ipv4Range {
    /// Smallest mask EXO accepts.
    pub const MIN_PREFIX: u8 = 24;

    /// Builds a range; `None` unless `prefix` is in `24..=32`. Host bits are cleared.
    pub fn new(address: Ipv4Addr, prefix: u8) -> Option<Self> {
        (Self::MIN_PREFIX..=32).contains(&prefix).then(|| Self {
            network: Ipv4Addr::from(u32::from(address) & mask(prefix)),
            prefix,
        })
    }

    /// Whether `ip` lies in the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.network)
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0)
}

impl FromStr for Ipv4Range {
    type Err = Ipv4RangeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: Ipv4Addr = address
            .trim()
            .parse()
            .map_err(|_| Ipv4RangeError::NotIpv4(text.to_owned()))?;
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse()
                .map_err(|_| Ipv4RangeError::Mask(text.to_owned()))?,
            None => 32,
        };
        Self::new(address, prefix).ok_or_else(|| Ipv4RangeError::Mask(text.to_owned()))
    }
}

impl fmt::Display for Ipv4Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == 32 {
            write!(f, "{}", self.network)
        } else {
            write!(f, "{}/{}", self.network, self.prefix)
        }
    }
}

impl fmt::Display for Ipv4RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotIpv4(text) => write!(
                f,
                "{text:?} is not an IPv4 address or range (EXO connectors do not support IPv6)"
            ),
            Self::Mask(text) => write!(f, "{text:?}: EXO accepts masks from /24 to /32 only"),
        }
    }
}

impl std::error::Error for Ipv4RangeError {}

impl Serialize for Ipv4Range {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Range {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

fn enabled_by_default() -> bool {
    true
}

fn empty_is_none<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    let text = Option::<String>::deserialize(deserializer)?;
    Ok(text.filter(|t| !t.is_empty()))
}

impl World {
    /// The tenant whose accepted domain covers `domain` most specifically; the first tenant in
    /// configuration order on a tie (§3.4, §4 step 1). `domain` must be normalised.
    pub(crate) fn tenant_for(&self, domain: &str) -> Option<(&Tenant, &AcceptedDomain)> {
        let mut best = None;
        for tenant in &self.tenants {
            if let Some((specificity, accepted)) = tenant.covering(domain) {
                best = domain::more_specific(best, (specificity, (tenant, accepted)));
            }
        }
        best.map(|(_, found)| found)
    }
}

impl Tenant {
    /// The tenant's most specific accepted domain covering `domain` (§3.4 \[MODEL\]).
    /// `domain` must be normalised.
    pub(crate) fn covering(&self, domain: &str) -> Option<(Specificity, &AcceptedDomain)> {
        let mut best = None;
        for accepted in &self.accepted_domains {
            let name = domain::normalize_domain(&accepted.domain);
            if let Some(specificity) = domain::covers(&name, accepted.match_subdomains, domain) {
                best = domain::more_specific(best, (specificity, accepted));
            }
        }
        best
    }

    /// Whether an accepted domain of the tenant covers `domain` (`None` = null sender: never).
    pub(crate) fn accepts(&self, domain: Option<&str>) -> bool {
        domain.is_some_and(|d| self.covering(d).is_some())
    }

    /// The domain to suggest to an admin: the first accepted domain that is not the
    /// `onmicrosoft.com` test domain (§2.3), else the first one.
    pub(crate) fn primary_domain(&self) -> Option<&str> {
        let not_test =
            |a: &&AcceptedDomain| !a.domain.to_ascii_lowercase().ends_with(".onmicrosoft.com");
        self.accepted_domains
            .iter()
            .find(not_test)
            .or_else(|| self.accepted_domains.first())
            .map(|a| a.domain.as_str())
    }
}

impl Connector {
    /// The normalised `TlsSenderCertificateName`, if set.
    pub(crate) fn certificate_pattern(&self) -> Option<String> {
        self.tls_sender_certificate_name
            .as_deref()
            .map(domain::normalize_domain)
            .filter(|p| !p.is_empty())
    }

    /// `cert_domain(connector)`: the certificate name with a leading `*.` removed (§3.2).
    pub(crate) fn certificate_domain(&self) -> Option<String> {
        self.certificate_pattern()
            .map(|p| p.strip_prefix("*.").map(str::to_owned).unwrap_or(p))
    }

    /// `ip ∈ SenderIPAddresses` (§3.3).
    pub(crate) fn lists_ip(&self, ip: Ipv4Addr) -> bool {
        self.sender_ip_addresses
            .iter()
            .any(|range| range.contains(ip))
    }

    /// Whether the connector applies to recipients in `accepted` (§4 step 2): the
    /// `AssociatedAcceptedDomains` list is empty or names it.
    pub(crate) fn applies_to(&self, accepted: &AcceptedDomain) -> bool {
        let wanted = domain::normalize_domain(&accepted.domain);
        self.associated_accepted_domains.is_empty()
            || self
                .associated_accepted_domains
                .iter()
                .any(|d| domain::normalize_domain(d) == wanted)
    }

    /// Whether a `SenderDomains` entry covers the P1 domain (§4 step 2).
    pub(crate) fn scopes_sender(&self, p1_domain: Option<&str>) -> bool {
        self.sender_domains.iter().any(|pattern| {
            domain::sender_domain_covers(&domain::normalize_domain(pattern), p1_domain)
        })
    }

    /// Whether either Restrict flag is set (§4 step 2).
    pub(crate) fn restricts(&self) -> bool {
        self.restrict_domains_to_certificate || self.restrict_domains_to_ip_addresses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_ranges() {
        let table = [
            ("203.0.113.0/28", "203.0.113.15", true),
            ("203.0.113.0/28", "203.0.113.16", false),
            ("198.51.100.25", "198.51.100.25", true),
            ("198.51.100.25", "198.51.100.26", false),
            ("198.51.100.7/24", "198.51.100.200", true),
            ("192.0.2.80/29", "192.0.2.87", true),
            ("192.0.2.80/29", "192.0.2.88", false),
        ];
        for (range, ip, expected) in table {
            let range: Ipv4Range = range.parse().unwrap();
            assert_eq!(
                range.contains(ip.parse().unwrap()),
                expected,
                "{range} {ip}"
            );
        }
    }

    #[test]
    fn ip_range_errors() {
        for bad in [
            "10.0.0.0/16",
            "10.0.0.0/33",
            "2001:db8::/64",
            "10.0.0.0/x",
            "",
            "10.0.0",
        ] {
            assert!(bad.parse::<Ipv4Range>().is_err(), "{bad}");
        }
        assert_eq!(
            "198.51.100.7/24".parse::<Ipv4Range>().unwrap().to_string(),
            "198.51.100.0/24"
        );
    }

    #[test]
    fn tenant_from_toml_with_defaults() {
        let text = r#"
            id = "contoso"
            accepted_domains = [{ domain = "contoso.com", type = "Authoritative" }]

            [[connector]]
            name = "From Contoso Exchange"
            type = "OnPremises"
            tls_sender_certificate_name = ""
            sender_ip_addresses = ["203.0.113.0/28"]
            sender_domains = ["*"]
        "#;
        let tenant: Tenant = toml::from_str(text).unwrap();
        assert_eq!(tenant.basic_auth_submission, BasicAuth::Allowed);
        let connector = &tenant.connectors[0];
        assert!(connector.enabled);
        assert_eq!(connector.tls_sender_certificate_name, None);
        assert!(connector.lists_ip("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn bad_range_in_toml_names_the_rule() {
        let text = r#"
            name = "x"
            type = "OnPremises"
            sender_ip_addresses = ["10.0.0.0/8"]
            sender_domains = ["*"]
        "#;
        let error = toml::from_str::<Connector>(text).unwrap_err().to_string();
        assert!(error.contains("/24 to /32"), "{error}");
    }
}
