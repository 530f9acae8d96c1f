//! TLS termination with rustls: certificates chosen by SNI, ALPN `h2` and `http/1.1`,
//! TLS 1.2 and 1.3 only, and certificates read again when their files change.
//!
//! A [`TlsConfig`] is built from one or more [`CertificateFiles`] (PEM: a chain, leaf
//! first, and its private key, PKCS#8, PKCS#1 or SEC1). In a handshake, the first
//! certificate valid for the name the client asked for (SNI; wildcards as in the
//! certificate) is served; without a name, or with one no certificate holds, the first
//! certificate is (the client then refuses it, as it should).
//!
//! The cryptography is rustls' `ring` provider: it is already built for the Kubernetes
//! and JWKS clients, builds quickly on a small machine, and offers the same modern
//! suites (AES-GCM and ChaCha20-Poly1305 with ECDHE) as aws-lc-rs; aws-lc-rs would add
//! FIPS and post-quantum key exchange at the price of a C build. TLS 1.2 is kept for
//! older clients, with only ECDHE and AEAD suites.
//!
//! The files are read again every [`TlsConfig::reload_interval`] by the listener that
//! serves them (the files of a mounted Kubernetes Secret change in place when
//! cert-manager renews it). New files that do not make a valid set (unreadable, not
//! PEM, a key that does not match its certificate) are logged and counted once, and the
//! certificates in use stay; handshakes never wait for a reload.
//!
//! # Client certificates
//!
//! [`TlsConfig::request_client_certificates`] makes the listener ask clients for a
//! certificate, naming the given CAs as hints, without requiring one: a client
//! without a certificate is served as before. A client that presents one must prove
//! it holds its key (the handshake's signature is checked), but the chain is not
//! verified here: each request carries it as [`PeerCertificates`], and whoever admits
//! the request verifies it against the CA that matters for it (a proxy pool, its own).
//! A certificate from an unknown CA therefore fails the request that needs it, with a
//! reason the client can read, rather than the handshake.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio_rustls::TlsAcceptor;

/// How often certificate files are read for changes, by default.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// The ALPN protocols offered, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// One certificate: a PEM chain (leaf first) and its PEM private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// Why certificates could not be loaded. At start these are fatal; on a reload, the
/// certificates in use stay and the reload is tried again when the files change.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// No certificate was given. Not retryable.
    #[error("no certificate given")]
    NoCertificate,
    /// A file could not be read. Retryable: it may be being replaced.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// A certificate file holds no PEM certificate, or a malformed one. Retryable once
    /// the file is fixed.
    #[error("{path}: no PEM certificate ({reason})")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A key file holds no PEM private key. Retryable once the file is fixed.
    #[error("{path}: no PEM private key: {source}")]
    KeyPem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: pem::Error,
    },
    /// The key is of a type rustls cannot sign with, or does not match the first
    /// certificate of its chain. Retryable once the files are fixed.
    #[error("{path}: {source}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the protocol versions. Not retryable (a build problem).
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// Server TLS for one listener; cheap to clone (the clones share the certificates).
#[derive(Clone)]
pub struct TlsConfig {
    inner: Arc<Inner>,
}

struct Inner {
    files: Vec<CertificateFiles>,
    provider: Arc<CryptoProvider>,
    resolver: Arc<Resolver>,
    /// The configuration handshakes use: replaced whole when the client certificate
    /// hints change.
    server: ArcSwap<rustls::ServerConfig>,
    /// Whether `server` asks for client certificates.
    requesting: AtomicBool,
    /// Client certificates are checked by a verifier given at construction
    /// ([`TlsConfig::with_client_verifier`]), which the hints never replace.
    fixed: bool,
    reload_interval: Duration,
    /// The bytes of the files in use, and of the last set refused: a change is what
    /// differs from both.
    seen: Mutex<(Vec<u8>, Option<Vec<u8>>)>,
}

/// What a reload did.
#[derive(Debug)]
pub(crate) enum Reload {
    /// The files are those in use, or those last refused.
    Unchanged,
    /// New certificates are in use: how many.
    Reloaded(usize),
    /// New files were refused; the certificates in use stay.
    Failed(TlsError),
}

impl TlsConfig {
    /// Loads `files`, read again every `reload_interval`.
    ///
    /// # Errors
    ///
    /// When `files` is empty or a certificate cannot be loaded ([`TlsError`]).
    pub fn new(files: Vec<CertificateFiles>, reload_interval: Duration) -> Result<Self, TlsError> {
        Self::build(files, reload_interval, None)
    }

    /// Loads `files`, read again every `reload_interval`, and asks each client for a
    /// certificate that `verifier` checks: a client it refuses (or that has none, unless
    /// the verifier allows that) fails the handshake.
    ///
    /// # Errors
    ///
    /// When `files` is empty or a certificate cannot be loaded ([`TlsError`]).
    pub fn with_client_verifier(
        files: Vec<CertificateFiles>,
        reload_interval: Duration,
        verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    ) -> Result<Self, TlsError> {
        Self::build(files, reload_interval, Some(verifier))
    }

    fn build(
        files: Vec<CertificateFiles>,
        reload_interval: Duration,
        verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    ) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (raw, certs) = load(&files, &provider)?;
        let resolver = Arc::new(Resolver {
            certs: ArcSwap::from_pointee(certs),
        });
        let fixed = verifier.is_some();
        let server = match verifier {
            None => server_config(&provider, &resolver, None, None)?,
            Some(verifier) => {
                let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
                    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                    .map_err(TlsError::Config)?
                    .with_client_cert_verifier(verifier)
                    .with_cert_resolver(resolver.clone());
                server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
                server
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                files,
                provider,
                resolver,
                server: ArcSwap::from_pointee(server),
                requesting: AtomicBool::new(fixed),
                fixed,
                reload_interval,
                seen: Mutex::new((raw, None)),
            }),
        })
    }

    /// How often the files are read for changes.
    pub fn reload_interval(&self) -> Duration {
        self.inner.reload_interval
    }

    /// The certificate files.
    pub fn files(&self) -> &[CertificateFiles] {
        &self.inner.files
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.inner.server.load_full())
    }

    /// Asks clients for a certificate from now on, naming the subjects of `cas` as
    /// the CAs the server accepts (certificates that do not parse are left out of the
    /// hints); with no CA, stops asking. Never requires one, and never verifies the
    /// chain (see the [module docs](self)). Handshakes under way finish with the
    /// settings they started with; resumed sessions carry on.
    ///
    /// # Errors
    ///
    /// [`TlsError::Config`] when rustls refuses the configuration (a build problem),
    /// or the configuration was made with [`TlsConfig::with_client_verifier`]; the
    /// settings in use stay.
    pub fn request_client_certificates(&self, cas: &[CertificateDer<'_>]) -> Result<(), TlsError> {
        if self.inner.fixed {
            return Err(TlsError::Config(rustls::Error::General(
                "client certificates are checked by the verifier given at construction".into(),
            )));
        }
        let requesting = !cas.is_empty();
        let hints = requesting.then(|| {
            let mut roots = rustls::RootCertStore::empty();
            let _ = roots.add_parsable_certificates(cas.iter().map(|c| c.clone().into_owned()));
            roots.subjects()
        });
        let old = self.inner.server.load();
        let server = server_config(
            &self.inner.provider,
            &self.inner.resolver,
            hints,
            Some(&old),
        )?;
        self.inner.server.store(Arc::new(server));
        self.inner.requesting.store(requesting, Ordering::Relaxed);
        Ok(())
    }

    /// Whether clients are asked for a certificate.
    pub fn requests_client_certificates(&self) -> bool {
        self.inner.requesting.load(Ordering::Relaxed)
    }

    /// Reads the files and puts new certificates in use when they changed and load.
    /// Reads small local files synchronously.
    pub(crate) fn reload(&self) -> Reload {
        let contents = match read_all(&self.inner.files) {
            Ok(contents) => contents,
            Err(e) => return self.refused(Vec::new(), e),
        };
        let raw = fingerprint(&contents);
        {
            let seen = self
                .inner
                .seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if seen.0 == raw || seen.1.as_ref() == Some(&raw) {
                return Reload::Unchanged;
            }
        }
        match parse(&self.inner.files, &contents, &self.inner.provider) {
            Ok(certs) => {
                let n = certs.len();
                self.inner.resolver.certs.store(Arc::new(certs));
                *self
                    .inner
                    .seen
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = (raw, None);
                Reload::Reloaded(n)
            }
            Err(e) => self.refused(raw, e),
        }
    }

    /// A refused set: reported once per distinct content (an unreadable file, each
    /// time until it can be read).
    fn refused(&self, raw: Vec<u8>, e: TlsError) -> Reload {
        let mut seen = self
            .inner
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !raw.is_empty() && seen.1.as_ref() == Some(&raw) {
            return Reload::Unchanged;
        }
        seen.1 = Some(raw);
        Reload::Failed(e)
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("files", &self.inner.files)
            .field("reload_interval", &self.inner.reload_interval)
            .finish_non_exhaustive()
    }
}

/// The server configuration: the certificates of `resolver`, TLS 1.3 and 1.2, ALPN,
/// and with `hints`, a request for an optional client certificate. The session cache
/// of `previous` is kept, so that clients resume across a change.
fn server_config(
    provider: &Arc<CryptoProvider>,
    resolver: &Arc<Resolver>,
    hints: Option<Vec<DistinguishedName>>,
    previous: Option<&rustls::ServerConfig>,
) -> Result<rustls::ServerConfig, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?;
    let builder = match hints {
        None => builder.with_no_client_auth(),
        Some(hints) => builder.with_client_cert_verifier(Arc::new(OptionalClientCert {
            hints,
            provider: provider.clone(),
        })),
    };
    let mut server = builder.with_cert_resolver(resolver.clone());
    server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    if let Some(previous) = previous {
        server.session_storage = previous.session_storage.clone();
    }
    Ok(server)
}

/// A request extension: the certificate chain (leaf first) the client presented in
/// the TLS handshake. The client proved it holds the leaf's key; the chain itself is
/// not verified (see the [module docs](self)).
///
/// Every request of a connection carries the same chain, and a small memo shared by
/// them: whoever verifies the chain can remember a verdict as an opaque token
/// ([`Self::remember`]) and skip the verification on the connection's next requests
/// ([`Self::recalls`]). Lock-free: a few atomics per connection.
#[derive(Clone, Debug)]
pub struct PeerCertificates {
    chain: Arc<[CertificateDer<'static>]>,
    memo: Arc<Memo>,
}

/// The tokens remembered on one connection, the oldest replaced first.
#[derive(Debug, Default)]
struct Memo {
    slots: [AtomicU64; MEMO_SLOTS],
    next: AtomicUsize,
}

/// How many tokens a connection remembers.
const MEMO_SLOTS: usize = 4;

impl PeerCertificates {
    /// The chain a client presented, with an empty memo.
    pub fn new(chain: impl Into<Arc<[CertificateDer<'static>]>>) -> Self {
        Self {
            chain: chain.into(),
            memo: Arc::default(),
        }
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// Whether `token` was remembered on this connection (0 never is).
    pub fn recalls(&self, token: u64) -> bool {
        token != 0
            && self
                .memo
                .slots
                .iter()
                .any(|s| s.load(Ordering::Relaxed) == token)
    }

    /// Remembers `token` for the connection's next requests, forgetting the oldest
    /// of the last few.
    pub fn remember(&self, token: u64) {
        let i = self.memo.next.fetch_add(1, Ordering::Relaxed) % MEMO_SLOTS;
        self.memo.slots[i].store(token, Ordering::Relaxed);
    }
}

/// Asks for a client certificate, requires none, checks the handshake signature of
/// one presented and leaves its chain to the requests' admission.
#[derive(Debug)]
struct OptionalClientCert {
    hints: Vec<DistinguishedName>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for OptionalClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Only that it is a certificate: the chain is checked per request, against
        // the CA of the pool the request goes to.
        webpki::EndEntityCert::try_from(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The bytes of each certificate's files.
type Contents = Vec<(Vec<u8>, Vec<u8>)>;

/// Reads every file.
fn read_all(files: &[CertificateFiles]) -> Result<Contents, TlsError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.clone(),
            source,
        })
    };
    files
        .iter()
        .map(|f| Ok((read(&f.cert)?, read(&f.key)?)))
        .collect()
}

/// The contents as one byte string (each file preceded by its length), to tell a
/// change.
fn fingerprint(contents: &Contents) -> Vec<u8> {
    let mut raw = Vec::new();
    for bytes in contents.iter().flat_map(|(c, k)| [c, k]) {
        raw.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        raw.extend_from_slice(bytes);
    }
    raw
}

/// Reads and parses every certificate: the fingerprint of what was read, and the keys.
fn load(
    files: &[CertificateFiles],
    provider: &CryptoProvider,
) -> Result<(Vec<u8>, Vec<Arc<CertifiedKey>>), TlsError> {
    if files.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let contents = read_all(files)?;
    let certs = parse(files, &contents, provider)?;
    Ok((fingerprint(&contents), certs))
}

/// Parses each certificate chain and key of `contents`, read from `files`.
fn parse(
    files: &[CertificateFiles],
    contents: &Contents,
    provider: &CryptoProvider,
) -> Result<Vec<Arc<CertifiedKey>>, TlsError> {
    let mut certs = Vec::with_capacity(files.len());
    for (f, (cert_pem, key_pem)) in files.iter().zip(contents) {
        let bad_cert = |reason: String| TlsError::Certificate {
            path: f.cert.clone(),
            reason,
        };
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad_cert(e.to_string()))?;
        let Some(leaf) = chain.first() else {
            return Err(bad_cert("the file holds none".to_owned()));
        };
        webpki::EndEntityCert::try_from(leaf).map_err(|e| bad_cert(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsError::KeyPem {
            path: f.key.clone(),
            source,
        })?;
        let certified =
            CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Key {
                path: f.key.clone(),
                source,
            })?;
        certs.push(Arc::new(certified));
    }
    Ok(certs)
}

/// Chooses the certificate of a handshake by SNI.
#[derive(Debug)]
struct Resolver {
    certs: ArcSwap<Vec<Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        let wanted = hello
            .server_name()
            .and_then(|name| ServerName::try_from(name).ok());
        if let Some(name) = wanted {
            let holds = |ck: &&Arc<CertifiedKey>| {
                ck.cert.first().is_some_and(|leaf| {
                    webpki::EndEntityCert::try_from(leaf)
                        .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
                })
            };
            if let Some(ck) = certs.iter().find(holds) {
                return Some(ck.clone());
            }
        }
        certs.first().cloned()
    }
}

/// Reads `tls`'s files every reload interval, forever, putting new certificates in use;
/// logs and counts what each change did.
pub(crate) async fn watch(
    tls: TlsConfig,
    metrics: crate::ConnectionMetrics,
    listener: Option<std::net::SocketAddr>,
) {
    let mut ticks = tokio::time::interval(tls.reload_interval());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        match tls.reload() {
            Reload::Unchanged => {}
            Reload::Reloaded(certificates) => {
                metrics.reload_ok.inc();
                tracing::info!(?listener, certificates, "TLS certificates reloaded");
            }
            Reload::Failed(e) => {
                metrics.reload_failed.inc();
                tracing::error!(?listener, error = %e, "new TLS certificate files refused; the certificates in use stay");
            }
        }
    }
}

/// The CA certificates of the PEM file `ca`.
///
/// # Errors
///
/// When the file cannot be read or holds no valid certificate.
pub fn ca_roots(ca: &std::path::Path) -> Result<rustls::RootCertStore, TlsError> {
    let bad = |reason: String| TlsError::Certificate {
        path: ca.to_owned(),
        reason,
    };
    let pem = std::fs::read(ca).map_err(|source| TlsError::Read {
        path: ca.to_owned(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("the file holds none".to_owned()));
    }
    Ok(roots)
}

/// The client side of Sluice's own TLS channels (a proxy to its controller, a
/// controller replica to its peers): the same provider and versions as the server
/// side, trusting only the CA certificates in the PEM file `ca`, offering `alpn`.
///
/// # Errors
///
/// When the file cannot be read or holds no valid certificate.
pub fn client_config(
    ca: &std::path::Path,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    let roots = ca_roots(ca)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}
