//! Throwaway certificates for tests (feature `testing`): a CA, leaf certificates for
//! given names signed by it (valid, or expired), client certificates, their PEM files,
//! and a rustls client that trusts the CA (presenting a client certificate or not).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::CertificateFiles;

/// A certificate authority of a test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    /// The CA certificate, PEM.
    pub pem: String,
}

/// A leaf certificate and its key.
pub struct TestCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The certificate, DER: what a client sees.
    pub der: CertificateDer<'static>,
}

impl TestCa {
    /// A new CA named `name`.
    ///
    /// # Panics
    ///
    /// When rcgen fails (it does not with these parameters).
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("a CA certificate");
        Self {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (DNS names, wildcards or IP addresses), valid from a
    /// day ago for a year.
    pub fn leaf(&self, names: &[&str]) -> TestCert {
        let now = time_now();
        self.leaf_between(names, now - 86_400, now + 365 * 86_400)
    }

    /// A certificate for `names` that expired a day ago.
    pub fn expired_leaf(&self, names: &[&str]) -> TestCert {
        let now = time_now();
        self.leaf_between(names, now - 30 * 86_400, now - 86_400)
    }

    fn leaf_between(&self, names: &[&str], from: i64, until: i64) -> TestCert {
        let key = KeyPair::generate().expect("a key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("valid names");
        params.not_before =
            rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(from.unsigned_abs());
        params.not_after =
            rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(until.unsigned_abs());
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a leaf certificate");
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A client certificate (extended key usage `clientAuth`) with subject common name
    /// `cn`, DNS subject alternative names `dns` and URI ones `uris`, valid from a day
    /// ago for a year.
    ///
    /// # Panics
    ///
    /// When a name is not ASCII.
    pub fn client_leaf(&self, cn: &str, dns: &[&str], uris: &[&str]) -> TestCert {
        let key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let ia5 = |s: &&str| rcgen::string::Ia5String::try_from((*s).to_owned()).expect("ASCII");
        params.subject_alt_names = dns
            .iter()
            .map(|d| SanType::DnsName(ia5(d)))
            .chain(uris.iter().map(|u| SanType::URI(ia5(u))))
            .collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = time_now();
        params.not_before = rcgen::date_time_ymd(1970, 1, 1)
            + std::time::Duration::from_secs((now - 86_400).unsigned_abs());
        params.not_after = rcgen::date_time_ymd(1970, 1, 1)
            + std::time::Duration::from_secs((now + 365 * 86_400).unsigned_abs());
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a client certificate");
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A rustls client configuration that trusts this CA only, offers `alpn` and
    /// presents `cert` when asked for a certificate.
    pub fn client_config_presenting(
        &self,
        alpn: &[&[u8]],
        cert: &TestCert,
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("a CA certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
            .expect("a key");
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![cert.der.clone()], key)
            .expect("a client certificate");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// Writes the CA certificate to `dir/NAME` and returns its path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        write_atomically(&path, &self.pem);
        path
    }

    /// A rustls client configuration that trusts this CA only, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("a CA certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl TestCert {
    /// Writes `dir/NAME.crt` and `dir/NAME.key` (each replaced at once, as a Secret
    /// volume's files are) and returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> CertificateFiles {
        let files = CertificateFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        write_atomically(&files.cert, &self.cert_pem);
        write_atomically(&files.key, &self.key_pem);
        files
    }
}

/// Writes `text` to a temporary file beside `path`, then renames it over `path`.
///
/// # Panics
///
/// When the file cannot be written.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Seconds since the Unix epoch.
fn time_now() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
}
