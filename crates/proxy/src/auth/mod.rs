//! Authentication: who is asking.
//!
//! * [`extract_credential`] finds the credential a request presents, if any;
//! * [`api_key`] identifies it as an API key, looked up by its SHA-256 hash;
//! * [`jwt`] verifies it as a JWT against keys from [`jwks`] (or a configured HMAC
//!   secret) and maps its claims to a consumer and tier;
//! * [`client_cert`] checks the client certificate of a request to a pool that
//!   requires one (mutual TLS).
//!
//! Every refusal is an [`AuthError`]: a bounded reason code for metrics and the JSON
//! body, a status (401, 403 or 503) and the `WWW-Authenticate` challenge. Nothing in
//! this module logs, displays or returns the credential itself: [`Credential`]'s
//! `Debug` is redacted and no error carries it.
//!
//! # Where the credential comes from
//!
//! `Authorization: Bearer <token>` and `x-api-key: <key>` are both read:
//!
//! * only one of them present: that one;
//! * both present with the same value: that value;
//! * both present with different values: refused ([`AuthError::MultipleCredentials`]),
//!   as is a repeated `Authorization` or `x-api-key` header: the gateway never guesses
//!   which identity a request meant;
//! * `Authorization` with another scheme (`Basic ...`): when `x-api-key` is present it
//!   is the credential; otherwise the request is refused
//!   ([`AuthError::UnsupportedScheme`]), never treated as anonymous.
//!
//! Once a caller is identified, both headers are removed before the request goes to an
//! agent (the proxy's `forward` module): agents see `x-sluice-consumer` and
//! `x-sluice-tier`, never a gateway credential.
//!
//! A bearer token that looks like a JWT ([`Credential::looks_like_jwt`]) goes to the
//! JWT verifier when the pool has one, anything else to the API key store.

pub mod api_key;
pub mod client_cert;
pub mod jwks;
pub mod jwt;

use std::fmt;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub use api_key::{Consumer, KeyLookup, KeyStore, hash_key};

/// The header an API key may also be sent in.
pub const X_API_KEY: &str = "x-api-key";

// Built at compile time: a name given as a string is parsed on every lookup.
const X_API_KEY_NAME: HeaderName = HeaderName::from_static(X_API_KEY);

/// The longest credential accepted, in bytes.
pub const MAX_CREDENTIAL_LEN: usize = 8 * 1024;

/// Why a request was not authenticated (or not authorised). Per request, never
/// retryable by the client unchanged except [`AuthError::KeysUnavailable`].
///
/// The variants are the reason codes of the `sluice_auth` metrics: a closed set, see
/// [`AuthError::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AuthError {
    /// No credential, on a pool that requires one. 401.
    #[error("credentials are required")]
    Missing,
    /// More than one credential: a repeated header, or `Authorization` and `x-api-key`
    /// with different values. 401.
    #[error("more than one credential was presented")]
    MultipleCredentials,
    /// `Authorization` with a scheme other than `Bearer`, and no `x-api-key`. 401.
    #[error("the authorization scheme is not supported; use Bearer")]
    UnsupportedScheme,
    /// The credential or token is not well-formed (empty, too long, bad characters, not
    /// three base64url parts, undecodable header or claims, a `crit` header). 401.
    #[error("the credential is malformed")]
    Malformed,
    /// An API key whose hash is not in the key store. 401.
    #[error("the API key is not valid")]
    UnknownKey,
    /// A token algorithm the gateway does not accept: `none`, an unknown name, or
    /// `HS*` without a configured secret. 401.
    #[error("the token algorithm is not accepted")]
    UnsupportedAlgorithm,
    /// The token header's `alg` differs from the algorithm of the key it selects (the
    /// algorithm comes from the key, never from the token). 401.
    #[error("the token algorithm does not match its key")]
    AlgorithmMismatch,
    /// No key with the token's `kid`, even after a (rate-limited) key refresh; or no
    /// `kid` and more than one candidate key. 401.
    #[error("the token's key is not known")]
    UnknownKid,
    /// The signature does not verify. 401.
    #[error("the token signature is not valid")]
    BadSignature,
    /// `exp` is past (beyond the leeway). 401.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway). 401.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is missing or not a configured issuer. 401.
    #[error("the token issuer is not accepted")]
    WrongIssuer,
    /// `aud` is missing or names none of the configured audiences. 401.
    #[error("the token audience is not accepted")]
    WrongAudience,
    /// A required claim is absent (`exp`, or the consumer claim). 401.
    #[error("the token lacks a required claim")]
    MissingClaim,
    /// A claim has the wrong type, or a consumer or tier that cannot be forwarded
    /// (empty, longer than 256 bytes, not visible ASCII). 401.
    #[error("a token claim is not valid")]
    InvalidClaim,
    /// The key set could not be loaded and none was ever loaded. 503, retryable.
    #[error("the token keys are not available")]
    KeysUnavailable,
    /// A valid consumer that may not call this pool. 403.
    #[error("the consumer may not call this pool")]
    Forbidden,
    /// The pool requires a client certificate and the request came without one: the
    /// client presented none, or came over the plaintext listener. 403.
    #[error("this pool requires a client certificate, over TLS")]
    ClientCertificateRequired,
    /// The client certificate is not signed by the pool's CA, has expired or is not
    /// valid yet, or is not for client authentication. 403.
    #[error("the client certificate is not valid for this pool")]
    ClientCertificateInvalid,
    /// The client certificate holds none of the pool's subjects. 403.
    #[error("the client certificate's subject may not call this pool")]
    ClientCertificateForbidden,
}

impl AuthError {
    /// Every variant, for pre-registering metric label values.
    pub const ALL: [AuthError; 20] = [
        AuthError::Missing,
        AuthError::MultipleCredentials,
        AuthError::UnsupportedScheme,
        AuthError::Malformed,
        AuthError::UnknownKey,
        AuthError::UnsupportedAlgorithm,
        AuthError::AlgorithmMismatch,
        AuthError::UnknownKid,
        AuthError::BadSignature,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::WrongIssuer,
        AuthError::WrongAudience,
        AuthError::MissingClaim,
        AuthError::InvalidClaim,
        AuthError::KeysUnavailable,
        AuthError::Forbidden,
        AuthError::ClientCertificateRequired,
        AuthError::ClientCertificateInvalid,
        AuthError::ClientCertificateForbidden,
    ];

    /// The reason code: a bounded metric label and the `code` of the JSON body.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::MultipleCredentials => "multiple_credentials",
            AuthError::UnsupportedScheme => "unsupported_scheme",
            AuthError::Malformed => "malformed",
            AuthError::UnknownKey => "unknown_key",
            AuthError::UnsupportedAlgorithm => "unsupported_alg",
            AuthError::AlgorithmMismatch => "alg_mismatch",
            AuthError::UnknownKid => "unknown_kid",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::MissingClaim => "missing_claim",
            AuthError::InvalidClaim => "invalid_claim",
            AuthError::KeysUnavailable => "keys_unavailable",
            AuthError::Forbidden => "forbidden",
            AuthError::ClientCertificateRequired => "client_certificate_required",
            AuthError::ClientCertificateInvalid => "client_certificate_invalid",
            AuthError::ClientCertificateForbidden => "client_certificate_forbidden",
        }
    }

    /// The HTTP status: 401 for missing or invalid credentials, 403 for
    /// [`AuthError::Forbidden`] and the client certificate reasons (a certificate is
    /// not an HTTP authentication scheme: there is no challenge to answer), 503 for
    /// [`AuthError::KeysUnavailable`].
    pub fn status(&self) -> http::StatusCode {
        match self {
            AuthError::Forbidden
            | AuthError::ClientCertificateRequired
            | AuthError::ClientCertificateInvalid
            | AuthError::ClientCertificateForbidden => http::StatusCode::FORBIDDEN,
            AuthError::KeysUnavailable => http::StatusCode::SERVICE_UNAVAILABLE,
            AuthError::Missing
            | AuthError::MultipleCredentials
            | AuthError::UnsupportedScheme
            | AuthError::Malformed
            | AuthError::UnknownKey
            | AuthError::UnsupportedAlgorithm
            | AuthError::AlgorithmMismatch
            | AuthError::UnknownKid
            | AuthError::BadSignature
            | AuthError::Expired
            | AuthError::NotYetValid
            | AuthError::WrongIssuer
            | AuthError::WrongAudience
            | AuthError::MissingClaim
            | AuthError::InvalidClaim => http::StatusCode::UNAUTHORIZED,
        }
    }

    /// The `WWW-Authenticate` value for a 401 (RFC 6750 section 3), `None` otherwise:
    /// a bare challenge when credentials are missing, `error="invalid_request"` when
    /// they are ambiguous, `error="invalid_token"` when they do not verify.
    pub fn www_authenticate(&self) -> Option<HeaderValue> {
        let value = match self.status() {
            http::StatusCode::UNAUTHORIZED => match self {
                AuthError::Missing => r#"Bearer realm="sluice""#,
                AuthError::MultipleCredentials | AuthError::UnsupportedScheme => {
                    r#"Bearer realm="sluice", error="invalid_request""#
                }
                _ => r#"Bearer realm="sluice", error="invalid_token""#,
            },
            _ => return None,
        };
        Some(HeaderValue::from_static(value))
    }
}

/// Which header a credential came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// `Authorization: Bearer <token>`.
    Authorization,
    /// `x-api-key: <key>`.
    ApiKeyHeader,
}

/// The credential a request presents. Its `Debug` never shows the secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Credential<'a> {
    source: CredentialSource,
    secret: &'a str,
}

impl<'a> Credential<'a> {
    /// Where it came from.
    pub fn source(&self) -> CredentialSource {
        self.source
    }

    /// The secret itself: hash it or verify it, never log or return it.
    pub fn secret(&self) -> &'a str {
        self.secret
    }

    /// Whether the secret has the shape of a JWS compact token: three non-empty
    /// base64url parts separated by dots.
    pub fn looks_like_jwt(&self) -> bool {
        let mut parts = 0;
        for part in self.secret.split('.') {
            parts += 1;
            if part.is_empty()
                || !part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return false;
            }
        }
        parts == 3
    }
}

impl fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("source", &self.source)
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// The credential `headers` present (see the [module docs](self) for precedence),
/// `Ok(None)` when there is none.
///
/// # Errors
///
/// [`AuthError::MultipleCredentials`], [`AuthError::UnsupportedScheme`] or
/// [`AuthError::Malformed`] (empty, longer than [`MAX_CREDENTIAL_LEN`], or characters
/// other than visible ASCII).
pub fn extract_credential(headers: &HeaderMap) -> Result<Option<Credential<'_>>, AuthError> {
    let api_key = single(headers, &X_API_KEY_NAME)?
        .map(|v| validate(v.trim_matches(' ')))
        .transpose()?;
    let bearer = match single(headers, &header::AUTHORIZATION)? {
        None => None,
        Some(value) => match bearer_token(value) {
            Some(token) => Some(validate(token)?),
            // Another scheme: the agent's business when an API key is present.
            None if api_key.is_some() => None,
            None => return Err(AuthError::UnsupportedScheme),
        },
    };
    Ok(match (bearer, api_key) {
        (Some(b), Some(k)) if b != k => return Err(AuthError::MultipleCredentials),
        (Some(secret), _) => Some(Credential {
            source: CredentialSource::Authorization,
            secret,
        }),
        (None, Some(secret)) => Some(Credential {
            source: CredentialSource::ApiKeyHeader,
            secret,
        }),
        (None, None) => None,
    })
}

/// The one value of header `name`; `Malformed` when it is not ASCII text.
fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h str>, AuthError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::MultipleCredentials);
    }
    first.to_str().map(Some).map_err(|_| AuthError::Malformed)
}

/// The token of a `Bearer` credential (scheme case-insensitive), `None` for another
/// scheme.
fn bearer_token(value: &str) -> Option<&str> {
    let value = value.trim_matches(' ');
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

fn validate(secret: &str) -> Result<&str, AuthError> {
    if secret.is_empty()
        || secret.len() > MAX_CREDENTIAL_LEN
        || !secret.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(AuthError::Malformed);
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_distinct() {
        let mut reasons: Vec<_> = AuthError::ALL.iter().map(AuthError::reason).collect();
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), AuthError::ALL.len());
        assert!(AuthError::Forbidden.www_authenticate().is_none());
        assert!(AuthError::KeysUnavailable.www_authenticate().is_none());
        assert_eq!(
            AuthError::Missing.www_authenticate().expect("challenge"),
            r#"Bearer realm="sluice""#
        );
    }

    #[test]
    fn debug_is_redacted() {
        let c = Credential {
            source: CredentialSource::Authorization,
            secret: "sk-very-secret",
        };
        assert!(!format!("{c:?}").contains("sk-very-secret"));
    }
}
