//! Compiling one entry of an AgentPool's `matches` into a route.

use super::Cx;
use super::pool::header_name;
use crate::agent_pool::RouteMatch;
use crate::table::{HeaderMatch, ModelMatch, Route, is_host_port, rules};

/// The route of match `m` (at `field`) of pool `pool`, or `None` (with errors in `cx`).
pub(super) fn compile_match(m: &RouteMatch, pool: &str, field: &str, cx: &mut Cx) -> Option<Route> {
    let errors_before = cx.diags.len();
    let raw = m.path_prefix.as_deref().unwrap_or("/");
    let path_field = format!("{field}.pathPrefix");
    if !raw.starts_with('/') {
        cx.error(&path_field, format!("{raw:?} must start with /"));
    } else if raw.contains(['?', '#']) || raw.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        cx.error(&path_field, format!("{raw:?} must be a plain path, without query, fragment, spaces or control characters"));
    } else if raw.contains("//") || raw.split('/').any(|s| s == "." || s == "..") {
        cx.error(
            &path_field,
            format!("{raw:?} must not contain empty, `.` or `..` segments"),
        );
    }
    let path_prefix = match raw.trim_end_matches('/') {
        "" => "/".to_owned(),
        p => p.to_owned(),
    };

    let host = match m.host.as_deref() {
        None => None,
        Some(h) => {
            let h = h.trim_end_matches('.').to_ascii_lowercase();
            if h.contains('*') {
                cx.error(
                    &format!("{field}.host"),
                    "wildcard hosts are not supported yet",
                );
            } else if !is_host_port(&format!("{h}:1")) || h.contains(':') {
                cx.error(
                    &format!("{field}.host"),
                    format!("{h:?} is not a valid host name (give it without a port)"),
                );
            }
            Some(h)
        }
    };

    let mut headers = Vec::new();
    for (j, h) in m.headers.iter().enumerate() {
        let name = header_name(&h.name, &format!("{field}.headers[{j}].name"), cx);
        if h.value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            cx.error(
                &format!("{field}.headers[{j}].value"),
                "contains control characters",
            );
        }
        if let Some(name) = name {
            headers.push(HeaderMatch {
                name,
                value: h.value.clone(),
            });
        }
    }
    headers.sort_by(|a, b| {
        a.name
            .as_str()
            .cmp(b.name.as_str())
            .then(a.value.cmp(&b.value))
    });

    let model = match (&m.model, &m.model_prefix) {
        (Some(_), Some(_)) => {
            cx.error(
                &format!("{field}.modelPrefix"),
                "set at most one of model and modelPrefix",
            );
            None
        }
        (Some(name), None) => model(name, &format!("{field}.model"), cx).map(ModelMatch::Exact),
        (None, Some(prefix)) => {
            model(prefix, &format!("{field}.modelPrefix"), cx).map(ModelMatch::Prefix)
        }
        (None, None) => None,
    };

    (cx.diags.len() == errors_before).then(|| Route {
        pool: pool.to_owned(),
        host,
        path_prefix,
        headers,
        method: m.method,
        model,
    })
}

/// A model name or prefix, checked.
fn model(name: &str, field: &str, cx: &mut Cx) -> Option<String> {
    match rules::model_name(name) {
        Ok(()) => Some(name.to_owned()),
        Err(e) => {
            cx.error(field, e.to_string());
            None
        }
    }
}
