//! `exorelay check`: what Exchange Online will do with a mail flow, under the rules before
//! November 2023 and now, which rule decided, and — when it refuses — what to change
//! (exo-attribution.md §10). Two forms:
//!
//! - **One flow** (`--tenants FILE` plus flow flags): the admin describes the connection and the
//!   envelope. The tenants file is a file of `[tenant.<id>]` tables or a relay configuration.
//!   A certificate named with `--cert-name` stands for a certificate from a public CA, sent with
//!   its chain (trusted unless `--cert-untrusted`); a certificate file given with `--cert` counts
//!   as trusted only with `--cert-trusted`, because whether it chains to a CA that EXO trusts
//!   cannot be checked here. With a certificate and no `--tls`, TLS 1.3 is assumed.
//! - **The relay's flows** (`--config relay.toml`): for every `[[client]]` rule, the flow as
//!   exorelay will send it — from the egress IP (`--egress-ip`, else the upstream's
//!   `egress_ip`; without either no IP connector can match), over TLS with the client
//!   certificate of the upstream the sender routes to (assumed publicly trusted), with the
//!   client's `envelope_from` (else `--mail-from`, else one example sender per
//!   `allowed_sender_domains` entry, else any sender, tested as `<>`), to `--rcpt` (default: an
//!   address in the client's first allowed recipient domain, else `someone@example.net`).
//!
//! Output is text for people, or JSON (`--json`) for scripts. The exit status is 0 whenever the
//! flow could be evaluated, whatever the verdict.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use attribution::{
    ClientCert, Connection, Endpoint, Finding, IpReputation, Message, Ruleset, TlsVersion, Verdict,
    World,
};
use serde_json::{Value, json};

use crate::config::{ClientRule, Config};
use crate::delivery::route::choose_upstream;
use crate::policy::preflight::{egress_connection, rewritten_sender};

/// The recipient used when none is given: outside every tenant, so the flow must relay.
const EXTERNAL_RECIPIENT: &str = "someone@example.net";

/// Flags of `exorelay check`.
#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["tenants", "config"]))]
pub struct CheckArgs {
    /// Check one flow against the tenants in FILE (`[tenant.<id>]` tables, or a relay config).
    #[arg(long, value_name = "FILE")]
    tenants: Option<PathBuf>,
    /// Check every `[[client]]` rule of this relay configuration against its `[tenant.*]` tables.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The IP address EXO sees the flow come from (one flow).
    #[arg(long, value_name = "IP")]
    source_ip: Option<IpAddr>,
    /// The IP address EXO sees the relay come from (with --config).
    #[arg(long, value_name = "IP")]
    egress_ip: Option<IpAddr>,
    /// TLS version of the session: none, 1.0, 1.1, 1.2 or 1.3.
    #[arg(long, value_enum)]
    tls: Option<TlsArg>,
    /// Client certificate (PEM); its subject CN and DNS SANs are read.
    #[arg(long, value_name = "FILE", conflicts_with = "cert_name")]
    cert: Option<PathBuf>,
    /// A name of the client certificate; repeatable, the first is the subject CN.
    #[arg(long, value_name = "NAME")]
    cert_name: Vec<String>,
    /// The --cert file chains to a public CA (and is sent with its chain, valid, not revoked).
    #[arg(long, requires = "cert")]
    cert_trusted: bool,
    /// The certificate is not trusted by EXO (self-signed, incomplete chain, expired …).
    #[arg(long, conflicts_with = "cert_trusted")]
    cert_untrusted: bool,
    /// Envelope sender (`MAIL FROM`); `<>` or an empty value for the null sender.
    #[arg(long, value_name = "ADDR")]
    mail_from: Option<String>,
    /// Address in the header `From:` (matters under the rules before November 2023).
    #[arg(long, value_name = "ADDR")]
    header_from: Option<String>,
    /// Recipient; repeatable. Default: someone@example.net (an external address).
    #[arg(long, value_name = "ADDR")]
    rcpt: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `--tls` values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum TlsArg {
    /// No STARTTLS.
    None,
    /// TLS 1.0.
    #[value(name = "1.0")]
    V10,
    /// TLS 1.1.
    #[value(name = "1.1")]
    V11,
    /// TLS 1.2.
    #[value(name = "1.2")]
    V12,
    /// TLS 1.3.
    #[value(name = "1.3")]
    V13,
}

impl From<TlsArg> for TlsVersion {
    fn from(value: TlsArg) -> TlsVersion {
        match value {
            TlsArg::None => TlsVersion::None,
            TlsArg::V10 => TlsVersion::V1_0,
            TlsArg::V11 => TlsVersion::V1_1,
            TlsArg::V12 => TlsVersion::V1_2,
            TlsArg::V13 => TlsVersion::V1_3,
        }
    }
}

/// Runs `exorelay check`.
pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    match (&args.tenants, &args.config) {
        (Some(file), _) => {
            let world = crate::tenants::load(file).map_err(|e| anyhow::anyhow!("{e}"))?;
            one_flow(&world, &args)
        }
        (None, Some(file)) => {
            let config = Config::load(file).map_err(|e| anyhow::anyhow!("{e}"))?;
            relay_flows(&config, &args)
        }
        (None, None) => anyhow::bail!("give --tenants FILE (one flow) or --config FILE"),
    }
}

/// A null sender written as `<>` or nothing; angle brackets removed otherwise.
fn address(text: &str) -> String {
    let trimmed = text.trim();
    trimmed
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(trimmed)
        .to_owned()
}

fn one_flow(world: &World, args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let Some(source_ip) = args.source_ip else {
        anyhow::bail!("--source-ip is needed: the address EXO sees the flow come from");
    };
    let Some(mail_from) = args.mail_from.as_deref().map(address) else {
        anyhow::bail!("--mail-from is needed (write --mail-from '<>' for the null sender)");
    };
    let client_cert = if let Some(file) = &args.cert {
        let certs = crate::tls::load_ca_file(file)?;
        let names = certs
            .first()
            .map(crate::tls::certificate_names)
            .unwrap_or_default();
        let Some(cn) = names.first().cloned() else {
            anyhow::bail!(
                "{}: the certificate has no subject CN or DNS name",
                file.display()
            );
        };
        Some(ClientCert {
            subject_cn: cn,
            san: names,
            trusted: args.cert_trusted,
        })
    } else {
        args.cert_name.first().map(|cn| ClientCert {
            subject_cn: cn.clone(),
            san: args.cert_name.clone(),
            trusted: !args.cert_untrusted,
        })
    };
    let tls = match (args.tls, &client_cert) {
        (Some(tls), _) => tls.into(),
        (None, Some(_)) => TlsVersion::V1_3,
        (None, None) => TlsVersion::None,
    };
    let connection = Connection {
        endpoint: Endpoint::Mx,
        source_ip,
        ehlo: String::new(),
        tls,
        client_cert,
        ip_reputation: IpReputation::Ok,
        auth: None,
    };
    let rcpt_to = if args.rcpt.is_empty() {
        vec![EXTERNAL_RECIPIENT.to_owned()]
    } else {
        args.rcpt.iter().map(|r| address(r)).collect()
    };
    let message = Message {
        mail_from,
        rcpt_to,
        header_from: args.header_from.as_deref().map(address),
    };
    let before = Judged::new(world, &connection, &message, Ruleset::Before);
    let after = Judged::new(world, &connection, &message, Ruleset::After);
    if args.json {
        let out = json!({
            "flow": flow_json(&connection, &message),
            "tenants": world.tenants.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
            "before": before.json(),
            "after": after.json(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", describe_flow(&connection, &message));
        let ids: Vec<&str> = world.tenants.iter().map(|t| t.id.as_str()).collect();
        println!("Tenants: {}", ids.join(", "));
        println!();
        for (label, judged) in [("Before Nov 2023:", &before), ("After Nov 2023:", &after)] {
            println!("{label:<16} {}", judged.headline());
            for line in judged.details() {
                println!("  {line}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A verdict with its explanation.
struct Judged {
    verdict: Verdict,
    findings: Vec<Finding>,
}

impl Judged {
    fn new(world: &World, connection: &Connection, message: &Message, ruleset: Ruleset) -> Judged {
        let verdict = attribution::classify(world, connection, message, ruleset);
        let findings = attribution::findings(world, connection, message, &verdict);
        Judged { verdict, findings }
    }

    /// `originating`, `incoming`, `refused` or `partly_refused`.
    fn outcome(&self) -> &'static str {
        let v = &self.verdict;
        match (v.accepted.is_empty(), v.rejected.is_empty()) {
            (_, true) if v.is_originating() => "originating",
            (_, true) => "incoming",
            (true, false) => "refused",
            (false, false) => "partly_refused",
        }
    }

    /// What to change, in plain words: the §10 findings, else a hint for the reply.
    fn advice(&self) -> Vec<String> {
        if !self.findings.is_empty() {
            return self.findings.iter().map(ToString::to_string).collect();
        }
        self.verdict
            .reply
            .as_ref()
            .and_then(|reply| reply_hint(reply, self.verdict.tenant.as_deref()))
            .into_iter()
            .collect()
    }

    fn headline(&self) -> String {
        let v = &self.verdict;
        let tenant = v.tenant.as_deref().unwrap_or("-");
        let connector = v
            .connector
            .as_deref()
            .map(|c| format!(", connector \"{c}\""))
            .unwrap_or_default();
        match self.outcome() {
            "originating" => format!(
                "OK — Originating for {tenant} ({}){connector}; relay to the internet allowed: {}",
                decided_by_words(v),
                if v.relay_allowed { "yes" } else { "no" }
            ),
            "incoming" => format!(
                "OK — Incoming to {tenant} ({}){connector}; delivered to the tenant's mailboxes, not relayed",
                decided_by_words(v)
            ),
            outcome => {
                let reply = v
                    .reply
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                let stage = v.stage.map(stage_words).unwrap_or("");
                let which = if outcome == "refused" {
                    "REFUSED"
                } else {
                    "PARTLY REFUSED"
                };
                format!("{which} — {reply} ({stage}) for {}", v.rejected.join(", "))
            }
        }
    }

    fn details(&self) -> Vec<String> {
        let v = &self.verdict;
        let mut lines = Vec::new();
        if !v.rejected.is_empty() {
            lines.push(format!("decided by: {}", v.decided_by));
            if !v.accepted.is_empty() {
                lines.push(format!("accepted: {}", v.accepted.join(", ")));
            }
            if let Some(connector) = &v.matched_onprem {
                lines.push(format!(
                    "the OnPremises connector \"{connector}\" matched, but no tenant could be \
                     attributed"
                ));
            }
            let advice = self.advice();
            if !advice.is_empty() {
                lines.push("what to change:".to_owned());
                lines.extend(advice.into_iter().map(|a| format!("- {a}")));
            }
        }
        lines
    }

    fn json(&self) -> Value {
        let v = &self.verdict;
        json!({
            "outcome": self.outcome(),
            "decided_by": v.decided_by.as_str(),
            "tenant": v.tenant,
            "direction": v.direction.map(|d| d.as_str()),
            "connector": v.connector,
            "matched_onprem": v.matched_onprem,
            "relay_allowed": v.relay_allowed,
            "accepted": v.accepted,
            "rejected": v.rejected,
            "reply": v.reply.as_ref().map(ToString::to_string),
            "stage": v.stage.map(|s| s.as_str()),
            "findings": self.findings.iter().map(|f| json!({
                "label": f.label(),
                "advice": f.advice(),
            })).collect::<Vec<_>>(),
            "advice": self.advice(),
        })
    }
}

fn decided_by_words(v: &Verdict) -> String {
    use attribution::DecidedBy::*;
    let words = match v.decided_by {
        CertificateDomain => "the certificate's domain is an accepted domain",
        MailFromDomain => "the envelope sender's domain is an accepted domain",
        HeaderFromDomain => "the header From domain is accepted; decided at end of DATA",
        RecipientDomain => "by recipient domain",
        SmtpAuth => "SMTP AUTH",
        FrontDoor => "front door",
        None => "no tenant",
    };
    format!("decided by {}: {words}", v.decided_by)
}

fn stage_words(stage: attribution::Stage) -> &'static str {
    use attribution::Stage::*;
    match stage {
        Starttls => "at STARTTLS",
        Auth => "at AUTH",
        Mail => "at MAIL FROM",
        Rcpt => "at RCPT TO",
        EndOfData => "at the end of DATA",
    }
}

/// Plain words for refusals that are not relay refusals (those have findings).
fn reply_hint(reply: &attribution::Reply, tenant: Option<&str>) -> Option<String> {
    let tenant = tenant.unwrap_or("the tenant");
    let hint = match reply.enhanced.as_str() {
        "5.7.68" => format!(
            "Reject Direct Send is on for {tenant} and nothing identified this sender: add a \
             Partner connector (by IP or certificate) for it, or an OnPremises connector"
        ),
        "5.7.51" => format!(
            "a Partner connector of {tenant} with RestrictDomainsToIPAddresses or \
             RestrictDomainsToCertificate did not recognise this connection: send from the IPs \
             or with the certificate the connector names"
        ),
        "5.7.3" => "the Partner connector requires TLS: use STARTTLS".to_owned(),
        "5.4.1" => format!(
            "the recipient does not exist in {tenant} (Directory-Based Edge Blocking): fix the \
             address or add the recipient"
        ),
        "5.7.606" | "4.7.500" | "5.7.705" | "5.7.708" | "5.7.750" => format!(
            "a service block on EXO's side ({}); see the reply",
            reply.enhanced
        ),
        _ => return None,
    };
    Some(hint)
}

fn flow_json(connection: &Connection, message: &Message) -> Value {
    json!({
        "source_ip": connection.source_ip.to_string(),
        "tls": connection.tls.as_str(),
        "client_cert": connection.client_cert.as_ref().map(|c| json!({
            "subject_cn": c.subject_cn,
            "san": c.san,
            "trusted": c.trusted,
        })),
        "mail_from": message.mail_from,
        "header_from": message.header_from,
        "rcpt_to": message.rcpt_to,
    })
}

fn describe_flow(connection: &Connection, message: &Message) -> String {
    let tls = match connection.tls {
        TlsVersion::None => "without TLS".to_owned(),
        v => format!("over TLS {}", v.as_str()),
    };
    let cert = match &connection.client_cert {
        Some(c) => format!(
            " presenting certificate {} ({}; names {})",
            c.subject_cn,
            if c.trusted { "trusted" } else { "untrusted" },
            c.san.join(", ")
        ),
        None => " without a client certificate".to_owned(),
    };
    format!(
        "Flow: from {} {tls}{cert}\n      MAIL FROM:<{}>  header From: {}  RCPT TO: {}",
        connection.source_ip,
        message.mail_from,
        message.header_from.as_deref().unwrap_or("(none)"),
        message.rcpt_to.join(", ")
    )
}

/// One row of the relay's table.
struct Row {
    client: String,
    sender: String,
    upstream: Option<String>,
    connection: Connection,
    message: Message,
    before: Judged,
    after: Judged,
}

fn relay_flows(config: &Config, args: &CheckArgs) -> anyhow::Result<ExitCode> {
    if config.tenants.tenants.is_empty() {
        anyhow::bail!(
            "{} has no [tenant.<id>] table: describe the tenant first (see examples/tenants.toml)",
            config.source.display()
        );
    }
    let world = &config.tenants;
    let mut rows = Vec::new();
    for rule in &config.clients {
        let rcpt = args.rcpt.first().map(|r| address(r)).unwrap_or_else(|| {
            match rule.allowed_recipient_domains.as_deref() {
                Some([first, ..]) => format!("someone@{first}"),
                _ => EXTERNAL_RECIPIENT.to_owned(),
            }
        });
        for (label, mail_from) in senders(rule, args) {
            let upstream = choose_upstream(&config.upstreams, &mail_from);
            let mut connection = egress_connection(upstream);
            if let Some(ip) = args.egress_ip {
                connection.source_ip = ip;
            }
            if let Some(cert) = connection
                .client_cert
                .as_mut()
                .filter(|_| args.cert_untrusted)
            {
                cert.trusted = false;
            }
            let message = Message {
                header_from: (!mail_from.is_empty()).then(|| mail_from.clone()),
                mail_from,
                rcpt_to: vec![rcpt.clone()],
            };
            rows.push(Row {
                client: rule.name.clone(),
                sender: label,
                upstream: upstream.map(|u| u.name.clone()),
                before: Judged::new(world, &connection, &message, Ruleset::Before),
                after: Judged::new(world, &connection, &message, Ruleset::After),
                connection,
                message,
            });
        }
    }
    if args.json {
        let out: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "client": r.client,
                    "sender": r.sender,
                    "upstream": r.upstream,
                    "flow": flow_json(&r.connection, &r.message),
                    "before": r.before.json(),
                    "after": r.after.json(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "flows": out }))?
        );
    } else {
        print_table(&rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// The senders to try for a client: (label, envelope sender).
fn senders(rule: &ClientRule, args: &CheckArgs) -> Vec<(String, String)> {
    if let Some(template) = &rule.envelope_from {
        let sender = rewritten_sender(rule, "sender@example.org").unwrap_or_default();
        return vec![(format!("{template} (envelope_from)"), sender)];
    }
    if let Some(from) = &args.mail_from {
        let from = address(from);
        return vec![(from.clone(), from)];
    }
    match rule.allowed_sender_domains.as_deref() {
        Some(domains) if !domains.is_empty() => domains
            .iter()
            .map(|d| {
                let sender = format!("sender@{d}");
                (sender.clone(), sender)
            })
            .collect(),
        _ => vec![("any (tested as <>)".to_owned(), String::new())],
    }
}

fn cell(judged: &Judged) -> String {
    let v = &judged.verdict;
    match judged.outcome() {
        "originating" => format!("OK Originating ({})", v.decided_by),
        "incoming" => format!("OK Incoming ({})", v.tenant.as_deref().unwrap_or("-")),
        _ => {
            let reply = v
                .reply
                .as_ref()
                .map(|r| format!("{} {}", r.code, r.enhanced))
                .unwrap_or_default();
            format!(
                "REFUSED {reply} {}",
                v.stage.map(|s| s.as_str()).unwrap_or("")
            )
        }
    }
}

fn print_table(rows: &[Row]) {
    let header = [
        "client",
        "sender",
        "cert names",
        "before",
        "after",
        "advice",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let cert = match &r.connection.client_cert {
                Some(c) => c.san.join(","),
                None if r.upstream.is_none() => "(no upstream routes this sender)".to_owned(),
                None => "(none)".to_owned(),
            };
            let advice = r.after.advice();
            [
                r.client.clone(),
                r.sender.clone(),
                cert,
                cell(&r.before),
                cell(&r.after),
                if advice.is_empty() {
                    "-".to_owned()
                } else {
                    advice.join(" | ")
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |row: &[String]| {
        let mut out = String::new();
        for (i, (text, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                out.push_str(text);
            } else {
                out.push_str(&format!("{text:<width$}  "));
            }
        }
        out.trim_end().to_owned()
    };
    println!("{}", line(&header.map(str::to_owned)));
    for row in &cells {
        println!("{}", line(row));
    }
}
