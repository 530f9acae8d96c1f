//! The schema's bounds, checked on every object before it is compiled.
//!
//! The API server refuses an object whose values break a bound of its CRD's schema
//! (`maximum`, `maxLength`, `maxItems`, ...); a manifest read from a file has met no
//! API server, so the same bounds are checked here. An object that breaks one is left
//! out with an error per value, and its other fields are not looked at: it is the
//! object `kubectl apply` would have refused.

use serde::Serialize;

use super::Cx;
use crate::schema::{Kind, out_of_bounds};

/// Records an error for each value of `object` outside its schema's bounds; returns
/// whether there was any.
pub(super) fn refused(kind: Kind, object: &impl Serialize, cx: &mut Cx) -> bool {
    // Serialising a custom resource to JSON cannot fail: its maps have string keys.
    let Ok(value) = serde_json::to_value(object) else {
        return false;
    };
    let found = out_of_bounds(kind, &value);
    for o in &found {
        cx.error(&o.path, o.message.clone());
    }
    !found.is_empty()
}
