//! The schema of the `status.conditions` list both custom resources carry.
//!
//! The list is a map keyed on `type` (`x-kubernetes-list-type: map`), so that under
//! server-side apply each condition has its own owner: the controller's forced apply
//! replaces the conditions it writes and leaves those another manager wrote. Without
//! it the list would be atomic and every apply would replace it whole.
//!
//! The bounds are those of the upstream `metav1.Condition` type, which the generated
//! schema of [`Condition`] does not carry.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::{JsonSchema, Schema, SchemaGenerator};

/// Most conditions one object holds: Sluice writes three, other managers may add some.
pub const MAX_CONDITIONS: u32 = 16;

/// The schema of a `conditions` field: `Vec<Condition>` as a list-map keyed on `type`,
/// with every string and integer bounded.
pub fn schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = Vec::<Condition>::json_schema(generator);
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema.insert("maxItems".into(), MAX_CONDITIONS.into());
    let bounds = [
        (
            "type",
            serde_json::json!({"minLength": 1, "maxLength": 316}),
        ),
        (
            "status",
            serde_json::json!({"enum": ["True", "False", "Unknown"]}),
        ),
        (
            "reason",
            serde_json::json!({"minLength": 1, "maxLength": 1024}),
        ),
        ("message", serde_json::json!({"maxLength": 32768})),
        ("lastTransitionTime", serde_json::json!({"maxLength": 64})),
        ("observedGeneration", serde_json::json!({"minimum": 0})),
    ];
    if let Some(properties) = schema
        .get_mut("items")
        .and_then(|items| items.get_mut("properties"))
        .and_then(serde_json::Value::as_object_mut)
    {
        for (name, extra) in bounds {
            if let (Some(serde_json::Value::Object(field)), serde_json::Value::Object(extra)) =
                (properties.get_mut(name), extra)
            {
                field.extend(extra);
            }
        }
    }
    schema
}
