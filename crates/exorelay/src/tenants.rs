//! What the relay knows of its Exchange Online tenants: the `[tenant.<id>]` tables of the relay
//! configuration and of the tenant files of `exorelay check` and `exorelay exosim`, read into
//! the attribution model's [`World`] (exo-attribution.md §2.3).
//!
//! ```toml
//! [tenant.contoso]
//! accepted_domains = ["contoso.com", { domain = "eu.contoso.com", type = "InternalRelay", match_subdomains = true }]
//! connectors = [{ type = "OnPremises", tls_sender_certificate_name = "*.contoso.com" }]
//! ```
//!
//! An accepted domain written as a plain string is `Authoritative` without subdomain matching;
//! the table form names `type` (default `Authoritative`) and `match_subdomains` (default false,
//! allowed on `InternalRelay` domains only, as in EXO). A connector needs only its `type`:
//! `name` defaults to "`<type>` connector `<n>`" (n counting the tenant's connectors from 1),
//! `sender_domains` to `["*"]`, `enabled` to true and every other `New-InboundConnector`
//! parameter to off/empty. Keys the model does not know are refused.
//!
//! Tenants keep their configuration order (it breaks ties, §3.5): TOML tables are unordered
//! maps, so the order is recovered from each table's position in the file. Errors name the file,
//! line and field, e.g. `tenants.toml:4:1: tenant.contoso.connectors[0].type: unknown variant …`.
//! Checking the configuration against the live tenant is left to the admin; `exorelay check`
//! shows what the model makes of it.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use attribution::{
    AcceptedDomain, BasicAuth, Connector, ConnectorType, DomainType, Ipv4Range, Tenant, World,
};
use serde::Deserialize;
use toml::Spanned;

use crate::config::ConfigError;

/// The `[tenant.*]` tables as written, before validation; part of the relay's raw
/// configuration and the whole of a tenants file.
#[derive(Debug, Default, Deserialize)]
#[serde(transparent)]
pub struct RawTenants(BTreeMap<String, Spanned<RawTenant>>);

/// A standalone tenants file: nothing but `[tenant.*]` tables.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenantsFile {
    #[serde(default)]
    tenant: RawTenants,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    accepted_domains: Vec<Spanned<RawAcceptedDomain>>,
    #[serde(default)]
    recipients: Vec<String>,
    #[serde(default)]
    reject_direct_send: bool,
    #[serde(default)]
    outbound_blocked: bool,
    #[serde(default)]
    unregistered_domain_block: bool,
    #[serde(default)]
    basic_auth_submission: BasicAuth,
    #[serde(default)]
    connectors: Vec<Spanned<RawConnector>>,
}

/// An accepted domain: a plain domain, or `{ domain, type, match_subdomains }`.
#[derive(Debug)]
struct RawAcceptedDomain {
    domain: String,
    kind: DomainType,
    match_subdomains: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAcceptedDomainTable {
    domain: String,
    #[serde(rename = "type", default = "authoritative")]
    kind: DomainType,
    #[serde(default)]
    match_subdomains: bool,
}

fn authoritative() -> DomainType {
    DomainType::Authoritative
}

impl<'de> Deserialize<'de> for RawAcceptedDomain {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawAcceptedDomain;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a domain, or a table { domain, type, match_subdomains }")
            }

            fn visit_str<E: serde::de::Error>(self, domain: &str) -> Result<Self::Value, E> {
                Ok(RawAcceptedDomain {
                    domain: domain.to_owned(),
                    kind: DomainType::Authoritative,
                    match_subdomains: false,
                })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let table = RawAcceptedDomainTable::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(RawAcceptedDomain {
                    domain: table.domain,
                    kind: table.kind,
                    match_subdomains: table.match_subdomains,
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnector {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: ConnectorType,
    #[serde(default = "enabled")]
    enabled: bool,
    tls_sender_certificate_name: Option<Spanned<String>>,
    #[serde(default)]
    sender_ip_addresses: Vec<Ipv4Range>,
    #[serde(default = "any_sender_domain")]
    sender_domains: Vec<String>,
    #[serde(default)]
    associated_accepted_domains: Vec<String>,
    #[serde(default)]
    require_tls: bool,
    #[serde(default)]
    restrict_domains_to_certificate: bool,
    #[serde(default)]
    restrict_domains_to_ip_addresses: bool,
    #[serde(default)]
    cloud_services_mail_enabled: bool,
    #[serde(default)]
    treat_messages_as_internal: bool,
}

fn enabled() -> bool {
    true
}

fn any_sender_domain() -> Vec<String> {
    vec!["*".to_owned()]
}

/// A validation error before it is given its file: field path, byte span, message.
pub struct Invalid {
    /// Dotted field path, e.g. `tenant.contoso.accepted_domains[1]`.
    pub field: String,
    /// Where the offending value is in the text.
    pub span: Range<usize>,
    /// What is wrong.
    pub message: String,
}

impl RawTenants {
    /// Validates the tables into a [`World`], tenants in the order they appear in the file.
    pub fn into_world(self) -> Result<World, Invalid> {
        let mut tenants: Vec<(usize, Tenant)> = Vec::new();
        for (id, raw) in self.0 {
            let position = raw.span().start;
            tenants.push((position, tenant(id, raw)?));
        }
        tenants.sort_by_key(|(position, _)| *position);
        Ok(World {
            tenants: tenants.into_iter().map(|(_, t)| t).collect(),
        })
    }
}

fn tenant(id: String, raw: Spanned<RawTenant>) -> Result<Tenant, Invalid> {
    let span = raw.span();
    let raw = raw.into_inner();
    let field = |rest: &str| format!("tenant.{id}{rest}");
    if id.is_empty()
        || id.starts_with('.')
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(Invalid {
            field: field(""),
            span,
            message: format!(
                "tenant id {id:?} must be letters, digits, '-', '_' or '.' (it names a directory in \
                 exosim's store)"
            ),
        });
    }
    if raw.accepted_domains.is_empty() {
        return Err(Invalid {
            field: field(".accepted_domains"),
            span,
            message: "a tenant needs at least one accepted domain".into(),
        });
    }
    let mut accepted_domains = Vec::new();
    for (i, domain) in raw.accepted_domains.into_iter().enumerate() {
        let span = domain.span();
        let domain = domain.into_inner();
        let invalid = |message: String| Invalid {
            field: field(&format!(".accepted_domains[{i}]")),
            span: span.clone(),
            message,
        };
        if !is_domain(&domain.domain) {
            return Err(invalid(format!("{:?} is not a domain name", domain.domain)));
        }
        if domain.match_subdomains && domain.kind != DomainType::InternalRelay {
            return Err(invalid(format!(
                "match_subdomains is only allowed on InternalRelay domains (EXO refuses it on \
                 Authoritative ones); set type = \"InternalRelay\" for {}",
                domain.domain
            )));
        }
        accepted_domains.push(AcceptedDomain {
            domain: domain.domain,
            kind: domain.kind,
            match_subdomains: domain.match_subdomains,
        });
    }
    let mut connectors = Vec::new();
    for (i, connector) in raw.connectors.into_iter().enumerate() {
        connectors.push(self::connector(
            &field(&format!(".connectors[{i}]")),
            i,
            connector,
        )?);
    }
    Ok(Tenant {
        id,
        accepted_domains,
        recipients: raw.recipients,
        reject_direct_send: raw.reject_direct_send,
        outbound_blocked: raw.outbound_blocked,
        unregistered_domain_block: raw.unregistered_domain_block,
        basic_auth_submission: raw.basic_auth_submission,
        connectors,
    })
}

fn connector(field: &str, index: usize, raw: Spanned<RawConnector>) -> Result<Connector, Invalid> {
    let raw = raw.into_inner();
    let pattern = match raw.tls_sender_certificate_name {
        Some(name) if !name.get_ref().is_empty() => {
            let text = name.get_ref();
            let bare = text.strip_prefix("*.").unwrap_or(text);
            if !is_domain(bare) {
                return Err(Invalid {
                    field: format!("{field}.tls_sender_certificate_name"),
                    span: name.span(),
                    message: format!(
                        "{text:?} is not a domain or *.domain (EXO allows a wildcard only as the \
                         leading label)"
                    ),
                });
            }
            Some(name.into_inner())
        }
        _ => None,
    };
    let kind_name = match raw.kind {
        ConnectorType::OnPremises => "OnPremises",
        ConnectorType::Partner => "Partner",
    };
    Ok(Connector {
        name: raw
            .name
            .unwrap_or_else(|| format!("{kind_name} connector {}", index + 1)),
        kind: raw.kind,
        enabled: raw.enabled,
        tls_sender_certificate_name: pattern,
        sender_ip_addresses: raw.sender_ip_addresses,
        sender_domains: raw.sender_domains,
        associated_accepted_domains: raw.associated_accepted_domains,
        require_tls: raw.require_tls,
        restrict_domains_to_certificate: raw.restrict_domains_to_certificate,
        restrict_domains_to_ip_addresses: raw.restrict_domains_to_ip_addresses,
        cloud_services_mail_enabled: raw.cloud_services_mail_enabled,
        treat_messages_as_internal: raw.treat_messages_as_internal,
    })
}

/// A plausible DNS name: dot-separated labels of letters, digits, '-' and '_' (non-ASCII
/// letters allowed for IDN), no empty label except one trailing dot.
fn is_domain(text: &str) -> bool {
    let text = text.strip_suffix('.').unwrap_or(text);
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        })
}

/// A `serde_path_to_error` path without the segments `toml::Spanned` adds for its inner value
/// (`tenant.contoso.$__serde_spanned_private_value.connectors[0]` → `tenant.contoso.connectors[0]`).
pub fn clean_path(path: &str) -> String {
    path.replace(".$__serde_spanned_private_value", "")
}

/// Reads a tenants file: either a file of `[tenant.*]` tables only, or a relay configuration
/// (recognised by its `[server]` table), which is validated whole and gives its tenants.
pub fn load(path: &Path) -> Result<World, ConfigError> {
    parse(&crate::config::read_file(path)?, path)
}

/// Parses the text of a tenants file or relay configuration; see [`load`].
pub fn parse(text: &str, path: &Path) -> Result<World, ConfigError> {
    let is_relay_config = text
        .parse::<toml::Table>()
        .is_ok_and(|table| table.contains_key("server"));
    if is_relay_config {
        return crate::config::Config::parse(text, path).map(|config| config.tenants);
    }
    let raw: RawTenantsFile = crate::config::deserialize(text, path)?;
    let world = raw
        .tenant
        .into_world()
        .map_err(|e| ConfigError::at(path, text, e.field, Some(e.span), &e.message))?;
    if world.tenants.is_empty() {
        return Err(ConfigError::at(
            path,
            text,
            "tenant",
            None,
            "no [tenant.<id>] table: describe at least one tenant",
        ));
    }
    Ok(world)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<World, ConfigError> {
        parse(text, Path::new("tenants.toml"))
    }

    #[test]
    fn short_forms_get_the_spec_defaults_and_file_order() {
        let world = parse_text(
            r#"
[tenant.zeta]
accepted_domains = ["zeta.example"]

[tenant.contoso]
accepted_domains = ["contoso.com", { domain = "eu.contoso.com", type = "InternalRelay", match_subdomains = true }]
connectors = [
  { type = "OnPremises", tls_sender_certificate_name = "relay.contoso.com" },
  { name = "Partner bank", type = "Partner", sender_ip_addresses = ["198.51.100.7"], sender_domains = ["bank.example"], restrict_domains_to_ip_addresses = true },
]
"#,
        )
        .unwrap();
        let ids: Vec<&str> = world.tenants.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["zeta", "contoso"]);
        let contoso = &world.tenants[1];
        assert_eq!(contoso.accepted_domains[0].kind, DomainType::Authoritative);
        assert!(!contoso.accepted_domains[0].match_subdomains);
        assert!(contoso.accepted_domains[1].match_subdomains);
        let onprem = &contoso.connectors[0];
        assert_eq!(onprem.name, "OnPremises connector 1");
        assert!(onprem.enabled);
        assert_eq!(onprem.sender_domains, ["*"]);
        assert_eq!(
            onprem.tls_sender_certificate_name.as_deref(),
            Some("relay.contoso.com")
        );
        let partner = &contoso.connectors[1];
        assert_eq!(partner.name, "Partner bank");
        assert_eq!(partner.kind, ConnectorType::Partner);
        assert!(partner.restrict_domains_to_ip_addresses);
    }

    #[test]
    fn the_examples_parse() {
        let world = parse_text(include_str!("../../../examples/tenants.toml")).unwrap();
        assert_eq!(world.tenants.len(), 2);
        assert_eq!(world.tenants[0].connectors.len(), 3);
        // The [tenant.*] part of the annotated relay configuration (the rest names files).
        let relay = include_str!("../../../examples/relay.toml");
        let start = relay.find("[tenant.contoso]").unwrap();
        let world = parse_text(&relay[start..]).unwrap();
        assert_eq!(
            world.tenants[0].connectors[0].name,
            "OnPremises connector 1"
        );
    }

    #[test]
    fn errors_name_line_and_field() {
        let cases: &[(&str, &str, usize, &str)] = &[
            (
                "[tenant.contoso]\naccepted_domains = [\"contoso.com\"]\nconnectors = [{ type = \"OnPrem\" }]\n",
                "tenant.contoso.connectors[0].type",
                3,
                "unknown variant",
            ),
            (
                "[tenant.contoso]\naccepted_domains = [\"contoso.com\",\n  { domain = \"x.contoso.com\", match_subdomains = true }]\n",
                "tenant.contoso.accepted_domains[1]",
                3,
                "InternalRelay",
            ),
            (
                "[tenant.contoso]\naccepted_domains = [\"contoso.com\"]\n\n[[tenant.contoso.connectors]]\ntype = \"OnPremises\"\nsender_ip_addresses = [\"10.0.0.0/8\"]\n",
                "tenant.contoso.connectors[0].sender_ip_addresses[0]",
                6,
                "/24 to /32",
            ),
            (
                "[tenant.contoso]\naccepted_domains = [\"contoso.com\"]\nconnectors = [{ type = \"OnPremises\", tls_sender_certificate_name = \"mail.*.contoso.com\" }]\n",
                "tenant.contoso.connectors[0].tls_sender_certificate_name",
                3,
                "wildcard",
            ),
            (
                "[tenant.contoso]\naccepted_domains = [\"contoso.com\"]\ncolour = \"blue\"\n",
                "tenant.contoso.colour",
                3,
                "unknown field",
            ),
            (
                "[tenant.\"con toso\"]\naccepted_domains = [\"contoso.com\"]\n",
                "tenant.con toso",
                1,
                "letters, digits",
            ),
            ("[server]\n", "(file)", 0, ""),
        ];
        for (text, field, line, needle) in cases {
            let err = parse_text(text).unwrap_err();
            if *field == "(file)" {
                // A relay configuration is validated whole; its own errors apply.
                assert!(err.to_string().starts_with("tenants.toml:"), "{err}");
                continue;
            }
            assert_eq!(&err.field, field, "{err}");
            assert_eq!(err.line, *line, "{err}");
            assert!(err.message.contains(needle), "{err}");
            assert!(err.to_string().starts_with("tenants.toml:"), "{err}");
        }
    }
}
