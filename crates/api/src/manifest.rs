//! Reading the manifests a user would `kubectl apply` from YAML or JSON text.
//!
//! Only parsing lives here: callers read the files. Kinds Sluice does not use (a
//! Deployment or Service beside the AgentPools, say) are skipped, so a folder of
//! ordinary manifests can be pointed at as it is.
//!
//! An AgentPool or RatePolicy with a field its CRD's schema does not declare is
//! refused, naming the field and the declared one it most likely means: the API
//! server would prune such a field without a word (or, with `kubectl apply
//! --server-side`, refuse the object), and a pool running without the setting its
//! author wrote is worse than one that does not run. EndpointSlices and Secrets are
//! read with their own types and not checked this way.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;

use crate::compile::Objects;
use crate::diagnostics::ObjectRef;
use crate::schema::{self, UnknownField};
use crate::{AgentPool, RatePolicy};

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A document is not valid YAML, or does not fit its kind's schema. Not retryable
    /// until the file is edited.
    #[error("{source_name}: document {number}: {}{message}", named(object.as_deref()))]
    Document {
        /// The file (or other source) name.
        source_name: String,
        /// The document's number in the file, counted from 1 (as `---` separates them).
        number: usize,
        /// The object, when the document is YAML with a kind (its name is
        /// `<unnamed>` when it has none).
        object: Option<Box<ObjectRef>>,
        /// What is wrong.
        message: String,
    },
    /// An AgentPool or RatePolicy has fields its schema does not declare (a typo, or
    /// a field of another version). Not retryable until the file is edited.
    #[error("{source_name}: document {number}: {object}: {}", join(fields))]
    UnknownFields {
        /// The file (or other source) name.
        source_name: String,
        /// The document's number in the file, counted from 1.
        number: usize,
        /// The object with the fields (boxed: errors stay small).
        object: Box<ObjectRef>,
        /// The fields, in key order; never empty.
        fields: Vec<UnknownField>,
    },
}

fn named(object: Option<&ObjectRef>) -> String {
    object.map(|o| format!("{o}: ")).unwrap_or_default()
}

/// The object a document describes, as far as its metadata can be read: a namespace
/// of `default` when it names none (as `kubectl apply` would put it there), a name of
/// `<unnamed>` when it has none.
fn object_of(kind: &str, value: &serde_yaml::Value) -> ObjectRef {
    let metadata = |key: &str| value.get("metadata")?.get(key)?.as_str();
    ObjectRef::new(
        kind,
        metadata("namespace").unwrap_or("default"),
        metadata("name").unwrap_or("<unnamed>"),
    )
}

fn join(fields: &[UnknownField]) -> String {
    let parts: Vec<String> = fields.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

/// Parses `value`, a document of `kind`, refusing fields the schema does not declare.
/// When the typed parse fails on a number too large for its type, the error names the
/// field and its bound rather than only the type.
fn parse_custom<T: serde::de::DeserializeOwned>(
    kind: schema::Kind,
    kind_name: &str,
    value: serde_yaml::Value,
    source_name: &str,
    number: usize,
) -> Result<T, ManifestError> {
    // A document that does not convert (a non-string key, say) fails the typed parse.
    let json = serde_json::to_value(&value).unwrap_or_default();
    let object = Box::new(object_of(kind_name, &value));
    let fields = schema::unknown_fields(kind, &json);
    if !fields.is_empty() {
        return Err(ManifestError::UnknownFields {
            source_name: source_name.to_owned(),
            number,
            object,
            fields,
        });
    }
    serde_yaml::from_value(value).map_err(|e| {
        let bounds = schema::out_of_bounds(kind, &json);
        let message = if bounds.is_empty() {
            e.to_string()
        } else {
            let parts: Vec<String> = bounds
                .iter()
                .map(|o| format!("{}: {}", o.path, o.message))
                .collect();
            parts.join("; ")
        };
        ManifestError::Document {
            source_name: source_name.to_owned(),
            number,
            object: Some(object),
            message,
        }
    })
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
/// The first document that is not valid YAML, has no `kind`, does not match the
/// schema of a kind Sluice reads, or has fields that schema does not declare
/// ([`ManifestError::UnknownFields`]).
pub fn parse_into(text: &str, source_name: &str, into: &mut Objects) -> Result<(), ManifestError> {
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        let err = |object: Option<ObjectRef>, message: String| ManifestError::Document {
            source_name: source_name.to_owned(),
            number,
            object: object.map(Box::new),
            message,
        };
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| err(None, e.to_string()))?;
        if value.is_null() {
            continue; // an empty document, e.g. a trailing `---`
        }
        let meta: TypeMeta =
            serde_yaml::from_value(value.clone()).map_err(|e| err(None, e.to_string()))?;
        if meta.kind.is_empty() {
            return Err(err(None, "no kind".into()));
        }
        let object = || Some(object_of(&meta.kind, &value));
        match (meta.api_version.as_str(), meta.kind.as_str()) {
            ("sluice.dev/v1alpha1", "AgentPool") => {
                let mut pool: AgentPool = parse_custom(
                    schema::Kind::AgentPool,
                    "AgentPool",
                    value,
                    source_name,
                    number,
                )?;
                pool.metadata
                    .namespace
                    .get_or_insert_with(|| "default".into());
                into.pools.push(pool);
            }
            ("sluice.dev/v1alpha1", "RatePolicy") => {
                let mut policy: RatePolicy = parse_custom(
                    schema::Kind::RatePolicy,
                    "RatePolicy",
                    value,
                    source_name,
                    number,
                )?;
                policy
                    .metadata
                    .namespace
                    .get_or_insert_with(|| "default".into());
                into.policies.push(policy);
            }
            ("v1", "Secret") => {
                let mut secret: Secret = serde_yaml::from_value(value.clone())
                    .map_err(|e| err(object(), e.to_string()))?;
                // Only consumer and upstream Secrets are kept; others never reach the
                // compile step.
                let labels = secret.metadata.labels.as_ref();
                let read = labels.is_some_and(|l| {
                    l.contains_key(crate::compile::CONSUMER_LABEL)
                        || l.contains_key(crate::compile::UPSTREAM_LABEL)
                });
                if read {
                    secret
                        .metadata
                        .namespace
                        .get_or_insert_with(|| "default".into());
                    into.secrets.push(secret);
                }
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                let mut slice: EndpointSlice = serde_yaml::from_value(value.clone())
                    .map_err(|e| err(object(), e.to_string()))?;
                slice
                    .metadata
                    .namespace
                    .get_or_insert_with(|| "default".into());
                into.slices.push(slice);
            }
            (api, kind) if api.starts_with("sluice.dev/") => {
                return Err(err(
                    object(),
                    format!(
                        "{api} has no kind {kind} in this build of Sluice \
                         (known: AgentPool and RatePolicy in sluice.dev/v1alpha1)"
                    ),
                ));
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
    fn errors_name_the_file_the_document_from_one_and_the_object() {
        let text = "apiVersion: v1\nkind: ConfigMap\n---\napiVersion: sluice.dev/v1alpha1\n\
                    kind: AgentPool\nmetadata: {name: x, namespace: agents}\nspec: {matches: 3}\n";
        let err = parse_into(text, "bad.yaml", &mut Objects::default()).expect_err("bad");
        let msg = err.to_string();
        assert!(
            msg.starts_with("bad.yaml: document 2: AgentPool agents/x: "),
            "{msg}"
        );

        // Not YAML: no object to name, but where it breaks.
        let err = parse_into(
            "kind: ConfigMap\n---\na: b: c\n",
            "broken.yaml",
            &mut Objects::default(),
        )
        .expect_err("bad");
        let msg = err.to_string();
        assert!(msg.starts_with("broken.yaml: document 2: "), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");

        let err = parse_into("metadata: {name: x}\n", "t.yaml", &mut Objects::default())
            .expect_err("no kind");
        assert_eq!(err.to_string(), "t.yaml: document 1: no kind");

        let err = parse_into(
            "apiVersion: sluice.dev/v1alpha1\nkind: AgentPol\nmetadata: {name: echo}\n",
            "t.yaml",
            &mut Objects::default(),
        )
        .expect_err("unknown kind");
        assert_eq!(
            err.to_string(),
            "t.yaml: document 1: AgentPol default/echo: sluice.dev/v1alpha1 has no kind \
             AgentPol in this build of Sluice (known: AgentPool and RatePolicy in sluice.dev/v1alpha1)"
        );

        let text = "apiVersion: v1\nkind: Secret\n\
                    metadata: {name: alice, namespace: agents, labels: {sluice.dev/consumer: alice}}\n\
                    stringData: [1]\n";
        let err = parse_into(text, "k.yaml", &mut Objects::default()).expect_err("bad secret");
        let msg = err.to_string();
        assert!(
            msg.starts_with("k.yaml: document 1: Secret agents/alice: "),
            "{msg}"
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_a_suggestion() {
        let text = "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\n\
                    metadata: {name: echo, namespace: demo}\n\
                    spec:\n  matches: [{pathprefix: /agents/echo/}]\n  \
                    backends: [{endpoints: [\"127.0.0.1:9001\"]}]\n  \
                    loadBalancing: {algorith: Weighted}\n";
        let err = parse_into(text, "pool.yaml", &mut Objects::default()).expect_err("typos");
        assert_eq!(
            err.to_string(),
            "pool.yaml: document 1: AgentPool demo/echo: \
             spec.loadBalancing.algorith: unknown field; did you mean `algorithm`?; \
             spec.matches[0].pathprefix: unknown field; did you mean `pathPrefix`?"
        );
    }

    #[test]
    fn a_number_too_large_for_its_type_names_the_field_and_its_bound() {
        let text = "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\n\
                    metadata: {name: echo}\n\
                    spec:\n  matches: [{pathPrefix: /}]\n  \
                    backends: [{service: {name: a, port: 80}}]\n  \
                    queue: {defaultPriority: 5000000000}\n";
        let err = parse_into(text, "pool.yaml", &mut Objects::default()).expect_err("too large");
        assert_eq!(
            err.to_string(),
            "pool.yaml: document 1: AgentPool default/echo: \
             spec.queue.defaultPriority: must be at most 1000000 (is 5000000000)"
        );
    }

    #[test]
    fn slices_and_secrets_are_read_with_their_own_types() {
        let text = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                    metadata: {name: s, labels: {kubernetes.io/service-name: a}}\n\
                    addressType: IPv4\nendpoints: [{addresses: [10.0.0.1], conditions: {ready: true}}]\n\
                    ports: [{name: http, port: 80}]\n---\n\
                    apiVersion: v1\nkind: Secret\n\
                    metadata: {name: alice, labels: {sluice.dev/consumer: alice}}\n\
                    stringData: {api-key: k}\n";
        let mut objects = Objects::default();
        parse_into(text, "k8s.yaml", &mut objects).expect("parses");
        assert_eq!((objects.slices.len(), objects.secrets.len()), (1, 1));
    }
}
