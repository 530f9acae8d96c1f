//! The Sluice control plane.
//!
//! Objects come from a [`source`] (a folder of manifests, `--from-dir`) or from the
//! Kubernetes API ([`watch`]), are compiled by [`sluice_api::compile()`], and each new
//! table is handed to the [`publisher::Publisher`], which stamps its version. The
//! [`push`] server streams every published table to the subscribed proxies (the
//! protocol is [`sluice_api::push`]), and [`proxies`] keeps which table each of them
//! acknowledged; [`auth`] decides who may call it. On
//! Kubernetes, [`status`] turns each compile into status conditions, [`status_writer`]
//! applies them and [`events`] reports condition flips; with several replicas, only the
//! holder of the [`lease`] writes.
//!
//! The Kubernetes API calls each module makes are declared next to the code, as its
//! `RBAC` constant; [`cluster_rbac`], [`lease_rbac`], [`token_review_rbac`],
//! [`consumer_rbac`] and [`upstream_secret_rbac`] gather them (`sluice controller --print-rbac` prints
//! [`rbac_json`]), and the chart's roles are checked against them.

pub mod auth;
pub mod events;
pub mod external_metrics;
pub mod from_dir;
pub mod lease;
pub mod load;
pub mod object;
pub mod peers;
pub mod proxies;
pub mod publisher;
pub mod push;
pub mod rollout;
pub mod source;
pub mod status;
pub mod status_writer;
pub mod watch;

pub use publisher::{Published, Publisher};

/// One RBAC rule: API group (`""` for the core group), resource (with `/subresource`),
/// verbs.
pub type Rule = (&'static str, &'static str, &'static [&'static str]);

/// The rules the controller needs in every namespace it watches (the chart's
/// ClusterRole): watching objects, writing their status, publishing events. No Secret:
/// [`consumer_rbac`] and [`upstream_secret_rbac`] are granted in a few namespaces only.
pub fn cluster_rbac() -> Vec<Rule> {
    [watch::RBAC, status_writer::RBAC, events::RBAC].concat()
}

/// The rules the controller needs in the Lease's namespace only (the chart's Role).
pub fn lease_rbac() -> Vec<Rule> {
    lease::RBAC.to_vec()
}

/// The rules of TokenReview authentication ([`auth`]), cluster-scoped (a TokenReview
/// belongs to no namespace): the chart binds them with a ClusterRoleBinding of their
/// own even when [`cluster_rbac`] is bound in a few namespaces only.
pub fn token_review_rbac() -> Vec<Rule> {
    auth::RBAC.to_vec()
}

/// The rules the controller needs in each namespace it reads consumer Secrets from
/// (`--consumer-namespace`; the chart's consumer Role), and only there.
pub fn consumer_rbac() -> Vec<Rule> {
    watch::CONSUMER_RBAC.to_vec()
}

/// The rules the controller needs in each namespace whose pools may name Secrets for
/// their backends (`--upstream-secret-namespace`; the chart's upstream Secret Role), and
/// only there.
pub fn upstream_secret_rbac() -> Vec<Rule> {
    watch::UPSTREAM_SECRET_RBAC.to_vec()
}

/// [`cluster_rbac`], [`lease_rbac`], [`token_review_rbac`], [`consumer_rbac`] and
/// [`upstream_secret_rbac`] as Kubernetes `PolicyRule`s, one per resource:
/// `{"clusterRole": [...], "leaseRole": [...], "tokenReviewRole": [...],
/// "consumerRole": [...], "upstreamSecretRole": [...]}`.
pub fn rbac_json() -> serde_json::Value {
    fn rules(rules: &[Rule]) -> serde_json::Value {
        rules
            .iter()
            .map(|(group, resource, verbs)| {
                serde_json::json!({
                    "apiGroups": [group],
                    "resources": [resource],
                    "verbs": verbs,
                })
            })
            .collect()
    }
    serde_json::json!({
        "clusterRole": rules(&cluster_rbac()),
        "leaseRole": rules(&lease_rbac()),
        "tokenReviewRole": rules(&token_review_rbac()),
        "consumerRole": rules(&consumer_rbac()),
        "upstreamSecretRole": rules(&upstream_secret_rbac()),
    })
}
