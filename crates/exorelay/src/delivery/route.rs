//! Where a message goes: the `[[upstream]]` chosen by envelope sender domain (exact match, or the
//! default upstream without `sender_domains`), the addresses to connect to (MX, else A/AAAA;
//! `[host]` and IP literals skip MX, RFC 5321 §5.1), and each upstream's TLS client
//! configuration with its client certificate, built once at start.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;
use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use rustls::pki_types::ServerName;

use crate::config::{Upstream, UpstreamTls};
use crate::tls;

/// An upstream with what delivery needs at run time.
#[derive(Debug)]
pub struct Route {
    /// The configured upstream.
    pub upstream: Upstream,
    /// TLS client configuration (roots, client certificate, TLS 1.2+), when TLS is required.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Builds the route of every upstream; fails on unreadable trust roots.
pub fn routes(upstreams: &[Upstream]) -> anyhow::Result<Vec<Arc<Route>>> {
    upstreams
        .iter()
        .map(|u| {
            let tls = match u.tls {
                UpstreamTls::Required => Some(
                    tls::upstream_client_config(u)
                        .with_context(|| format!("upstream {}: TLS set-up", u.name))?,
                ),
                UpstreamTls::None => None,
            };
            Ok(Arc::new(Route {
                upstream: u.clone(),
                tls,
            }))
        })
        .collect()
}

/// The first item whose upstream's `sender_domains` contains the domain of `mail_from` exactly,
/// else the first default upstream (no `sender_domains`).
fn pick<'a, T>(
    items: &'a [T],
    upstream: impl Fn(&T) -> &Upstream,
    mail_from: &str,
) -> Option<&'a T> {
    let domain = mail_from
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase());
    domain
        .and_then(|d| {
            items
                .iter()
                .find(|i| upstream(i).sender_domains.contains(&d))
        })
        .or_else(|| items.iter().find(|i| upstream(i).sender_domains.is_empty()))
}

/// The upstream a message from `mail_from` is delivered to.
pub fn choose_upstream<'a>(upstreams: &'a [Upstream], mail_from: &str) -> Option<&'a Upstream> {
    pick(upstreams, |u| u, mail_from)
}

/// The route a message from `mail_from` is delivered on.
pub fn choose<'a>(routes: &'a [Arc<Route>], mail_from: &str) -> Option<&'a Arc<Route>> {
    pick(routes, |r| &r.upstream, mail_from)
}

/// A host to connect to, with the name its certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Address to connect to.
    pub addr: SocketAddr,
    /// Host name as configured or found in MX, for logs and `Remote-MTA`.
    pub host: String,
}

/// How the configured `host` is to be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostForm {
    /// An IP address (bare or in brackets): connect directly.
    Literal(IpAddr),
    /// `[name]`: A/AAAA only, no MX.
    NoMx(String),
    /// `name`: MX first, then A/AAAA.
    Mx(String),
}

fn host_form(host: &str) -> HostForm {
    let inner = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match inner.parse::<IpAddr>() {
        Ok(ip) => HostForm::Literal(ip),
        Err(_) if inner.len() != host.len() => HostForm::NoMx(inner.to_string()),
        Err(_) => HostForm::Mx(host.to_string()),
    }
}

/// The name checked against the upstream's certificate for `target`: the configured
/// `server_name`, else the host the target came from.
pub fn server_name(route: &Route, target: &Target) -> Result<ServerName<'static>, String> {
    let name = route
        .upstream
        .server_name
        .clone()
        .unwrap_or_else(|| target.host.clone());
    ServerName::try_from(name.clone()).map_err(|e| format!("invalid TLS server name {name:?}: {e}"))
}

/// Resolves the upstream's host into connection targets, in order of preference.
pub async fn resolve(route: &Route) -> Result<Vec<Target>, String> {
    let port = route.upstream.port;
    match host_form(&route.upstream.host) {
        HostForm::Literal(ip) => Ok(vec![Target {
            addr: SocketAddr::new(ip, port),
            host: route.upstream.host.clone(),
        }]),
        HostForm::NoMx(name) => {
            let resolver = resolver()?;
            addresses(&resolver, &name, port).await
        }
        HostForm::Mx(name) => {
            let resolver = resolver()?;
            let mut exchanges = mx_hosts(&resolver, &name).await?;
            if exchanges.is_empty() {
                exchanges.push(name);
            }
            let mut targets = Vec::new();
            for host in exchanges {
                if let Ok(mut found) = addresses(&resolver, &host, port).await {
                    targets.append(&mut found);
                }
            }
            if targets.is_empty() {
                return Err(format!("no address found for {}", route.upstream.host));
            }
            Ok(targets)
        }
    }
}

fn resolver() -> Result<TokioResolver, String> {
    TokioResolver::builder_tokio()
        .map(|b| b.build())
        .map_err(|e| format!("cannot set up DNS resolution: {e}"))?
        .map_err(|e| format!("cannot set up DNS resolution: {e}"))
}

/// MX hosts of `name`, most preferred first; empty when the name has no MX (RFC 5321 §5.1).
async fn mx_hosts(resolver: &TokioResolver, name: &str) -> Result<Vec<String>, String> {
    match resolver.mx_lookup(format!("{name}.")).await {
        Ok(lookup) => {
            let mut mx: Vec<(u16, String)> = lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::MX(mx) => Some((
                        mx.preference,
                        mx.exchange.to_utf8().trim_end_matches('.').to_string(),
                    )),
                    _ => None,
                })
                .collect();
            mx.sort();
            Ok(mx.into_iter().map(|(_, host)| host).collect())
        }
        Err(e) if e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(format!("MX lookup for {name} failed: {e}")),
    }
}

async fn addresses(resolver: &TokioResolver, host: &str, port: u16) -> Result<Vec<Target>, String> {
    let lookup = resolver
        .lookup_ip(format!("{host}."))
        .await
        .map_err(|e| format!("address lookup for {host} failed: {e}"))?;
    Ok(lookup
        .iter()
        .map(|ip| Target {
            addr: SocketAddr::new(ip, port),
            host: host.to_string(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_forms() {
        let cases = [
            ("127.0.0.1", HostForm::Literal("127.0.0.1".parse().unwrap())),
            ("[::1]", HostForm::Literal("::1".parse().unwrap())),
            ("[smtp.example]", HostForm::NoMx("smtp.example".into())),
            (
                "contoso-com.mail.protection.outlook.com",
                HostForm::Mx("contoso-com.mail.protection.outlook.com".into()),
            ),
        ];
        for (host, form) in cases {
            assert_eq!(host_form(host), form, "{host}");
        }
    }

    fn route(name: &str, domains: &[&str]) -> Arc<Route> {
        Arc::new(Route {
            upstream: Upstream {
                name: name.into(),
                host: "127.0.0.1".into(),
                port: 25,
                tls: UpstreamTls::None,
                server_name: None,
                chunking: true,
                max_connections: 1,
                egress_ip: None,
                bind_address: None,
                ca_file: None,
                client_identity: None,
                sender_domains: domains.iter().map(|d| d.to_string()).collect(),
            },
            tls: None,
        })
    }

    #[test]
    fn routing_by_exact_sender_domain_with_default() {
        let routes = vec![
            route("a", &["contoso.com"]),
            route("default", &[]),
            route("b", &["fabrikam.com"]),
        ];
        let cases = [
            ("x@contoso.com", "a"),
            ("x@Fabrikam.COM.", "b"),
            ("x@sub.contoso.com", "default"),
            ("x@evilcontoso.com", "default"),
            ("", "default"),
        ];
        for (from, expected) in cases {
            assert_eq!(
                choose(&routes, from).unwrap().upstream.name,
                expected,
                "{from}"
            );
        }
        assert!(choose(&routes[..1], "x@example.org").is_none());
    }
}
