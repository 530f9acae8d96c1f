//! The client certificates a pool requires (mutual TLS): the CA that signs them and
//! the subjects let in, and how a certificate's names are read and matched.
//!
//! A subject is matched exactly, never as a pattern:
//!
//! * one with a `:` is a URI (a SPIFFE ID, say): equal, byte for byte, to one of the
//!   certificate's URI subject alternative names;
//! * any other is a name: equal to one of its DNS subject alternative names ignoring
//!   ASCII case, or to its subject common name exactly.
//!
//! [`ClientCertificates::verifier`] checks a chain against the pool's own CA; the
//! compile step builds one too, so that a CA the proxy could not use is refused with
//! the field it came from.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use serde::{Deserialize, Serialize};

use super::rules::RuleError;

/// Longest subject.
pub const MAX_SUBJECT_LEN: usize = 256;

/// The client certificates a pool requires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificates {
    /// The CA certificates (PEM) that sign the clients' certificates.
    pub ca_pem: String,
    /// The subjects let in, in order.
    pub subjects: Vec<String>,
}

/// A subject a pool lets in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientSubject {
    /// A URI subject alternative name.
    Uri(String),
    /// A DNS subject alternative name or the subject common name.
    Name(String),
}

impl ClientSubject {
    /// Parses a subject as `subjects` lists it.
    ///
    /// # Errors
    ///
    /// [`RuleError::BadSubject`] when empty, longer than [`MAX_SUBJECT_LEN`], holding
    /// anything but visible ASCII, a wildcard, or a `:` without a URI scheme before it.
    pub fn parse(subject: &str) -> Result<Self, RuleError> {
        let bad = |why: &'static str| RuleError::BadSubject {
            subject: subject.to_owned(),
            why,
        };
        if subject.is_empty() || subject.len() > MAX_SUBJECT_LEN {
            return Err(bad("is not 1-256 characters long"));
        }
        if !subject.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("holds a space, a control or a non-ASCII character"));
        }
        if subject.contains('*') {
            return Err(bad(
                "holds a wildcard: subjects are matched exactly, list each one",
            ));
        }
        match subject.split_once(':') {
            None => Ok(Self::Name(subject.to_owned())),
            Some((scheme, rest)) => {
                let scheme_ok = scheme
                    .as_bytes()
                    .first()
                    .is_some_and(u8::is_ascii_alphabetic)
                    && scheme
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
                if scheme_ok && !rest.is_empty() {
                    Ok(Self::Uri(subject.to_owned()))
                } else {
                    Err(bad(
                        "holds a `:` but is not a URI (`scheme:...`, as spiffe://trust-domain/path)",
                    ))
                }
            }
        }
    }

    /// Whether a certificate with `names` holds this subject.
    pub fn matches(&self, names: &CertificateNames) -> bool {
        match self {
            Self::Uri(uri) => names.uris.iter().any(|u| u == uri),
            Self::Name(name) => {
                names.dns.iter().any(|d| d.eq_ignore_ascii_case(name))
                    || names.common_names.iter().any(|cn| cn == name)
            }
        }
    }

    /// The subject as listed: the caller's consumer name.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Uri(s) | Self::Name(s) => s,
        }
    }
}

impl ClientCertificates {
    /// The CA certificates.
    ///
    /// # Errors
    ///
    /// `caPem: ...` when the PEM holds no certificate or a malformed one.
    pub fn roots(&self) -> Result<Vec<CertificateDer<'static>>, String> {
        let roots = CertificateDer::pem_slice_iter(self.ca_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("caPem: not PEM: {e}"))?;
        if roots.is_empty() {
            return Err("caPem: holds no certificate".into());
        }
        Ok(roots)
    }

    /// The subjects, parsed.
    ///
    /// # Errors
    ///
    /// `subjects: ...`, the first subject [`ClientSubject::parse`] refuses, or an empty
    /// list.
    pub fn parsed_subjects(&self) -> Result<Vec<ClientSubject>, String> {
        if self.subjects.is_empty() {
            return Err("subjects: needs at least one entry".into());
        }
        self.subjects
            .iter()
            .map(|s| ClientSubject::parse(s).map_err(|e| format!("subjects: {e}")))
            .collect()
    }

    /// A verifier of client certificate chains against these CAs only (signatures,
    /// validity dates, and the `clientAuth` extended key usage when present).
    ///
    /// # Errors
    ///
    /// `caPem: ...` when the CAs cannot be trust anchors.
    pub fn verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, String> {
        let mut store = rustls::RootCertStore::empty();
        for root in self.roots()? {
            store
                .add(root)
                .map_err(|e| format!("caPem: a certificate cannot be a root: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
            .build()
            .map_err(|e| format!("caPem: {e}"))
    }
}

/// Verifies `chain` (leaf first) with `verifier` at `now`.
///
/// # Errors
///
/// The reason the chain does not verify, as rustls words it.
pub fn verify_chain(
    verifier: &dyn ClientCertVerifier,
    chain: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<(), String> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err("no certificate".into());
    };
    verifier
        .verify_client_cert(leaf, intermediates, now)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The names a certificate holds, as subjects are matched against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertificateNames {
    /// The subject's common names (UTF-8, printable or IA5 strings).
    pub common_names: Vec<String>,
    /// DNS subject alternative names.
    pub dns: Vec<String>,
    /// URI subject alternative names.
    pub uris: Vec<String>,
}

impl CertificateNames {
    /// Reads the names of a DER certificate; `None` when it is not one.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (cert, _) = tlv(der, 0x30)?;
        let (mut tbs, _) = tlv(cert, 0x30)?;
        // version [0] EXPLICIT, optional.
        if tbs.first() == Some(&0xA0) {
            tbs = tlv(tbs, 0xA0)?.1;
        }
        // serialNumber, signature, issuer, validity.
        tbs = tlv(tbs, 0x02)?.1;
        for _ in 0..3 {
            tbs = tlv(tbs, 0x30)?.1;
        }
        let (subject, rest) = tlv(tbs, 0x30)?;
        let mut names = Self::default();
        names.read_subject(subject)?;
        // subjectPublicKeyInfo, then optional [1], [2] and [3] extensions.
        let mut rest = tlv(rest, 0x30)?.1;
        while let Some(&tag) = rest.first() {
            let (value, after) = tlv(rest, tag)?;
            if tag == 0xA3 {
                names.read_extensions(tlv(value, 0x30)?.0)?;
            }
            rest = after;
        }
        Some(names)
    }

    /// The common names of a Name (a sequence of sets of attributes).
    fn read_subject(&mut self, mut rdns: &[u8]) -> Option<()> {
        const CN: &[u8] = &[0x55, 0x04, 0x03];
        while !rdns.is_empty() {
            let (mut set, after) = tlv(rdns, 0x31)?;
            while !set.is_empty() {
                let (attribute, next) = tlv(set, 0x30)?;
                let (oid, value) = tlv(attribute, 0x06)?;
                if oid == CN
                    && let Some(&tag) = value.first()
                    && matches!(tag, 0x0C | 0x13 | 0x16)
                {
                    let (text, _) = tlv(value, tag)?;
                    self.common_names
                        .push(String::from_utf8_lossy(text).into_owned());
                }
                set = next;
            }
            rdns = after;
        }
        Some(())
    }

    /// The DNS and URI names of the subject alternative name extension.
    fn read_extensions(&mut self, mut extensions: &[u8]) -> Option<()> {
        const SAN: &[u8] = &[0x55, 0x1D, 0x11];
        while !extensions.is_empty() {
            let (extension, after) = tlv(extensions, 0x30)?;
            let (oid, mut rest) = tlv(extension, 0x06)?;
            if rest.first() == Some(&0x01) {
                rest = tlv(rest, 0x01)?.1;
            }
            if oid == SAN {
                let (octets, _) = tlv(rest, 0x04)?;
                let (mut general, _) = tlv(octets, 0x30)?;
                while let Some(&tag) = general.first() {
                    let (value, next) = tlv(general, tag)?;
                    let text = || String::from_utf8_lossy(value).into_owned();
                    match tag {
                        0x82 => self.dns.push(text()),
                        0x86 => self.uris.push(text()),
                        _ => {}
                    }
                    general = next;
                }
            }
            extensions = after;
        }
        Some(())
    }
}

/// The value of the DER element at the start of `input` if its tag is `tag`, and what
/// follows it.
fn tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&len, rest) = rest.split_first()?;
    let (len, rest) = if len < 0x80 {
        (usize::from(len), rest)
    } else {
        let n = usize::from(len & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        (
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
            rest,
        )
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_parse_as_uris_or_names() {
        assert_eq!(
            ClientSubject::parse("spiffe://cluster.local/ns/a/sa/b"),
            Ok(ClientSubject::Uri(
                "spiffe://cluster.local/ns/a/sa/b".into()
            ))
        );
        assert_eq!(
            ClientSubject::parse("agent.example.com"),
            Ok(ClientSubject::Name("agent.example.com".into()))
        );
        for bad in ["", "*.example.com", "a b", "://x", "1x:y", "x:", "é"] {
            assert!(ClientSubject::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_match_exactly() {
        let names = CertificateNames {
            common_names: vec!["Planner".into()],
            dns: vec!["agent.example.com".into()],
            uris: vec!["spiffe://td/a".into()],
        };
        let m = |s: &str| ClientSubject::parse(s).expect("subject").matches(&names);
        assert!(m("Agent.Example.com"));
        assert!(m("Planner"));
        assert!(!m("planner"));
        assert!(m("spiffe://td/a"));
        assert!(!m("spiffe://TD/a"));
        assert!(!m("spiffe://td/a/b"));
        assert!(!m("example.com"));
    }

    #[test]
    fn truncated_der_is_not_a_certificate() {
        assert_eq!(CertificateNames::from_der(&[0x30, 0x82, 0x01]), None);
        assert_eq!(CertificateNames::from_der(&[]), None);
    }
}
