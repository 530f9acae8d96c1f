//! Who is asking, and may they call this pool.
//!
//! A request that presents a credential is always identified, on public pools too: an
//! API key (looked up by its SHA-256 in the table's consumers) or, where the pool
//! accepts them, a JWT. An invalid credential is refused with 401, never downgraded to
//! anonymous. Then the pool's access rules and the consumer's own pool list decide
//! (403 when they say no).
//!
//! A pool that requires client certificates checks the request's certificate first
//! ([`crate::auth::client_cert`]); a request without an API key or JWT is then
//! identified by it (its matched subject, of the default tier) and let in.

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue};
use rustls::pki_types::UnixTime;
use sluice_api::table;

use crate::auth::api_key::{ApiKeyError, Consumer, KeyStore};
use crate::auth::client_cert::Transport;
use crate::auth::jwks::JwksSource;
use crate::auth::jwt::JwtVerifier;
use crate::auth::{AuthError, extract_credential};
use crate::pool::PoolRuntime;

/// The tier of a consumer whose Secret names none.
pub const DEFAULT_TIER: &str = "standard";

/// An identified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The consumer's name.
    pub consumer: Arc<str>,
    /// The consumer's tier.
    pub tier: Arc<str>,
    /// `x-sluice-consumer` and `x-sluice-tier`, made with the table for a consumer of
    /// an API key (every request of the consumer shares them); `None`: made when sent.
    pub identity_values: Option<[HeaderValue; 2]>,
}

impl Caller {
    /// `consumer` of `tier`, its identity headers made when sent.
    pub fn new(consumer: impl Into<Arc<str>>, tier: impl Into<Arc<str>>) -> Self {
        Self {
            consumer: consumer.into(),
            tier: tier.into(),
            identity_values: None,
        }
    }
}

/// A pool's JWT verifier and where its keys come from.
#[derive(Debug)]
pub struct JwtAuth {
    /// The verifier (issuer, audiences, claims).
    pub verifier: JwtVerifier,
    /// The key set.
    pub keys: JwksSource,
}

/// The consumers of one route table.
#[derive(Debug)]
pub struct Authenticator {
    keys: KeyStore,
}

impl Authenticator {
    /// Builds the key store of `consumers`.
    ///
    /// # Errors
    ///
    /// The [`ApiKeyError`] of a consumer that cannot be identified safely (a key
    /// shared by two consumers, a name or tier that cannot be forwarded): the table
    /// is refused rather than served with a guess.
    pub fn new(consumers: &[table::Consumer]) -> Result<Self, ApiKeyError> {
        let entries = consumers.iter().flat_map(|c| {
            let consumer = Consumer {
                name: c.name.clone(),
                tier: c.tier.clone().unwrap_or_else(|| DEFAULT_TIER.to_owned()),
                allowed_pools: c.pools.clone(),
            };
            c.key_hashes.iter().map(move |h| (*h, consumer.clone()))
        });
        Ok(Self {
            keys: KeyStore::new(entries)?,
        })
    }

    /// Identifies the caller of `pool`, which came over `transport`, and checks its
    /// access.
    ///
    /// # Errors
    ///
    /// The [`AuthError`] that refuses the request: the client certificate reasons of
    /// a pool that requires one, 401 reasons for missing or invalid credentials,
    /// [`AuthError::Forbidden`] for a caller without access.
    pub async fn admit(
        &self,
        pool: &PoolRuntime,
        headers: &HeaderMap,
        transport: &Transport,
    ) -> Result<Option<Caller>, AuthError> {
        let certified = match &pool.client_certs {
            None => None,
            Some(required) => Some(required.check(transport, UnixTime::now())?),
        };
        let jwt = pool.jwt.as_ref();
        let pool = &pool.spec;
        let mut allowed_pools = None;
        // A consumer from a Secret belongs to a namespace; a JWT's is the pool's issuer's.
        let mut by_key = false;
        let caller = match extract_credential(headers)? {
            None => None,
            Some(credential) => match jwt {
                Some(auth) if credential.looks_like_jwt() => {
                    let id = auth
                        .verifier
                        .verify_with(credential.secret(), &auth.keys, SystemTime::now())
                        .await?;
                    Some(Caller::new(id.consumer, id.tier))
                }
                _ => {
                    let (consumer, caller) = self.keys.lookup_caller(&credential)?;
                    allowed_pools = consumer.allowed_pools.as_ref();
                    by_key = true;
                    Some(caller.clone())
                }
            },
        };
        if let Some(pools) = allowed_pools
            && !pools.contains(&pool.key)
        {
            return Err(AuthError::Forbidden);
        }
        // Without a credential, the certificate identifies the caller; its subject is
        // on the pool's list.
        if caller.is_none()
            && let Some(subject) = certified
        {
            return Ok(Some(Caller::new(subject, DEFAULT_TIER)));
        }
        let access = &pool.access;
        if access.public {
            return Ok(caller);
        }
        match &caller {
            None => Err(AuthError::Missing),
            Some(c) if access.consumers.iter().any(|n| **n == *c.consumer) => Ok(caller),
            // A tier counts for consumers of the pool's namespace and of those it names.
            Some(c)
                if access.tiers.iter().any(|t| **t == *c.tier)
                    && (!by_key || access.tier_admits(&pool.key, &c.consumer)) =>
            {
                Ok(caller)
            }
            Some(_) => Err(AuthError::Forbidden),
        }
    }
}
