//! Label selectors as the API server reads them: equality-based (`k`, `!k`, `k=v`,
//! `k==v`, `k!=v`) and set-based (`k in (a,b)`, `k notin (a,b)`), comma-separated, all
//! of which must hold.

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// `k`: the label is set.
    Exists(String),
    /// `!k`: the label is not set.
    Absent(String),
    /// `k=v`, `k==v`.
    Equal(String, String),
    /// `k!=v`: not set, or set to another value.
    NotEqual(String, String),
    /// `k in (a,b)`.
    In(String, Vec<String>),
    /// `k notin (a,b)`: not set, or set to none of them.
    NotIn(String, Vec<String>),
}

/// A parsed selector: every requirement must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector(pub Vec<Requirement>);

/// Splits on the commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn set(values: &str) -> Result<Vec<String>, String> {
    let inner = values
        .trim()
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .ok_or_else(|| format!("{values:?}: expected (a,b)"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect())
}

impl Selector {
    /// Parses `s` (empty: selects everything).
    ///
    /// # Errors
    ///
    /// The requirement that is not a selector.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for r in split_top(s) {
            let r = r.trim();
            if r.is_empty() {
                continue;
            }
            let requirement = if let Some((k, v)) = r.split_once(" notin ") {
                Requirement::NotIn(k.trim().to_owned(), set(v)?)
            } else if let Some((k, v)) = r.split_once(" in ") {
                Requirement::In(k.trim().to_owned(), set(v)?)
            } else if let Some((k, v)) = r.split_once("!=") {
                Requirement::NotEqual(k.to_owned(), v.to_owned())
            } else if let Some((k, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
                Requirement::Equal(k.to_owned(), v.to_owned())
            } else if let Some(k) = r.strip_prefix('!') {
                Requirement::Absent(k.to_owned())
            } else if r.contains(['(', ')', ' ']) {
                return Err(format!("{r:?} is not a label requirement"));
            } else {
                Requirement::Exists(r.to_owned())
            };
            out.push(requirement);
        }
        Ok(Self(out))
    }

    /// Whether the labels of `object` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let label = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::Absent(k) => label(k).is_none(),
            Requirement::Equal(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEqual(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn set_based_and_equality_based_requirements() {
        let s = Selector::parse("kubernetes.io/service-name in (chat, echo),team,tier!=gold")
            .expect("parses");
        assert_eq!(s.0.len(), 3);
        let object = |labels: Value| json!({"metadata": {"labels": labels}});
        assert!(s.matches(&object(
            json!({"kubernetes.io/service-name": "chat", "team": "a"})
        )));
        assert!(!s.matches(&object(
            json!({"kubernetes.io/service-name": "api", "team": "a"})
        )));
        assert!(!s.matches(&object(
            json!({"kubernetes.io/service-name": "echo", "team": "a", "tier": "gold"})
        )));
        let notin = Selector::parse("app notin (a,b)").expect("parses");
        assert!(notin.matches(&object(json!({}))));
        assert!(!notin.matches(&object(json!({"app": "a"}))));
        assert!(Selector::parse("a b").is_err());
    }
}
