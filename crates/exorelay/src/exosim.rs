//! `exosim`: a simulated multi-tenant Exchange Online MX endpoint that the tests and the demo
//! deliver to. Real SMTP on a TCP port (the pure [`smtp::Session`] drives the dialogue) with
//! STARTTLS; every transaction is classified by [`attribution::classify`] and answered at the
//! stage the spec gives (exo-attribution.md §4–§5), with EXO's reply texts followed by
//! `[hostname]` as EXO appends its server name (spec preamble). Accepted messages are kept in
//! memory, optionally written to `DIR/<tenant>/<n>.eml`, and reported to a channel.
//!
//! What the model sees of a connection:
//!
//! - **Source IP**: the peer address, unless [`SourceIp`] overrides it. Tests and the demo run
//!   on loopback, which no connector lists; the override makes a connection look as if it came
//!   from, e.g., the IP of an OnPremises connector.
//! - **TLS**: the version rustls negotiated (1.2 or 1.3), or none without STARTTLS.
//! - **Client certificate**: the leaf's subject CN and DNS SANs ([`crate::tls::certificate_names`]:
//!   the first name is taken as the CN, all names as SANs). The handshake accepts *any*
//!   certificate whose holder proves its key, so that an untrusted certificate does not abort the
//!   session — EXO, too, carries on and just ignores it (§3.2, §7.2). Afterwards the chain the
//!   client sent is checked against the simulator's client CAs with rustls' WebPKI verifier
//!   (signature chain, validity period, intermediates as sent); `trusted` is the result. Without
//!   client CAs no certificate is trusted.
//!
//! Replies and stages (§5): refusals the model gives at `rcpt` are the reply to that `RCPT TO`;
//! refusals at `end_of_data` (a decision by header From under the `before` rules) are the reply
//! to the end of DATA, for the whole message, since SMTP has one reply there. `mail`, `auth` and
//! `starttls` refusals only arise on the submission endpoint, which exosim does not simulate
//! (no AUTH); should one appear it is given at `RCPT TO`. Incoming mail to several tenants is
//! stored once per tenant, as EXO forks it (§4).
//!
//! Stored messages get these header fields prepended:
//! `Return-Path`, `X-MS-Exchange-Organization-MessageDirectionality: Originating|Incoming`,
//! `X-Exosim-Verdict: tenant=…; direction=…; decided_by=…; connector="…"; ruleset=…` and
//! `X-Exosim-Recipients`.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attribution::{
    ClientCert, Connection, Direction, Endpoint, IpReputation, Message, Ruleset, TlsVersion,
    Verdict, World,
};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use smtp::{EnhancedCode, ForwardPath, MailParams, Output, RcptParams, Reply, ReversePath};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout_at};
use tracing::{info, warn};

use crate::config::canonical_ip;
use crate::inbound::session::{read_more, write_reply};
use crate::tls::{self, TlsError};

/// EXO's advertised `SIZE` (157286400 octets, §7.1 \[OBS\]).
pub const EXO_MAX_MESSAGE_SIZE: u64 = 150 * 1024 * 1024;
/// Recipients per transaction before `452 4.5.3` (§7.3 \[DOC\]).
const MAX_RECIPIENTS: usize = 200;
/// Concurrent sessions; more wait for a free slot.
const MAX_SESSIONS: usize = 64;
/// Deadline for each command (RFC 5321 §4.5.3.2).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Deadline for one message transfer.
const DATA_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Longest session.
const SESSION_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Bytes read per call.
const READ_CHUNK: usize = 16 * 1024;

/// Checks a client's chain against the simulator's client CAs.
type Trust = Arc<dyn ClientCertVerifier>;

/// Why the simulator could not start or store.
#[derive(Debug, thiserror::Error)]
pub enum ExosimError {
    /// The server certificate or a CA file could not be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// rustls refused the TLS set-up.
    #[error("TLS set-up: {0}")]
    TlsSetup(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
}

/// The source IP the model sees, instead of the real (loopback) peer address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceIp {
    /// Seen for every connection not listed in `by_peer`.
    pub all: Option<IpAddr>,
    /// `(peer, seen)`: connections from `peer` are seen as coming from `seen`.
    pub by_peer: Vec<(IpAddr, IpAddr)>,
}

impl SourceIp {
    /// Adds one `--source-ip` argument: `IP` (every connection) or `PEER=IP`.
    pub fn add(&mut self, text: &str) -> Result<(), String> {
        let parse = |t: &str| {
            t.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("{t:?} is not an IP address (write IP or PEER=IP)"))
        };
        match text.split_once('=') {
            Some((peer, seen)) => self
                .by_peer
                .push((canonical_ip(parse(peer)?), parse(seen)?)),
            None => self.all = Some(parse(text)?),
        }
        Ok(())
    }

    /// The address the model sees for a connection from `peer`.
    pub fn seen(&self, peer: IpAddr) -> IpAddr {
        let peer = canonical_ip(peer);
        self.by_peer
            .iter()
            .find(|(p, _)| *p == peer)
            .map(|(_, seen)| *seen)
            .or(self.all)
            .unwrap_or(peer)
    }
}

/// How to run the simulator.
#[derive(Debug, Clone)]
pub struct Options {
    /// The tenants.
    pub world: World,
    /// Where to listen (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Name in the greeting and in the `[name]` suffix of replies.
    pub hostname: String,
    /// Server certificate chain and key files; STARTTLS is offered only with them.
    pub server_cert: Option<(PathBuf, PathBuf)>,
    /// CA certificate files a client certificate must chain to, to count as trusted.
    pub client_ca: Vec<PathBuf>,
    /// Where accepted messages are written, `DIR/<tenant>/<n>.eml`; `None` = memory only.
    pub store: Option<PathBuf>,
    /// The rule set to judge by.
    pub ruleset: Ruleset,
    /// What source IP the model sees.
    pub source_ip: SourceIp,
    /// Largest message, advertised as `SIZE`.
    pub max_message_size: u64,
    /// Receives every accepted message (one per tenant) as it is stored.
    pub notify: Option<mpsc::UnboundedSender<Received>>,
}

impl Options {
    /// Options with EXO's defaults: no TLS, no store, the `after` rules, the real peer IP.
    pub fn new(world: World, listen: SocketAddr) -> Options {
        Options {
            world,
            listen,
            hostname: "exosim.test".to_owned(),
            server_cert: None,
            client_ca: Vec::new(),
            store: None,
            ruleset: Ruleset::After,
            source_ip: SourceIp::default(),
            max_message_size: EXO_MAX_MESSAGE_SIZE,
            notify: None,
        }
    }
}

/// One accepted message as stored for one tenant.
#[derive(Debug, Clone)]
pub struct Received {
    /// The tenant it was stored for.
    pub tenant: String,
    /// Originating or Incoming for that tenant.
    pub direction: Direction,
    /// The verdict of the whole transaction.
    pub verdict: Verdict,
    /// `MAIL FROM` (empty = `<>`).
    pub mail_from: String,
    /// The recipients stored for this tenant.
    pub recipients: Vec<String>,
    /// The message as stored, with exosim's header fields first.
    pub content: Vec<u8>,
    /// The file it was written to, with `--store`.
    pub file: Option<PathBuf>,
}

/// A running simulator.
pub struct Exosim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// What every session shares.
struct Shared {
    options: Options,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Checks a presented chain against the client CAs; `None` = no CA, nothing is trusted.
    trust: Option<Trust>,
    received: Mutex<Vec<Received>>,
    /// Last file number used per tenant directory.
    numbers: Mutex<HashMap<String, u64>>,
}

impl Exosim {
    /// Binds the listen address and starts serving.
    pub async fn start(options: Options) -> Result<Exosim, ExosimError> {
        let (tls, trust) = match &options.server_cert {
            Some((cert, key)) => {
                let (config, trust) = server_tls(cert, key, &options.client_ca)?;
                (Some(config), trust)
            }
            None => (None, None),
        };
        let listener =
            TcpListener::bind(options.listen)
                .await
                .map_err(|source| ExosimError::Bind {
                    addr: options.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ExosimError::Bind {
            addr: options.listen,
            source,
        })?;
        let shared = Arc::new(Shared {
            options,
            tls,
            trust,
            received: Mutex::new(Vec::new()),
            numbers: Mutex::new(HashMap::new()),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared.clone(), stopped));
        Ok(Exosim {
            addr,
            shared,
            stop,
            task,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every message accepted so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops listening and ends every open session.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Runs the simulator until `shutdown` completes; `started` is told the bound address.
pub async fn run(
    options: Options,
    started: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Vec<Received>, ExosimError> {
    let sim = Exosim::start(options).await?;
    started(sim.local_addr());
    shutdown.await;
    let received = sim.received();
    sim.shutdown().await;
    Ok(received)
}

/// The STARTTLS configuration: our certificate, TLS 1.2/1.3, client certificates requested but
/// optional and accepted whatever their issuer (see the module documentation).
fn server_tls(
    cert: &Path,
    key: &Path,
    client_ca: &[PathBuf],
) -> Result<(Arc<rustls::ServerConfig>, Option<Trust>), ExosimError> {
    let setup = |e: &dyn std::fmt::Display| ExosimError::TlsSetup(e.to_string());
    // The key is loaded by tls.rs (the one module that reads key material); we reuse its
    // certificate resolver and only change how client certificates are handled.
    let base = tls::server_config(cert, key)?;
    let provider = tls::provider();
    let config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| setup(&e))?
        .with_client_cert_verifier(Arc::new(AnyClientCert {
            algorithms: provider.signature_verification_algorithms,
        }))
        .with_cert_resolver(base.cert_resolver.clone());
    let trust = if client_ca.is_empty() {
        None
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for file in client_ca {
            for ca in tls::load_ca_file(file)? {
                roots.add(ca).map_err(|e| setup(&e))?;
            }
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| setup(&e))?;
        Some(verifier)
    };
    Ok((Arc::new(config), trust))
}

/// Accepts every client certificate whose holder proves possession of its key; whether it is
/// trusted is decided after the handshake (module documentation).
#[derive(Debug)]
struct AnyClientCert {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_SESSIONS));
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            // Only `true` is ever sent, and a dropped sender means stop too.
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let shared = shared.clone();
                    let slots = slots.clone();
                    sessions.spawn(async move {
                        let Ok(_slot) = slots.acquire_owned().await else { return };
                        if let Err(e) = connection(stream, peer, &shared).await {
                            info!(client = %peer, "exosim: connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    warn!("exosim: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    sessions.abort_all();
    while sessions.join_next().await.is_some() {}
}

/// Why a drive loop stopped.
enum Exit {
    Closed,
    StartTls,
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let options = &shared.options;
    let mut smtp_config = smtp::ServerConfig::new(options.hostname.clone());
    smtp_config.max_message_size = options.max_message_size;
    smtp_config.max_recipients = MAX_RECIPIENTS;
    smtp_config.starttls_offered = shared.tls.is_some();
    let mut session = smtp::Session::new(smtp_config);
    let mut facts = Connection {
        endpoint: Endpoint::Mx,
        source_ip: options.source_ip.seen(peer.ip()),
        ehlo: String::new(),
        tls: TlsVersion::None,
        client_cert: None,
        ip_reputation: IpReputation::Ok,
        auth: None,
    };
    let session_deadline = Instant::now() + SESSION_TIMEOUT;
    let mut input = Vec::with_capacity(READ_CHUNK);
    write_reply(&mut stream, &session.greeting()).await?;
    let exit = drive(
        &mut stream,
        &mut session,
        &mut input,
        &facts,
        shared,
        session_deadline,
    )
    .await?;
    let (Exit::StartTls, Some(tls)) = (exit, shared.tls.clone()) else {
        return stream.shutdown().await;
    };
    write_reply(&mut stream, &Reply::ready_for_tls()).await?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut tls_stream =
        match timeout_at(Instant::now() + COMMAND_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                info!(client = %peer, "exosim: TLS handshake failed: {e}");
                return Ok(());
            }
            Err(_) => return Ok(()),
        };
    input.clear();
    session.tls_established();
    let tls_session = tls_stream.get_ref().1;
    facts.tls = match tls_session.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => TlsVersion::V1_3,
        _ => TlsVersion::V1_2,
    };
    facts.client_cert = tls_session
        .peer_certificates()
        .and_then(|chain| client_cert(chain, shared.trust.as_deref()));
    info!(client = %peer, tls = facts.tls.as_str(), cert = ?facts.client_cert, "exosim: TLS established");
    drive(
        &mut tls_stream,
        &mut session,
        &mut input,
        &facts,
        shared,
        session_deadline,
    )
    .await?;
    tls_stream.shutdown().await
}

/// The model's view of the presented chain: names of the leaf and whether it chains to a client
/// CA of the simulator.
fn client_cert(
    chain: &[CertificateDer<'static>],
    trust: Option<&dyn ClientCertVerifier>,
) -> Option<ClientCert> {
    let (leaf, intermediates) = chain.split_first()?;
    let names = tls::certificate_names(leaf);
    let trusted = trust.is_some_and(|verifier| {
        verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .is_ok()
    });
    Some(ClientCert {
        subject_cn: names.first().cloned().unwrap_or_default(),
        san: names,
        trusted,
    })
}

/// The message being received.
struct OpenMessage {
    transaction: smtp::Transaction,
    content: Vec<u8>,
}

async fn drive<S>(
    stream: &mut S,
    session: &mut smtp::Session,
    input: &mut Vec<u8>,
    facts: &Connection,
    shared: &Shared,
    session_deadline: Instant,
) -> std::io::Result<Exit>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut policy = SimPolicy { facts, shared };
    let mut open: Option<OpenMessage> = None;
    let mut deadline = (Instant::now() + COMMAND_TIMEOUT).min(session_deadline);
    loop {
        match session.step(input, &mut policy) {
            Output::Send(reply) => {
                write_reply(stream, &reply).await?;
                if open.is_none() {
                    deadline = (Instant::now() + COMMAND_TIMEOUT).min(session_deadline);
                }
            }
            Output::NeedInput => {
                if !read_more(stream, input, deadline).await? {
                    if Instant::now() >= deadline {
                        let reply = session.timed_out();
                        write_reply(stream, &reply).await?;
                    }
                    return Ok(Exit::Closed);
                }
            }
            Output::StartTls => return Ok(Exit::StartTls),
            Output::MessageBegin(transaction) => {
                deadline = (Instant::now() + DATA_TIMEOUT).min(session_deadline);
                open = Some(OpenMessage {
                    transaction,
                    content: Vec::new(),
                });
            }
            Output::MessageContent(bytes) => {
                if let Some(message) = open.as_mut() {
                    message.content.extend_from_slice(&bytes);
                }
            }
            Output::MessageEnd => {
                let result = match open.take() {
                    Some(message) => finish(message, facts, shared),
                    None => Err(Reply::local_error()),
                };
                session.message_stored(result);
            }
            Output::MessageAbort => open = None,
            Output::Close => return Ok(Exit::Closed),
        }
    }
}

/// Asks the model about each recipient as it is given.
struct SimPolicy<'a> {
    facts: &'a Connection,
    shared: &'a Shared,
}

impl smtp::Policy for SimPolicy<'_> {
    /// On the MX endpoint the model refuses nothing at `MAIL FROM` (§5).
    fn check_sender(&mut self, _from: &ReversePath, _params: &MailParams) -> Result<(), Reply> {
        Ok(())
    }

    /// Classifies the transaction for this recipient with what is known at `RCPT TO` (no header
    /// From yet); a refusal the model places at end of DATA waits until then.
    fn check_recipient(
        &mut self,
        from: &ReversePath,
        to: &ForwardPath,
        _params: &RcptParams,
    ) -> Result<(), Reply> {
        let message = Message {
            mail_from: sender(from),
            rcpt_to: vec![to.mailbox().to_string()],
            header_from: None,
        };
        let options = &self.shared.options;
        let verdict = attribution::classify(&options.world, self.facts, &message, options.ruleset);
        match verdict.rejections.first() {
            Some(r) if r.stage != attribution::Stage::EndOfData => {
                info!(
                    source_ip = %self.facts.source_ip,
                    rcpt = %r.recipient,
                    decided_by = verdict.decided_by.as_str(),
                    "exosim: refused at {}: {}",
                    r.stage,
                    r.reply
                );
                Err(exo_reply(&r.reply, &options.hostname))
            }
            _ => Ok(()),
        }
    }
}

fn sender(from: &ReversePath) -> String {
    from.mailbox().map(ToString::to_string).unwrap_or_default()
}

/// An attribution reply on the wire, with EXO's bracketed server name appended.
fn exo_reply(reply: &attribution::Reply, hostname: &str) -> Reply {
    let mut parts = reply.enhanced.split('.').map(str::parse::<u16>);
    let enhanced = match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(class)), Some(Ok(subject)), Some(Ok(detail))) => u8::try_from(class)
            .ok()
            .map(|class| EnhancedCode::new(class, subject, detail)),
        _ => None,
    };
    Reply::new(reply.code, enhanced, format!("{} [{hostname}]", reply.text))
}

/// End of DATA: classify with the header From, refuse or store per tenant.
fn finish(message: OpenMessage, facts: &Connection, shared: &Shared) -> Result<Reply, Reply> {
    let options = &shared.options;
    let t = &message.transaction;
    let mut facts = facts.clone();
    facts.ehlo = t.helo.clone();
    let envelope = Message {
        mail_from: sender(&t.mail_from),
        rcpt_to: t
            .recipients
            .iter()
            .map(|(to, _)| to.mailbox().to_string())
            .collect(),
        header_from: header_from(&message.content),
    };
    let verdict = attribution::classify(&options.world, &facts, &envelope, options.ruleset);
    if let Some(r) = verdict.rejections.first() {
        info!(source_ip = %facts.source_ip, "exosim: refused at end of data: {}", r.reply);
        return Err(exo_reply(&r.reply, &options.hostname));
    }
    let mut stored = Vec::new();
    for (tenant, recipients) in per_tenant(&verdict, &facts, &envelope, options) {
        let direction = if verdict.is_originating() {
            Direction::Originating
        } else {
            Direction::Incoming
        };
        let content = with_headers(
            &verdict,
            &tenant,
            direction,
            &envelope.mail_from,
            &recipients,
            options.ruleset,
            &message.content,
        );
        let file = match &options.store {
            Some(dir) => Some(shared.write(dir, &tenant, &content).map_err(|e| {
                warn!("exosim: cannot store the message: {e}");
                Reply::storage_failed()
            })?),
            None => None,
        };
        info!(
            tenant = %tenant,
            direction = direction.as_str(),
            decided_by = verdict.decided_by.as_str(),
            "exosim: accepted"
        );
        stored.push(Received {
            tenant,
            direction,
            verdict: verdict.clone(),
            mail_from: envelope.mail_from.clone(),
            recipients,
            content,
            file,
        });
    }
    let summary: Vec<String> = stored
        .iter()
        .map(|r| format!("{} {}", r.tenant, r.direction))
        .collect();
    for received in stored {
        if let Some(notify) = &options.notify {
            let _ = notify.send(received.clone());
        }
        shared
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(received);
    }
    Ok(Reply::new(
        250,
        Some(EnhancedCode::new(2, 6, 0)),
        format!(
            "Queued mail for delivery ({}) [{}]",
            summary.join(", "),
            options.hostname
        ),
    ))
}

/// The tenants the message is stored for, each with its recipients: the Originating tenant with
/// every recipient, or, for Incoming mail, each recipient's own tenant (EXO forks, §4).
fn per_tenant(
    verdict: &Verdict,
    facts: &Connection,
    envelope: &Message,
    options: &Options,
) -> Vec<(String, Vec<String>)> {
    if verdict.is_originating() {
        let tenant = verdict.tenant.clone().unwrap_or_default();
        return vec![(tenant, envelope.rcpt_to.clone())];
    }
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for rcpt in &envelope.rcpt_to {
        let single = Message {
            rcpt_to: vec![rcpt.clone()],
            ..envelope.clone()
        };
        let own = attribution::classify(&options.world, facts, &single, options.ruleset);
        let tenant = own
            .tenant
            .or_else(|| verdict.tenant.clone())
            .unwrap_or_default();
        match groups.iter_mut().find(|(t, _)| *t == tenant) {
            Some((_, list)) => list.push(rcpt.clone()),
            None => groups.push((tenant, vec![rcpt.clone()])),
        }
    }
    groups
}

/// Header field values come from configuration and the client: no control characters.
fn field_value(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn with_headers(
    verdict: &Verdict,
    tenant: &str,
    direction: Direction,
    mail_from: &str,
    recipients: &[String],
    ruleset: Ruleset,
    content: &[u8],
) -> Vec<u8> {
    let ruleset = match ruleset {
        Ruleset::Before => "before",
        Ruleset::After => "after",
    };
    let connector = verdict.connector.as_deref().unwrap_or("");
    let head = format!(
        "Return-Path: <{}>\r\n\
         X-MS-Exchange-Organization-MessageDirectionality: {}\r\n\
         X-Exosim-Verdict: tenant={}; direction={}; decided_by={}; connector=\"{}\"; ruleset={}\r\n\
         X-Exosim-Recipients: {}\r\n",
        field_value(mail_from),
        direction.as_str(),
        field_value(tenant),
        direction.as_str(),
        verdict.decided_by.as_str(),
        field_value(&connector.replace('"', "'")),
        ruleset,
        field_value(&recipients.join(", ")),
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(content);
    out
}

impl Shared {
    /// Writes `DIR/<tenant>/<n>.eml` with the next free number.
    fn write(&self, dir: &Path, tenant: &str, content: &[u8]) -> std::io::Result<PathBuf> {
        let tenant_dir = dir.join(tenant);
        std::fs::create_dir_all(&tenant_dir)?;
        let mut numbers = self.numbers.lock().unwrap_or_else(|p| p.into_inner());
        let last = match numbers.get(tenant) {
            Some(n) => *n,
            None => highest_number(&tenant_dir)?,
        };
        let n = last + 1;
        let path = tenant_dir.join(format!("{n}.eml"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.write_all(content)?;
        numbers.insert(tenant.to_owned(), n);
        Ok(path)
    }
}

/// The highest `<n>.eml` already in `dir` (0 if none), so a restarted simulator appends.
fn highest_number(dir: &Path) -> std::io::Result<u64> {
    let mut highest = 0;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let number = name
            .to_str()
            .and_then(|n| n.strip_suffix(".eml"))
            .and_then(|n| n.parse::<u64>().ok());
        highest = highest.max(number.unwrap_or(0));
    }
    Ok(highest)
}

/// The address in the message's `From:` header (P2), if there is one (RFC 5322 §3.6.2): the
/// first mailbox, `<addr-spec>` if angle brackets are used, else the bare address.
pub fn header_from(content: &[u8]) -> Option<String> {
    /// Header fields looked at before giving up.
    const MAX_FIELDS: usize = 1000;
    let text = String::from_utf8_lossy(content);
    let mut fields: Vec<String> = Vec::new();
    for line in text.split("\r\n") {
        if line.is_empty() || fields.len() > MAX_FIELDS {
            break;
        }
        match fields.last_mut() {
            Some(last) if line.starts_with([' ', '\t']) => last.push_str(line),
            _ => fields.push(line.to_owned()),
        }
    }
    let value = fields.iter().find_map(|field| {
        let (name, value) = field.split_once(':')?;
        name.trim().eq_ignore_ascii_case("from").then_some(value)
    })?;
    let first = first_mailbox(value);
    (!first.is_empty() && first.contains('@')).then_some(first)
}

/// The first mailbox of an address list, without display name or comments.
fn first_mailbox(value: &str) -> String {
    let mut depth = 0usize;
    let mut quoted = false;
    let mut plain = String::new();
    let mut angle: Option<String> = None;
    let mut in_angle = false;
    for c in value.chars() {
        match c {
            '"' if depth == 0 && !in_angle => quoted = !quoted,
            '(' if !quoted && !in_angle => depth += 1,
            ')' if !quoted && !in_angle => depth = depth.saturating_sub(1),
            '<' if !quoted && depth == 0 => {
                in_angle = true;
                angle = Some(String::new());
            }
            '>' if in_angle => in_angle = false,
            ',' if !quoted && depth == 0 && !in_angle => break,
            _ if in_angle => angle.get_or_insert_with(String::new).push(c),
            _ if depth == 0 && !quoted => plain.push(c),
            _ => {}
        }
    }
    angle.unwrap_or(plain).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_from_forms() {
        let table = [
            (
                "From: alice@contoso.com\r\nTo: x@y\r\n\r\nbody",
                Some("alice@contoso.com"),
            ),
            (
                "Subject: x\r\nFROM: \"Doe, Jane\" <jane@contoso.com>\r\n\r\n",
                Some("jane@contoso.com"),
            ),
            (
                "From: Reports\r\n <reports@fabrikam.com>\r\n\r\n",
                Some("reports@fabrikam.com"),
            ),
            (
                "From: bob@example.org (Bob), carol@example.org\r\n\r\n",
                Some("bob@example.org"),
            ),
            ("To: x@y\r\n\r\nFrom: late@example.org\r\n", None),
            ("From: undisclosed\r\n\r\n", None),
        ];
        for (content, expected) in table {
            assert_eq!(
                header_from(content.as_bytes()).as_deref(),
                expected,
                "{content:?}"
            );
        }
    }

    #[test]
    fn source_ip_override() {
        let mut map = SourceIp::default();
        assert_eq!(
            map.seen("127.0.0.1".parse().unwrap()),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        map.add("203.0.113.5").unwrap();
        map.add("127.0.0.2=198.51.100.25").unwrap();
        assert_eq!(
            map.seen("127.0.0.1".parse().unwrap()),
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            map.seen("::ffff:127.0.0.2".parse().unwrap()),
            "198.51.100.25".parse::<IpAddr>().unwrap()
        );
        assert!(map.add("localhost").is_err());
    }

    #[test]
    fn replies_keep_code_and_enhanced_code() {
        let wire = exo_reply(&attribution::Reply::relay_access_denied(), "exosim.test").to_bytes();
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "550 5.7.64 TenantAttribution; Relay Access Denied [exosim.test]\r\n"
        );
    }
}
