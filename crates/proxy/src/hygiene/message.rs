//! Messages the gateway does not forward whatever the table says: a `CONNECT` (a
//! reverse proxy is no tunnel: 405), and a request body in a transfer coding other
//! than `chunked` (hyper removes the chunked framing only, so a `gzip` coding would
//! reach the agent undeclared: 501, as RFC 9112 section 6.1 asks of a server that does
//! not implement a coding).

use http::Method;
use http::header::{self, HeaderMap};

use crate::error::ProxyError;

/// Refuses what the gateway does not forward.
///
/// # Errors
///
/// [`ProxyError::MethodNotAllowed`] for `CONNECT`;
/// [`ProxyError::UnsupportedTransferCoding`] for a coding other than `chunked`.
pub fn check(method: &Method, headers: &HeaderMap) -> Result<(), ProxyError> {
    if method == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed {
            method: method.to_string(),
        });
    }
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let Ok(value) = value.to_str() else {
            return Err(ProxyError::UnsupportedTransferCoding {
                coding: String::from_utf8_lossy(value.as_bytes()).into_owned(),
            });
        };
        for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return Err(ProxyError::UnsupportedTransferCoding {
                    coding: coding.to_owned(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn te(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::TRANSFER_ENCODING, v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn only_chunked_bodies_and_non_connect_methods_pass() {
        assert!(check(&Method::POST, &te(&["chunked"])).is_ok());
        assert!(check(&Method::POST, &te(&["Chunked"])).is_ok());
        assert!(check(&Method::GET, &HeaderMap::new()).is_ok());
        assert!(matches!(
            check(&Method::POST, &te(&["gzip, chunked"])),
            Err(ProxyError::UnsupportedTransferCoding { coding }) if coding == "gzip"
        ));
        assert!(matches!(
            check(&Method::POST, &te(&["deflate", "chunked"])),
            Err(ProxyError::UnsupportedTransferCoding { .. })
        ));
        assert!(matches!(
            check(&Method::CONNECT, &HeaderMap::new()),
            Err(ProxyError::MethodNotAllowed { .. })
        ));
    }
}
