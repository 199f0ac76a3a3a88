//! Which connectors recognise the sending server: by certificate (exo-attribution.md §3.2) or by
//! IP address (§3.3), and the match set `M` of §3.5.

use std::net::{IpAddr, Ipv4Addr};

use crate::domain;
use crate::facts::Connection;
use crate::tenant::{Connector, ConnectorType, Tenant, World};

/// What the connection offers for connector matching.
#[derive(Debug, Clone)]
pub(crate) struct Evidence {
    /// `cert_names` of §3.2, normalised; empty unless the certificate counts.
    cert_names: Vec<String>,
    /// The source address if it is IPv4; IPv6 sources never match (§3.3 \[DOC\]).
    ipv4: Option<Ipv4Addr>,
}

impl Evidence {
    /// Collects the evidence of a connection.
    pub(crate) fn of(connection: &Connection) -> Self {
        Self {
            cert_names: certificate_names(connection),
            ipv4: match connection.source_ip {
                IpAddr::V4(ip) => Some(ip),
                IpAddr::V6(_) => None,
            },
        }
    }

    /// `by_cert(c)`: some certificate name matches `TlsSenderCertificateName` (§3.5).
    pub(crate) fn by_cert(&self, connector: &Connector) -> bool {
        connector.certificate_pattern().is_some_and(|pattern| {
            self.cert_names
                .iter()
                .any(|n| domain::name_match(&pattern, n))
        })
    }

    /// `by_ip(c)`: the source address is in `SenderIPAddresses` (§3.3).
    pub(crate) fn by_ip(&self, connector: &Connector) -> bool {
        self.ipv4.is_some_and(|ip| connector.lists_ip(ip))
    }
}

/// `cert_names` (§3.2): the subject CN and every SAN DNS name, but only when STARTTLS succeeded
/// with TLS 1.2 or later and the certificate is trusted \[DOC\]; TLS 1.0/1.1 count as no TLS on the
/// MX endpoint (§7.2 \[MODEL\]).
fn certificate_names(connection: &Connection) -> Vec<String> {
    match &connection.client_cert {
        Some(cert) if cert.trusted && connection.tls.is_modern() => {
            std::iter::once(&cert.subject_cn)
                .chain(&cert.san)
                .map(|name| domain::normalize_domain(name))
                .filter(|name| !name.is_empty())
                .collect()
        }
        _ => Vec::new(),
    }
}

/// One member of the match set `M`: an enabled OnPremises connector that recognised the server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Match<'w> {
    pub(crate) tenant: &'w Tenant,
    pub(crate) connector: &'w Connector,
    pub(crate) by_cert: bool,
}

/// `M` of §3.5, ordered as `matched_onprem` needs it: certificate matches first, then
/// configuration order (tenants in world order, connectors in tenant order) \[MODEL\].
pub(crate) fn match_set<'w>(world: &'w World, evidence: &Evidence) -> Vec<Match<'w>> {
    let mut matches: Vec<Match<'w>> = world
        .tenants
        .iter()
        .flat_map(|tenant| {
            tenant
                .connectors
                .iter()
                .map(move |connector| (tenant, connector))
        })
        .filter(|(_, c)| c.enabled && c.kind == ConnectorType::OnPremises)
        .filter_map(|(tenant, connector)| {
            let by_cert = evidence.by_cert(connector);
            (by_cert || evidence.by_ip(connector)).then_some(Match {
                tenant,
                connector,
                by_cert,
            })
        })
        .collect();
    // A stable sort keeps configuration order within each group.
    matches.sort_by_key(|m| !m.by_cert);
    matches
}
