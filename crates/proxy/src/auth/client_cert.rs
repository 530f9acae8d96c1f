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

use std::sync::Arc;

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

/// A pool's client certificate requirement, built once per table.
pub struct ClientCertAuth {
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
        if let Err(why) = verify_chain(self.verifier.as_ref(), &chain.0, now) {
            tracing::debug!(reason = %why, "client certificate refused");
            return Err(AuthError::ClientCertificateInvalid);
        }
        let names = chain
            .0
            .first()
            .and_then(|leaf| CertificateNames::from_der(leaf))
            .ok_or(AuthError::ClientCertificateInvalid)?;
        self.subjects
            .iter()
            .find(|s| s.matches(&names))
            .map(ClientSubject::as_str)
            .ok_or(AuthError::ClientCertificateForbidden)
    }
}
