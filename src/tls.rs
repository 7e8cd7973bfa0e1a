//! TLS for the public listener (rustls): TLS 1.2 and 1.3, or 1.3 only; the certificate
//! and key read from PEM files and reloaded without a restart when they change, so the
//! next handshake presents the new certificate. The certificate's expiry goes into
//! readiness.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::readiness::{DependencyState, Readiness};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
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
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
            .map_err(|e| file_error(cert_path, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| file_error(cert_path, e))?;
        let leaf = certs
            .first()
            .ok_or_else(|| file_error(cert_path, "holds no certificate"))?;
        let not_after = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|_| file_error(cert_path, "is not a valid X.509 certificate"))?
            .1
            .validity()
            .not_after
            .timestamp();
        // The key file's parse errors could quote it: keep them out.
        let key = PrivateKeyDer::from_pem_file(key_path)
            .map_err(|_| file_error(key_path, "holds no usable PEM private key"))?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|_| file_error(key_path, "holds a key type rustls cannot sign with"))?;
        let certified = CertifiedKey::new(certs, signing);
        certified
            .keys_match()
            .map_err(|_| file_error(key_path, "does not match the certificate"))?;
        Ok((certified, not_after))
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

impl ResolvesServerCert for CertificateReloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The rustls configuration: TLS 1.2 and 1.3 (or 1.3 only), HTTP/1.1.
pub fn server_config(
    certificates: Arc<CertificateReloader>,
    tls13_only: bool,
) -> Result<rustls::ServerConfig, TlsError> {
    let versions: &[&rustls::SupportedProtocolVersion] = if tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS12, &rustls::version::TLS13]
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .map_err(|e| TlsError::Config(e.to_string()))?
    .with_no_client_auth()
    .with_cert_resolver(certificates);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
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
