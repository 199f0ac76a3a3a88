//! TLS set-up, and the only module that loads key material: the inbound STARTTLS server
//! configuration and the client identities presented to upstreams. Keys never leave the
//! rustls configurations built here and are never logged (`ClientIdentity`'s `Debug` shows only
//! the certificate names).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate, key or CA file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file holds no PEM certificate.
    #[error("{}: no PEM certificate found", .0.display())]
    NoCertificate(PathBuf),
    /// The file could not be read or parsed as PEM.
    #[error("{}: {detail}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// rustls refused the certificate/key pair.
    #[error("certificate {} with key {}: {detail}", cert.display(), key.display())]
    Rejected {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        detail: String,
    },
}

/// The crypto provider used everywhere (ring; aws-lc is never pulled in).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// The STARTTLS server configuration for the listener (TLS 1.2 and 1.3, no client certificate
/// requested).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let rejected = |e: rustls::Error| TlsError::Rejected {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        detail: e.to_string(),
    };
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(rejected)?
        .with_no_client_auth()
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(rejected)?;
    Ok(Arc::new(config))
}

/// Reads the extra trusted CA certificates of an upstream.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    load_certs(path)
}

/// A client certificate chain (leaf first, then intermediates, as EXO needs them) and its key.
#[derive(Clone)]
pub struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    names: Vec<String>,
}

impl ClientIdentity {
    /// Loads and checks a chain and key: rustls must accept them as a pair.
    pub fn load(cert: &Path, key: &Path) -> Result<ClientIdentity, TlsError> {
        let chain = load_certs(cert)?;
        let private_key = load_key(key)?;
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                b.with_root_certificates(rustls::RootCertStore::empty())
                    .with_client_auth_cert(chain.clone(), private_key.clone_key())
            })
            .map_err(|e| TlsError::Rejected {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                detail: e.to_string(),
            })?;
        let names = chain.first().map(certificate_names).unwrap_or_default();
        Ok(ClientIdentity {
            chain,
            key: Arc::new(private_key),
            names,
        })
    }

    /// The leaf certificate's subject CN followed by its DNS SANs.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// A copy of the private key for building a rustls configuration.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("names", &self.names)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Subject common name(s) and DNS subject alternative names of a certificate.
pub fn certificate_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = parsed
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push((*dns).to_string());
            }
        }
    }
    names
}

/// The TLS client configuration for an upstream: the system's trust roots plus its `ca_file`,
/// TLS 1.2 or 1.3 only, presenting its client certificate chain when one is configured.
pub fn upstream_client_config(
    upstream: &crate::config::Upstream,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(ca_file) = &upstream.ca_file {
        for cert in load_ca_file(ca_file)? {
            roots.add(cert).map_err(|e| TlsError::Pem {
                path: ca_file.clone(),
                detail: e.to_string(),
            })?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let config = match &upstream.client_identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.chain().to_vec(), identity.key())
            .map_err(|e| TlsError::Config(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
