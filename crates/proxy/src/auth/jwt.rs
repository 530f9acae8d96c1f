//! JWT verification: signature against a key the gateway trusts, then the claims.
//!
//! The token's header only *selects* a key; the algorithm is the key's own
//! (`VerifyKey::algorithm`). A header `alg` that differs from it is refused
//! ([`AuthError::AlgorithmMismatch`]), `none` and unknown names are refused
//! ([`AuthError::UnsupportedAlgorithm`]). HS256/384/512 tokens are verified only with the
//! secret configured in [`JwtConfig::hmac`], which is a key of its own: an RSA, EC or
//! Ed25519 key is never used as an HMAC secret, so a token "signed" with a public key
//! as HMAC secret (the RS/HS confusion attack) cannot verify.
//!
//! Key selection: a token with a `kid` uses the key-set key with that `kid`, else the
//! HMAC secret if it was configured with that `kid`, else it is an unknown `kid` (and a
//! remote key set is refreshed once, see [`JwtVerifier::verify_with`]). A token without
//! `kid` uses the only candidate key when there is exactly one (key-set keys plus the
//! HMAC secret); with several it is refused as [`AuthError::UnknownKid`].
//!
//! After the signature, in this order: `exp` (required unless configured otherwise) and
//! `nbf` against the injected time with the configured leeway, `iss` (one of the
//! configured issuers), `aud` (any of the configured audiences), then the consumer
//! claim (default `sub`, required) and the tier claim (default `tier`, else the
//! configured default tier). An empty issuer or audience list skips that check.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::jwks::{JwksSource, KeySet};
use super::{AuthError, MAX_CREDENTIAL_LEN};

/// The largest leeway accepted for `exp`/`nbf`.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// The shortest HMAC secret accepted, in bytes (the SHA-256 output size, RFC 7518
/// section 3.2).
pub const MIN_HMAC_SECRET_LEN: usize = 32;

/// The longest consumer id or tier taken from a token, in bytes.
pub const MAX_CLAIM_VALUE_LEN: usize = 256;

/// Why a verifier could not be built. A configuration error, reported at load time.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// The HMAC secret is shorter than [`MIN_HMAC_SECRET_LEN`] bytes.
    #[error("the HMAC secret has {len} bytes; at least {MIN_HMAC_SECRET_LEN} are required")]
    HmacSecretTooShort {
        /// Its length.
        len: usize,
    },
    /// The HMAC secret is a PEM document: almost certainly a public key pasted where a
    /// shared secret belongs, which is the RS/HS confusion this module prevents.
    #[error("the HMAC secret is a PEM document; configure public keys as a key set")]
    HmacSecretIsPem,
    /// A claim name is empty.
    #[error("the {which} claim name is empty")]
    EmptyClaimName {
        /// `consumer` or `tier`.
        which: &'static str,
    },
    /// The default tier is empty, too long or not visible ASCII.
    #[error("the default tier is not a valid tier name")]
    InvalidDefaultTier,
    /// The HMAC algorithm is not one of HS256, HS384, HS512.
    #[error("the HMAC secret's algorithm must be HS256, HS384 or HS512")]
    NotHmacAlgorithm,
    /// The leeway exceeds [`MAX_LEEWAY`].
    #[error("a leeway of {secs} s is more than the {} s allowed", MAX_LEEWAY.as_secs())]
    LeewayTooLarge {
        /// The configured leeway in seconds.
        secs: u64,
    },
}

/// An explicitly configured HMAC secret, for HS256/384/512 tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct HmacConfig {
    /// The shared secret's bytes.
    pub secret: Vec<u8>,
    /// The `kid` tokens signed with it carry, if any.
    pub kid: Option<String>,
    /// Its algorithm: HS256 unless configured otherwise (HS384, HS512).
    pub algorithm: Algorithm,
}

impl HmacConfig {
    /// An HS256 secret without `kid`.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            secret: secret.into(),
            kid: None,
            algorithm: Algorithm::HS256,
        }
    }
}

impl fmt::Debug for HmacConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HmacConfig")
            .field("secret", &"[redacted]")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

/// What a verifier accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtConfig {
    /// Accepted `iss` values; empty accepts any (or none).
    pub issuers: Vec<String>,
    /// Accepted audiences: `aud` must name at least one; empty skips the check.
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, at most [`MAX_LEEWAY`].
    pub leeway: Duration,
    /// Whether a token without `exp` is refused.
    pub require_exp: bool,
    /// The claim holding the consumer id.
    pub consumer_claim: String,
    /// The claim holding the tier.
    pub tier_claim: String,
    /// The tier of a token without the tier claim.
    pub default_tier: String,
    /// The HMAC secret, if HS* tokens are accepted at all.
    pub hmac: Option<HmacConfig>,
}

impl Default for JwtConfig {
    /// No issuer or audience check, 30 s leeway, `exp` required, consumer from `sub`,
    /// tier from `tier` defaulting to `standard`, no HMAC.
    fn default() -> Self {
        Self {
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: Duration::from_secs(30),
            require_exp: true,
            consumer_claim: "sub".into(),
            tier_claim: "tier".into(),
            default_tier: "standard".into(),
            hmac: None,
        }
    }
}

/// Who a verified token says is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtIdentity {
    /// The consumer id, from the consumer claim.
    pub consumer: String,
    /// The tier, from the tier claim or the default.
    pub tier: String,
}

/// Verifies tokens for one configuration. Built once per table.
#[derive(Clone)]
pub struct JwtVerifier {
    config: JwtConfig,
    hmac: Option<(Option<String>, Algorithm, DecodingKey)>,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The JOSE header fields this module reads.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<Value>,
}

fn valid_value(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_CLAIM_VALUE_LEN && s.bytes().all(|b| b.is_ascii_graphic())
}

impl JwtVerifier {
    /// A verifier for `config`.
    ///
    /// # Errors
    ///
    /// A [`JwtError`] for an unusable configuration.
    pub fn new(config: JwtConfig) -> Result<Self, JwtError> {
        if config.leeway > MAX_LEEWAY {
            return Err(JwtError::LeewayTooLarge {
                secs: config.leeway.as_secs(),
            });
        }
        if config.consumer_claim.is_empty() {
            return Err(JwtError::EmptyClaimName { which: "consumer" });
        }
        if config.tier_claim.is_empty() {
            return Err(JwtError::EmptyClaimName { which: "tier" });
        }
        if !valid_value(&config.default_tier) {
            return Err(JwtError::InvalidDefaultTier);
        }
        let hmac = match &config.hmac {
            None => None,
            Some(h) => {
                if h.secret.len() < MIN_HMAC_SECRET_LEN {
                    return Err(JwtError::HmacSecretTooShort {
                        len: h.secret.len(),
                    });
                }
                if h.secret.trim_ascii_start().starts_with(b"-----BEGIN") {
                    return Err(JwtError::HmacSecretIsPem);
                }
                if h.algorithm.family() != AlgorithmFamily::Hmac {
                    return Err(JwtError::NotHmacAlgorithm);
                }
                Some((
                    h.kid.clone(),
                    h.algorithm,
                    DecodingKey::from_secret(&h.secret),
                ))
            }
        };
        Ok(Self { config, hmac })
    }

    /// The configuration.
    pub fn config(&self) -> &JwtConfig {
        &self.config
    }

    /// Verifies `token` against `keys` at time `now`.
    ///
    /// # Errors
    ///
    /// The [`AuthError`] naming the first check that failed (see the module docs).
    pub fn verify(
        &self,
        token: &str,
        keys: &KeySet,
        now: SystemTime,
    ) -> Result<JwtIdentity, AuthError> {
        if token.len() > MAX_CREDENTIAL_LEN {
            return Err(AuthError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let header: RawHeader = decode_part(header_b64)?;
        if header.crit.is_some() {
            return Err(AuthError::Malformed);
        }
        if header.alg.eq_ignore_ascii_case("none") {
            return Err(AuthError::UnsupportedAlgorithm);
        }
        let header_alg: Algorithm = header
            .alg
            .parse()
            .map_err(|_| AuthError::UnsupportedAlgorithm)?;
        let (key_alg, key) = self.select(header.kid.as_deref(), keys)?;
        if header_alg != key_alg {
            return Err(AuthError::AlgorithmMismatch);
        }
        let message = &token[..header_b64.len() + 1 + payload_b64.len()];
        match jsonwebtoken::crypto::verify(signature, message.as_bytes(), key, key_alg) {
            Ok(true) => {}
            Ok(false) | Err(_) => return Err(AuthError::BadSignature),
        }
        let claims: Map<String, Value> = decode_part(payload_b64)?;
        self.check_claims(&claims, now)
    }

    /// Verifies `token` with the keys of `source`; an unknown `kid` refreshes a remote
    /// set (rate-limited) and is tried once more.
    ///
    /// # Errors
    ///
    /// As [`Self::verify`], and [`AuthError::KeysUnavailable`] when a remote set was
    /// never loaded.
    ///
    /// # Cancel safety
    ///
    /// Cancelling abandons a key fetch in progress, leaving the cache as it was.
    pub async fn verify_with(
        &self,
        token: &str,
        source: &JwksSource,
        now: SystemTime,
    ) -> Result<JwtIdentity, AuthError> {
        let keys = source
            .keys()
            .await
            .map_err(|_| AuthError::KeysUnavailable)?;
        match self.verify(token, &keys, now) {
            Err(AuthError::UnknownKid) => {}
            other => return other,
        }
        match source.refresh_for_unknown_kid(&keys).await {
            Some(newer) => self.verify(token, &newer, now),
            None => Err(AuthError::UnknownKid),
        }
    }

    fn select<'k>(
        &'k self,
        kid: Option<&str>,
        keys: &'k KeySet,
    ) -> Result<(Algorithm, &'k DecodingKey), AuthError> {
        let hmac = self
            .hmac
            .as_ref()
            .map(|(hkid, alg, key)| (hkid.as_deref(), *alg, key));
        if let Some(kid) = kid {
            if let Some(k) = keys.get(kid) {
                return Ok((k.algorithm(), k.decoding_key()));
            }
            return match hmac {
                Some((Some(hkid), alg, key)) if hkid == kid => Ok((alg, key)),
                _ => Err(AuthError::UnknownKid),
            };
        }
        match (keys.keys(), hmac) {
            ([only], None) => Ok((only.algorithm(), only.decoding_key())),
            ([], Some((_, alg, key))) => Ok((alg, key)),
            _ => Err(AuthError::UnknownKid),
        }
    }

    fn check_claims(
        &self,
        claims: &Map<String, Value>,
        now: SystemTime,
    ) -> Result<JwtIdentity, AuthError> {
        let now = i128::from(now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
        let leeway = i128::from(self.config.leeway.as_secs());
        match claims.get("exp").map(numeric_date).transpose()? {
            None if self.config.require_exp => return Err(AuthError::MissingClaim),
            Some(exp) if now >= exp + leeway => return Err(AuthError::Expired),
            None | Some(_) => {}
        }
        if let Some(nbf) = claims.get("nbf")
            && now + leeway < numeric_date(nbf)?
        {
            return Err(AuthError::NotYetValid);
        }
        if !self.config.issuers.is_empty() {
            let iss = claims.get("iss").and_then(Value::as_str);
            if !iss.is_some_and(|iss| self.config.issuers.iter().any(|i| i == iss)) {
                return Err(AuthError::WrongIssuer);
            }
        }
        if !self.config.audiences.is_empty() && !self.audience_matches(claims.get("aud")) {
            return Err(AuthError::WrongAudience);
        }
        let consumer = match claims.get(&self.config.consumer_claim) {
            None => return Err(AuthError::MissingClaim),
            Some(Value::String(s)) if valid_value(s) => s.clone(),
            Some(_) => return Err(AuthError::InvalidClaim),
        };
        let tier = match claims.get(&self.config.tier_claim) {
            None => self.config.default_tier.clone(),
            Some(Value::String(s)) if valid_value(s) => s.clone(),
            Some(_) => return Err(AuthError::InvalidClaim),
        };
        Ok(JwtIdentity { consumer, tier })
    }

    fn audience_matches(&self, aud: Option<&Value>) -> bool {
        let accepted = |a: &str| self.config.audiences.iter().any(|c| c == a);
        match aud {
            Some(Value::String(a)) => accepted(a),
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(accepted),
            _ => false,
        }
    }
}

/// A base64url JSON part of the token.
fn decode_part<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
}

/// A NumericDate (seconds, possibly fractional) as whole seconds, rounded down.
fn numeric_date(v: &Value) -> Result<i128, AuthError> {
    if let Some(i) = v.as_i64() {
        return Ok(i128::from(i));
    }
    match v.as_f64() {
        // A float outside i128 saturates, which is still "far past" or "far future".
        Some(f) if f.is_finite() => Ok(f.floor() as i128),
        _ => Err(AuthError::InvalidClaim),
    }
}

/// A shared key set for an HMAC-only verifier.
pub fn no_keys() -> JwksSource {
    JwksSource::Static(Arc::new(KeySet::empty()))
}
