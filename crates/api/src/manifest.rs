//! Reading the manifests a user would `kubectl apply` from YAML or JSON text.
//!
//! Only parsing lives here: callers read the files. Kinds Sluice does not use (a
//! Deployment or Service beside the AgentPools, say) are skipped, so a folder of
//! ordinary manifests can be pointed at as it is.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;

use crate::compile::Objects;
use crate::{AgentPool, RatePolicy};

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A document is not valid YAML, or does not fit its kind's schema. Not retryable
    /// until the file is edited.
    #[error("{source_name}: document {index}: {message}")]
    Document {
        /// The file (or other source) name.
        source_name: String,
        /// Zero-based index of the document in the file.
        index: usize,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

/// Parses every document of `text` and adds the objects Sluice uses to `into`.
///
/// Objects without a namespace are put in `default`, as `kubectl apply` would.
///
/// # Errors
///
/// The first document that is not valid YAML, has no `kind`, or does not match the
/// schema of a kind Sluice reads.
pub fn parse_into(text: &str, source_name: &str, into: &mut Objects) -> Result<(), ManifestError> {
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let err = |message: String| ManifestError::Document {
            source_name: source_name.to_owned(),
            index,
            message,
        };
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| err(e.to_string()))?;
        if value.is_null() {
            continue; // an empty document, e.g. a trailing `---`
        }
        let meta: TypeMeta =
            serde_yaml::from_value(value.clone()).map_err(|e| err(e.to_string()))?;
        if meta.kind.is_empty() {
            return Err(err("no kind".into()));
        }
        match (meta.api_version.as_str(), meta.kind.as_str()) {
            ("sluice.dev/v1alpha1", "AgentPool") => {
                let mut pool: AgentPool =
                    serde_yaml::from_value(value).map_err(|e| err(format!("AgentPool: {e}")))?;
                pool.metadata
                    .namespace
                    .get_or_insert_with(|| "default".into());
                into.pools.push(pool);
            }
            ("sluice.dev/v1alpha1", "RatePolicy") => {
                let mut policy: RatePolicy =
                    serde_yaml::from_value(value).map_err(|e| err(format!("RatePolicy: {e}")))?;
                policy
                    .metadata
                    .namespace
                    .get_or_insert_with(|| "default".into());
                into.policies.push(policy);
            }
            ("v1", "Secret") => {
                let mut secret: Secret =
                    serde_yaml::from_value(value).map_err(|e| err(format!("Secret: {e}")))?;
                // Only consumer Secrets are kept; others never reach the compile step.
                let consumer = secret
                    .metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key(crate::compile::CONSUMER_LABEL));
                if consumer {
                    secret
                        .metadata
                        .namespace
                        .get_or_insert_with(|| "default".into());
                    into.secrets.push(secret);
                }
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                let mut slice: EndpointSlice = serde_yaml::from_value(value)
                    .map_err(|e| err(format!("EndpointSlice: {e}")))?;
                slice
                    .metadata
                    .namespace
                    .get_or_insert_with(|| "default".into());
                into.slices.push(slice);
            }
            (api, kind) if api.starts_with("sluice.dev/") => {
                return Err(err(format!(
                    "{kind} in {api} is not a kind this build of Sluice knows \
                     (known: AgentPool and RatePolicy in sluice.dev/v1alpha1)"
                )));
            }
            _ => {} // not ours: Services, Deployments and the like
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ours_and_skips_the_rest() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: agents}
---
apiVersion: sluice.dev/v1alpha1
kind: AgentPool
metadata: {name: echo}
spec:
  matches: [{pathPrefix: /agents/echo/}]
  backends: [{endpoints: ["127.0.0.1:9001"]}]
---
"#;
        let mut objects = Objects::default();
        parse_into(text, "a.yaml", &mut objects).expect("parses");
        assert_eq!(objects.pools.len(), 1);
        assert_eq!(
            objects.pools[0].metadata.namespace.as_deref(),
            Some("default")
        );
    }

    #[test]
    fn errors_name_the_file_and_document() {
        let text = "apiVersion: v1\nkind: ConfigMap\n---\napiVersion: sluice.dev/v1alpha1\nkind: AgentPool\nmetadata: {name: x}\nspec: {matches: 3}\n";
        let err = parse_into(text, "bad.yaml", &mut Objects::default()).expect_err("bad");
        let msg = err.to_string();
        assert!(msg.starts_with("bad.yaml: document 1: AgentPool:"), "{msg}");

        let err = parse_into("a: [", "broken.yaml", &mut Objects::default()).expect_err("bad");
        assert!(
            err.to_string().starts_with("broken.yaml: document 0:"),
            "{err}"
        );

        let err = parse_into(
            "apiVersion: sluice.dev/v1alpha1\nkind: AgentPol\n",
            "t.yaml",
            &mut Objects::default(),
        )
        .expect_err("unknown kind");
        assert!(err.to_string().contains("AgentPol"), "{err}");
    }
}
