//! Who may read the route table: a caller without a valid token gets `401` and no
//! byte of the table; a shared token lets proxies and peers in; on Kubernetes, a
//! ServiceAccount token is checked with a TokenReview (through kube's real client, to a
//! stand-in of the API server) for the audience and the ServiceAccount, answers are
//! cached, and an API server that does not answer is a `503`. The health checks and
//! `/metrics` stay open.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use kube::client::Body;
use sluice_api::push::{ACK_PATH, PROXIES_PATH, ROUTES_PATH, WATCH_PATH};
use sluice_api::testing::one_pool_table as table;
use sluice_controller::auth::{PushAuth, TokenFile, TokenReviewConfig, TokenReviewer};
use sluice_controller::push::PushConfig;
use support::push::PushServer;

const AUDIENCE: &str = "sluice.dev/push";

/// `method path` with `token` as a bearer token: status, `WWW-Authenticate`, body.
async fn call(
    server: &PushServer,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> (u16, Option<String>, String) {
    let mut req = Request::builder().method(method).uri(server.url(path));
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let resp = server
        .client
        .request(req.body(Full::new(Bytes::new())).expect("request"))
        .await
        .expect("answer");
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().expect("ascii").to_owned());
    // A refused subscription is a short answer: read it whole.
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("a finite answer")
        .expect("body")
        .to_bytes();
    (
        status,
        challenge,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn metrics(server: &PushServer) -> String {
    call(server, Method::GET, "/metrics", None).await.2
}

#[tokio::test]
async fn a_shared_token_is_required_and_nothing_of_the_table_leaks_without_it() {
    let dir = std::env::temp_dir().join(format!("sluice-push-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("token");
    std::fs::write(&path, "s3cret-token\n").expect("write");
    let server = PushServer::start_config(PushConfig {
        auth: PushAuth::SharedToken(Arc::new(TokenFile::new(&path))),
        heartbeat: Duration::from_secs(3600),
        ..PushConfig::default()
    })
    .await;
    let published = table("/secret-route");
    server.publisher.publish(published).expect("valid");

    for token in [None, Some("wrong"), Some("s3cret-token-and-more")] {
        for path in [WATCH_PATH, ROUTES_PATH, PROXIES_PATH] {
            let (status, challenge, body) = call(&server, Method::GET, path, token).await;
            assert_eq!(status, 401, "{path} with {token:?}");
            assert_eq!(challenge.as_deref(), Some("Bearer"));
            assert!(!body.contains("secret-route"), "{path}: {body}");
            assert!(body.contains("\"error\""), "{body}");
        }
        let (status, _, _) = call(&server, Method::POST, ACK_PATH, token).await;
        assert_eq!(status, 401);
    }
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            call(&server, Method::GET, open, None).await.0,
            200,
            "{open}"
        );
    }
    let text = metrics(&server).await;
    assert!(
        text.contains("sluice_controller_push_auth_failures_total{reason=\"missing\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("sluice_controller_push_auth_failures_total{reason=\"refused\"} 8"),
        "{text}"
    );

    let (status, _, body) = call(&server, Method::GET, ROUTES_PATH, Some("s3cret-token")).await;
    assert_eq!(status, 200);
    assert!(body.contains("/secret-route"));
    let (status, _, _) = call(&server, Method::GET, PROXIES_PATH, Some("s3cret-token")).await;
    assert_eq!(status, 200, "the shared token is a peer's too");

    // The file is read again: a rotated token replaces the old one.
    std::fs::write(&path, "rotated-token").expect("write");
    let rotated = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if call(&server, Method::GET, ROUTES_PATH, Some("rotated-token"))
                .await
                .0
                == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(rotated.is_ok(), "the new token is accepted within seconds");
    assert_eq!(
        call(&server, Method::GET, ROUTES_PATH, Some("s3cret-token"))
            .await
            .0,
        401
    );
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A stand-in of the API server's TokenReview: tokens named in `accounts` are valid
/// for the audiences given, for that ServiceAccount; every review is recorded; while
/// `down`, it answers 500.
#[derive(Clone, Default)]
struct TokenReviews {
    accounts: BTreeMap<&'static str, (&'static str, &'static [&'static str])>,
    reviews: Arc<Mutex<Vec<(String, String, serde_json::Value)>>>,
    down: Arc<Mutex<bool>>,
}

impl TokenReviews {
    fn client(&self) -> kube::Client {
        let stand_in = self.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let stand_in = stand_in.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body.collect().await?.to_bytes();
                let review: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
                stand_in.reviews.lock().expect("lock").push((
                    parts.method.to_string(),
                    parts.uri.path().to_owned(),
                    review.clone(),
                ));
                if *stand_in.down.lock().expect("lock") {
                    let mut resp = Response::new(Body::from(b"{}".to_vec()));
                    *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    return Ok::<_, kube::Error>(resp);
                }
                let token = review["spec"]["token"].as_str().unwrap_or_default();
                let wanted: Vec<&str> = review["spec"]["audiences"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                let status = match stand_in.accounts.get(token) {
                    Some((account, audiences)) => {
                        let common: Vec<&str> = wanted
                            .iter()
                            .copied()
                            .filter(|a| audiences.contains(a))
                            .collect();
                        if common.is_empty() {
                            serde_json::json!({"authenticated": false, "error": "token audiences are invalid for the target audiences"})
                        } else {
                            serde_json::json!({
                                "authenticated": true,
                                "audiences": common,
                                "user": {"username": format!("system:serviceaccount:{account}")},
                            })
                        }
                    }
                    None => {
                        serde_json::json!({"authenticated": false, "error": "invalid bearer token"})
                    }
                };
                let mut answer = review.clone();
                answer["status"] = status;
                let resp = Response::new(Body::from(serde_json::to_vec(&answer).expect("json")));
                Ok(resp)
            }
        });
        kube::Client::new(service, "default")
    }

    fn count(&self) -> usize {
        self.reviews.lock().expect("lock").len()
    }
}

#[tokio::test]
async fn service_account_tokens_are_reviewed_for_the_audience_and_the_account() {
    let mut reviews = TokenReviews::default();
    reviews
        .accounts
        .insert("proxy-token", ("sluice:sluice-proxy", &[AUDIENCE]));
    reviews
        .accounts
        .insert("peer-token", ("sluice:sluice-controller", &[AUDIENCE]));
    // A proxy's token, but minted for the API server's audience.
    reviews.accounts.insert(
        "api-audience-token",
        ("sluice:sluice-proxy", &["https://kubernetes.default.svc"]),
    );
    // A token of the audience, from another workload's ServiceAccount.
    reviews
        .accounts
        .insert("stranger-token", ("default:someone", &[AUDIENCE]));
    let mut config = TokenReviewConfig::new(AUDIENCE);
    config.proxies = vec!["sluice:sluice-proxy".to_owned()];
    config.peers = vec!["sluice:sluice-controller".to_owned()];
    let reviewer = TokenReviewer::new(reviews.client(), config);
    let server = PushServer::start_config(PushConfig {
        auth: PushAuth::TokenReview(Arc::new(reviewer)),
        heartbeat: Duration::from_secs(3600),
        ..PushConfig::default()
    })
    .await;
    server
        .publisher
        .publish(table("/secret-route"))
        .expect("valid");

    let expect = |path: &'static str, token: &'static str, status: u16| {
        let server = &server;
        async move {
            let (got, _, body) = call(server, Method::GET, path, Some(token)).await;
            assert_eq!(got, status, "{path} with {token}: {body}");
            if status != 200 {
                assert!(!body.contains("secret-route"), "{body}");
            }
        }
    };
    expect(ROUTES_PATH, "proxy-token", 200).await;
    expect(PROXIES_PATH, "proxy-token", 403).await;
    expect(PROXIES_PATH, "peer-token", 200).await;
    expect(ROUTES_PATH, "peer-token", 200).await;
    expect(WATCH_PATH, "peer-token", 403).await;
    expect(WATCH_PATH, "api-audience-token", 401).await;
    expect(WATCH_PATH, "stranger-token", 403).await;
    expect(WATCH_PATH, "forged-token", 401).await;

    // Every review asked for the audience, by a create of tokenreviews (auth::RBAC).
    for (method, path, review) in reviews.reviews.lock().expect("lock").iter() {
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("POST", "/apis/authentication.k8s.io/v1/tokenreviews")
        );
        assert_eq!(review["spec"]["audiences"], serde_json::json!([AUDIENCE]));
    }
    assert_eq!(
        sluice_controller::auth::RBAC,
        &[("authentication.k8s.io", "tokenreviews", &["create"][..])]
    );

    // Answers, accepted or refused, are cached: asking again does not review again.
    let before = reviews.count();
    expect(ROUTES_PATH, "proxy-token", 200).await;
    expect(WATCH_PATH, "forged-token", 401).await;
    assert_eq!(reviews.count(), before, "answered from the cache");

    // An API server that fails is a 503 with Retry-After, not cached.
    *reviews.down.lock().expect("lock") = true;
    let (status, _, _) = call(&server, Method::GET, ROUTES_PATH, Some("new-token")).await;
    assert_eq!(status, 503);
    *reviews.down.lock().expect("lock") = false;
    let (status, _, _) = call(&server, Method::GET, ROUTES_PATH, Some("new-token")).await;
    assert_eq!(status, 401, "asked again once the API server answers");
    let text = metrics(&server).await;
    for (reason, n) in [("forbidden", 3), ("refused", 4), ("unavailable", 1)] {
        let line = format!("sluice_controller_push_auth_failures_total{{reason=\"{reason}\"}} {n}");
        assert!(text.contains(&line), "{line} in {text}");
    }
    server.stop().await;
}

/// With a lifetime, a subscription ends by itself (and its proxy subscribes again,
/// with its current token).
#[tokio::test(start_paused = true)]
async fn subscriptions_end_after_their_lifetime() {
    let lifetime = Duration::from_secs(600);
    let server = PushServer::start_config(PushConfig {
        subscription_lifetime: Some(lifetime),
        heartbeat: Duration::from_secs(3600),
        ..PushConfig::default()
    })
    .await;
    server.publisher.publish(table("/a")).expect("valid");
    let (status, mut stream) = server.subscribe("?proxy=p-1").await;
    assert_eq!(status, 200);
    let started = tokio::time::Instant::now();
    stream.next_table().await;
    let ended = stream.end().await;
    assert!(ended, "the stream ended cleanly");
    let after = started.elapsed();
    assert!(
        after >= lifetime.mul_f64(0.8) && after <= lifetime,
        "ended after {after:?}"
    );
    server.stop().await;
}
