//! What a pool that requires client certificates spends on each request: verifying
//! the chain against its CA, reading the certificate's names, and matching a subject.
//! The certificates are fixtures (ECDSA P-256, valid for a century).

use criterion::{Criterion, criterion_group, criterion_main};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use sluice_api::table::client_cert::{CertificateNames, ClientCertificates, verify_chain};

const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBnjCCAUOgAwIBAgIUYq+IrLN0BGxrR4kkfpqzCtASdjMwCgYIKoZIzj0EAwIw\nGzEZMBcGA1UEAwwQYmVuY2ggY2xpZW50cyBDQTAgFw0yNjEyMDIxMzMzMzVaGA8y\nMTI2MTEwODEzMzMzNVowGzEZMBcGA1UEAwwQYmVuY2ggY2xpZW50cyBDQTBZMBMG\nByqGSM49AgEGCCqGSM49AwEHA0IABDFmY/GwBJI7SgNhgwp6KqQsRZZ5VHQ1GXdz\n3gd2YDulcss6kFyfxNARSdNkgQQlgVRcDb12dFS1TZSQsS6+872jYzBhMB0GA1Ud\nDgQWBBSVD/VUdkHDvgcxuXGLK4ugCuRD6DAfBgNVHSMEGDAWgBSVD/VUdkHDvgcx\nuXGLK4ugCuRD6DAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB/wQEAwIBBjAKBggq\nhkjOPQQDAgNJADBGAiEA23TxwhA8aADQ2PYcOWGzCvPWwxqDofmIJOeo8BRGxjMC\nIQC5WNgEBxYem+coHgGqbMV+cJftUyyQjarviMwP4P5sww==\n-----END CERTIFICATE-----\n";

const CLIENT: &str = "-----BEGIN CERTIFICATE-----\nMIIB3jCCAYOgAwIBAgIUWH9cqG/iIZ1U+EfRn16Sx7UlewswCgYIKoZIzj0EAwIw\nGzEZMBcGA1UEAwwQYmVuY2ggY2xpZW50cyBDQTAgFw0yNjEyMDIxMzMzMzVaGA8y\nMTI2MTEwODEzMzMzNVowEjEQMA4GA1UEAwwHcGxhbm5lcjBZMBMGByqGSM49AgEG\nCCqGSM49AwEHA0IABMOcWTBnJL9ESjvxwBcoaSlBQnRlZkbxsnuOdgdVA5v1ZNru\nI+UaJ+7u7JEHsQ0cQ14Zc8bRSUZ88Gv5z61YuZSjgaswgagwCQYDVR0TBAIwADAT\nBgNVHSUEDDAKBggrBgEFBQcDAjBGBgNVHREEPzA9hiNzcGlmZmU6Ly9iZW5jaC9u\ncy9hZ2VudHMvc2EvcGxhbm5lcoIWcGxhbm5lci5hZ2VudHMuZXhhbXBsZTAdBgNV\nHQ4EFgQU2j2GaOhNZTTcMBG0/nGUVxTItjQwHwYDVR0jBBgwFoAUlQ/1VHZBw74H\nMblxiyuLoArkQ+gwCgYIKoZIzj0EAwIDSQAwRgIhAPM1cN7eAavdF9luzm2a2unU\nzr0nw7uiomj2ugQkteFpAiEA0Ta89sexe3A4f+3iqOfxBoqiznyGNVF+wXerWpd7\ncmY=\n-----END CERTIFICATE-----\n";

fn bench(c: &mut Criterion) {
    let certs = ClientCertificates {
        ca_pem: CA.to_owned(),
        subjects: vec![
            "spiffe://bench/ns/agents/sa/other".to_owned(),
            "spiffe://bench/ns/agents/sa/planner".to_owned(),
        ],
    };
    let verifier = certs.verifier().expect("a CA");
    let subjects = certs.parsed_subjects().expect("subjects");
    let chain = vec![CertificateDer::from_pem_slice(CLIENT.as_bytes()).expect("PEM")];
    let now = UnixTime::now();
    verify_chain(verifier.as_ref(), &chain, now).expect("verifies");
    c.bench_function("client_cert/verify_chain", |b| {
        b.iter(|| verify_chain(verifier.as_ref(), std::hint::black_box(&chain), now))
    });
    c.bench_function("client_cert/names_and_match", |b| {
        b.iter(|| {
            let names = CertificateNames::from_der(std::hint::black_box(&chain[0])).expect("names");
            subjects.iter().position(|s| s.matches(&names))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
