//! Passive outlier ejection through real requests: an endpoint that answers 5xx
//! `consecutiveFailures` times in a row is taken out of the pool, and the pool never
//! ejects more than `maxEjectionPercent` of its endpoints.
//!
//! Ejections last a minute here, far beyond the tests that run in real time, so that
//! an endpoint coming back cannot blur their counts; with paused time, one test moves
//! the clock to the end of an ejection and sees the endpoint back.

mod support;

use http::{Response, StatusCode};
use support::{Agent, PoolYaml, Proxy, client, compile_yaml, full, get};

const POOL: &str = "demo/flaky";

/// An agent answering every request with `status` and its name.
async fn agent(name: &'static str, status: StatusCode) -> Agent {
    Agent::start(move |_req| async move {
        Response::builder()
            .status(status)
            .body(full(name))
            .expect("response")
    })
    .await
}

fn manifest(agents: &[&Agent], max_ejection_percent: u32) -> String {
    PoolYaml::new("flaky")
        .agents(agents)
        .spec(&format!(
            "outlierDetection: {{consecutiveFailures: 2, baseEjectionTime: 1m, \
             maxEjectionTime: 2m, maxEjectionPercent: {max_ejection_percent}}}"
        ))
        .yaml()
}

fn ejections(proxy: &Proxy, result: &str) -> f64 {
    proxy
        .metric(&format!(
            "sluice_outlier_ejections_total{{pool=\"{POOL}\",reason=\"consecutive_failures\",result=\"{result}\"}}"
        ))
        .unwrap_or(0.0)
}

#[tokio::test]
async fn an_endpoint_failing_twice_in_a_row_is_ejected() {
    let bad = agent("bad", StatusCode::INTERNAL_SERVER_ERROR).await;
    let good = agent("good", StatusCode::OK).await;
    let proxy = Proxy::with_table(compile_yaml(&manifest(&[&bad, &good], 50))).await;
    let c = client();

    // Round robin reaches the failing agent every other request.
    let mut sent = 0;
    while bad.requests() < 2 {
        assert!(
            sent < 10,
            "the failing agent got {} of {sent}",
            bad.requests()
        );
        let reply = get(&c, &proxy.url("/")).await;
        let expected = if reply.text() == "bad" {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
        assert_eq!(reply.status, expected);
        sent += 1;
    }
    assert_eq!(ejections(&proxy, "ejected"), 1.0);

    for _ in 0..20 {
        let reply = get(&c, &proxy.url("/")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "good");
    }
    assert_eq!(bad.requests(), 2, "no request reached the ejected agent");
    assert_eq!(ejections(&proxy, "skipped"), 0.0);
}

#[tokio::test]
async fn at_most_the_configured_share_of_the_pool_is_ejected() {
    let a = agent("a", StatusCode::INTERNAL_SERVER_ERROR).await;
    let b = agent("b", StatusCode::INTERNAL_SERVER_ERROR).await;
    // Half of two endpoints: one may be ejected, never both.
    let proxy = Proxy::with_table(compile_yaml(&manifest(&[&a, &b], 50))).await;
    let c = client();

    for _ in 0..8 {
        let reply = get(&c, &proxy.url("/")).await;
        assert_eq!(
            reply.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{}",
            reply.text()
        );
    }
    assert_eq!(ejections(&proxy, "ejected"), 1.0);
    assert!(
        ejections(&proxy, "skipped") >= 1.0,
        "the second ejection was skipped"
    );

    // The endpoint left in takes everything; the pool is never empty (no 503).
    let before = (a.requests(), b.requests());
    for _ in 0..10 {
        let reply = get(&c, &proxy.url("/")).await;
        assert_eq!(
            reply.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{}",
            reply.text()
        );
    }
    let grown = (a.requests() - before.0, b.requests() - before.1);
    assert!(grown == (10, 0) || grown == (0, 10), "{grown:?}");
    assert_eq!(ejections(&proxy, "ejected"), 1.0);
}

#[tokio::test]
async fn refused_connections_count_as_failures() {
    let good = agent("good", StatusCode::OK).await;
    let dead = support::dead_address().await;
    let yaml = manifest(&[&good], 50).replace(
        &format!("[\"{}\"]", good.address()),
        &format!("[\"{dead}\", \"{}\"]", good.address()),
    );
    let proxy = Proxy::with_table(compile_yaml(&yaml)).await;
    let c = client();

    let mut refused = 0;
    for _ in 0..10 {
        let reply = get(&c, &proxy.url("/")).await;
        if reply.status == StatusCode::BAD_GATEWAY {
            assert_eq!(reply.error_code(), "upstream_connect");
            refused += 1;
        } else {
            assert_eq!(reply.text(), "good");
        }
    }
    assert_eq!(refused, 2, "two refusals in a row eject the dead endpoint");
    assert_eq!(ejections(&proxy, "ejected"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn an_ejected_endpoint_takes_requests_again_once_its_ejection_ends() {
    let bad = agent("bad", StatusCode::INTERNAL_SERVER_ERROR).await;
    let good = agent("good", StatusCode::OK).await;
    let proxy = Proxy::with_table(compile_yaml(&manifest(&[&bad, &good], 50))).await;
    let c = client();
    while bad.requests() < 2 {
        assert!(
            good.requests() < 10,
            "round robin reaches the failing agent"
        );
        get(&c, &proxy.url("/")).await;
    }
    assert_eq!(ejections(&proxy, "ejected"), 1.0);

    // The base ejection is one minute: a second before it ends, still out.
    tokio::time::sleep(std::time::Duration::from_secs(59)).await;
    for _ in 0..4 {
        assert_eq!(get(&c, &proxy.url("/")).await.text(), "good");
    }
    assert_eq!(bad.requests(), 2);

    // Once it has ended, round robin reaches the endpoint again.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let texts: Vec<String> = {
        let mut texts = Vec::new();
        for _ in 0..4 {
            texts.push(get(&c, &proxy.url("/")).await.text().to_owned());
        }
        texts
    };
    assert_eq!(texts.iter().filter(|t| *t == "bad").count(), 2, "{texts:?}");
    assert_eq!(bad.requests(), 4);
}
