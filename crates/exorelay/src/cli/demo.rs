//! `exorelay demo`: the whole story in a few seconds, on loopback only. It generates a demo CA
//! and certificates, starts two simulated Exchange Online endpoints for the built-in tenant
//! Contoso (one judging by the rules before November 2023, one by today's) and an exorelay in
//! front of today's, then sends the six seed scenarios of exo-attribution.md §8 — each once
//! straight to EXO under both rule sets and once through exorelay — and prints what happened.
//! Every "LAN system" connects from its own loopback address, which the simulator maps to the
//! public address EXO would see (the office IP, a SaaS provider's shared IP, a printer's line).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use attribution::{Direction, Ruleset, World};
use serde::Serialize;
use spool::{Envelope, QueueId, Recipient, RecipientState};

use crate::cli::serve::Relay;
use crate::config::{Config, Upstream, UpstreamTls};
use crate::delivery::client::{Connection, Content};
use crate::delivery::route;
use crate::exosim::{Exosim, Options, SourceIp};
use crate::inbound::session::now_unix;
use crate::tls::ClientIdentity;

/// The built-in tenant.
const TENANTS: &str = include_str!("demo-tenants.toml");
/// Name of the simulated EXO endpoint, on its certificate.
const EXO_HOST: &str = "contoso-com.mail.protection.outlook.com";
/// The office's public address, which Contoso's IP connector lists; exorelay egresses here.
const OFFICE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// Where exorelay connects from on loopback (seen by EXO as the office IP).
const RELAY_LOOPBACK: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 20);
/// How long the demo waits for a relayed message to reach EXO.
const RELAY_WAIT: Duration = Duration::from_secs(15);

/// One LAN flow.
struct Scenario {
    number: u8,
    name: &'static str,
    /// The loopback address the system connects from.
    loopback: Ipv4Addr,
    /// The public address EXO sees for it.
    seen_as: Ipv4Addr,
    /// Certificate presented over STARTTLS (file stem), or none (no TLS).
    certificate: Option<&'static str>,
    mail_from: &'static str,
    header_from: &'static str,
    rcpt: &'static str,
}

const SCENARIOS: [Scenario; 6] = [
    Scenario {
        number: 1,
        name: "on-prem Exchange with certificate",
        loopback: Ipv4Addr::new(127, 0, 0, 11),
        seen_as: OFFICE_IP,
        certificate: Some("exchange"),
        mail_from: "alice@contoso.com",
        header_from: "alice@contoso.com",
        rcpt: "partner@fabrikam.example",
    },
    Scenario {
        number: 2,
        name: "Postfix with company certificate",
        loopback: Ipv4Addr::new(127, 0, 0, 12),
        seen_as: OFFICE_IP,
        certificate: Some("postfix"),
        mail_from: "cron@app02.contoso.internal",
        header_from: "reports@contoso.com",
        rcpt: "partner@fabrikam.example",
    },
    Scenario {
        number: 3,
        name: "third-party service via IP",
        loopback: Ipv4Addr::new(127, 0, 0, 13),
        seen_as: Ipv4Addr::new(198, 51, 100, 25),
        certificate: Some("saas"),
        mail_from: "bounce+8f3a@saasmailer.example",
        header_from: "news@contoso.com",
        rcpt: "customer@example.net",
    },
    Scenario {
        number: 4,
        name: "LAN printer without TLS (internal)",
        loopback: Ipv4Addr::new(127, 0, 0, 14),
        seen_as: Ipv4Addr::new(203, 0, 113, 50),
        certificate: None,
        mail_from: "scanner@printer-3.lan",
        header_from: "scanner@printer-3.lan",
        rcpt: "bob@contoso.com",
    },
    Scenario {
        number: 5,
        name: "script without TLS, foreign sender",
        loopback: Ipv4Addr::new(127, 0, 0, 15),
        seen_as: OFFICE_IP,
        certificate: None,
        mail_from: "cron@app01.contoso.internal",
        header_from: "reports@contoso.com",
        rcpt: "customer@example.net",
    },
    Scenario {
        number: 6,
        name: "NDR with null sender",
        loopback: Ipv4Addr::new(127, 0, 0, 16),
        seen_as: OFFICE_IP,
        certificate: None,
        mail_from: "",
        header_from: "postmaster@contoso.com",
        rcpt: "customer@example.net",
    },
];

/// What one send produced.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Whether EXO accepted the recipient.
    pub accepted: bool,
    /// `Originating`/`Incoming` when accepted.
    pub direction: Option<String>,
    /// The rule that decided, when accepted.
    pub decided_by: Option<String>,
    /// EXO's (or the relay's) reply.
    pub reply: String,
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Seed scenario number (exo-attribution.md §8).
    pub scenario: u8,
    /// What the flow is.
    pub name: String,
    /// Straight to EXO, rules before November 2023.
    pub before: Outcome,
    /// Straight to EXO, today's rules.
    pub after_direct: Outcome,
    /// Through exorelay, today's rules.
    pub after_via_exorelay: Outcome,
    /// What exorelay changed on the way.
    pub exorelay_changed: String,
}

/// Runs the demo and prints the table (or JSON with `json`).
pub fn run(json: bool) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let rows = runtime.block_on(demo())?;
    runtime.shutdown_timeout(Duration::from_secs(2));
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_table(&rows);
    }
    let all_relayed = rows.iter().all(|r| r.after_via_exorelay.accepted);
    Ok(if all_relayed {
        ExitCode::SUCCESS
    } else {
        eprintln!("exorelay demo: some scenario did not get through exorelay (see above)");
        ExitCode::FAILURE
    })
}

/// Certificates of the demo, all from one "public" CA the simulator trusts.
struct Pki {
    dir: PathBuf,
    ca_file: PathBuf,
}

impl Pki {
    fn create(dir: &Path) -> anyhow::Result<Pki> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "Demo Public CA");
        ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let ca_cert = ca.self_signed(&ca_key)?;
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem())?;
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaves: [(&str, &[&str]); 5] = [
            ("exo", &[EXO_HOST]),
            ("relay", &["relay.contoso.com"]),
            (
                "exchange",
                &["mail.contoso.com", "autodiscover.contoso.com"],
            ),
            ("postfix", &["smtp.contoso.com"]),
            ("saas", &["mta.saasmailer.example"]),
        ];
        for (stem, names) in leaves {
            let key = rcgen::KeyPair::generate()?;
            let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = rcgen::CertificateParams::new(sans)?;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, names[0]);
            let cert = params.signed_by(&key, &issuer)?;
            std::fs::write(dir.join(format!("{stem}.pem")), cert.pem())?;
            std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem())?;
        }
        Ok(Pki {
            dir: dir.to_path_buf(),
            ca_file,
        })
    }

    fn cert(&self, stem: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}.key")),
        )
    }
}

async fn start_exo(world: &World, pki: &Pki, ruleset: Ruleset) -> anyhow::Result<Exosim> {
    let mut options = Options::new(world.clone(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    options.hostname = EXO_HOST.to_string();
    options.server_cert = Some(pki.cert("exo"));
    options.client_ca = vec![pki.ca_file.clone()];
    options.ruleset = ruleset;
    let mut source_ip = SourceIp::default();
    source_ip
        .by_peer
        .push((IpAddr::V4(RELAY_LOOPBACK), IpAddr::V4(OFFICE_IP)));
    for s in &SCENARIOS {
        source_ip
            .by_peer
            .push((IpAddr::V4(s.loopback), IpAddr::V4(s.seen_as)));
    }
    options.source_ip = source_ip;
    Exosim::start(options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the simulated EXO: {e}"))
}

fn relay_config(dir: &Path, exo: SocketAddr) -> anyhow::Result<Config> {
    let text = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
hostname = "relay.contoso.com"

[[client]]
name = "lan"
networks = ["127.0.0.0/8"]
on_attribution_failure = "fix"
envelope_from = "{{local}}@contoso.com"

[[upstream]]
name = "contoso"
host = "{ip}"
port = {port}
tls = "required"
server_name = "{EXO_HOST}"
ca_file = "ca.pem"
client_cert = "relay.pem"
client_key = "relay.key"
bind_address = "{RELAY_LOOPBACK}"
egress_ip = "{OFFICE_IP}"

[queue]
dir = "spool"
retry = ["1s"]

{TENANTS}
"#,
        ip = exo.ip(),
        port = exo.port(),
    );
    Config::parse(&text, &dir.join("relay.toml")).map_err(|e| anyhow::anyhow!("{e}"))
}

async fn demo() -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let pki = Pki::create(dir.path()).context("cannot create the demo certificates")?;
    let world = crate::tenants::parse(TENANTS, Path::new("(built-in demo tenant)"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let before = start_exo(&world, &pki, Ruleset::Before).await?;
    let after = start_exo(&world, &pki, Ruleset::After).await?;
    let relay = Relay::start(relay_config(dir.path(), after.local_addr())?).await?;
    let relay_addr = *relay.addrs().first().context("the relay listens nowhere")?;
    let mut rows = Vec::new();
    for s in &SCENARIOS {
        let before_outcome =
            send(s, before.local_addr(), &pki, dir.path(), "before", &before).await;
        let after_outcome = send(s, after.local_addr(), &pki, dir.path(), "after", &after).await;
        let (via, changed) = through_relay(s, relay_addr, dir.path(), &after).await;
        rows.push(Row {
            scenario: s.number,
            name: s.name.to_string(),
            before: before_outcome,
            after_direct: after_outcome,
            after_via_exorelay: via,
            exorelay_changed: changed,
        });
    }
    relay.stop().await;
    before.shutdown().await;
    after.shutdown().await;
    Ok(rows)
}

/// The message of a scenario, with a Message-ID that identifies the send.
fn message(s: &Scenario, tag: &str) -> (String, Vec<u8>) {
    let id = format!("<demo-{}-{tag}@demo.test>", s.number);
    let body = format!(
        "From: <{}>\r\nTo: <{}>\r\nSubject: {}\r\nMessage-ID: {id}\r\nDate: {}\r\n\r\nexorelay demo, scenario {}.\r\n",
        s.header_from,
        s.rcpt,
        s.name,
        crate::inbound::received::rfc5322_date(now_unix()),
        s.number
    );
    (id, body.into_bytes())
}

/// Delivers `content` from `s` to `to` with the relay's own SMTP client, as that system would.
async fn deliver(
    s: &Scenario,
    to: SocketAddr,
    tls: Option<(&Pki, &str)>,
    dir: &Path,
    tag: &str,
    content: &[u8],
) -> Result<smtp::Reply, String> {
    let identity = match tls {
        Some((pki, stem)) => {
            let (cert, key) = pki.cert(stem);
            Some(ClientIdentity::load(&cert, &key).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let upstream = Upstream {
        name: format!("scenario {}", s.number),
        host: to.ip().to_string(),
        port: to.port(),
        tls: if tls.is_some() {
            UpstreamTls::Required
        } else {
            UpstreamTls::None
        },
        server_name: Some(EXO_HOST.to_string()),
        chunking: false,
        max_connections: 1,
        egress_ip: None,
        bind_address: Some(IpAddr::V4(s.loopback)),
        ca_file: tls.map(|(pki, _)| pki.ca_file.clone()),
        client_identity: identity,
        sender_domains: Vec::new(),
    };
    let routes = route::routes(std::slice::from_ref(&upstream)).map_err(|e| e.to_string())?;
    let route = routes.first().ok_or("no route")?;
    let file = dir.join(format!("scenario-{}-{tag}.eml", s.number));
    std::fs::write(&file, content).map_err(|e| e.to_string())?;
    let mut envelope = Envelope::new(QueueId::generate(), now_unix());
    envelope.mail_from = s.mail_from.to_string();
    envelope.size = content.len() as u64;
    envelope.recipients = vec![Recipient {
        address: s.rcpt.to_string(),
        notify: None,
        orcpt: None,
        state: RecipientState::Pending,
        last_reply: None,
        attempts: 0,
    }];
    let helo = format!("system{}.contoso.lan", s.number);
    let mut connection = Connection::open(route, &helo)
        .await
        .map_err(|e| e.to_string())?;
    let content = std::fs::File::open(&file).map_err(|e| e.to_string())?;
    let outcome = connection
        .deliver(&envelope, Content::File(content))
        .await
        .map_err(|e| e.to_string())?;
    connection.quit().await;
    outcome
        .recipients
        .into_iter()
        .next()
        .ok_or_else(|| "no reply".to_string())
}

/// Sends a scenario straight to a simulated EXO and reads its verdict.
async fn send(
    s: &Scenario,
    to: SocketAddr,
    pki: &Pki,
    dir: &Path,
    tag: &str,
    exo: &Exosim,
) -> Outcome {
    let (id, content) = message(s, tag);
    let tls = s.certificate.map(|stem| (pki, stem));
    match deliver(s, to, tls, dir, tag, &content).await {
        Ok(reply) if reply.code() / 100 == 2 => accepted(exo, &id, reply.to_string()),
        Ok(reply) => refused(reply.to_string()),
        Err(e) => refused(e),
    }
}

/// Sends a scenario to exorelay (plain SMTP, as the LAN system would) and waits for EXO.
async fn through_relay(
    s: &Scenario,
    relay: SocketAddr,
    dir: &Path,
    exo: &Exosim,
) -> (Outcome, String) {
    let (id, content) = message(s, "via");
    match deliver(s, relay, None, dir, "via", &content).await {
        Ok(reply) if reply.code() / 100 == 2 => {}
        Ok(reply) => {
            return (
                refused(format!("exorelay: {reply}")),
                "refused by exorelay".into(),
            );
        }
        Err(e) => return (refused(format!("exorelay: {e}")), "-".into()),
    }
    let deadline = tokio::time::Instant::now() + RELAY_WAIT;
    while tokio::time::Instant::now() < deadline {
        if let Some(received) = find(exo, &id) {
            let mut changes = vec![match s.certificate {
                Some(_) => "certificate relay.contoso.com instead of its own".to_string(),
                None => "added STARTTLS with certificate relay.contoso.com".to_string(),
            }];
            if received.mail_from != s.mail_from {
                changes.push(format!(
                    "envelope sender → {}",
                    display(&received.mail_from)
                ));
            }
            let outcome = accepted(exo, &id, "250".into());
            return (outcome, changes.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (
        refused("not delivered within 15 s; see `exorelay queue show`".into()),
        "-".into(),
    )
}

fn find(exo: &Exosim, message_id: &str) -> Option<crate::exosim::Received> {
    let needle = message_id.as_bytes();
    exo.received()
        .into_iter()
        .find(|r| r.content.windows(needle.len()).any(|w| w == needle))
}

fn accepted(exo: &Exosim, message_id: &str, reply: String) -> Outcome {
    let found = find(exo, message_id);
    Outcome {
        accepted: true,
        direction: found.as_ref().map(|r| match r.direction {
            Direction::Originating => "Originating".to_string(),
            Direction::Incoming => "Incoming".to_string(),
        }),
        decided_by: found.map(|r| r.verdict.decided_by.as_str().to_string()),
        reply,
    }
}

fn refused(reply: String) -> Outcome {
    Outcome {
        accepted: false,
        direction: None,
        decided_by: None,
        reply,
    }
}

fn display(sender: &str) -> String {
    if sender.is_empty() {
        "<>".into()
    } else {
        sender.to_string()
    }
}

impl Outcome {
    fn cell(&self) -> String {
        if self.accepted {
            format!(
                "{} ({})",
                self.direction.as_deref().unwrap_or("accepted"),
                self.decided_by.as_deref().unwrap_or("?")
            )
        } else {
            let mut words = self.reply.split_whitespace();
            let code: Vec<&str> = words.by_ref().take(2).collect();
            format!("REFUSED {}", code.join(" "))
        }
    }
}

fn print_table(rows: &[Row]) {
    println!("exorelay demo — tenant contoso, simulated Exchange Online on loopback\n");
    println!(
        "{:<3} {:<37} {:<32} {:<32} {:<32} what exorelay changed",
        "#", "scenario", "before Nov 2023", "after Nov 2023, direct", "after, via exorelay"
    );
    for r in rows {
        println!(
            "{:<3} {:<37} {:<32} {:<32} {:<32} {}",
            r.scenario,
            r.name,
            r.before.cell(),
            r.after_direct.cell(),
            r.after_via_exorelay.cell(),
            r.exorelay_changed
        );
    }
    println!();
    for r in rows.iter().filter(|r| !r.after_direct.accepted) {
        println!(
            "{}: direct today EXO answers: {}",
            r.scenario, r.after_direct.reply
        );
    }
}
