//! Remote key sets against a real HTTP server on `127.0.0.1:0`: fetch, cache, refresh
//! on interval and on unknown `kid` (rate-limited), bounded time and size, and the last
//! good set kept through failures. Time jumps use tokio's clock, never real sleeps.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sluice_proxy::auth::AuthError;
use sluice_proxy::auth::jwks::{JwksError, JwksSource, KeySet, RemoteConfig, RemoteJwks};
use sluice_proxy::auth::jwt::{JwtConfig, JwtVerifier};
use tokio::net::TcpListener;

const JWKS: &[u8] = include_bytes!("fixtures/jwt/jwks.json");
const RSA_PRIVATE: &[u8] = include_bytes!("fixtures/jwt/rsa-private.pem");
const NOW: u64 = 1_700_000_000;

/// What the fake identity provider answers.
#[derive(Clone)]
enum Reply {
    Json(Bytes),
    /// The body in chunks of this size, without `Content-Length`.
    Chunked(Bytes, usize),
    Status(u16),
    Hang,
}

struct Idp {
    url: Uri,
    hits: Arc<AtomicUsize>,
    reply: Arc<Mutex<Reply>>,
}

impl Idp {
    async fn start(reply: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let reply = Arc::new(Mutex::new(reply));
        let (h, r) = (hits.clone(), reply.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (h, r) = (h.clone(), r.clone());
                let svc = service_fn(move |_req| {
                    h.fetch_add(1, Ordering::SeqCst);
                    let reply = r.lock().expect("reply").clone();
                    answer(reply)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        Self {
            url: format!("http://{addr}/.well-known/jwks.json")
                .parse()
                .expect("url"),
            hits,
            reply,
        }
    }

    fn set(&self, reply: Reply) {
        *self.reply.lock().expect("reply") = reply;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn config(&self) -> RemoteConfig {
        RemoteConfig {
            refresh_interval: Duration::from_secs(300),
            min_refresh_interval: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(5),
            max_bytes: 16 * 1024,
            ..RemoteConfig::new(self.url.clone())
        }
    }
}

async fn answer(reply: Reply) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let (status, body) = match reply {
        Reply::Json(b) => (StatusCode::OK, Full::new(b).boxed()),
        Reply::Chunked(b, size) => {
            let frames: Vec<Result<Frame<Bytes>, Infallible>> = b
                .chunks(size)
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            let stream = futures_util::stream::iter(frames);
            (StatusCode::OK, StreamBody::new(stream).boxed())
        }
        Reply::Status(s) => (
            StatusCode::from_u16(s).expect("status"),
            Full::new(Bytes::from_static(b"{}")).boxed(),
        ),
        Reply::Hang => std::future::pending().await,
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    Ok(resp)
}

/// The fixture set with only the keys whose kid is listed.
fn jwks_with(kids: &[&str]) -> Bytes {
    let all: Value = serde_json::from_slice(JWKS).expect("json");
    let keys: Vec<Value> = all["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap_or_default()))
        .cloned()
        .collect();
    Bytes::from(json!({ "keys": keys }).to_string())
}

fn kids(set: &KeySet) -> Vec<&str> {
    set.keys().iter().filter_map(|k| k.kid()).collect()
}

/// Jumps tokio's clock forward with no real wait; the clock runs on afterwards so the
/// sockets of the next fetch are not raced by auto-advancing timers.
async fn jump(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

fn token(kid: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    let claims = json!({"sub": "alice", "exp": NOW + 600});
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("key");
    jsonwebtoken::encode(&header, &claims, &key).expect("sign")
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

#[tokio::test]
async fn fetches_once_then_serves_from_cache_until_the_interval() {
    let idp = Idp::start(Reply::Json(Bytes::from_static(JWKS))).await;
    let remote = RemoteJwks::new(idp.config()).expect("remote");
    assert!(remote.cached().is_none());
    let first = remote.keys().await.expect("fetch");
    assert_eq!(kids(&first), ["rsa-1", "ec-1", "ed-1"]);
    let again = remote.keys().await.expect("cached");
    assert!(Arc::ptr_eq(&first, &again));
    assert_eq!(idp.hits(), 1);

    idp.set(Reply::Json(jwks_with(&["ec-1"])));
    jump(Duration::from_secs(299)).await;
    assert!(Arc::ptr_eq(&remote.keys().await.expect("cached"), &first));
    assert_eq!(idp.hits(), 1);
    jump(Duration::from_secs(1)).await;
    let refreshed = remote.keys().await.expect("refreshed");
    assert_eq!(kids(&refreshed), ["ec-1"]);
    assert_eq!(idp.hits(), 2);
}

#[tokio::test]
async fn unknown_kid_refreshes_at_most_once_per_interval() {
    let idp = Idp::start(Reply::Json(jwks_with(&["ec-1"]))).await;
    let remote = Arc::new(RemoteJwks::new(idp.config()).expect("remote"));
    let source = JwksSource::Remote(remote.clone());
    let verifier = JwtVerifier::new(JwtConfig::default()).expect("config");
    assert_eq!(kids(&remote.keys().await.expect("fetch")), ["ec-1"]);

    // The provider rotates in rsa-1; a token using it triggers a refresh. The first
    // fetch was just now, so wait out the rate limit first.
    idp.set(Reply::Json(jwks_with(&["ec-1", "rsa-1"])));
    jump(Duration::from_secs(10)).await;
    let identity = verifier.verify_with(&token("rsa-1"), &source, now()).await;
    assert_eq!(identity.map(|i| i.consumer), Ok("alice".to_owned()));
    assert_eq!(idp.hits(), 2);

    // A stream of tokens with made-up kids costs no more fetches within the interval.
    for _ in 0..20 {
        let r = verifier
            .verify_with(&token("made-up"), &source, now())
            .await;
        assert_eq!(r, Err(AuthError::UnknownKid));
    }
    assert_eq!(idp.hits(), 2);
    jump(Duration::from_secs(10)).await;
    let r = verifier
        .verify_with(&token("made-up"), &source, now())
        .await;
    assert_eq!(r, Err(AuthError::UnknownKid));
    assert_eq!(idp.hits(), 3);
    // The known key still verifies from the cache.
    assert!(
        verifier
            .verify_with(&token("rsa-1"), &source, now())
            .await
            .is_ok()
    );
    assert_eq!(idp.hits(), 3);
}

#[tokio::test]
async fn a_hanging_server_times_out_and_the_last_keys_stay() {
    let idp = Idp::start(Reply::Json(Bytes::from_static(JWKS))).await;
    let remote = RemoteJwks::new(idp.config()).expect("remote");
    let good = remote.keys().await.expect("fetch");
    idp.set(Reply::Hang);
    // Paused: the 5 s fetch timeout elapses as soon as the runtime is idle.
    tokio::time::pause();
    let err = remote.refresh().await.expect_err("hangs");
    assert!(
        matches!(err, JwksError::Timeout { timeout_ms: 5000 }),
        "{err}"
    );
    assert!(Arc::ptr_eq(&remote.cached().expect("kept"), &good));
    // A stale set is still served while the provider is down.
    tokio::time::advance(Duration::from_secs(600)).await;
    assert!(Arc::ptr_eq(&remote.keys().await.expect("stale"), &good));
}

#[tokio::test]
async fn oversize_responses_are_refused() {
    let mut big: Vec<u8> = JWKS.to_vec();
    big.truncate(big.len() - 2);
    big.extend_from_slice(&b" ".repeat(20 * 1024));
    big.extend_from_slice(b"}\n");
    let big = Bytes::from(big);
    assert!(KeySet::from_json(&big).is_ok(), "valid, only too large");

    let idp = Idp::start(Reply::Json(big.clone())).await;
    let remote = RemoteJwks::new(idp.config()).expect("remote");
    let err = remote.refresh().await.expect_err("declared too large");
    assert!(
        matches!(err, JwksError::TooLarge { max_bytes: 16384 }),
        "{err}"
    );

    idp.set(Reply::Chunked(big, 1024));
    let err = remote.refresh().await.expect_err("streamed too large");
    assert!(matches!(err, JwksError::TooLarge { .. }), "{err}");
    assert!(remote.cached().is_none());

    // Within the bound, chunked is fine.
    idp.set(Reply::Chunked(Bytes::from_static(JWKS), 100));
    assert_eq!(remote.refresh().await.expect("fetch").len(), 3);
}

#[tokio::test]
async fn failures_keep_the_last_good_set() {
    let idp = Idp::start(Reply::Json(Bytes::from_static(JWKS))).await;
    let remote = RemoteJwks::new(idp.config()).expect("remote");
    let good = remote.refresh().await.expect("fetch");
    for (reply, check) in [
        (Reply::Status(500), "status"),
        (Reply::Json(Bytes::from_static(b"<html>")), "json"),
        (Reply::Json(Bytes::from_static(br#"{"keys":[]}"#)), "empty"),
        (
            Reply::Json(Bytes::from_static(
                br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#,
            )),
            "oct only",
        ),
    ] {
        idp.set(reply);
        assert!(remote.refresh().await.is_err(), "{check}");
        assert!(
            Arc::ptr_eq(&remote.cached().expect("kept"), &good),
            "{check}"
        );
    }
}

#[tokio::test]
async fn never_loaded_is_unavailable_and_retries_are_spaced() {
    let idp = Idp::start(Reply::Status(503)).await;
    let remote = Arc::new(RemoteJwks::new(idp.config()).expect("remote"));
    let source = JwksSource::Remote(remote.clone());
    let verifier = JwtVerifier::new(JwtConfig::default()).expect("config");
    let r = verifier.verify_with(&token("rsa-1"), &source, now()).await;
    assert_eq!(r, Err(AuthError::KeysUnavailable));
    assert_eq!(idp.hits(), 1);
    assert!(matches!(remote.keys().await, Err(JwksError::NotLoaded)));
    assert_eq!(idp.hits(), 1);
    idp.set(Reply::Json(Bytes::from_static(JWKS)));
    jump(Duration::from_secs(10)).await;
    let r = verifier.verify_with(&token("rsa-1"), &source, now()).await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(idp.hits(), 2);
}

#[test]
fn only_http_and_https_urls() {
    for url in ["http://idp.example/jwks", "https://idp.example/jwks"] {
        let uri: Uri = url.parse().expect("uri");
        assert!(RemoteJwks::new(RemoteConfig::new(uri)).is_ok(), "{url}");
    }
    for url in ["/relative", "ftp://idp.example/"] {
        let uri: Uri = url.parse().expect("uri");
        assert!(
            matches!(
                RemoteJwks::new(RemoteConfig::new(uri)),
                Err(JwksError::UnsupportedUrl { .. })
            ),
            "{url}"
        );
    }
}

#[test]
fn key_sets_skip_what_they_cannot_use() {
    let doc = json!({"keys": [
        {"kty": "oct", "kid": "hs", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"},
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
        {"kty": "RSA", "kid": "tiny", "n": "AQAB", "e": "AQAB"},
        {"kty": "EC", "kid": "wrong-alg", "crv": "P-256", "alg": "RS256", "x": "AA", "y": "AA"},
        {"kty": "OKP", "kid": "x448", "crv": "X448", "x": "AA"},
        {"kid": "no-kty"},
        serde_json::from_slice::<Value>(JWKS).expect("json")["keys"][1].clone(),
    ]});
    let set = KeySet::from_json(doc.to_string().as_bytes()).expect("one usable");
    assert_eq!(kids(&set), ["ec-1"]);
    assert_eq!(set.skipped(), 6);

    let dup = json!({"keys": [
        serde_json::from_slice::<Value>(JWKS).expect("json")["keys"][1].clone(),
        serde_json::from_slice::<Value>(JWKS).expect("json")["keys"][1].clone(),
    ]});
    assert!(matches!(
        KeySet::from_json(dup.to_string().as_bytes()),
        Err(JwksError::DuplicateKid { .. })
    ));
    let many = json!({"keys": vec![json!({"kty": "oct"}); 65]});
    assert!(matches!(
        KeySet::from_json(many.to_string().as_bytes()),
        Err(JwksError::TooManyKeys)
    ));
}
