//! The agent's built-in TLS (rustls, ring provider): the server's certificate and key, and,
//! with `--client-ca`, client certificates verified during the handshake — a client without
//! one signed by that CA never gets to send a request. Every file problem is one sentence.

use std::{io::ErrorKind, path::Path, sync::Arc};

use anyhow::{Result, anyhow, bail};
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use tokio_rustls::TlsAcceptor;

/// PEM files larger than this are not certificates or keys.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// Reads a PEM file, naming it by `what` in the error.
fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    let name = path.display();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => anyhow!("the {what} {name} does not exist"),
        ErrorKind::PermissionDenied => anyhow!("cannot read the {what} {name}: permission denied"),
        _ => anyhow!("cannot read the {what} {name}: {e}"),
    })?;
    if !meta.is_file() {
        bail!("the {what} {name} is not a file");
    }
    if meta.len() > MAX_PEM_BYTES {
        bail!("the {what} {name} is too large to be a PEM file");
    }
    std::fs::read(path).map_err(|e| match e.kind() {
        ErrorKind::PermissionDenied => anyhow!("cannot read the {what} {name}: permission denied"),
        _ => anyhow!("cannot read the {what} {name}: {e}"),
    })
}

/// Every certificate of a PEM file (at least one).
fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = read_pem(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("the {what} {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        bail!(
            "the {what} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(certs)
}

/// The first private key of a PEM file.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let bytes = read_pem(path, "TLS key")?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => anyhow!(
            "the TLS key {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            path.display()
        ),
        e => anyhow!("the TLS key {} is not valid PEM: {e}", path.display()),
    })
}

/// What is wrong with a certificate, without rustls' words for a peer's.
fn reason(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => format!("{c:?}"),
        e => e.to_string(),
    }
}

/// The TLS acceptor for `--tls-cert`, `--tls-key` and, when given, `--client-ca`.
pub fn acceptor(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsAcceptor> {
    let chain = certificates(cert, "TLS certificate")?;
    let key_der = private_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("cannot set up TLS: {e}"))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certificates(ca, "client CA file")? {
                roots.add(c).map_err(|e| {
                    anyhow!(
                        "the client CA file {} holds a certificate that is not valid X.509 ({})",
                        ca.display(),
                        reason(&e)
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| anyhow!("cannot use the client CA file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => anyhow!(
                "the TLS key {} does not belong to the certificate {}",
                key.display(),
                cert.display()
            ),
            rustls::Error::InvalidCertificate(e) => anyhow!(
                "the TLS certificate {} is not valid X.509 ({e:?})",
                cert.display()
            ),
            e => anyhow!(
                "cannot use the TLS certificate {} with the key {}: {e}",
                cert.display(),
                key.display()
            ),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
