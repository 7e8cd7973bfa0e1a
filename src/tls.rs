//! TLS (rustls). For the public listener: TLS 1.2 and 1.3, or 1.3 only; the certificate
//! and key read from PEM files and reloaded without a restart when they change, so the
//! next handshake presents the new certificate; its expiry goes into readiness. Shared
//! with the TLS to upstreams (`proxy::transport`): a certificate and key pair from PEM,
//! and the classes a failed handshake is sorted into for the client and the metrics.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::readiness::{DependencyState, Readiness};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::CertificateError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why the certificate could not be used. Names files, never key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A TLS setting that cannot be used, naming its key.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SettingError {
    pub key: &'static str,
    pub message: String,
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The served certificate, swapped when its files change.
pub struct CertificateReloader {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// Modification times of the files last loaded.
    loaded: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
    /// `notAfter` of the leaf certificate, seconds since the epoch.
    not_after: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for CertificateReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateReloader")
            .field("cert_path", &self.cert_path)
            .finish()
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl CertificateReloader {
    /// Loads the certificate chain and key now.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let (key, not_after) = Self::read(cert_path, key_path)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: ArcSwap::from_pointee(key),
            loaded: Mutex::new((modified(cert_path), modified(key_path))),
            not_after: std::sync::atomic::AtomicI64::new(not_after),
        }))
    }

    fn read(cert_path: &Path, key_path: &Path) -> Result<(CertifiedKey, i64), TlsError> {
        let certs = std::fs::read(cert_path).map_err(|e| file_error(cert_path, e))?;
        // The key file's read errors name no content; its parse errors are kept out.
        let key = std::fs::read(key_path).map_err(|e| file_error(key_path, e))?;
        certified_key(&certs, &key).map_err(|e| match e {
            PemError::Certificate(why) => file_error(cert_path, why),
            PemError::Key(why) => file_error(key_path, why),
        })
    }

    /// `notAfter` of the certificate being served (seconds since the epoch).
    pub fn not_after(&self) -> i64 {
        self.not_after.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reloads if either file changed; a broken new pair keeps the old one serving.
    pub fn reload_if_changed(&self) -> bool {
        let now = (modified(&self.cert_path), modified(&self.key_path));
        {
            let loaded = self.loaded.lock().expect("reload lock");
            if *loaded == now {
                return false;
            }
        }
        match Self::read(&self.cert_path, &self.key_path) {
            Ok((key, not_after)) => {
                self.current.store(Arc::new(key));
                self.not_after
                    .store(not_after, std::sync::atomic::Ordering::Relaxed);
                *self.loaded.lock().expect("reload lock") = now;
                metrics::counter!("intercom_tls_certificate_reloads_total", "outcome" => "loaded")
                    .increment(1);
                tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                metrics::counter!("intercom_tls_certificate_reloads_total", "outcome" => "error")
                    .increment(1);
                tracing::warn!(error = %e, "TLS certificate reload failed; serving the previous one");
                false
            }
        }
    }

    /// Checks the files every `interval`; `report` hears the served certificate's
    /// `notAfter` each time.
    pub fn spawn_watch(
        self: &Arc<Self>,
        interval: Duration,
        report: impl Fn(i64) + Send + 'static,
    ) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(me) = me.upgrade() else { return };
                me.reload_if_changed();
                report(me.not_after());
            }
        });
    }
}

/// Which half of a certificate and key pair is unusable, and why (never its content).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemError {
    Certificate(&'static str),
    Key(&'static str),
}

/// The CAs of a PEM bundle file (`ca_file`), and its bytes: every certificate in it must
/// be usable as a trust anchor, so a wrong file is refused at start.
pub fn ca_bundle_file(path: &Path) -> Result<(rustls::RootCertStore, Vec<u8>), String> {
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|_| "is not valid PEM".to_string())?;
    if certs.is_empty() {
        return Err("holds no certificate".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    let (_, unusable) = roots.add_parsable_certificates(certs);
    if unusable > 0 {
        return Err(format!(
            "{unusable} certificate(s) could not be used as a CA"
        ));
    }
    Ok((roots, pem))
}

/// A certificate chain and its key, from PEM, checked to belong together; with the
/// leaf's `notAfter` (seconds since the epoch).
pub fn certified_key(certs_pem: &[u8], key_pem: &[u8]) -> Result<(CertifiedKey, i64), PemError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(certs_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| PemError::Certificate("is not valid PEM"))?;
    let leaf = certs
        .first()
        .ok_or(PemError::Certificate("holds no certificate"))?;
    let not_after = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|_| PemError::Certificate("is not a valid X.509 certificate"))?
        .1
        .validity()
        .not_after
        .timestamp();
    // A key's parse errors could quote it: keep them out.
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| PemError::Key("holds no usable PEM private key"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|_| PemError::Key("holds a key type rustls cannot sign with"))?;
    let certified = CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .map_err(|_| PemError::Key("does not match the certificate"))?;
    Ok((certified, not_after))
}

impl ResolvesServerCert for CertificateReloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The rustls configuration: TLS 1.2 and 1.3 (or 1.3 only). ALPN offers HTTP/2 and
/// HTTP/1.1: actix-web puts both in front of the list it is given.
pub fn server_config(
    certificates: Arc<CertificateReloader>,
    tls13_only: bool,
) -> Result<rustls::ServerConfig, TlsError> {
    let versions: &[&rustls::SupportedProtocolVersion] = if tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS12, &rustls::version::TLS13]
    };
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .map_err(|e| TlsError::Config(e.to_string()))?
    .with_no_client_auth()
    .with_cert_resolver(certificates);
    Ok(config)
}

/// The TLS configuration, with the certificate watched for changes and its expiry in
/// readiness.
pub fn configure(
    t: &crate::settings::TlsSettings,
    readiness: &Arc<Readiness>,
) -> Result<rustls::ServerConfig, SettingError> {
    let certificates =
        CertificateReloader::load(&t.cert_file, &t.key_file).map_err(|e| match e {
            TlsError::File { path, reason } => SettingError {
                key: if Path::new(&path) == Path::new(&t.key_file) {
                    "server.tls.key_file"
                } else {
                    "server.tls.cert_file"
                },
                message: format!("{path}: {reason}"),
            },
            TlsError::Config(why) => SettingError {
                key: "server.tls",
                message: why,
            },
        })?;
    let report = {
        let readiness = Arc::downgrade(readiness);
        move |not_after: i64| {
            metrics::gauge!("intercom_tls_certificate_expiry_timestamp_seconds")
                .set(not_after as f64);
            if let Some(readiness) = readiness.upgrade() {
                let expires = time::OffsetDateTime::from_unix_timestamp(not_after)
                    .ok()
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_default();
                let left = not_after - time::OffsetDateTime::now_utc().unix_timestamp();
                let state = if left <= 0 {
                    DependencyState::Down
                } else if left < 14 * 24 * 3600 {
                    DependencyState::Degraded
                } else {
                    DependencyState::Ok
                };
                readiness.report(
                    "tls_certificate",
                    state,
                    false,
                    Some(format!("expires {expires}")),
                );
            }
        }
    };
    report(certificates.not_after());
    certificates.spawn_watch(t.reload_interval, report);
    server_config(certificates, t.tls13_only).map_err(|e| SettingError {
        key: "server.tls",
        message: e.to_string(),
    })
}

/// Why a TLS connection to an upstream failed, as the client and the metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The chain does not lead to a trusted CA (or its signature is bad).
    UntrustedCertificate,
    /// The certificate expired, or is not valid yet.
    ExpiredCertificate,
    /// The certificate does not name the upstream's host.
    WrongHostName,
    /// The upstream refused Intercom's client certificate (or wanted one).
    ClientCertificateRefused,
    /// Anything else in the handshake: no common version or cipher, a bad message.
    Handshake,
}

impl TlsFailure {
    /// A stable name, for the problem's detail and the access log.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsFailure::UntrustedCertificate => "untrusted certificate",
            TlsFailure::ExpiredCertificate => "expired certificate",
            TlsFailure::WrongHostName => "certificate for another host name",
            TlsFailure::ClientCertificateRefused => "client certificate refused",
            TlsFailure::Handshake => "handshake failed",
        }
    }

    /// The TLS failure inside an I/O error (rustls errors reach awc wrapped in one), if
    /// it is one.
    pub fn find(error: &std::io::Error) -> Option<Self> {
        let mut next: Option<&(dyn std::error::Error + 'static)> = error.get_ref().map(|e| e as _);
        while let Some(e) = next {
            if let Some(tls) = e.downcast_ref::<rustls::Error>() {
                return Some(Self::of(tls));
            }
            // `io::Error::source` skips the error it wraps: look inside by hand.
            next = match e.downcast_ref::<std::io::Error>() {
                Some(io) => io.get_ref().map(|e| e as _),
                None => e.source(),
            };
        }
        None
    }

    fn of(error: &rustls::Error) -> Self {
        use rustls::AlertDescription as Alert;
        match error {
            rustls::Error::InvalidCertificate(why) => match why {
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => TlsFailure::ExpiredCertificate,
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => TlsFailure::WrongHostName,
                _ => TlsFailure::UntrustedCertificate,
            },
            rustls::Error::AlertReceived(
                Alert::BadCertificate
                | Alert::CertificateRequired
                | Alert::UnknownCA
                | Alert::CertificateExpired
                | Alert::CertificateRevoked
                | Alert::CertificateUnknown
                | Alert::AccessDenied,
            ) => TlsFailure::ClientCertificateRefused,
            _ => TlsFailure::Handshake,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_are_classed_from_the_error_chain() {
        let wrapped = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert_eq!(
            TlsFailure::find(&wrapped),
            Some(TlsFailure::UntrustedCertificate)
        );
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let expired = io(rustls::Error::InvalidCertificate(CertificateError::Expired));
        assert_eq!(
            TlsFailure::find(&expired),
            Some(TlsFailure::ExpiredCertificate)
        );
        let refused = std::io::Error::other(io(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRequired,
        )));
        assert_eq!(
            TlsFailure::find(&refused),
            Some(TlsFailure::ClientCertificateRefused)
        );
        let plain = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(TlsFailure::find(&plain), None);
    }
}
