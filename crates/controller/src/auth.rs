//! Who may read the route table: callers of the push server authenticate with a bearer
//! token ([`sluice_api::push::bearer_token`]), and are allowed by role.
//!
//! * [`PushAuth::SharedToken`]: one secret in a file shared by the controller, its
//!   proxies and its peers (`--push-token-file`), for `--from-dir` and standalone
//!   deployments. Whoever holds it is a proxy and a peer. The file is read again when
//!   it changes, so the token can be rotated (briefly accept both: see docs/security.md).
//! * [`PushAuth::TokenReview`]: on Kubernetes, the caller's projected ServiceAccount
//!   token for a dedicated audience, checked by the API server with a TokenReview
//!   ([`TokenReviewer`]). The token must be valid for the audience, and its
//!   ServiceAccount one of the proxies' or one of the controller replicas' (a token of
//!   that audience can be minted by any pod for its own ServiceAccount: the audience
//!   alone proves nothing). Results are cached for a short time, in a bounded map keyed
//!   by the token's SHA-256.
//! * [`PushAuth::Open`]: no check; only for a push server on a loopback address.
//!
//! Proxies may subscribe, acknowledge and read the table; peers (controller replicas)
//! may list proxies and read the table. Health checks and `/metrics` need nothing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// The Kubernetes API calls of this module (the chart binds them cluster-wide: a
/// TokenReview is not namespaced).
pub const RBAC: &[crate::Rule] = &[("authentication.k8s.io", "tokenreviews", &["create"])];

/// How long a shared token file is trusted before it is read again.
const TOKEN_FILE_TTL: Duration = Duration::from_secs(5);

/// What an authenticated caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Subscribe, acknowledge, read the table.
    Proxy,
    /// List the proxies, read the table.
    Peer,
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Who: `system:serviceaccount:NS:NAME`, `shared-token`, or `anonymous`.
    pub name: String,
    /// It is a proxy.
    pub proxy: bool,
    /// It is a controller replica.
    pub peer: bool,
}

impl Caller {
    /// Whether the caller may act as `role`.
    pub fn is(&self, role: Role) -> bool {
        match role {
            Role::Proxy => self.proxy,
            Role::Peer => self.peer,
        }
    }
}

/// Why a call was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The call has no bearer token. Answered 401; retryable with one.
    #[error("no bearer token")]
    Missing,
    /// The token is not the shared one, not valid, or not for the audience. Answered
    /// 401; not retryable with the same token.
    #[error("token refused: {0}")]
    Refused(String),
    /// The token is valid but its ServiceAccount is neither a proxy's nor a replica's.
    /// Answered 403; not retryable.
    #[error("{0} may not call the push server")]
    Forbidden(String),
    /// The token could not be checked (the shared token file is unreadable, the API
    /// server did not answer). Answered 503; retryable.
    #[error("token not checked: {0}")]
    Unavailable(String),
}

/// How callers are authenticated.
#[derive(Clone, Debug)]
pub enum PushAuth {
    /// Nobody is checked: every caller is a proxy and a peer.
    Open,
    /// The token in this file.
    SharedToken(Arc<TokenFile>),
    /// A TokenReview of the caller's ServiceAccount token.
    TokenReview(Arc<TokenReviewer>),
}

impl PushAuth {
    /// Authenticates a call whose `Authorization` header is `authorization`.
    ///
    /// # Errors
    ///
    /// [`AuthError`]: what the caller is answered.
    pub async fn check(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        let token = || {
            authorization
                .and_then(sluice_api::push::bearer_token)
                .ok_or(AuthError::Missing)
        };
        match self {
            PushAuth::Open => Ok(Caller {
                name: "anonymous".to_owned(),
                proxy: true,
                peer: true,
            }),
            PushAuth::SharedToken(file) => {
                let token = token()?;
                let expected = file.digest()?;
                // Digests compared, not tokens: no early exit on the secret's bytes.
                if Sha256::digest(token.as_bytes()).as_slice() != expected {
                    return Err(AuthError::Refused("not the shared token".to_owned()));
                }
                Ok(Caller {
                    name: "shared-token".to_owned(),
                    proxy: true,
                    peer: true,
                })
            }
            PushAuth::TokenReview(reviewer) => reviewer.check(token()?).await,
        }
    }

    /// Whether calls are checked at all.
    pub fn is_open(&self) -> bool {
        matches!(self, PushAuth::Open)
    }
}

/// A token kept in a file (a mounted Secret, a projected token), read again when its
/// copy is older than a few seconds.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    /// When it was read, and the SHA-256 of its trimmed content.
    cached: Mutex<Option<(Instant, Vec<u8>)>>,
}

impl TokenFile {
    /// The token in `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            cached: Mutex::new(None),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Reads the token now (trimmed).
    ///
    /// # Errors
    ///
    /// [`AuthError::Unavailable`] when the file cannot be read or holds only white
    /// space.
    pub fn read(&self) -> Result<String, AuthError> {
        let unavailable =
            |why: String| AuthError::Unavailable(format!("{}: {why}", self.path.display()));
        let text = std::fs::read_to_string(&self.path).map_err(|e| unavailable(e.to_string()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(unavailable("empty".to_owned()));
        }
        Ok(token.to_owned())
    }

    /// The SHA-256 of the token, from a copy at most a few seconds old.
    fn digest(&self) -> Result<Vec<u8>, AuthError> {
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, digest)) = cached.as_ref()
            && at.elapsed() < TOKEN_FILE_TTL
        {
            return Ok(digest.clone());
        }
        let digest = Sha256::digest(self.read()?.as_bytes()).to_vec();
        *cached = Some((Instant::now(), digest.clone()));
        Ok(digest)
    }
}

/// Settings of a [`TokenReviewer`].
#[derive(Clone, Debug)]
pub struct TokenReviewConfig {
    /// The audience tokens must be valid for.
    pub audience: String,
    /// The proxies' ServiceAccounts, `NAMESPACE:NAME`.
    pub proxies: Vec<String>,
    /// The controller replicas' ServiceAccounts, `NAMESPACE:NAME`.
    pub peers: Vec<String>,
    /// How long an accepted token is trusted without asking again. A deleted pod's
    /// token keeps working this long.
    pub ttl: Duration,
    /// How long a refused token is refused without asking again.
    pub refused_ttl: Duration,
    /// Most tokens remembered.
    pub max_cached: usize,
    /// Longest wait for the API server's answer.
    pub timeout: Duration,
}

impl TokenReviewConfig {
    /// Defaults for `audience`: one minute trusted, ten seconds refused, 4096 tokens,
    /// five-second deadline.
    pub fn new(audience: impl Into<String>) -> Self {
        Self {
            audience: audience.into(),
            proxies: Vec::new(),
            peers: Vec::new(),
            ttl: Duration::from_secs(60),
            refused_ttl: Duration::from_secs(10),
            max_cached: 4096,
            timeout: Duration::from_secs(5),
        }
    }
}

/// A cached answer: when it expires, and what it was.
type Answer = (Instant, Result<Caller, AuthError>);

/// Checks ServiceAccount tokens with the API server's TokenReview.
pub struct TokenReviewer {
    client: kube::Client,
    config: TokenReviewConfig,
    /// SHA-256 of a token → when the answer expires, and the answer.
    cache: Mutex<HashMap<[u8; 32], Answer>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// `system:serviceaccount:NS:NAME` for `NS:NAME`.
fn username(account: &str) -> String {
    format!("system:serviceaccount:{account}")
}

impl TokenReviewer {
    /// Reviews tokens through `client`.
    pub fn new(client: kube::Client, config: TokenReviewConfig) -> Self {
        Self {
            client,
            config,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Authenticates `token`: from the cache, else by a TokenReview.
    ///
    /// # Errors
    ///
    /// [`AuthError`]: refused, forbidden, or the API server did not answer (not cached).
    pub async fn check(&self, token: &str) -> Result<Caller, AuthError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((expires, answer)) = cache.get(&key)
                && Instant::now() < *expires
            {
                return answer.clone();
            }
        }
        let answer = self.review(token).await;
        let ttl = match &answer {
            Ok(_) => self.config.ttl,
            Err(AuthError::Refused(_) | AuthError::Forbidden(_)) => self.config.refused_ttl,
            Err(AuthError::Missing | AuthError::Unavailable(_)) => return answer,
        };
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= self.config.max_cached {
            let now = Instant::now();
            cache.retain(|_, (expires, _)| now < *expires);
            if cache.len() >= self.config.max_cached {
                cache.clear();
            }
        }
        cache.insert(key, (Instant::now() + ttl, answer.clone()));
        answer
    }

    /// Asks the API server.
    async fn review(&self, token: &str) -> Result<Caller, AuthError> {
        let audience = &self.config.audience;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![audience.clone()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let created = tokio::time::timeout(
            self.config.timeout,
            api.create(&PostParams::default(), &review),
        )
        .await
        .map_err(|_| {
            AuthError::Unavailable(format!(
                "the API server did not answer within {:?}",
                self.config.timeout
            ))
        })?
        .map_err(|e| AuthError::Unavailable(format!("TokenReview failed: {e}")))?;
        let status = created.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status
                .error
                .unwrap_or_else(|| "not authenticated".to_owned());
            return Err(AuthError::Refused(why));
        }
        // An audience-aware authenticator names the audience it checked.
        if !status.audiences.unwrap_or_default().contains(audience) {
            return Err(AuthError::Refused(format!(
                "not a token for the audience {audience:?}"
            )));
        }
        let name = status.user.and_then(|u| u.username).unwrap_or_default();
        let listed = |accounts: &[String]| accounts.iter().any(|a| username(a) == name);
        let caller = Caller {
            proxy: listed(&self.config.proxies),
            peer: listed(&self.config.peers),
            name,
        };
        if !caller.proxy && !caller.peer {
            return Err(AuthError::Forbidden(caller.name));
        }
        Ok(caller)
    }
}
