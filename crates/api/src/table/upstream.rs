//! How a proxy reaches a backend beyond plain HTTP: TLS (the name it verifies, the CA
//! it trusts, the certificate it presents) and a credential it injects.
//!
//! Secret material (a client key, an injected credential) travels in the table, from
//! the controller to the proxies over the authenticated push channel, as
//! [`Sensitive`]: it prints as `<redacted>`, and [`super::RouteTable::redacted`] hides
//! it from what the proxy's admin `/routes` and `sluice compile` show.
//!
//! [`client_config`] turns the settings into a rustls client configuration; the
//! compile step builds one too, so that a CA, a certificate or a key the proxy could
//! not use is refused with the field it came from.

use std::fmt;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};

use super::units::header_name;

/// A secret value: serialised as it is (the proxies need it), never printed.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sensitive(String);

/// What a redacted [`Sensitive`] holds.
pub const REDACTED: &str = "<redacted>";

impl Sensitive {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub(super) fn redact(&mut self) {
        REDACTED.clone_into(&mut self.0);
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// TLS to a backend's endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamTls {
    /// The name sent in SNI and verified; `None`: the host of the request's URI (the
    /// endpoint's host, or the url's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// CA certificates (PEM) the agent's chain must lead to; `None`: the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// The certificate the proxy presents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificate>,
    /// Accept any certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

/// A client certificate and its key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificate {
    /// The certificate chain, PEM, leaf first.
    pub chain_pem: String,
    /// The private key, PEM.
    pub key_pem: Sensitive,
}

/// A header set on every request to a backend, after the caller's credentials went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamAuth {
    /// The header.
    #[serde(with = "header_name")]
    pub header: HeaderName,
    /// Its whole value (prefix and credential).
    pub value: Sensitive,
}

impl UpstreamAuth {
    /// The value as a header value marked sensitive (never indexed by HPACK, printed
    /// as `Sensitive` by `http`).
    ///
    /// # Errors
    ///
    /// When the value holds bytes a header cannot.
    pub fn header_value(&self) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
        let mut v = HeaderValue::from_str(self.value.expose())?;
        v.set_sensitive(true);
        Ok(v)
    }
}

/// The rustls client configuration of `tls`, with `system_roots` when it names no CA
/// and the ring provider; ALPN is left to the caller.
///
/// # Errors
///
/// A message naming what is wrong (`serverName`, `caPem`, `clientCertificate`),
/// without quoting any secret.
pub fn client_config(
    tls: &UpstreamTls,
    system_roots: impl FnOnce() -> RootCertStore,
) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    if let Some(name) = &tls.server_name {
        ServerName::try_from(name.as_str())
            .map_err(|_| format!("serverName: {name:?} is not a DNS name or an IP address"))?;
    }
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider.clone())))
    } else {
        let roots = match &tls.ca_pem {
            Some(pem) => ca_roots(pem)?,
            None => system_roots(),
        };
        builder.with_root_certificates(roots)
    };
    match &tls.client_certificate {
        None => Ok(builder.with_no_client_auth()),
        Some(cert) => {
            let chain = CertificateDer::pem_slice_iter(cert.chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("clientCertificate: tls.crt is not PEM: {e}"))?;
            if chain.is_empty() {
                return Err("clientCertificate: tls.crt holds no certificate".into());
            }
            let key = PrivateKeyDer::from_pem_slice(cert.key_pem.expose().as_bytes())
                .map_err(|_| "clientCertificate: tls.key is not a PEM private key".to_owned())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("clientCertificate: {e}"))
        }
    }
}

fn ca_roots(pem: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("caPem: not PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("caPem: a certificate cannot be a root: {e}"))?;
    }
    if roots.is_empty() {
        return Err("caPem: holds no certificate".into());
    }
    Ok(roots)
}

/// `insecureSkipVerify`: any certificate is accepted; the handshake's signatures are
/// still checked, so the connection is at least bound to the key that was presented.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{BackendTarget, Pool, RouteTable};

    #[test]
    fn secrets_print_redacted_and_a_redacted_table_holds_none() {
        let tls = UpstreamTls {
            client_certificate: Some(ClientCertificate {
                chain_pem: "chain".into(),
                key_pem: Sensitive::new("the-private-key"),
            }),
            ..UpstreamTls::default()
        };
        let auth = UpstreamAuth {
            header: http::header::AUTHORIZATION,
            value: Sensitive::new("Bearer the-credential"),
        };
        let pool = Pool {
            key: "d/p".into(),
            backends: vec![BackendTarget {
                tls: Some(tls),
                auth: Some(auth),
                ..BackendTarget::default()
            }],
            ..Pool::default()
        };
        let table = RouteTable::new(Vec::new(), vec![pool]);
        let debug = format!("{table:?}");
        assert!(!debug.contains("the-private-key") && !debug.contains("the-credential"));
        let wire = serde_json::to_string(&table).unwrap();
        assert!(wire.contains("the-private-key") && wire.contains("the-credential"));
        let shown = serde_json::to_string(&table.redacted()).unwrap();
        assert!(!shown.contains("the-private-key") && !shown.contains("the-credential"));
        assert_eq!(shown.matches(REDACTED).count(), 2, "{shown}");
    }
}
