//! What the compile step says about the objects it was given.
//!
//! A diagnostic names the object, the field path inside it and what is wrong, so that
//! a user reading a log line, `sluice compile` output or a status condition knows
//! exactly what to fix.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Identifies one object a diagnostic is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    /// The kind, for example `AgentPool`.
    pub kind: String,
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectRef {
    /// Builds a reference from its parts.
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// How serious a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    /// The object compiled, but probably not as the user meant (for example a Service
    /// with no endpoints yet).
    Warning,
    /// The object was left out of the table.
    Error,
}

/// One finding about one field of one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// The object the finding is about.
    pub object: ObjectRef,
    /// The field path inside the object, for example `spec.backends[1].service`.
    pub field: String,
    /// What is wrong, in words a user can act on.
    pub message: String,
    /// Whether the object was left out.
    pub severity: Severity,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(
            f,
            "{level}: {}: {}: {}",
            self.object, self.field, self.message
        )
    }
}

/// All findings of one compile run, in a stable order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Whether any finding left an object out of the table.
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.severity == Severity::Error)
    }

    /// Whether there are no findings at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The findings about one object.
    pub fn for_object<'a>(&'a self, object: &'a ObjectRef) -> impl Iterator<Item = &'a Diagnostic> {
        self.0.iter().filter(move |d| &d.object == object)
    }

    /// Iterates over all findings.
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}
