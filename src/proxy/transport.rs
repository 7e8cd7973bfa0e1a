//! How a route reaches its upstreams: plain HTTP/1.1, TLS (the system's roots or the
//! route's CA bundle, the host name checked, TLS 1.2 or 1.3, HTTP/2 by ALPN, a client
//! certificate from the secret store for mTLS), or h2c.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, ResolvesClientCert, Resumption,
    Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::sign::CertifiedKey;
use rustls::NamedGroup;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use rustls_pki_types::ServerName;

use crate::secret::Secret;
use crate::secrets::registry::{SecretCell, SecretRegistry};
use crate::settings::{RouteSettings, Settings, SettingsError, UpstreamProtocol};
use crate::tls::PemError;

/// The connection a route's upstreams get.
#[derive(Clone, Default)]
pub enum Transport {
    /// HTTP/1.1 over TCP (`http://`).
    #[default]
    Plain,
    /// TLS (`https://`), every certificate verified.
    Tls(Arc<ClientConfig>),
    /// HTTP/2 with prior knowledge over TCP (`http://` with `upstream_protocol = "h2c"`).
    H2c,
}

impl Transport {
    /// The scheme of the URLs handed to awc. awc sends `https` URLs through its TLS
    /// pool, which is h2c when the connector has no TLS config (`dangerous-h2c`): so an
    /// `https` URL goes only to a connector with TLS or to an h2c route, never in clear
    /// by mistake.
    pub fn scheme(&self) -> &'static str {
        match self {
            Transport::Plain => "http",
            Transport::Tls(_) | Transport::H2c => "https",
        }
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Plain => "Plain",
            Transport::Tls(_) => "Tls",
            Transport::H2c => "H2c",
        })
    }
}

/// The transport of every route (`result[i]` for `settings.routes[i]`); a CA bundle or a
/// client certificate that cannot be used stops start-up, naming its key.
pub fn for_routes(
    settings: &Settings,
    secrets: &SecretRegistry,
) -> Result<Vec<Transport>, SettingsError> {
    settings
        .routes
        .iter()
        .enumerate()
        .map(|(i, route)| for_route(i, route, secrets))
        .collect()
}

fn for_route(
    i: usize,
    route: &RouteSettings,
    secrets: &SecretRegistry,
) -> Result<Transport, SettingsError> {
    let key = |field: &str| format!("routes[{i}].{field}");
    // Validation made a route's instances all http or all https.
    if route.upstreams.iter().all(|u| u.url.scheme() == "http") {
        return Ok(match route.upstream_protocol {
            UpstreamProtocol::H2c => Transport::H2c,
            _ => Transport::Plain,
        });
    }
    let tls = route.upstream_tls.clone().unwrap_or_default();
    let roots = match &tls.ca_file {
        Some(path) => crate::tls::ca_bundle_file(path)
            .map(|(roots, _)| roots)
            .map_err(|why| {
                SettingsError::new(
                    key("upstream_tls.ca_file"),
                    format!("{}: {why}", path.display()),
                )
            })?,
        None => system_roots().map_err(|why| SettingsError::new(key("upstreams"), why))?,
    };
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
            .map_err(|e| SettingsError::new(key("upstream_tls"), e.to_string()))?
            .with_root_certificates(roots);
    let mut config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(private)) => {
            let unresolved = |field: &str| {
                SettingsError::new(key(field), "the secret was not resolved at start (a secret reference new since then takes a restart)")
            };
            let cert = secrets
                .stored(Some(cert))
                .ok_or_else(|| unresolved("upstream_tls.client_cert"))?;
            let private = secrets
                .stored(Some(private))
                .ok_or_else(|| unresolved("upstream_tls.client_key"))?;
            let certificate =
                ClientCertificate::load(&route.name, cert, private).map_err(|e| match e {
                    PemError::Certificate(why) => {
                        SettingsError::new(key("upstream_tls.client_cert"), why)
                    }
                    PemError::Key(why) => SettingsError::new(key("upstream_tls.client_key"), why),
                })?;
            let certificate = Arc::new(certificate);
            let mut config = builder.with_client_cert_resolver(certificate.clone());
            config.resumption = Resumption::store(certificate);
            config
        }
        _ => builder.with_no_client_auth(),
    };
    // A WebSocket upgrade exists only in HTTP/1.1.
    config.alpn_protocols = match route.upstream_protocol {
        UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
        _ if route.websocket => vec![b"http/1.1".to_vec()],
        _ => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    Ok(Transport::Tls(Arc::new(config)))
}

/// The CAs of a PEM bundle.
/// The system's CA certificates (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured), read
/// once per process.
fn system_roots() -> Result<RootCertStore, String> {
    static ROOTS: OnceLock<Result<RootCertStore, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                Err("https:// upstreams need CA certificates: the system has none; set upstream_tls.ca_file".into())
            } else {
                Ok(roots)
            }
        })
        .clone()
}

/// The pair last parsed and the values it came from.
struct Loaded {
    cert: Secret,
    key: Secret,
    certified: Arc<CertifiedKey>,
}

/// How many TLS sessions a route keeps for resumption (rustls' default).
const SESSIONS: usize = 256;

/// A route's client certificate, read from two cells of the secret registry, and the
/// TLS sessions made with it. A rotated pair is picked up when the next connection
/// starts; a pair that does not match yet (the certificate rotated, its key not) keeps
/// the previous one in use. A resumed session keeps the identity it began with, so a
/// rotation forgets the sessions: the next connection makes a full handshake and
/// presents the new certificate.
pub struct ClientCertificate {
    route: String,
    cert: Arc<SecretCell>,
    key: Arc<SecretCell>,
    loaded: ArcSwap<Loaded>,
    sessions: ArcSwap<ClientSessionMemoryCache>,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("cert", &self.cert.name)
            .finish()
    }
}

impl ClientCertificate {
    fn load(route: &str, cert: Arc<SecretCell>, key: Arc<SecretCell>) -> Result<Self, PemError> {
        let (cert_value, key_value) = (cert.current(), key.current());
        let (certified, not_after) = crate::tls::certified_key(
            cert_value.expose().as_bytes(),
            key_value.expose().as_bytes(),
        )?;
        report_expiry(route, not_after);
        Ok(Self {
            route: route.to_string(),
            cert,
            key,
            loaded: ArcSwap::from_pointee(Loaded {
                cert: cert_value,
                key: key_value,
                certified: Arc::new(certified),
            }),
            sessions: ArcSwap::from_pointee(ClientSessionMemoryCache::new(SESSIONS)),
        })
    }

    /// Takes up a rotated pair from the store, if there is one and it can be used.
    fn refresh(&self) {
        let loaded = self.loaded.load();
        let (cert, key) = (self.cert.current(), self.key.current());
        if cert.expose() == loaded.cert.expose() && key.expose() == loaded.key.expose() {
            return;
        }
        let parsed = crate::tls::certified_key(cert.expose().as_bytes(), key.expose().as_bytes());
        let certified = match parsed {
            Ok((certified, not_after)) => {
                report_expiry(&self.route, not_after);
                metrics::counter!("intercom_upstream_client_certificate_reloads_total", "route" => self.route.clone(), "outcome" => "loaded").increment(1);
                tracing::info!(route = %self.route, cert = %self.cert.name, "upstream client certificate rotated");
                self.sessions
                    .store(Arc::new(ClientSessionMemoryCache::new(SESSIONS)));
                Arc::new(certified)
            }
            Err(why) => {
                metrics::counter!("intercom_upstream_client_certificate_reloads_total", "route" => self.route.clone(), "outcome" => "error").increment(1);
                tracing::warn!(route = %self.route, cert = %self.cert.name, error = ?why, "the rotated client certificate cannot be used yet; presenting the previous one");
                loaded.certified.clone()
            }
        };
        // Remember the values seen, so a pair that failed is not parsed at every handshake.
        self.loaded.store(Arc::new(Loaded {
            cert,
            key,
            certified,
        }));
    }

    /// The sessions to resume from, after taking up a rotation: asked when a connection
    /// starts, before the certificate is.
    fn sessions(&self) -> Arc<ClientSessionMemoryCache> {
        self.refresh();
        self.sessions.load_full()
    }
}

fn report_expiry(route: &str, not_after: i64) {
    metrics::gauge!("intercom_upstream_client_certificate_expiry_timestamp_seconds", "route" => route.to_string())
        .set(not_after as f64);
}

impl ResolvesClientCert for ClientCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.refresh();
        Some(self.loaded.load().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Delegates to the sessions of the current certificate; the lookups that start a
/// connection take up a rotation first.
impl ClientSessionStore for ClientCertificate {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.sessions.load().set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.sessions.load().kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.sessions.load().set_tls12_session(server_name, value)
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.sessions().tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.sessions.load().remove_tls12_session(server_name)
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.sessions.load().insert_tls13_ticket(server_name, value)
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.sessions().take_tls13_ticket(server_name)
    }
}
