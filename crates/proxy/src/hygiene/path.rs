//! Request path normalisation: one canonical form, computed once, before matching.
//!
//! Routing, authentication, limits and the agent must all see the *same* path, or a
//! request can be routed as `/agents/public/...` and served as `/agents/secure/...`.
//! [`normalise`] turns a request path into its canonical form:
//!
//! 1. percent-encoded **unreserved** characters (`ALPHA DIGIT - . _ ~`, RFC 3986
//!    section 2.3) are decoded, so `%73ecure` is `secure` and `%2e%2e` is `..`;
//! 2. every other percent-encoding is kept, with upper-case hex (`%c3%a9` → `%C3%A9`);
//! 3. dot segments are resolved (`.` dropped, `..` removes the segment before it and
//!    never climbs above the root) and empty segments (`//`) are merged.
//!
//! Decoding comes first on purpose: resolving dot segments before decoding would let
//! `%2e%2e` through as a literal segment that the agent later decodes to `..`.
//!
//! Rejected with a [`PathError`] (the caller answers 400): encoded `/` (`%2F`, unless
//! [`PathOptions::allow_encoded_slash`]), encoded `\` (`%5C`), encoded NUL (`%00`), a raw
//! `\`, raw control characters and invalid percent sequences. A trailing slash is kept
//! (`/a/b/` and `/a/b` stay distinct) and a trailing dot segment leaves one (`/a/b/..`
//! is `/a/`), as in RFC 3986 section 5.2.4.
//!
//! A path that is already canonical is returned borrowed, without allocating. The query
//! string is not part of the path: pass `uri.path()`, or use
//! [`normalise_path_and_query`], which leaves the query untouched.

use std::borrow::Cow;

/// How paths are normalised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathOptions {
    /// Accept `%2F` (kept encoded, never decoded into a separator). Off by default: an
    /// agent that decodes it would see a different path than the one that was routed.
    pub allow_encoded_slash: bool,
}

/// Why a path was refused. Every case is the client's fault: answer 400, do not retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/` (asterisk-form `*`, or a relative path).
    #[error("the request path must start with '/'")]
    NotAbsolute,
    /// `%2F` while [`PathOptions::allow_encoded_slash`] is off.
    #[error("the request path contains an encoded '/' (%2F)")]
    EncodedSlash,
    /// `%5C`: an encoded backslash, a separator for some agents.
    #[error("the request path contains an encoded '\\' (%5C)")]
    EncodedBackslash,
    /// `%00`: an encoded NUL, which truncates the path for some agents.
    #[error("the request path contains an encoded NUL (%00)")]
    EncodedNul,
    /// A raw `\`.
    #[error("the request path contains a '\\'")]
    Backslash,
    /// A raw control character (U+0000 to U+001F, or U+007F).
    #[error("the request path contains a control character")]
    ControlCharacter,
    /// A `%` not followed by two hex digits.
    #[error("the request path contains an invalid percent-encoding")]
    InvalidPercentEncoding,
}

impl PathError {
    /// The reason code: a bounded metric label and the `code` of the 400 body.
    pub fn reason(&self) -> &'static str {
        match self {
            PathError::NotAbsolute => "path_not_absolute",
            PathError::EncodedSlash => "path_encoded_slash",
            PathError::EncodedBackslash => "path_encoded_backslash",
            PathError::EncodedNul => "path_encoded_nul",
            PathError::Backslash => "path_backslash",
            PathError::ControlCharacter => "path_control_character",
            PathError::InvalidPercentEncoding => "path_invalid_percent_encoding",
        }
    }
}

/// Returns the canonical form of `path` (see the [module docs](self)), borrowed when
/// `path` already is canonical. An empty path is `/`.
///
/// # Errors
///
/// A [`PathError`] for the rejected encodings and characters listed in the module docs.
pub fn normalise<'a>(path: &'a str, opts: &PathOptions) -> Result<Cow<'a, str>, PathError> {
    if path.is_empty() {
        return Ok(Cow::Borrowed("/"));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_canonical(path, opts)? {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path, opts)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// Normalises the path of a request target `path?query`, leaving the query (everything
/// from the first `?`) exactly as it was.
///
/// # Errors
///
/// As [`normalise`], for the path part.
pub fn normalise_path_and_query<'a>(
    path_and_query: &'a str,
    opts: &PathOptions,
) -> Result<Cow<'a, str>, PathError> {
    let Some(q) = path_and_query.find('?') else {
        return normalise(path_and_query, opts);
    };
    let (path, query) = path_and_query.split_at(q);
    match normalise(path, opts)? {
        // `path` may be empty and normalise to "/": only borrow when it is unchanged.
        Cow::Borrowed(p) if p.len() == path.len() => Ok(Cow::Borrowed(path_and_query)),
        normal => Ok(Cow::Owned(format!("{normal}{query}"))),
    }
}

/// Whether `c` is an RFC 3986 unreserved character.
fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Checks the byte at `i` (not a `%` escape): refuses raw `\` and control characters.
fn check_raw(c: u8) -> Result<(), PathError> {
    match c {
        b'\\' => Err(PathError::Backslash),
        0x00..=0x1f | 0x7f => Err(PathError::ControlCharacter),
        _ => Ok(()),
    }
}

/// Decodes the escape starting at `bytes[i] == b'%'`, refusing the forbidden ones.
fn check_escape(bytes: &[u8], i: usize, opts: &PathOptions) -> Result<u8, PathError> {
    let (Some(hi), Some(lo)) = (
        bytes.get(i + 1).copied().and_then(hex_value),
        bytes.get(i + 2).copied().and_then(hex_value),
    ) else {
        return Err(PathError::InvalidPercentEncoding);
    };
    let value = hi * 16 + lo;
    match value {
        b'/' if !opts.allow_encoded_slash => Err(PathError::EncodedSlash),
        b'\\' => Err(PathError::EncodedBackslash),
        0 => Err(PathError::EncodedNul),
        _ => Ok(value),
    }
}

/// One pass without allocating: validates `path` and tells whether it is canonical.
fn is_canonical(path: &str, opts: &PathOptions) -> Result<bool, PathError> {
    let bytes = path.as_bytes();
    let mut canonical = true;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'%' {
            let value = check_escape(bytes, i, opts)?;
            if is_unreserved(value) || bytes[i + 1..i + 3].iter().any(u8::is_ascii_lowercase) {
                canonical = false;
            }
            i += 3;
        } else {
            check_raw(c)?;
            i += 1;
        }
    }
    // Dot and empty segments; the first segment is the empty one before the leading '/'.
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment == "." || segment == ".." || (segment.is_empty() && !last) {
            canonical = false;
        }
    }
    Ok(canonical)
}

/// Decodes unreserved escapes, upper-cases the hex of the others. `path` has passed
/// [`is_canonical`], so every escape is valid.
fn decode_unreserved(path: &str, opts: &PathOptions) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let value = check_escape(bytes, i, opts)?;
            if is_unreserved(value) {
                out.push(char::from(value));
            } else {
                out.push('%');
                for &h in &bytes[i + 1..i + 3] {
                    out.push(char::from(h.to_ascii_uppercase()));
                }
            }
            i += 3;
        } else {
            // Copy the run up to the next escape as a whole: it may hold UTF-8.
            let end = path[i..].find('%').map_or(path.len(), |n| i + n);
            out.push_str(&path[i..end]);
            i = end;
        }
    }
    Ok(out)
}

/// Resolves `.` and `..` (never above the root) and merges empty segments. `path`
/// starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut stack: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        match segment {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                stack.pop();
                trailing_slash = true;
            }
            s => {
                stack.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &stack {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || stack.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalise(p, &PathOptions::default()).map(Cow::into_owned)
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for p in [
            "/",
            "/agents/echo",
            "/agents/echo/",
            "/a/%C3%A9",
            "/a/b.c/..d/...",
            "/a%20b",
        ] {
            let out = normalise(p, &PathOptions::default()).expect("valid");
            assert!(matches!(out, Cow::Borrowed(_)), "{p} was copied");
            assert_eq!(out, p);
        }
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(norm("").expect("ok"), "/");
        assert_eq!(norm("/a/./b").expect("ok"), "/a/b");
        assert_eq!(norm("/a/../b").expect("ok"), "/b");
        assert_eq!(norm("/../../b").expect("ok"), "/b");
        assert_eq!(norm("/a/b/..").expect("ok"), "/a/");
        assert_eq!(norm("/a/b/.").expect("ok"), "/a/b/");
        assert_eq!(norm("//a///b//").expect("ok"), "/a/b/");
        assert_eq!(norm("/..").expect("ok"), "/");
        assert_eq!(norm("//").expect("ok"), "/");
    }

    #[test]
    fn escapes_are_decoded_or_upper_cased() {
        assert_eq!(norm("/%61%7E%2d").expect("ok"), "/a~-");
        assert_eq!(norm("/a/%c3%a9").expect("ok"), "/a/%C3%A9");
        assert_eq!(norm("/a/%2e%2E/b").expect("ok"), "/b");
        assert_eq!(norm("/a/.%2e/b").expect("ok"), "/b");
        assert_eq!(norm("/a/%252e%252e/b").expect("ok"), "/a/%252e%252e/b");
    }

    #[test]
    fn rejections() {
        assert_eq!(norm("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(norm("*"), Err(PathError::NotAbsolute));
        assert_eq!(norm("/a%2fb"), Err(PathError::EncodedSlash));
        assert_eq!(norm("/a%5cb"), Err(PathError::EncodedBackslash));
        assert_eq!(norm("/a%00"), Err(PathError::EncodedNul));
        assert_eq!(norm("/a\\b"), Err(PathError::Backslash));
        assert_eq!(norm("/a\tb"), Err(PathError::ControlCharacter));
        assert_eq!(norm("/a\u{7f}"), Err(PathError::ControlCharacter));
        assert_eq!(norm("/a%"), Err(PathError::InvalidPercentEncoding));
        assert_eq!(norm("/a%4"), Err(PathError::InvalidPercentEncoding));
        assert_eq!(norm("/a%zz"), Err(PathError::InvalidPercentEncoding));
        let allow = PathOptions {
            allow_encoded_slash: true,
        };
        assert_eq!(normalise("/a%2fb/../c", &allow).expect("ok"), "/c");
        assert_eq!(normalise("/a%2fb", &allow).expect("ok"), "/a%2Fb");
    }

    #[test]
    fn query_is_untouched() {
        let opts = PathOptions::default();
        assert_eq!(
            normalise_path_and_query("/a/../b?x=/../%2f&y=%2e", &opts).expect("ok"),
            "/b?x=/../%2f&y=%2e"
        );
        let same = normalise_path_and_query("/b?x=%2f", &opts).expect("ok");
        assert!(matches!(same, Cow::Borrowed(_)));
        assert_eq!(normalise_path_and_query("?q", &opts).expect("ok"), "/?q");
        assert_eq!(
            normalise_path_and_query("/%2F?q", &opts),
            Err(PathError::EncodedSlash)
        );
    }
}
