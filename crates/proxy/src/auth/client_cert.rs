//! Client certificates (mutual TLS): what a pool that requires them checks.
//!
//! The TLS listener asks for a certificate without requiring one, checks that the
//! client holds its key, and hands the chain to every request of the connection
//! ([`PeerCertificates`]). A pool with `access.clientCertificates` then requires, on
//! every request, before any credential is looked at:
//!
//! 1. a certificate: none, or a request over the plaintext listener, is refused
//!    ([`AuthError::ClientCertificateRequired`]);
//! 2. signed by this pool's CA (not the union of every pool's, which the listener
//!    names as hints), valid now, for client authentication
//!    ([`AuthError::ClientCertificateInvalid`]);
//! 3. holding one of the pool's subjects ([`AuthError::ClientCertificateForbidden`]),
//!    the first of which that matches is the caller's consumer name.
//!
//! Verifying a chain costs tens of microseconds (an ECDSA or RSA signature per
//! certificate); a connection's requests share its chain, so a successful
//! verification is remembered on the connection ([`PeerCertificates::remember`]) for
//! the rest of a [`MEMO_WINDOW_SECS`] window, under a token of this pool's CA (a new
//! CA, in a new table, has another). A certificate that expires during a kept-alive
//! connection is thus refused at most that long after it expired.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use sluice_api::table::client_cert::{
    CertificateNames, ClientCertificates, ClientSubject, verify_chain,
};
use sluice_listener::PeerCertificates;

use super::AuthError;

/// How a request reached the proxy: over TLS or not, and the client's certificates.
#[derive(Clone, Debug, Default)]
pub struct Transport {
    /// The request came over the TLS listener.
    pub over_tls: bool,
    /// The certificates the client presented in the handshake, if any.
    pub certificates: Option<PeerCertificates>,
}

impl Transport {
    /// What the listener recorded in a request's extensions.
    pub fn from_extensions(extensions: &http::Extensions) -> Self {
        Self {
            over_tls: extensions.get::<sluice_listener::OverTls>().is_some(),
            certificates: extensions.get::<PeerCertificates>().cloned(),
        }
    }
}

/// How long a connection remembers that its chain verified against a CA, at most.
pub const MEMO_WINDOW_SECS: u64 = 30;

/// Tells one built requirement from another in connections' memos.
static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// A pool's client certificate requirement, built once per table.
pub struct ClientCertAuth {
    /// Unique among the requirements this process built (while it has built fewer
    /// than 2^32), never 0.
    id: u32,
    verifier: Arc<dyn ClientCertVerifier>,
    subjects: Vec<ClientSubject>,
    roots: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for ClientCertAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertAuth")
            .field("subjects", &self.subjects)
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl ClientCertAuth {
    /// The requirement of `certs`.
    ///
    /// # Errors
    ///
    /// A CA that cannot be a trust anchor, or a subject that cannot be matched (what
    /// [`sluice_api::table::RouteTable::validate`] refuses already).
    pub fn new(certs: &ClientCertificates) -> Result<Self, String> {
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed).max(1),
            verifier: certs.verifier()?,
            subjects: certs.parsed_subjects()?,
            roots: certs.roots()?,
        })
    }

    /// The CA certificates, for the listener's hints.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The subject `transport`'s certificate is let in as, checked at `now`.
    ///
    /// # Errors
    ///
    /// The reason to refuse the request (see the [module docs](self)).
    pub fn check(&self, transport: &Transport, now: UnixTime) -> Result<&str, AuthError> {
        let Some(chain) = transport
            .certificates
            .as_ref()
            .filter(|_| transport.over_tls)
        else {
            return Err(AuthError::ClientCertificateRequired);
        };
        let token = self.memo_token(now);
        if !chain.recalls(token) {
            if let Err(why) = verify_chain(self.verifier.as_ref(), chain.chain(), now) {
                tracing::debug!(reason = %why, "client certificate refused");
                return Err(AuthError::ClientCertificateInvalid);
            }
            chain.remember(token);
        }
        let names = chain
            .chain()
            .first()
            .and_then(|leaf| CertificateNames::from_der(leaf))
            .ok_or(AuthError::ClientCertificateInvalid)?;
        self.subjects
            .iter()
            .find(|s| s.matches(&names))
            .map(ClientSubject::as_str)
            .ok_or(AuthError::ClientCertificateForbidden)
    }

    /// What a connection remembers when its chain verified against this CA within
    /// the window of `now`.
    fn memo_token(&self, now: UnixTime) -> u64 {
        let window = now.as_secs() / MEMO_WINDOW_SECS;
        (u64::from(self.id) << 32) | (window & u64::from(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sluice_listener::testing::TestCa;

    use super::*;

    fn auth(ca: &TestCa) -> ClientCertAuth {
        ClientCertAuth::new(&ClientCertificates {
            ca_pem: ca.pem.clone(),
            subjects: vec!["a.test".into()],
        })
        .expect("a requirement")
    }

    fn over_tls(chain: &PeerCertificates) -> Transport {
        Transport {
            over_tls: true,
            certificates: Some(chain.clone()),
        }
    }

    #[test]
    fn a_verified_chain_is_remembered_per_ca_and_window() {
        let ca = TestCa::new("clients");
        let (first, second) = (auth(&ca), auth(&ca));
        let chain = PeerCertificates::new(vec![ca.client_leaf("a", &["a.test"], &[]).der]);
        let now = UnixTime::now();
        assert_eq!(first.check(&over_tls(&chain), now), Ok("a.test"));
        assert!(chain.recalls(first.memo_token(now)));
        // Another requirement (the same CA in a new table) verifies again.
        assert!(!chain.recalls(second.memo_token(now)));
        // The next window verifies again.
        let later =
            UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs() + MEMO_WINDOW_SECS));
        assert!(!chain.recalls(first.memo_token(later)));
        // A refused chain is not remembered.
        let other = TestCa::new("other");
        let foreign = PeerCertificates::new(vec![other.client_leaf("a", &["a.test"], &[]).der]);
        assert_eq!(
            first.check(&over_tls(&foreign), now),
            Err(AuthError::ClientCertificateInvalid)
        );
        assert!(!foreign.recalls(first.memo_token(now)));
    }
}
