//! A backend's way out: an external URL, TLS and an injected credential, with the
//! Secrets they name read from Secrets labelled `sluice.dev/upstream` (as is the CA a
//! pool's `access.clientCertificates` names).
//!
//! Only labelled Secrets are read, so that the controller watches those and no other
//! Secret of the cluster; on Kubernetes, only in the namespaces the controller reads
//! them in ([`crate::Objects::upstream_secret_namespaces`]), so that it needs no
//! cluster-wide access to Secrets. A reference that does not resolve is an error on the pool:
//! sending without the credential, or verifying against other roots than the ones
//! named, is never what was asked. No diagnostic quotes a Secret's value.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;

use super::Cx;
use super::pool::http_token;
use crate::agent_pool::{self, BackendProtocol, SecretKeyRef};
use crate::table::upstream::{self, ClientCertificate, Sensitive, UpstreamAuth, UpstreamTls};
use crate::table::{Endpoint, is_host_port};

/// The label that lets Sluice read a Secret for its backends (any value).
pub const UPSTREAM_LABEL: &str = "sluice.dev/upstream";

/// The Secrets labelled [`UPSTREAM_LABEL`], by `(namespace, name)`, and the
/// namespaces whose pools may name them (`None`: all).
pub(super) struct SecretIndex<'a> {
    by_key: BTreeMap<(&'a str, &'a str), &'a Secret>,
    allowed: Option<&'a BTreeSet<String>>,
}

impl<'a> SecretIndex<'a> {
    pub(super) fn new(secrets: &'a [Secret], allowed: Option<&'a BTreeSet<String>>) -> Self {
        let by_key = secrets
            .iter()
            .filter(|s| is_upstream_secret(s))
            .map(|s| {
                let ns = s.metadata.namespace.as_deref().unwrap_or("default");
                let name = s.metadata.name.as_deref().unwrap_or_default();
                ((ns, name), s)
            })
            .collect();
        Self { by_key, allowed }
    }

    /// The value of `key` in Secret `name` of `namespace` (`stringData` over `data`,
    /// as the API server merges them), or an error on `field`.
    fn value(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
        field: &str,
        cx: &mut Cx,
    ) -> Option<String> {
        if self.allowed.is_some_and(|a| !a.contains(namespace)) {
            cx.error(
                field,
                format!(
                    "Secret {namespace}/{name} is not read: the controller reads Secrets for backends only in the namespaces of --upstream-secret-namespace (the chart's controller.upstreamSecretNamespaces), and {namespace} is not one of them"
                ),
            );
            return None;
        }
        let Some(secret) = self.by_key.get(&(namespace, name)) else {
            cx.error(
                field,
                format!(
                    "Secret {namespace}/{name} is not there, or is not labelled {UPSTREAM_LABEL}"
                ),
            );
            return None;
        };
        let bytes = secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| v.as_bytes().to_vec())
            .or_else(|| {
                secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|b| b.0.clone())
            });
        match bytes.map(String::from_utf8) {
            None => {
                cx.error(
                    field,
                    format!("Secret {namespace}/{name} has no key {key:?}"),
                );
                None
            }
            Some(Err(_)) => {
                cx.error(
                    field,
                    format!("Secret {namespace}/{name} key {key:?} is not UTF-8"),
                );
                None
            }
            Some(Ok(v)) => Some(v),
        }
    }
}

/// Whether `secret` carries [`UPSTREAM_LABEL`].
pub fn is_upstream_secret(secret: &Secret) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(UPSTREAM_LABEL))
}

/// A backend by URL: its one endpoint, its `Host`, and whether it is HTTPS.
pub(super) struct UrlTarget {
    pub(super) endpoint: Endpoint,
    pub(super) host: String,
    pub(super) https: bool,
}

/// Parses `url` (`http(s)://host[:port]`, nothing else).
pub(super) fn compile_url(url: &str, field: &str, cx: &mut Cx) -> Option<UrlTarget> {
    let bad = |cx: &mut Cx, why: &str| {
        cx.error(field, format!("{url:?} {why}"));
        None
    };
    let Ok(uri) = url.parse::<http::Uri>() else {
        return bad(cx, "is not a URL");
    };
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return bad(cx, "must start with https:// or http://"),
    };
    let Some(authority) = uri.authority() else {
        return bad(cx, "has no host");
    };
    if authority.as_str().contains('@') {
        return bad(cx, "must not carry credentials: use auth");
    }
    if uri.path_and_query().is_some_and(|pq| pq.as_str() != "/") || url.ends_with('?') {
        return bad(
            cx,
            "must have no path or query: the request's path is sent as it is",
        );
    }
    let host = authority.host().to_ascii_lowercase();
    let default_port = if https { 443 } else { 80 };
    let port = authority.port_u16().unwrap_or(default_port);
    let address = format!("{host}:{port}");
    if !is_host_port(&address) {
        return bad(cx, "does not name a valid host and port");
    }
    let host = if port == default_port {
        host
    } else {
        address.clone()
    };
    Some(UrlTarget {
        endpoint: Endpoint::new(address),
        host,
        https,
    })
}

/// The TLS settings of a backend, its Secrets read.
pub(super) fn compile_tls(
    tls: &agent_pool::BackendTls,
    protocol: BackendProtocol,
    namespace: &str,
    secrets: &SecretIndex<'_>,
    field: &str,
    cx: &mut Cx,
) -> Option<UpstreamTls> {
    let errors = cx.diags.len();
    if protocol == BackendProtocol::H2c {
        cx.error(
            &field.replace(".tls", ".protocol"),
            "H2c is HTTP/2 without TLS: over TLS, ALPN chooses HTTP/2 (leave protocol out)",
        );
    }
    let skip = tls.insecure_skip_verify.unwrap_or(false);
    if skip && tls.ca_secret_ref.is_some() {
        cx.error(
            &format!("{field}.insecureSkipVerify"),
            "insecureSkipVerify verifies nothing: it cannot be combined with caSecretRef",
        );
    } else if skip {
        cx.warning(
            &format!("{field}.insecureSkipVerify"),
            "the agents' certificates are not verified: anyone on the path can pose as them",
        );
    }
    let server_name = tls
        .sni
        .as_ref()
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
    let ca_pem = tls.ca_secret_ref.as_ref().and_then(|r| {
        secret_value(
            r,
            "ca.crt",
            namespace,
            secrets,
            &format!("{field}.caSecretRef"),
            cx,
        )
    });
    let client_certificate = tls.client_certificate_secret_ref.as_ref().and_then(|r| {
        let f = format!("{field}.clientCertificateSecretRef");
        let chain = secrets.value(namespace, &r.name, "tls.crt", &f, cx);
        let key = secrets.value(namespace, &r.name, "tls.key", &f, cx);
        Some(ClientCertificate {
            chain_pem: chain?,
            key_pem: Sensitive::new(key?),
        })
    });
    if cx.diags[errors..]
        .iter()
        .any(|d| d.severity == crate::Severity::Error)
    {
        return None;
    }
    let compiled = UpstreamTls {
        server_name,
        ca_pem,
        client_certificate,
        insecure_skip_verify: skip,
    };
    if let Err(e) = upstream::client_config(&compiled, rustls::RootCertStore::empty) {
        let (part, message) = e.split_once(": ").unwrap_or(("", &e));
        let sub = match part {
            "serverName" => ".sni",
            "caPem" => ".caSecretRef",
            "clientCertificate" => ".clientCertificateSecretRef",
            _ => "",
        };
        cx.error(&format!("{field}{sub}"), message);
        return None;
    }
    Some(compiled)
}

/// The credential of a backend, its Secret read.
pub(super) fn compile_auth(
    auth: &agent_pool::UpstreamAuth,
    namespace: &str,
    secrets: &SecretIndex<'_>,
    field: &str,
    cx: &mut Cx,
) -> Option<UpstreamAuth> {
    let name = auth.header.as_deref().unwrap_or("Authorization");
    let header = match http::HeaderName::from_bytes(name.as_bytes()) {
        Ok(h) if http_token(name) => Some(h),
        _ => {
            cx.error(
                &format!("{field}.header"),
                format!("{name:?} is not a valid header name"),
            );
            None
        }
    };
    let prefix = auth.prefix.clone().unwrap_or_default();
    let credential = secret_value(
        &auth.secret_ref,
        "api-key",
        namespace,
        secrets,
        &format!("{field}.secretRef"),
        cx,
    )?;
    let value = Sensitive::new(format!("{prefix}{}", credential.trim()));
    let compiled = UpstreamAuth {
        header: header?,
        value,
    };
    if compiled.header_value().is_err() {
        cx.error(
            &format!("{field}.secretRef"),
            "the prefix and the credential together are not a valid header value",
        );
        return None;
    }
    Some(compiled)
}

/// The value of `r` (its key, or `default_key`) in a Secret of `namespace` labelled
/// [`UPSTREAM_LABEL`], or an error on `field`.
pub(super) fn secret_value(
    r: &SecretKeyRef,
    default_key: &str,
    namespace: &str,
    secrets: &SecretIndex<'_>,
    field: &str,
    cx: &mut Cx,
) -> Option<String> {
    let key = r.key.as_deref().unwrap_or(default_key);
    secrets.value(namespace, &r.name, key, field, cx)
}
