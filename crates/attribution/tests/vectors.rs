//! Runs every `tests/vectors/*.toml` case file (format version 1, described at the top of
//! `attribution.toml`) through `attribution::classify` under both rule sets.
//!
//! Each case prints `ok  <name>`; a failing case prints its facts, the expected and the actual
//! verdict. All cases run; the run fails at the end, listing every failing case. An optional
//! argument keeps only the cases whose name contains it. The file format has its own structs
//! here, apart from the library's configuration types, so the two can evolve separately.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use attribution::{
    AcceptedDomain, Auth, AuthMechanism, BasicAuth, ClientCert, Connection, Connector,
    ConnectorType, DomainType, Endpoint, IpReputation, Ipv4Range, Message, Ruleset, Tenant,
    TlsVersion, Verdict, World,
};
use serde::Deserialize;

type Error = Box<dyn std::error::Error>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: u32,
    #[serde(default)]
    tenant: Vec<FileTenant>,
    #[serde(default)]
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTenant {
    id: String,
    accepted_domains: Vec<FileAcceptedDomain>,
    recipients: Vec<String>,
    reject_direct_send: bool,
    outbound_blocked: bool,
    unregistered_domain_block: bool,
    basic_auth_submission: String,
    #[serde(default)]
    connector: Vec<FileConnector>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAcceptedDomain {
    domain: String,
    #[serde(rename = "type")]
    kind: String,
    match_subdomains: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConnector {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    enabled: bool,
    tls_sender_certificate_name: String,
    sender_ip_addresses: Vec<String>,
    sender_domains: Vec<String>,
    associated_accepted_domains: Vec<String>,
    require_tls: bool,
    restrict_domains_to_certificate: bool,
    restrict_domains_to_ip_addresses: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    seed: u32,
    world: Vec<String>,
    connection: FileConnection,
    message: FileMessage,
    before: Expected,
    after: Expected,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConnection {
    endpoint: String,
    source_ip: String,
    ehlo: String,
    tls: String,
    client_cert: Option<FileCert>,
    ip_reputation: String,
    auth: Option<FileAuth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCert {
    subject_cn: String,
    san: Vec<String>,
    trusted: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    user: String,
    mechanism: String,
    send_as: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMessage {
    mail_from: String,
    rcpt_to: Vec<String>,
    header_from: String,
}

/// A verdict as the file writes it: empty strings mean "none".
#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    decided_by: String,
    tenant: String,
    direction: String,
    connector: String,
    matched_onprem: String,
    relay_allowed: bool,
    accepted: Vec<String>,
    rejected: Vec<String>,
    reply: String,
    stage: String,
}

impl Expected {
    fn of(verdict: &Verdict) -> Self {
        let text = |value: Option<&str>| value.unwrap_or_default().to_owned();
        Self {
            decided_by: verdict.decided_by.as_str().to_owned(),
            tenant: text(verdict.tenant.as_deref()),
            direction: text(verdict.direction.map(|d| d.as_str())),
            connector: text(verdict.connector.as_deref()),
            matched_onprem: text(verdict.matched_onprem.as_deref()),
            relay_allowed: verdict.relay_allowed,
            accepted: verdict.accepted.clone(),
            rejected: verdict.rejected.clone(),
            reply: verdict
                .reply
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            stage: text(verdict.stage.map(|s| s.as_str())),
        }
    }

    /// The fields that differ, one per line.
    fn differences(&self, actual: &Self) -> String {
        let expected = format!("{self:#?}");
        let actual = format!("{actual:#?}");
        let mut out = String::new();
        for (want, got) in expected.lines().zip(actual.lines()) {
            if want != got {
                let _ = writeln!(
                    out,
                    "      expected {}\n      actual   {}",
                    want.trim(),
                    got.trim()
                );
            }
        }
        out
    }
}

fn tenant(file: &FileTenant) -> Result<Tenant, Error> {
    Ok(Tenant {
        id: file.id.clone(),
        accepted_domains: file
            .accepted_domains
            .iter()
            .map(accepted_domain)
            .collect::<Result<_, _>>()?,
        recipients: file.recipients.clone(),
        reject_direct_send: file.reject_direct_send,
        outbound_blocked: file.outbound_blocked,
        unregistered_domain_block: file.unregistered_domain_block,
        basic_auth_submission: match file.basic_auth_submission.as_str() {
            "allowed" => BasicAuth::Allowed,
            "retired" => BasicAuth::Retired,
            other => return Err(format!("basic_auth_submission {other:?}").into()),
        },
        connectors: file
            .connector
            .iter()
            .map(connector)
            .collect::<Result<_, _>>()?,
    })
}

fn accepted_domain(file: &FileAcceptedDomain) -> Result<AcceptedDomain, Error> {
    Ok(AcceptedDomain {
        domain: file.domain.clone(),
        kind: match file.kind.as_str() {
            "Authoritative" => DomainType::Authoritative,
            "InternalRelay" => DomainType::InternalRelay,
            other => return Err(format!("accepted domain type {other:?}").into()),
        },
        match_subdomains: file.match_subdomains,
    })
}

fn connector(file: &FileConnector) -> Result<Connector, Error> {
    Ok(Connector {
        name: file.name.clone(),
        kind: match file.kind.as_str() {
            "OnPremises" => ConnectorType::OnPremises,
            "Partner" => ConnectorType::Partner,
            other => return Err(format!("connector type {other:?}").into()),
        },
        enabled: file.enabled,
        tls_sender_certificate_name: none_if_empty(&file.tls_sender_certificate_name),
        sender_ip_addresses: file
            .sender_ip_addresses
            .iter()
            .map(|r| r.parse::<Ipv4Range>())
            .collect::<Result<_, _>>()?,
        sender_domains: file.sender_domains.clone(),
        associated_accepted_domains: file.associated_accepted_domains.clone(),
        require_tls: file.require_tls,
        restrict_domains_to_certificate: file.restrict_domains_to_certificate,
        restrict_domains_to_ip_addresses: file.restrict_domains_to_ip_addresses,
        cloud_services_mail_enabled: false,
        treat_messages_as_internal: false,
    })
}

fn connection(file: &FileConnection) -> Result<Connection, Error> {
    Ok(Connection {
        endpoint: match file.endpoint.as_str() {
            "mx" => Endpoint::Mx,
            "submission" => Endpoint::Submission,
            other => return Err(format!("endpoint {other:?}").into()),
        },
        source_ip: file.source_ip.parse()?,
        ehlo: file.ehlo.clone(),
        tls: match file.tls.as_str() {
            "none" => TlsVersion::None,
            "1.0" => TlsVersion::V1_0,
            "1.1" => TlsVersion::V1_1,
            "1.2" => TlsVersion::V1_2,
            "1.3" => TlsVersion::V1_3,
            other => return Err(format!("tls {other:?}").into()),
        },
        client_cert: file.client_cert.as_ref().map(|c| ClientCert {
            subject_cn: c.subject_cn.clone(),
            san: c.san.clone(),
            trusted: c.trusted,
        }),
        ip_reputation: match file.ip_reputation.as_str() {
            "ok" => IpReputation::Ok,
            "banned" => IpReputation::Banned,
            "throttled" => IpReputation::Throttled,
            "low" => IpReputation::Low,
            other => return Err(format!("ip_reputation {other:?}").into()),
        },
        auth: file.auth.as_ref().map(auth).transpose()?,
    })
}

fn auth(file: &FileAuth) -> Result<Auth, Error> {
    Ok(Auth {
        user: file.user.clone(),
        mechanism: match file.mechanism.as_str() {
            "oauth" => AuthMechanism::Oauth,
            "basic" => AuthMechanism::Basic,
            other => return Err(format!("auth mechanism {other:?}").into()),
        },
        send_as: file.send_as.clone(),
    })
}

fn message(file: &FileMessage) -> Message {
    Message {
        mail_from: file.mail_from.clone(),
        rcpt_to: file.rcpt_to.clone(),
        header_from: none_if_empty(&file.header_from),
    }
}

/// Pretty `Debug` output, indented to sit under a case heading.
fn indented(value: &impl std::fmt::Debug) -> String {
    format!("{value:#?}").replace('\n', "\n    ")
}

fn none_if_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

/// Runs one case under both rule sets; `Ok(None)` if it passes, else the failure report.
fn run_case(case: &Case, tenants: &BTreeMap<&str, Tenant>) -> Result<Option<String>, Error> {
    let world = World {
        tenants: case
            .world
            .iter()
            .map(|id| {
                tenants
                    .get(id.as_str())
                    .cloned()
                    .ok_or(format!("unknown tenant {id:?}"))
            })
            .collect::<Result<_, _>>()?,
    };
    let connection = connection(&case.connection)?;
    let message = message(&case.message);
    let mut report = String::new();
    for (ruleset, expected) in [
        (Ruleset::Before, &case.before),
        (Ruleset::After, &case.after),
    ] {
        let verdict = attribution::classify(&world, &connection, &message, ruleset);
        let actual = Expected::of(&verdict);
        if &actual != expected {
            let _ = writeln!(
                report,
                "    rule set {ruleset:?}:\n{}    expected {}\n    actual   {}",
                expected.differences(&actual),
                indented(expected),
                indented(&actual),
            );
        }
    }
    if report.is_empty() {
        return Ok(None);
    }
    Ok(Some(format!(
        "FAIL {} (seed {}): {}\n    world {:?}\n    connection {}\n    message {}\n{report}",
        case.name,
        case.seed,
        case.description,
        case.world,
        indented(&case.connection),
        indented(&case.message),
    )))
}

/// Runs every case of one file; returns (passed, names of failed cases).
fn run_file(path: &Path, filter: Option<&str>) -> Result<(usize, Vec<String>), Error> {
    let text = std::fs::read_to_string(path)?;
    let file: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if file.format != 1 {
        return Err(format!("{}: unsupported format {}", path.display(), file.format).into());
    }
    let tenants: BTreeMap<&str, Tenant> = file
        .tenant
        .iter()
        .map(|t| Ok((t.id.as_str(), tenant(t)?)))
        .collect::<Result<_, Error>>()?;
    let (mut passed, mut failed) = (0, Vec::new());
    for problem in library_serde_differences(&text, &tenants)? {
        println!("FAIL {problem}");
        failed.push(problem);
    }
    for case in &file.case {
        if filter.is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        match run_case(case, &tenants) {
            Ok(None) => {
                println!("ok  {}", case.name);
                passed += 1;
            }
            Ok(Some(report)) => {
                println!("{report}");
                failed.push(case.name.clone());
            }
            Err(error) => {
                println!("FAIL {}: cannot run: {error}", case.name);
                failed.push(case.name.clone());
            }
        }
    }
    Ok((passed, failed))
}

/// The library's own `Tenant` deserialisation must read the file's tenants exactly as the
/// mapping above does, so tenant files in this format can be loaded without these structs.
fn library_serde_differences(
    text: &str,
    mapped: &BTreeMap<&str, Tenant>,
) -> Result<Vec<String>, Error> {
    let mut table: toml::Table = toml::from_str(text)?;
    let Some(toml::Value::Array(entries)) = table.remove("tenant") else {
        return Ok(Vec::new());
    };
    let mut problems = Vec::new();
    for entry in entries {
        let parsed: Tenant = entry.try_into()?;
        if mapped.get(parsed.id.as_str()) != Some(&parsed) {
            problems.push(format!(
                "tenant {}: library deserialisation differs",
                parsed.id
            ));
        }
    }
    Ok(problems)
}

fn vector_files() -> Result<Vec<PathBuf>, Error> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    files.sort();
    if files.is_empty() {
        return Err(format!("no *.toml files in {}", dir.display()).into());
    }
    Ok(files)
}

fn main() -> ExitCode {
    // Flags are what cargo's test runner passes (e.g. --nocapture); a plain word is a filter.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let files = match vector_files() {
        Ok(files) => files,
        Err(error) => {
            eprintln!("vectors: {error}");
            return ExitCode::FAILURE;
        }
    };
    let (mut passed, mut failed) = (0, Vec::new());
    for path in files {
        match run_file(&path, filter.as_deref()) {
            Ok((p, f)) => {
                passed += p;
                failed.extend(f);
            }
            Err(error) => {
                println!("FAIL {}: {error}", path.display());
                failed.push(path.display().to_string());
            }
        }
    }
    println!("\nvectors: {passed} passed, {} failed", failed.len());
    if failed.is_empty() {
        return ExitCode::SUCCESS;
    }
    println!("failing cases:");
    for name in &failed {
        println!("  {name}");
    }
    ExitCode::FAILURE
}
