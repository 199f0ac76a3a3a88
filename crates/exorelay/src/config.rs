//! The relay's configuration: one TOML file, read into raw structs with `deny_unknown_fields`,
//! then validated into typed values (socket addresses, CIDR networks, byte sizes, durations,
//! loaded certificates) so that no other module ever sees a configuration string.
//!
//! Every error names the file, the line and column, and the dotted field path, e.g.
//! `relay.toml:7:12: server.max_message_size: invalid size "35 zebras"`.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::tls::{self, ClientIdentity};

/// A configuration error with its location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {field}: {message}", file.display())]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// 1-based line of the offending value (0 when the file could not be read).
    pub line: usize,
    /// 1-based column of the offending value.
    pub column: usize,
    /// Dotted path of the field, e.g. `client[1].networks[0]`.
    pub field: String,
    /// What is wrong and, where possible, what would be right.
    pub message: String,
}

/// The validated configuration of a relay.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration came from.
    pub source: PathBuf,
    /// The receiving side.
    pub server: ServerSettings,
    /// Who may relay, first match wins.
    pub clients: Vec<ClientRule>,
    /// Smart hosts mail is delivered to.
    pub upstreams: Vec<Upstream>,
    /// The spool and the retry schedule.
    pub queue: QueueSettings,
    /// The tenants of the `[tenant.<id>]` tables (see `tenants.rs`), in file order.
    pub tenants: attribution::World,
}

/// Settings of the listener and the SMTP sessions it serves.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Addresses to listen on (IPv4 and IPv6).
    pub listen: Vec<SocketAddr>,
    /// Name used in the greeting, the EHLO reply and `Received:` headers.
    pub hostname: String,
    /// Largest message accepted, in bytes (advertised as `SIZE`).
    pub max_message_size: u64,
    /// Most recipients per message.
    pub max_recipients: usize,
    /// Most concurrent sessions in total.
    pub max_connections: usize,
    /// Most concurrent sessions from one client IP address.
    pub max_connections_per_ip: usize,
    /// Deadline for each command line (RFC 5321 §4.5.3.2: at least 5 minutes).
    pub command_timeout: Duration,
    /// Deadline for the whole DATA or BDAT transfer of one message.
    pub data_timeout: Duration,
    /// Longest a session may last.
    pub session_timeout: Duration,
    /// Error replies after which the session is closed with 421.
    pub max_errors: u32,
    /// `Received:` headers above which a message is refused as a loop.
    pub max_received_headers: usize,
    /// STARTTLS, offered when a certificate is configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// What the relay does when pre-flight predicts that EXO will refuse to relay a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttributionAction {
    /// Rewrite the envelope sender to the client's configured address.
    Fix,
    /// Refuse the message at SMTP time with an explanation.
    Refuse,
    /// Deliver anyway, log and count.
    Warn,
}

/// One rule of who may relay.
#[derive(Debug, Clone)]
pub struct ClientRule {
    /// Name used in logs and metrics.
    pub name: String,
    /// Source networks this rule applies to.
    pub networks: Vec<IpNet>,
    /// When set, only these envelope sender domains are accepted (553 5.7.1 otherwise).
    pub allowed_sender_domains: Option<Vec<String>>,
    /// When set, only these recipient domains are accepted (550 5.7.1 otherwise).
    pub allowed_recipient_domains: Option<Vec<String>>,
    /// Envelope sender used when the client's own one must be replaced.
    pub envelope_from: Option<String>,
    /// Pre-flight action for this client's mail.
    pub on_attribution_failure: AttributionAction,
    /// Envelope sender used instead of the null sender `<>` when EXO would refuse it.
    pub bounce_address: Option<String>,
    /// Add a missing Date, Message-ID or From header.
    pub repair_headers: bool,
    /// Drop a From display name that contains an address (spoof shape).
    pub repair_from: bool,
}

impl ClientRule {
    /// Whether `ip` is in one of this rule's networks.
    pub fn covers(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.networks.iter().any(|net| net.contains(&ip))
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as a dual-stack socket reports IPv4 peers)
/// as the IPv4 address it is, so IPv4 rules match it.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Whether the relay insists on STARTTLS towards an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    /// STARTTLS is mandatory; any failure defers the message.
    Required,
    /// Plain SMTP (tests and trusted links only).
    None,
}

/// A smart host mail is delivered to.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Name used in logs and metrics.
    pub name: String,
    /// Host name (MX lookup), `[host]` (no MX lookup) or IP literal.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS policy.
    pub tls: UpstreamTls,
    /// Name the upstream's certificate must carry; default: the host (or MX host) name.
    pub server_name: Option<String>,
    /// Use BDAT (CHUNKING, RFC 3030) when the upstream offers it; with PIPELINING, a small
    /// message's chunk goes in the same flight as MAIL and RCPT.
    pub chunking: bool,
    /// Most concurrent connections to this upstream.
    pub max_connections: usize,
    /// Local address outgoing connections are made from (multi-homed hosts); default: any.
    pub bind_address: Option<IpAddr>,
    /// The public address EXO sees this relay connect from (for pre-flight IP connector
    /// matching); unknown when unset.
    pub egress_ip: Option<IpAddr>,
    /// Extra trusted CA certificates besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// The client certificate chain and key presented to the upstream.
    pub client_identity: Option<ClientIdentity>,
    /// Envelope sender domains routed here; empty = the default upstream.
    pub sender_domains: Vec<String>,
}

/// Where the spool lives and how messages are retried.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Spool directory.
    pub dir: PathBuf,
    /// Delays between delivery attempts; the last one repeats.
    pub retry: Vec<Duration>,
    /// Age after which a message is bounced.
    pub max_age: Duration,
    /// Receives the bounces that cannot be returned to their sender.
    pub postmaster: Option<String>,
    /// Below this much free space on the spool's file system, new mail is refused with
    /// `452 4.3.1` (at least 1.5 × the largest message, as Postfix does).
    pub min_free_space: u64,
    /// Longest pause before a client may start a new message while the queue manager's window
    /// of new messages (8 × the upstreams' `max_connections` together, at least 64) waits for
    /// a first delivery attempt (Postfix's `in_flow_delay`); zero turns the flow control off.
    pub in_flow_delay: Duration,
}

/// Reads a configuration (or tenants) file, naming it in the error when it cannot be read.
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        field: "(file)".into(),
        message: format!("cannot read: {e}"),
    })
}

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::parse(&read_file(path)?, path)
    }

    /// Validates configuration text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = deserialize(text, path)?;
        Validator { text, path }.config(raw)
    }
}

impl ConfigError {
    /// An error about `field` at byte range `span` of the file `path` whose text is `text`;
    /// without a span it points at the start of the file.
    pub(crate) fn at(
        path: &Path,
        text: &str,
        field: impl Into<String>,
        span: Option<std::ops::Range<usize>>,
        message: &str,
    ) -> ConfigError {
        let (line, column) = span.map_or((1, 1), |s| line_and_column(text, s.start));
        ConfigError {
            file: path.to_path_buf(),
            line,
            column,
            field: field.into(),
            message: message.trim().to_owned(),
        }
    }
}

/// Reads TOML `text` into `T`; the error names the first offending field and its position.
pub(crate) fn deserialize<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
) -> Result<T, ConfigError> {
    let deserializer = toml::Deserializer::parse(text)
        .map_err(|e| ConfigError::at(path, text, "(syntax)", e.span(), e.message()))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let field = crate::tenants::clean_path(&e.path().to_string());
        let inner = e.into_inner();
        ConfigError::at(path, text, field, inner.span(), inner.message())
    })
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

/// Turns raw values into typed ones, reporting the location of the first bad one.
struct Validator<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Validator<'_> {
    fn error(&self, field: &str, span: std::ops::Range<usize>, message: String) -> ConfigError {
        ConfigError::at(self.path, self.text, field, Some(span), &message)
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let server = self.server(raw.server)?;
        let clients = raw
            .client
            .into_iter()
            .enumerate()
            .map(|(i, c)| self.client(i, c))
            .collect::<Result<Vec<_>, _>>()?;
        let upstreams = raw
            .upstream
            .into_iter()
            .enumerate()
            .map(|(i, u)| self.upstream(i, u))
            .collect::<Result<Vec<_>, _>>()?;
        let queue = self.queue(raw.queue)?;
        let tenants = raw
            .tenant
            .into_world()
            .map_err(|e| self.error(&e.field, e.span, e.message))?;
        Ok(Config {
            source: self.path.to_path_buf(),
            server,
            clients,
            upstreams,
            queue,
            tenants,
        })
    }

    fn server(&self, raw: RawServer) -> Result<ServerSettings, ConfigError> {
        let mut seen = HashSet::new();
        let mut listen = Vec::new();
        for (i, addr) in raw.listen.iter().enumerate() {
            let value = *addr.get_ref();
            if !seen.insert(value.0) {
                return Err(self.error(
                    &format!("server.listen[{i}]"),
                    addr.span(),
                    format!("duplicate listener {}", value.0),
                ));
            }
            listen.push(value.0);
        }
        if listen.is_empty() {
            return Err(self.error(
                "server.listen",
                0..0,
                "at least one address is needed".into(),
            ));
        }
        let tls = match raw.tls {
            None => None,
            Some(files) => {
                let cert = self.existing_file("server.tls.cert", &files.cert)?;
                let key = self.existing_file("server.tls.key", &files.key)?;
                let config = tls::server_config(&cert, &key)
                    .map_err(|e| self.error("server.tls.cert", files.cert.span(), e.to_string()))?;
                Some(config)
            }
        };
        Ok(ServerSettings {
            listen,
            hostname: raw.hostname,
            max_message_size: raw.max_message_size.0,
            max_recipients: raw.max_recipients,
            max_connections: raw.max_connections,
            max_connections_per_ip: raw.max_connections_per_ip,
            command_timeout: raw.command_timeout.0,
            data_timeout: raw.data_timeout.0,
            session_timeout: raw.session_timeout.0,
            max_errors: raw.max_errors,
            max_received_headers: raw.max_received_headers,
            tls,
        })
    }

    fn client(&self, index: usize, raw: RawClient) -> Result<ClientRule, ConfigError> {
        if raw.networks.is_empty() {
            return Err(self.error(
                &format!("client[{index}].networks"),
                raw.name.span(),
                "a client rule needs at least one network".into(),
            ));
        }
        let networks = raw
            .networks
            .iter()
            .enumerate()
            .map(|(i, n)| {
                parse_network(n.get_ref())
                    .map_err(|e| self.error(&format!("client[{index}].networks[{i}]"), n.span(), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ClientRule {
            name: raw.name.into_inner(),
            networks,
            allowed_sender_domains: raw.allowed_sender_domains.map(normalise_domains),
            allowed_recipient_domains: raw.allowed_recipient_domains.map(normalise_domains),
            envelope_from: raw.envelope_from,
            on_attribution_failure: raw.on_attribution_failure,
            bounce_address: raw.bounce_address,
            repair_headers: raw.repair_headers,
            repair_from: raw.repair_from,
        })
    }

    fn upstream(&self, index: usize, raw: RawUpstream) -> Result<Upstream, ConfigError> {
        let field = |name: &str| format!("upstream[{index}].{name}");
        let ca_file = match &raw.ca_file {
            Some(path) => {
                let file = self.existing_file(&field("ca_file"), path)?;
                tls::load_ca_file(&file)
                    .map_err(|e| self.error(&field("ca_file"), path.span(), e.to_string()))?;
                Some(file)
            }
            None => None,
        };
        let client_identity = match (&raw.client_cert, &raw.client_key) {
            (Some(cert), Some(key)) => {
                let cert_file = self.existing_file(&field("client_cert"), cert)?;
                let key_file = self.existing_file(&field("client_key"), key)?;
                let identity = ClientIdentity::load(&cert_file, &key_file)
                    .map_err(|e| self.error(&field("client_cert"), cert.span(), e.to_string()))?;
                Some(identity)
            }
            (Some(cert), None) => {
                return Err(self.error(
                    &field("client_key"),
                    cert.span(),
                    "client_cert is set but client_key is missing".into(),
                ));
            }
            (None, Some(key)) => {
                return Err(self.error(
                    &field("client_cert"),
                    key.span(),
                    "client_key is set but client_cert is missing".into(),
                ));
            }
            (None, None) => None,
        };
        Ok(Upstream {
            name: raw.name,
            host: raw.host,
            port: raw.port,
            tls: raw.tls,
            server_name: raw.server_name,
            chunking: raw.chunking,
            max_connections: raw.max_connections.max(1),
            egress_ip: raw.egress_ip,
            bind_address: raw.bind_address,
            ca_file,
            client_identity,
            sender_domains: normalise_domains(raw.sender_domains),
        })
    }

    fn queue(&self, raw: RawQueue) -> Result<QueueSettings, ConfigError> {
        if raw.retry.is_empty() {
            return Err(self.error(
                "queue.retry",
                raw.dir.span(),
                "the retry schedule needs at least one delay".into(),
            ));
        }
        let retry = raw
            .retry
            .iter()
            .enumerate()
            .map(|(i, d)| {
                parse_duration(d.get_ref())
                    .map_err(|e| self.error(&format!("queue.retry[{i}]"), d.span(), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(QueueSettings {
            dir: self.resolve(raw.dir.get_ref()),
            retry,
            max_age: raw.max_age.0,
            postmaster: raw.postmaster,
            min_free_space: raw.min_free_space.0,
            in_flow_delay: raw.in_flow_delay.0,
        })
    }

    /// A path relative to the configuration file's directory.
    fn resolve(&self, path: &Path) -> PathBuf {
        match self.path.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    fn existing_file(&self, field: &str, path: &Spanned<PathBuf>) -> Result<PathBuf, ConfigError> {
        let resolved = self.resolve(path.get_ref());
        if resolved.is_file() {
            Ok(resolved)
        } else {
            Err(self.error(
                field,
                path.span(),
                format!("file {} does not exist", resolved.display()),
            ))
        }
    }
}

fn normalise_domains(domains: Vec<String>) -> Vec<String> {
    domains
        .into_iter()
        .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
        .collect()
}

/// A byte size such as `35MiB` or `10 MB`.
#[derive(Debug, Clone, Copy)]
struct Size(u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        bytesize::ByteSize::from_str(&text)
            .map(|s| Size(s.as_u64()))
            .map_err(|e| serde::de::Error::custom(format!("invalid size {text:?}: {e}")))
    }
}

/// A duration such as `5m` or `1h 30m`.
#[derive(Debug, Clone, Copy)]
struct Span(Duration);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(Span)
            .map_err(serde::de::Error::custom)
    }
}

/// A network in CIDR form; a bare address means a single host.
fn parse_network(text: &str) -> Result<IpNet, String> {
    IpNet::from_str(text)
        .or_else(|_| IpAddr::from_str(text).map(IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| {
            format!("invalid network {text:?}: write an address or CIDR such as 10.20.0.0/24")
        })
}

/// A duration such as `5m` or `1h 30m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration {text:?}: {e} (write e.g. \"5m\")"))
}

/// A listen address such as `127.0.0.1:25` or `[::1]:25`.
#[derive(Debug, Clone, Copy)]
struct Listen(SocketAddr);

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        SocketAddr::from_str(&text).map(Listen).map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid listen address {text:?}: write IP:PORT such as 0.0.0.0:25 or [::]:25"
            ))
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    #[serde(default)]
    client: Vec<RawClient>,
    #[serde(default)]
    upstream: Vec<RawUpstream>,
    queue: RawQueue,
    #[serde(default)]
    tenant: crate::tenants::RawTenants,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Vec<Spanned<Listen>>,
    hostname: String,
    #[serde(default = "defaults::max_message_size")]
    max_message_size: Size,
    #[serde(default = "defaults::max_recipients")]
    max_recipients: usize,
    #[serde(default = "defaults::max_connections")]
    max_connections: usize,
    #[serde(default = "defaults::max_connections_per_ip")]
    max_connections_per_ip: usize,
    #[serde(default = "defaults::command_timeout")]
    command_timeout: Span,
    #[serde(default = "defaults::data_timeout")]
    data_timeout: Span,
    #[serde(default = "defaults::session_timeout")]
    session_timeout: Span,
    #[serde(default = "defaults::max_errors")]
    max_errors: u32,
    #[serde(default = "defaults::max_received_headers")]
    max_received_headers: usize,
    tls: Option<RawTlsFiles>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTlsFiles {
    cert: Spanned<PathBuf>,
    key: Spanned<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: Spanned<String>,
    networks: Vec<Spanned<String>>,
    allowed_sender_domains: Option<Vec<String>>,
    allowed_recipient_domains: Option<Vec<String>>,
    envelope_from: Option<String>,
    #[serde(default = "defaults::on_attribution_failure")]
    on_attribution_failure: AttributionAction,
    bounce_address: Option<String>,
    #[serde(default)]
    repair_headers: bool,
    #[serde(default)]
    repair_from: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: String,
    host: String,
    #[serde(default = "defaults::smtp_port")]
    port: u16,
    #[serde(default = "defaults::upstream_tls")]
    tls: UpstreamTls,
    server_name: Option<String>,
    #[serde(default = "defaults::chunking")]
    chunking: bool,
    #[serde(default = "defaults::upstream_connections")]
    max_connections: usize,
    egress_ip: Option<IpAddr>,
    bind_address: Option<IpAddr>,
    ca_file: Option<Spanned<PathBuf>>,
    client_cert: Option<Spanned<PathBuf>>,
    client_key: Option<Spanned<PathBuf>>,
    #[serde(default)]
    sender_domains: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    dir: Spanned<PathBuf>,
    #[serde(default = "defaults::retry")]
    retry: Vec<Spanned<String>>,
    #[serde(default = "defaults::max_age")]
    max_age: Span,
    postmaster: Option<String>,
    #[serde(default = "defaults::min_free_space")]
    min_free_space: Size,
    #[serde(default = "defaults::in_flow_delay")]
    in_flow_delay: Span,
}

/// Defaults, each documented in the example configuration.
mod defaults {
    use super::{AttributionAction, Size, Span, Spanned, UpstreamTls};
    use std::time::Duration;

    const MINUTE: u64 = 60;

    pub fn max_message_size() -> Size {
        Size(35 * 1024 * 1024)
    }
    pub fn max_recipients() -> usize {
        500
    }
    pub fn max_connections() -> usize {
        1000
    }
    pub fn max_connections_per_ip() -> usize {
        100
    }
    pub fn command_timeout() -> Span {
        Span(Duration::from_secs(5 * MINUTE))
    }
    pub fn data_timeout() -> Span {
        Span(Duration::from_secs(10 * MINUTE))
    }
    pub fn session_timeout() -> Span {
        Span(Duration::from_secs(60 * MINUTE))
    }
    pub fn max_errors() -> u32 {
        20
    }
    pub fn max_received_headers() -> usize {
        50
    }
    pub fn on_attribution_failure() -> AttributionAction {
        AttributionAction::Refuse
    }
    pub fn min_free_space() -> Size {
        Size(0)
    }
    pub fn smtp_port() -> u16 {
        25
    }
    pub fn upstream_connections() -> usize {
        10
    }
    pub fn chunking() -> bool {
        true
    }
    pub fn upstream_tls() -> UpstreamTls {
        UpstreamTls::Required
    }
    pub fn retry() -> Vec<Spanned<String>> {
        ["1m", "5m", "15m", "30m", "1h", "2h", "4h"]
            .into_iter()
            .map(|d| Spanned::new(0..0, d.to_string()))
            .collect()
    }
    pub fn max_age() -> Span {
        Span(Duration::from_secs(5 * 24 * 60 * MINUTE))
    }
    pub fn in_flow_delay() -> Span {
        Span(Duration::from_secs(1))
    }
}

impl fmt::Display for Config {
    /// The effective configuration, logged at start (no key material).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.server;
        writeln!(f, "config {}", self.source.display())?;
        let listen: Vec<String> = s.listen.iter().map(ToString::to_string).collect();
        writeln!(
            f,
            "  server: listen={} hostname={} max_message_size={} max_recipients={} starttls={}",
            listen.join(","),
            s.hostname,
            s.max_message_size,
            s.max_recipients,
            s.tls.is_some()
        )?;
        for c in &self.clients {
            let nets: Vec<String> = c.networks.iter().map(ToString::to_string).collect();
            writeln!(f, "  client {}: networks={}", c.name, nets.join(","))?;
        }
        for u in &self.upstreams {
            writeln!(
                f,
                "  upstream {}: {}:{} tls={:?} client_cert={}",
                u.name,
                u.host,
                u.port,
                u.tls,
                u.client_identity.is_some()
            )?;
        }
        for t in &self.tenants.tenants {
            let domains: Vec<&str> = t
                .accepted_domains
                .iter()
                .map(|d| d.domain.as_str())
                .collect();
            writeln!(
                f,
                "  tenant {}: accepted_domains={} connectors={}",
                t.id,
                domains.join(","),
                t.connectors.len()
            )?;
        }
        write!(
            f,
            "  queue: dir={} in_flow_delay={}",
            self.queue.dir.display(),
            humantime::format_duration(self.queue.in_flow_delay)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[server]
listen = ["127.0.0.1:2525", "[::1]:2525"]
hostname = "relay.example.test"
max_message_size = "10MiB"

[[client]]
name = "lan"
networks = ["10.20.0.0/24", "192.0.2.7"]
allowed_recipient_domains = ["Contoso.COM."]

[queue]
dir = "spool"
retry = ["1m", "5m"]
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/exorelay/relay.toml"))
    }

    #[test]
    fn minimal_config_is_typed() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.server.listen.len(), 2);
        assert_eq!(config.server.max_message_size, 10 * 1024 * 1024);
        assert_eq!(config.server.max_recipients, 500);
        assert_eq!(config.queue.dir, PathBuf::from("/etc/exorelay/spool"));
        assert_eq!(config.queue.retry[1], Duration::from_secs(300));
        let lan = &config.clients[0];
        assert!(lan.covers("10.20.0.99".parse().unwrap()));
        assert!(lan.covers("::ffff:192.0.2.7".parse().unwrap()));
        assert!(!lan.covers("192.0.2.8".parse().unwrap()));
        assert_eq!(
            lan.allowed_recipient_domains.as_deref(),
            Some(&["contoso.com".to_string()][..])
        );
    }

    #[test]
    fn errors_name_line_and_field() {
        let cases: &[(&str, &str, &str, usize)] = &[
            (
                "max_message_size = \"10MiB\"",
                "max_message_size = \"10 zebras\"",
                "server.max_message_size",
                5,
            ),
            (
                "hostname = ",
                "colour = \"blue\"\nhostname = ",
                "server.colour",
                4,
            ),
            (
                "\"192.0.2.7\"",
                "\"192.0.2.300/24\"",
                "client[0].networks[1]",
                9,
            ),
            (
                "\"[::1]:2525\"",
                "\"127.0.0.1:2525\"",
                "server.listen[1]",
                3,
            ),
            (
                "retry = [\"1m\", \"5m\"]",
                "retry = [\"1m\", \"soon\"]",
                "queue.retry[1]",
                14,
            ),
        ];
        for (from, to, field, line) in cases {
            let text = MINIMAL.replacen(from, to, 1);
            let err = parse(&text).unwrap_err();
            assert_eq!(&err.field, field, "{err}");
            assert_eq!(err.line, *line, "{err}");
            assert!(
                err.to_string().starts_with("/etc/exorelay/relay.toml:"),
                "{err}"
            );
        }
    }

    #[test]
    fn missing_certificate_file_is_named() {
        let text = MINIMAL.replacen(
            "max_message_size",
            "tls = { cert = \"/nonexistent/relay.pem\", key = \"/nonexistent/relay.key\" }\nmax_message_size",
            1,
        );
        let err = parse(&text).unwrap_err();
        assert_eq!(err.field, "server.tls.cert");
        assert_eq!(err.line, 5);
        assert!(err.message.contains("/nonexistent/relay.pem"), "{err}");
    }
}
