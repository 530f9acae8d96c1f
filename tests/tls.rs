//! End to end over TLS: the proxy terminates TLS for its clients (the certificate chosen
//! by SNI, ALPN, renewed files served without a restart) beside its cleartext
//! listener; the controller serves its push channel over TLS to proxies that check its
//! certificate and present the shared token, and a proxy with another token, or a
//! caller with none, gets nothing of the table. A pool that requires client
//! certificates, from a standalone manifest with its CA Secret, serves the clients its
//! CA signed as their subject and follows a new CA in the file.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use sluice_e2e::{Process, demo_agent, eventually, get, temp_dir, tls_get, tls_get_with};
use sluice_listener::CertificateFiles;
use sluice_listener::testing::TestCa;

fn pool(endpoint: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\nmetadata: {{name: echo, namespace: e2e}}\n\
         spec:\n  matches: [{{pathPrefix: /agents/echo/}}]\n  backends: [{{endpoints: [\"{endpoint}\"]}}]\n"
    )
}

fn arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// `sluice proxy --config routes` with a plaintext and a TLS listener serving `certs`,
/// and `extra` flags, once ready: the process and its plaintext, TLS and admin
/// addresses.
fn tls_proxy(
    routes: &Path,
    certs: &[&CertificateFiles],
    extra: &[&str],
) -> Result<(Process, [SocketAddr; 3])> {
    let routes = arg(routes);
    let files: Vec<[String; 2]> = certs.iter().map(|c| [arg(&c.cert), arg(&c.key)]).collect();
    let mut args = vec![
        "proxy",
        "--config",
        &routes,
        "--listen",
        "127.0.0.1:0",
        "--tls-listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ];
    for [cert, key] in &files {
        args.extend(["--tls-cert", cert.as_str(), "--tls-key", key.as_str()]);
    }
    args.extend_from_slice(extra);
    let mut proxy = Process::start("proxy", "sluice", &args)?;
    let plain = proxy.logged_addr("proxy started", "listen")?;
    let tls = proxy.logged_addr("proxy started", "tls_listen")?;
    let admin = proxy.logged_addr("proxy started", "admin")?;
    eventually(Duration::from_secs(20), "the proxy ready", || {
        Ok((get(admin, "/readyz")?.status == 200).then_some(()))
    })?;
    Ok((proxy, [plain, tls, admin]))
}

#[test]
fn the_proxy_terminates_tls_by_sni_beside_cleartext_and_picks_up_renewed_files() -> Result<()> {
    let (_agent, agent) = demo_agent("agent")?;
    let dir = temp_dir("tls-proxy");
    std::fs::write(dir.join("pool.yaml"), pool(&agent.to_string()))?;
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs)?;
    let ca = TestCa::new("e2e CA");
    let ca_file = ca.write(&certs, "ca.crt");
    let a = ca.leaf(&["a.example"]);
    let b = ca.leaf(&["*.b.example"]);
    let a_files = a.write(&certs, "a");
    let b_files = b.write(&certs, "b");
    let routes = dir.join("pool.yaml");
    let wait = Duration::from_secs(20);
    let (mut proxy, [plain, tls, admin]) = tls_proxy(
        &routes,
        &[&a_files, &b_files],
        &["--tls-reload-interval", "100ms"],
    )?;

    let answer = tls_get(
        tls,
        "a.example",
        &ca_file,
        &[b"http/1.1"],
        Some("/agents/echo/x"),
        &[],
    )?;
    assert_eq!(answer.certificate, a.der.to_vec());
    let resp = answer.response.expect("a response");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-demo-agent"), Some("agent"));
    // The demo agent echoes the headers it got: the agent is told the client used TLS.
    assert!(
        resp.body.contains(r#""x-forwarded-proto":"https""#),
        "{}",
        resp.body
    );
    let answer = tls_get(
        tls,
        "api.b.example",
        &ca_file,
        &[b"h2", b"http/1.1"],
        None,
        &[],
    )?;
    assert_eq!(answer.certificate, b.der.to_vec(), "chosen by SNI");
    assert_eq!(answer.alpn.as_deref(), Some(&b"h2"[..]));
    assert!(
        tls_get(tls, "c.example", &ca_file, &[], None, &[]).is_err(),
        "a name no certificate holds"
    );
    let cleartext = get(plain, "/agents/echo/x")?;
    assert!(
        cleartext.body.contains(r#""x-forwarded-proto":"http""#),
        "{}",
        cleartext.body
    );
    assert_eq!(cleartext.status, 200, "cleartext beside TLS");

    // cert-manager renews the Secret: the new certificate is served, no restart.
    let renewed = ca.leaf(&["a.example"]);
    renewed.write(&certs, "a");
    eventually(wait, "the renewed certificate", || {
        let served = tls_get(tls, "a.example", &ca_file, &[], None, &[])?.certificate;
        Ok((served == renewed.der.to_vec()).then_some(()))
    })?;
    proxy.wait_for_log("TLS certificates reloaded", wait)?;
    let metrics = get(admin, "/metrics")?.body;
    assert!(
        metrics.contains("sluice_listener_tls_reloads_total{listener=\"https\",result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_listener_connections_accepted_total{listener=\"http\"}"),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[test]
fn the_control_channel_is_tls_and_only_proxies_with_the_token_get_the_table() -> Result<()> {
    let (_agent, agent) = demo_agent("agent")?;
    let dir = temp_dir("tls-push");
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    std::fs::write(manifests.join("pool.yaml"), pool(&agent.to_string()))?;
    let ca = TestCa::new("controller CA");
    let ca_file = ca.write(&dir, "ca.crt");
    let cert = ca.leaf(&["localhost"]).write(&dir, "controller");
    let token = dir.join("token");
    std::fs::write(&token, "e2e-push-token\n")?;
    let wrong = dir.join("wrong-token");
    std::fs::write(&wrong, "not-the-token")?;
    let mut controller = Process::start(
        "controller",
        "sluice",
        &[
            "controller",
            "--from-dir",
            &arg(&manifests),
            "--listen",
            "127.0.0.1:0",
            "--poll-interval",
            "50ms",
            "--tls-cert",
            &arg(&cert.cert),
            "--tls-key",
            &arg(&cert.key),
            "--push-token-file",
            &arg(&token),
        ],
    )?;
    let addr = controller.logged_addr("controller started", "listen")?;
    let url = format!("https://localhost:{}", addr.port());
    let proxy = |name: &str, token: &Path| -> Result<(Process, std::net::SocketAddr)> {
        let mut p = Process::start(
            name,
            "sluice",
            &[
                "proxy",
                "--controller",
                &url,
                "--controller-ca",
                &arg(&ca_file),
                "--controller-token-file",
                &arg(token),
                "--proxy-id",
                name,
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
            ],
        )?;
        let admin = p.logged_addr("proxy started", "admin")?;
        Ok((p, admin))
    };
    let wait = Duration::from_secs(20);
    let (_good, good_admin) = proxy("proxy-good", &token)?;
    eventually(wait, "the table over TLS", || {
        Ok((get(good_admin, "/readyz")?.status == 200).then_some(()))
    })?;

    let (mut bad, bad_admin) = proxy("proxy-bad", &wrong)?;
    bad.wait_for_log("401", wait)?;
    controller.wait_for_log("push API call refused", wait)?;
    assert_eq!(
        get(bad_admin, "/readyz")?.status,
        503,
        "no table without the token"
    );

    // A caller with no token: 401, and nothing of the table.
    for path in ["/v1/routes/watch?proxy=x", "/v1/routes", "/v1/proxies"] {
        let answer = tls_get(addr, "localhost", &ca_file, &[b"http/1.1"], Some(path), &[])?;
        let resp = answer.response.expect("a response");
        assert_eq!(resp.status, 401, "{path}: {resp:?}");
        assert!(!resp.body.contains("agents/echo"), "{path}: {}", resp.body);
    }
    let authorization = "Bearer e2e-push-token";
    let answer = tls_get(
        addr,
        "localhost",
        &ca_file,
        &[b"http/1.1"],
        Some("/v1/proxies"),
        &[("Authorization", authorization)],
    )?;
    let resp = answer.response.expect("a response");
    assert_eq!(resp.status, 200);
    assert!(resp.body.contains("proxy-good"), "{}", resp.body);
    assert!(!resp.body.contains("proxy-bad"), "{}", resp.body);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// Pool `echo` requiring client certificates of `ca` with subject
/// `spiffe://e2e/planner`, its CA in a Secret manifest of the same file.
fn mtls_manifest(endpoint: &str, ca: &TestCa) -> Result<String> {
    Ok(format!(
        "apiVersion: v1\nkind: Secret\n\
         metadata: {{name: clients-ca, namespace: e2e, labels: {{sluice.dev/upstream: \"\"}}}}\n\
         stringData:\n  ca.crt: {}\n---\n{}  \
         access: {{clientCertificates: {{caSecretRef: {{name: clients-ca}}, subjects: [\"spiffe://e2e/planner\"]}}}}\n",
        serde_json::to_string(&ca.pem)?,
        pool(endpoint)
    ))
}

#[test]
fn a_pool_requiring_client_certificates_serves_its_subjects_over_tls_only() -> Result<()> {
    let (_agent, agent) = demo_agent("agent")?;
    let dir = temp_dir("mtls-proxy");
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs)?;
    let server_ca = TestCa::new("e2e server CA");
    let server = server_ca.leaf(&["proxy.example"]).write(&certs, "proxy");
    let clients = TestCa::new("e2e clients CA");
    let routes = dir.join("pool.yaml");
    std::fs::write(&routes, mtls_manifest(&agent.to_string(), &clients)?)?;
    let wait = Duration::from_secs(20);
    let (_proxy, [plain, tls, _]) = tls_proxy(&routes, &[&server], &["--poll-interval", "100ms"])?;
    let alpn: &[&[u8]] = &[b"http/1.1"];
    let call = |cert: Option<&sluice_listener::testing::TestCert>| {
        let config = match cert {
            Some(cert) => server_ca.client_config_presenting(alpn, cert),
            None => server_ca.client_config(alpn),
        };
        let answer = tls_get_with(tls, "proxy.example", config, Some("/agents/echo/x"), &[])?;
        answer.response.context("a response")
    };

    let planner = clients.client_leaf("planner", &[], &["spiffe://e2e/planner"]);
    let resp = call(Some(&planner))?;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(
        resp.body
            .contains(r#""x-sluice-consumer":"spiffe://e2e/planner""#),
        "the subject is the consumer: {}",
        resp.body
    );
    let resp = call(None)?;
    assert_eq!(resp.status, 403);
    assert!(
        resp.body.contains("client_certificate_required"),
        "{}",
        resp.body
    );
    let resp = get(plain, "/agents/echo/x")?;
    assert_eq!(resp.status, 403, "the plaintext listener: {resp:?}");
    assert!(
        resp.body.contains("client_certificate_required"),
        "{}",
        resp.body
    );
    let stranger =
        TestCa::new("someone else's CA").client_leaf("planner", &[], &["spiffe://e2e/planner"]);
    let resp = call(Some(&stranger))?;
    assert_eq!(resp.status, 403);
    assert!(
        resp.body.contains("client_certificate_invalid"),
        "{}",
        resp.body
    );

    // A new CA in the manifest: its certificates are served, the old CA's refused.
    let rotated = TestCa::new("e2e clients CA, renewed");
    std::fs::write(&routes, mtls_manifest(&agent.to_string(), &rotated)?)?;
    let renewed = rotated.client_leaf("planner", &[], &["spiffe://e2e/planner"]);
    eventually(wait, "the new CA", || {
        Ok((call(Some(&renewed))?.status == 200).then_some(()))
    })?;
    let resp = call(Some(&planner))?;
    assert_eq!(resp.status, 403);
    assert!(
        resp.body.contains("client_certificate_invalid"),
        "{}",
        resp.body
    );
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
