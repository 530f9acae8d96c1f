//! JSON Web Key Sets: the public keys tokens are verified with, inline or fetched.
//!
//! A [`KeySet`] is parsed once from a JWKS document. Each key carries the one
//! algorithm it verifies, decided by the key itself: `kty: RSA` is RS256 unless its
//! `alg` names another RSA algorithm (RS384/512, PS256/384/512); `kty: EC` is ES256 on
//! `P-256` and ES384 on `P-384`; `kty: OKP` with `crv: Ed25519` is EdDSA. A key whose
//! `alg` contradicts its type is skipped, as are encryption keys (`use: enc`), RSA
//! moduli under 2048 bits, unknown key types and **symmetric keys (`kty: oct`)**: an
//! HMAC secret is only ever the one explicitly configured on the verifier, never a key
//! that arrives with a key set.
//!
//! A [`JwksSource`] is either a fixed set or a [`RemoteJwks`] fetched over HTTP:
//!
//! * the set is fetched on first use and cached; once `refresh_interval` has passed,
//!   the next caller refreshes it (only one fetch at a time; the others keep using the
//!   cached set meanwhile);
//! * a token with an unknown `kid` triggers a refresh, at most once per
//!   `min_refresh_interval`, which also spaces out retries after a failed fetch;
//! * every fetch is bounded in time (`fetch_timeout`, connect to last byte) and size
//!   (`max_bytes`); a failed fetch or an invalid document keeps the last good set.
//!
//! `http://` and `https://` URLs are fetched; TLS goes through rustls and is verified
//! against the system's root certificates.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tokio::time::Instant;

/// At most this many keys in one set.
pub const MAX_KEYS: usize = 64;

/// The smallest RSA modulus accepted, in bytes (2048 bits).
pub const MIN_RSA_MODULUS_BYTES: usize = 256;

/// Why a key set could not be parsed or fetched. Parse errors are configuration errors
/// for an inline set; for a remote set every case is retryable later, and the last
/// good set stays in use meanwhile.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The document is not a JWKS (`{"keys": [...]}`) JSON object.
    #[error("the key set is not a JWKS document: {0}")]
    Json(#[from] serde_json::Error),
    /// More than [`MAX_KEYS`] keys.
    #[error("the key set has more than {MAX_KEYS} keys")]
    TooManyKeys,
    /// Two usable keys share a `kid`, so a token could not say which it means.
    #[error("the key set has two keys with kid {kid:?}")]
    DuplicateKid {
        /// The repeated key id.
        kid: String,
    },
    /// No key in the document is usable for verification (see the module docs).
    #[error("the key set has no usable signature key")]
    NoUsableKeys,
    /// The URL is not `http(s)://host[:port]/path`. Not retryable.
    #[error("cannot fetch a key set from {url}: only http:// and https:// URLs are supported")]
    UnsupportedUrl {
        /// The URL as configured.
        url: String,
    },
    /// Connecting or sending the request failed.
    #[error("fetching the key set failed")]
    Request(#[source] hyper_util::client::legacy::Error),
    /// The server answered with a non-2xx status.
    #[error("the key set server answered {status}")]
    Status {
        /// The status code.
        status: u16,
    },
    /// Reading the response body failed.
    #[error("reading the key set failed")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The response is larger than the configured bound.
    #[error("the key set response exceeds {max_bytes} bytes")]
    TooLarge {
        /// The configured bound.
        max_bytes: usize,
    },
    /// The fetch did not complete within the configured time.
    #[error("fetching the key set took longer than {timeout_ms} ms")]
    Timeout {
        /// The configured bound.
        timeout_ms: u64,
    },
    /// No set was ever loaded and a fetch was tried too recently to try again.
    #[error("no key set is loaded yet")]
    NotLoaded,
}

/// One verification key, with the algorithm it is for.
#[derive(Clone)]
pub struct VerifyKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    /// The key id, if the JWK has one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The one algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The key material.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }
}

/// A parsed, immutable key set.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: Vec<VerifyKey>,
    skipped: usize,
}

/// The fields of a JWK this module reads.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

fn b64(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// The key a JWK describes, `None` when it is not usable (see the module docs).
fn parse_jwk(jwk: RawJwk) -> Option<VerifyKey> {
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let alg = jwk.alg.as_deref();
    let (alg, key) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => {
            let alg = match alg {
                None => Algorithm::RS256,
                Some(a) => match a.parse().ok()? {
                    a @ (Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512) => a,
                    _ => return None,
                },
            };
            let n = b64(jwk.n.as_deref()?)?;
            let e = b64(jwk.e.as_deref()?)?;
            let significant = n.iter().skip_while(|&&b| b == 0).count();
            if significant < MIN_RSA_MODULUS_BYTES || e.is_empty() {
                return None;
            }
            (alg, DecodingKey::from_rsa_raw_components(&n, &e))
        }
        ("EC", Some(crv @ ("P-256" | "P-384"))) => {
            let (expected, len) = match crv {
                "P-256" => (Algorithm::ES256, 32),
                _ => (Algorithm::ES384, 48),
            };
            if alg.is_some_and(|a| a != format!("{expected:?}")) {
                return None;
            }
            let x = b64(jwk.x.as_deref()?)?;
            let y = b64(jwk.y.as_deref()?)?;
            if x.len() != len || y.len() != len {
                return None;
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (expected, DecodingKey::from_ec_der(&point))
        }
        ("OKP", Some("Ed25519")) => {
            if alg.is_some_and(|a| a != "EdDSA" && a != "Ed25519") {
                return None;
            }
            let x = b64(jwk.x.as_deref()?)?;
            if x.len() != 32 {
                return None;
            }
            (Algorithm::EdDSA, DecodingKey::from_ed_der(&x))
        }
        // `oct` (HMAC) keys never come from a key set; anything else is unknown.
        _ => return None,
    };
    Some(VerifyKey {
        kid: jwk.kid,
        alg,
        key,
    })
}

impl KeySet {
    /// A set with no keys: for a verifier that only has an HMAC secret.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Parses a JWKS document. Unusable keys are skipped and counted ([`Self::skipped`]).
    ///
    /// # Errors
    ///
    /// [`JwksError::Json`], [`JwksError::TooManyKeys`], [`JwksError::DuplicateKid`] or
    /// [`JwksError::NoUsableKeys`].
    pub fn from_json(document: &[u8]) -> Result<Self, JwksError> {
        let raw: RawJwks = serde_json::from_slice(document)?;
        if raw.keys.len() > MAX_KEYS {
            return Err(JwksError::TooManyKeys);
        }
        let mut set = KeySet::default();
        let mut kids = HashSet::new();
        for value in raw.keys {
            let key = serde_json::from_value::<RawJwk>(value)
                .ok()
                .and_then(parse_jwk);
            let Some(key) = key else {
                set.skipped += 1;
                continue;
            };
            if let Some(kid) = &key.kid
                && !kids.insert(kid.clone())
            {
                return Err(JwksError::DuplicateKid { kid: kid.clone() });
            }
            set.keys.push(key);
        }
        if set.keys.is_empty() {
            return Err(JwksError::NoUsableKeys);
        }
        Ok(set)
    }

    /// The key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<&VerifyKey> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }

    /// All keys, in document order.
    pub fn keys(&self) -> &[VerifyKey] {
        &self.keys
    }

    /// How many usable keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no usable key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many keys of the document were skipped as unusable.
    pub fn skipped(&self) -> usize {
        self.skipped
    }
}

/// Where a key set is fetched from, and how often.
#[derive(Clone, Debug)]
pub struct RemoteConfig {
    /// The `http://` URL of the JWKS document.
    pub url: Uri,
    /// How long a fetched set is used before it is fetched again.
    pub refresh_interval: Duration,
    /// The least time between two fetch attempts triggered by an unknown `kid` or
    /// retrying after a failure.
    pub min_refresh_interval: Duration,
    /// The bound on one fetch, from connecting to the last byte.
    pub fetch_timeout: Duration,
    /// The bound on the response body.
    pub max_bytes: usize,
}

impl RemoteConfig {
    /// A configuration for `url` with the defaults: refresh every 5 minutes, at most
    /// one extra fetch per 10 s, 5 s per fetch, 64 KiB per document.
    pub fn new(url: Uri) -> Self {
        Self {
            url,
            refresh_interval: Duration::from_secs(300),
            min_refresh_interval: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(5),
            max_bytes: 64 * 1024,
        }
    }
}

/// The last good set and when it was fetched.
#[derive(Debug)]
struct Loaded {
    keys: Arc<KeySet>,
    fetched_at: Instant,
}

/// A key set fetched over HTTP, cached and refreshed (see the [module docs](self)).
///
/// Reading the cached set takes no lock; a mutex is only touched when a fetch is due.
#[derive(Debug)]
pub struct RemoteJwks {
    config: RemoteConfig,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    loaded: ArcSwapOption<Loaded>,
    last_attempt: Mutex<Option<Instant>>,
    fetching: tokio::sync::Mutex<()>,
}

impl RemoteJwks {
    /// A source for `config`; nothing is fetched until the first use.
    ///
    /// # Errors
    ///
    /// [`JwksError::UnsupportedUrl`] unless the URL is `http://` or `https://` with a
    /// host, or when no trusted root certificate can be loaded for `https://`.
    pub fn new(config: RemoteConfig) -> Result<Self, JwksError> {
        let unsupported = || JwksError::UnsupportedUrl {
            url: config.url.to_string(),
        };
        if !matches!(config.url.scheme_str(), Some("http" | "https")) || config.url.host().is_none()
        {
            return Err(unsupported());
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.fetch_timeout));
        connector.enforce_http(false);
        // TLS verified against the system's root certificates (the ca-certificates
        // package in the image).
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| {
                tracing::error!(error = %e, "no root certificates for https JWKS URLs");
                unsupported()
            })?
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(Self {
            config,
            client,
            loaded: ArcSwapOption::empty(),
            last_attempt: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The cached set, if one was ever loaded, however old.
    pub fn cached(&self) -> Option<Arc<KeySet>> {
        self.loaded.load().as_ref().map(|l| l.keys.clone())
    }

    /// The current set: the cached one while fresh, else fetched (see the module docs).
    ///
    /// # Errors
    ///
    /// Only when no set was ever loaded: the fetch error, or [`JwksError::NotLoaded`]
    /// while a retry is rate-limited.
    ///
    /// # Cancel safety
    ///
    /// Cancelling abandons a fetch in progress; the cache is left as it was.
    pub async fn keys(&self) -> Result<Arc<KeySet>, JwksError> {
        if let Some(loaded) = self.loaded.load_full() {
            if loaded.fetched_at.elapsed() < self.config.refresh_interval {
                return Ok(loaded.keys.clone());
            }
            // Stale: one caller refreshes, the others go on with the last good set.
            if let Ok(_guard) = self.fetching.try_lock()
                && self.attempt_allowed()
                && let Ok(keys) = self.fetch_and_store().await
            {
                return Ok(keys);
            }
            return Ok(loaded.keys.clone());
        }
        let _guard = self.fetching.lock().await;
        if let Some(keys) = self.cached() {
            return Ok(keys);
        }
        if !self.attempt_allowed() {
            return Err(JwksError::NotLoaded);
        }
        self.fetch_and_store().await
    }

    /// Refreshes because a token named a `kid` missing from `seen` (the set it was
    /// checked against). Returns a newer set when there is one: fetched now, or by
    /// another caller meanwhile; `None` when the refresh is rate-limited or fails.
    ///
    /// # Cancel safety
    ///
    /// As [`Self::keys`].
    pub async fn refresh_for_unknown_kid(&self, seen: &Arc<KeySet>) -> Option<Arc<KeySet>> {
        let _guard = self.fetching.lock().await;
        if let Some(current) = self.cached()
            && !Arc::ptr_eq(&current, seen)
        {
            return Some(current);
        }
        if !self.attempt_allowed() {
            return None;
        }
        self.fetch_and_store().await.ok()
    }

    /// Fetches now, whatever the intervals say, and caches the result.
    ///
    /// # Errors
    ///
    /// Any fetch or parse error; the cached set is then unchanged.
    pub async fn refresh(&self) -> Result<Arc<KeySet>, JwksError> {
        let _guard = self.fetching.lock().await;
        self.record_attempt();
        self.fetch_and_store().await
    }

    /// Records an attempt now if the last one is at least `min_refresh_interval` ago.
    fn attempt_allowed(&self) -> bool {
        let now = Instant::now();
        let mut last = self
            .last_attempt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|t| now.duration_since(t) < self.config.min_refresh_interval) {
            return false;
        }
        *last = Some(now);
        true
    }

    fn record_attempt(&self) {
        *self
            .last_attempt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }

    async fn fetch_and_store(&self) -> Result<Arc<KeySet>, JwksError> {
        let timeout = self.config.fetch_timeout;
        let result = match tokio::time::timeout(timeout, self.fetch()).await {
            Ok(result) => result,
            Err(_) => Err(JwksError::Timeout {
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        };
        match result {
            Ok(set) => {
                let keys = Arc::new(set);
                self.loaded.store(Some(Arc::new(Loaded {
                    keys: keys.clone(),
                    fetched_at: Instant::now(),
                })));
                Ok(keys)
            }
            Err(error) => {
                let cause = std::error::Error::source(&error).map(ToString::to_string);
                tracing::warn!(
                    %error,
                    cause = cause.as_deref().unwrap_or(""),
                    url = %self.config.url,
                    "key set fetch failed; keeping the last good set"
                );
                Err(error)
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, JwksError> {
        let max_bytes = self.config.max_bytes;
        let req = Request::get(self.config.url.clone())
            .header(header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|_| JwksError::UnsupportedUrl {
                url: self.config.url.to_string(),
            })?;
        let resp = self.client.request(req).await.map_err(JwksError::Request)?;
        if !resp.status().is_success() {
            return Err(JwksError::Status {
                status: resp.status().as_u16(),
            });
        }
        let declared = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_bytes as u64) {
            return Err(JwksError::TooLarge { max_bytes });
        }
        let body = Limited::new(resp.into_body(), max_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    JwksError::TooLarge { max_bytes }
                } else {
                    JwksError::Body(e)
                }
            })?
            .to_bytes();
        KeySet::from_json(&body)
    }
}

/// Where a verifier's keys come from.
#[derive(Clone, Debug)]
pub enum JwksSource {
    /// A set given inline (or empty, for an HMAC-only verifier).
    Static(Arc<KeySet>),
    /// A set fetched over HTTP.
    Remote(Arc<RemoteJwks>),
}

impl JwksSource {
    /// The set to verify against now.
    ///
    /// # Errors
    ///
    /// For a remote set that was never loaded, as [`RemoteJwks::keys`].
    pub async fn keys(&self) -> Result<Arc<KeySet>, JwksError> {
        match self {
            JwksSource::Static(keys) => Ok(keys.clone()),
            JwksSource::Remote(remote) => remote.keys().await,
        }
    }

    /// A newer set after a token named an unknown `kid`; `None` for a static set, or
    /// when the refresh is rate-limited or fails.
    pub async fn refresh_for_unknown_kid(&self, seen: &Arc<KeySet>) -> Option<Arc<KeySet>> {
        match self {
            JwksSource::Static(_) => None,
            JwksSource::Remote(remote) => remote.refresh_for_unknown_kid(seen).await,
        }
    }
}
