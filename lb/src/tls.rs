//! TLS on the HTTP listener (`[lb.tls]`): rustls through Pingora, TLS 1.2 and 1.3 only, HTTP/2 offered by
//! ALPN. The certificate is served through a resolver that a reload swaps, so connections already open keep
//! the certificate they began with and new handshakes get the new one at once, with nothing dropped.
//!
//! A certificate is checked before it is served: the key must belong to it, and it must be valid now. A
//! reload whose files fail a check is refused as a whole and the old certificate keeps serving.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use node::config::TlsConfig;
use pingora::listeners::tls::TlsSettings;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate and key pair is not served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no certificate.
    #[error("lb.tls.cert: {path}: {message}")]
    Cert {
        /// The file, resolved against the cluster file's directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The key file could not be read or holds no private key rustls can use.
    #[error("lb.tls.key: {path}: {message}")]
    Key {
        /// The file, resolved against the cluster file's directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The key does not belong to the certificate.
    #[error("lb.tls: the key {key} does not belong to the certificate {cert}: {message}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        message: String,
    },
    /// Not valid now: expired, or not valid yet.
    #[error("lb.tls.cert: {path}: {message}")]
    Validity {
        /// The certificate file.
        path: PathBuf,
        /// Which date fails, with the dates.
        message: String,
    },
}

/// `path` as the cluster file at `config` means it: a relative path is relative to that file's directory.
pub fn resolve(config: &Path, path: &Path) -> PathBuf {
    match config.parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// Reads and checks the certificate chain and key `cfg` names (relative to the cluster file at `config`).
/// `serving` is the certificate a running lb serves: the same leaf again is taken even when it is no longer
/// valid (with a warning), so that a reload which only drains a node is not refused because the certificate
/// expired meanwhile; a new certificate must be valid now.
///
/// # Errors
/// [`TlsError`] naming the file and what fails: unreadable, no certificate or key, a key that is not the
/// certificate's, or a new leaf certificate that is not valid now.
pub fn load(
    cfg: &TlsConfig,
    config: &Path,
    serving: Option<&CertifiedKey>,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let (cert_path, key_path) = (resolve(config, &cfg.cert), resolve(config, &cfg.key));
    let cert_err = |message: String| TlsError::Cert {
        path: cert_path.clone(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(cert_err("no PEM certificate in the file".into()));
    };
    if let Err(message) = check_validity(leaf, SystemTime::now()) {
        let same = serving
            .and_then(|s| s.cert.first())
            .is_some_and(|s| s == leaf);
        if !same {
            return Err(TlsError::Validity {
                path: cert_path.clone(),
                message,
            });
        }
        tracing::warn!(cert = %cert_path.display(), "the certificate being served is {message}: replace it");
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| TlsError::Key {
        path: key_path.clone(),
        message: e.to_string(),
    })?;
    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default().ok_or_else(|| TlsError::Key {
        path: key_path.clone(),
        message: "no TLS crypto provider installed".into(),
    })?;
    // Checks that the key is the certificate's (its public key is the leaf's).
    let certified =
        CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Mismatch {
            cert: cert_path.clone(),
            key: key_path.clone(),
            message: e.to_string(),
        })?;
    Ok(Arc::new(certified))
}

/// `Err` with the reason when `leaf` is expired or not yet valid at `now`.
fn check_validity(leaf: &CertificateDer<'_>, now: SystemTime) -> Result<(), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("the leaf certificate does not parse: {e}"))?;
    let v = cert.validity();
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if now > v.not_after.timestamp() {
        return Err(format!("expired: not valid after {}", v.not_after));
    }
    if now < v.not_before.timestamp() {
        return Err(format!("not valid yet: not valid before {}", v.not_before));
    }
    Ok(())
}

/// The certificate every new handshake gets; a reload swaps it.
pub struct Certs {
    current: ArcSwap<CertifiedKey>,
}

impl Certs {
    /// Serves `key` until [`Certs::set`].
    pub fn new(key: Arc<CertifiedKey>) -> Certs {
        Certs {
            current: ArcSwap::new(key),
        }
    }

    /// The certificate new handshakes get now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Serves `key` from the next handshake on; handshakes done keep theirs.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        self.current.store(key);
    }
}

impl fmt::Debug for Certs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Certs")
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The listener's TLS settings: `certs` for every handshake; HTTP/2 then HTTP/1.1 by ALPN when `h2`, else
/// HTTP/1.1 only.
pub fn settings(certs: Arc<Certs>, h2: bool) -> TlsSettings {
    // With a resolver set, Pingora reads no certificate files: the paths are left empty.
    let mut s = TlsSettings::intermediate("", "").expect("rustls settings without files");
    s.set_cert_resolver(certs);
    if h2 {
        s.enable_h2();
    } else {
        s.set_alpn(pingora::protocols::ALPN::H1);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_path_is_relative_to_the_cluster_file_and_an_absolute_one_is_kept() {
        let cfg = Path::new("/etc/lb/cluster.toml");
        assert_eq!(
            resolve(cfg, Path::new("certs/lb.pem")),
            Path::new("/etc/lb/certs/lb.pem")
        );
        assert_eq!(
            resolve(cfg, Path::new("/srv/lb.pem")),
            Path::new("/srv/lb.pem")
        );
    }

    #[test]
    fn missing_files_are_named_in_the_error() {
        let cfg = TlsConfig {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
            h2: true,
        };
        let e = load(&cfg, Path::new("/etc/lb/cluster.toml"), None)
            .expect_err("no files")
            .to_string();
        assert!(e.contains("lb.tls.cert: /nonexistent/cert.pem"), "{e}");
    }
}
