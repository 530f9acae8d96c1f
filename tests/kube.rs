//! End to end in Kubernetes mode, without a cluster: `sluice controller` reaches
//! `sluice-fake-apiserver` (a stand-in API server) through a kubeconfig, lists and
//! watches AgentPools and EndpointSlices, takes the Lease, writes status and events,
//! and pushes tables to a `sluice proxy`. Endpoint changes in the API reach the
//! proxy's traffic, and a terminating endpoint is drained; an invalid pool is refused
//! with its condition and leaves the other served; when the leader dies, the standby
//! takes the Lease over and writes the status of what changed since. With
//! `--endpointslice-label`, a slice that loses the label is gone for the controller.
//! With `--peers`, the leader counts the proxies subscribed to the other replica. A
//! backend by URL gets the credential of its `sluice.dev/upstream` Secret, and the new
//! one when the Secret is rotated; a pool that requires client certificates checks
//! them against the CA of its Secret, and the new CA once the Secret is rotated.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sluice_e2e::{
    Process, demo_agent, eventually, get, send_json, subscribed_proxy, temp_dir, tls_get_with,
};
use sluice_listener::testing::{TestCa, TestCert};

const WAIT: Duration = Duration::from_secs(30);

/// The stand-in API server, spoken to as `kubectl` would.
struct Api(SocketAddr);

impl Api {
    fn create(&self, collection: &str, object: &Value) -> Result<Value> {
        let resp = send_json(self.0, "POST", collection, &object.to_string())?;
        if resp.status != 201 {
            bail!("POST {collection}: {} {}", resp.status, resp.body);
        }
        Ok(serde_json::from_str(&resp.body)?)
    }

    fn replace(&self, path: &str, object: &Value) -> Result<Value> {
        let resp = send_json(self.0, "PUT", path, &object.to_string())?;
        if resp.status != 200 {
            bail!("PUT {path}: {} {}", resp.status, resp.body);
        }
        Ok(serde_json::from_str(&resp.body)?)
    }

    /// Replaces the object at `path` with `object`, at its current resource version.
    fn update(&self, path: &str, mut object: Value) -> Result<Value> {
        let current = self.get(path)?.with_context(|| format!("{path} exists"))?;
        object["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        self.replace(path, &object)
    }

    fn get(&self, path: &str) -> Result<Option<Value>> {
        let resp = get(self.0, path)?;
        match resp.status {
            200 => Ok(Some(serde_json::from_str(&resp.body)?)),
            404 => Ok(None),
            s => bail!("GET {path}: {s} {}", resp.body),
        }
    }
}

const POOLS: &str = "/apis/sluice.dev/v1alpha1/namespaces/agents/agentpools";
const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/agents/endpointslices";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/sluice/leases/sluice-controller";

fn pool(name: &str, service: &str) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": name, "namespace": "agents"},
        "spec": {
            "matches": [{"pathPrefix": format!("/agents/{name}/")}],
            "backends": [{"service": {"name": service, "port": "http"}}],
        },
    })
}

/// Slice `name` of Service `chat` with one endpoint at `agent`.
fn slice(name: &str, agent: SocketAddr, ready: bool, terminating: bool) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": name, "namespace": "agents",
            "labels": {"kubernetes.io/service-name": "chat"},
        },
        "addressType": "IPv4",
        "endpoints": [{
            "addresses": [agent.ip().to_string()],
            "conditions": {"ready": ready, "serving": true, "terminating": terminating},
        }],
        "ports": [{"name": "http", "port": agent.port(), "protocol": "TCP"}],
    })
}

fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn controller(identity: &str, kubeconfig: &str, extra: &[&str]) -> Result<(Process, SocketAddr)> {
    controller_on("127.0.0.1:0", identity, kubeconfig, extra)
}

/// A controller whose push listener binds `listen`.
fn controller_on(
    listen: &str,
    identity: &str,
    kubeconfig: &str,
    extra: &[&str],
) -> Result<(Process, SocketAddr)> {
    let args = [
        "controller",
        "--listen",
        listen,
        "--identity",
        identity,
        "--lease-namespace",
        "sluice",
        "--lease-duration",
        "3s",
        "--debounce",
        "10ms",
        "--heartbeat",
        "1s",
    ];
    let args: Vec<&str> = args.iter().chain(extra).copied().collect();
    let mut c = Process::start_with_env(identity, "sluice", &args, &[("KUBECONFIG", kubeconfig)])?;
    let addr = c.logged_addr("controller started", "listen")?;
    Ok((c, addr))
}

/// The stand-in API server, and a kubeconfig pointing at it in a new temp dir.
fn fake_cluster(name: &str) -> Result<(Process, Api, std::path::PathBuf, String)> {
    // The CRDs as `kubectl apply -f crds/` installs them: objects are pruned and
    // validated against their schemas.
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds");
    let mut apiserver = Process::start("apiserver", "sluice-fake-apiserver", &["--crds", crds])?;
    let api = Api(apiserver.logged_addr("fake apiserver listening", "addr")?);
    let dir = temp_dir(name);
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters: [{{name: fake, cluster: {{server: \"http://{}\"}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n",
            api.0
        ),
    )?;
    let kubeconfig = kubeconfig.to_string_lossy().to_string();
    Ok((apiserver, api, dir, kubeconfig))
}

/// A proxy subscribed to the controller at `controller`, and its traffic address.
fn proxy(controller: SocketAddr) -> Result<(Process, SocketAddr)> {
    let (proxy, traffic, _) = subscribed_proxy("proxy", controller, "proxy-1", &[])?;
    Ok((proxy, traffic))
}

#[test]
fn controller_watches_the_api_writes_status_and_hands_over_the_lease() -> Result<()> {
    let (_agent_a, a) = demo_agent("agent-a")?;
    let (_agent_b, b) = demo_agent("agent-b")?;
    let (_apiserver, api, dir, kubeconfig) = fake_cluster("kube")?;

    api.create(POOLS, &pool("chat", "chat"))?;
    api.create(SLICES, &slice("chat-1", a, true, false))?;
    // An invalid Service name: refused, with its condition, without harming `chat`.
    api.create(POOLS, &pool("broken", "Not_A_Service"))?;

    let (mut first, first_addr) = controller("ctl-1", &kubeconfig, &[])?;
    let (mut proxy, traffic) = proxy(first_addr)?;
    let served_by = || -> Result<Option<String>> {
        let resp = get(traffic, "/agents/chat/hello")?;
        Ok(resp.header("x-demo-agent").map(str::to_owned))
    };
    eventually(WAIT, "traffic to reach agent-a", || {
        Ok((served_by()?.as_deref() == Some("agent-a")).then_some(()))
    })?;

    // The leader's status: conditions, ready endpoints, and the proxy that runs it.
    let chat = format!("{POOLS}/chat");
    let status = eventually(WAIT, "chat's status with its proxy", || {
        let status = api.get(&chat)?.context("chat exists")?["status"].clone();
        Ok((status["updatedProxies"] == 1).then_some(status))
    })?;
    assert_eq!(status["readyEndpoints"], 1, "{status}");
    assert_eq!(status["proxies"], 1, "{status}");
    assert_eq!(status["observedGeneration"], 1, "{status}");
    for type_ in ["Accepted", "ResolvedRefs", "Ready"] {
        let c = condition(&status, type_).context(type_)?;
        assert_eq!(c["status"], "True", "{status}");
    }
    let broken = eventually(WAIT, "broken's status", || {
        Ok(api.get(&format!("{POOLS}/broken"))?.and_then(|o| {
            let s = o["status"].clone();
            (!s.is_null()).then_some(s)
        }))
    })?;
    let accepted = condition(&broken, "Accepted").context("Accepted")?;
    assert_eq!(accepted["status"], "False", "{broken}");
    assert_eq!(accepted["reason"], "Invalid", "{broken}");
    assert!(
        accepted["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.backends[0].service")),
        "{broken}"
    );
    assert_eq!(get(traffic, "/agents/broken/x")?.status, 404);
    let lease = api.get(LEASE)?.context("the Lease")?;
    assert_eq!(lease["spec"]["holderIdentity"], "ctl-1", "{lease}");
    // Events are posted after the status they announce: wait for chat's.
    eventually(WAIT, "an Event about chat", || {
        let events = api
            .get("/apis/events.k8s.io/v1/namespaces/agents/events")?
            .context("events")?;
        Ok(events["items"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["regarding"]["name"] == "chat"))
            .then_some(()))
    })?;

    // Endpoint changes in the API reach the proxy's traffic: a second endpoint comes
    // (in a slice of its own: the agents listen on different ports), then the first
    // one terminates and is drained: every request goes to agent-b.
    api.create(SLICES, &slice("chat-2", b, true, false))?;
    eventually(WAIT, "traffic to reach agent-b too", || {
        Ok((served_by()?.as_deref() == Some("agent-b")).then_some(()))
    })?;
    api.update(&format!("{SLICES}/chat-1"), slice("chat-1", a, false, true))?;
    eventually(WAIT, "agent-a to be drained", || {
        for _ in 0..10 {
            if served_by()?.as_deref() != Some("agent-b") {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })?;

    // What the controller exports about its watches and its table.
    let metrics = get(first_addr, "/metrics")?.body;
    for line in [
        r#"sluice_controller_watch_lists_total{kind="AgentPool"} 1"#,
        "sluice_controller_table_pools 1",
        "sluice_controller_table_endpoints 2",
        r#"sluice_controller_proxies{state="current"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
    // EndpointSlices: one list for `chat`'s Service, and one more if the controller saw
    // `chat` before `broken` named another Service.
    let slice_lists: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"sluice_controller_watch_lists_total{kind="EndpointSlice"} "#)
        })
        .and_then(|v| v.parse().ok())
        .context("the EndpointSlice lists")?;
    assert!(
        (1..=2).contains(&slice_lists),
        "{slice_lists} EndpointSlice lists"
    );
    let bytes: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_controller_table_bytes "))
        .and_then(|v| v.parse().ok())
        .context("sluice_controller_table_bytes")?;
    assert!(bytes > 100, "{bytes}");

    // A standby replica; the leader dies without handing the Lease over.
    let (_second, _) = controller("ctl-2", &kubeconfig, &[])?;
    first.kill();
    eventually(WAIT, "ctl-2 to take the Lease over", || {
        let lease = api.get(LEASE)?.context("the Lease")?;
        Ok((lease["spec"]["holderIdentity"] == "ctl-2").then_some(()))
    })?;
    // The proxy keeps serving the last table without its controller.
    proxy.wait_for_log("controller stream ended", WAIT)?;
    assert_eq!(served_by()?.as_deref(), Some("agent-b"));

    // The last ready endpoint starts terminating: the new leader reports it.
    api.update(&format!("{SLICES}/chat-2"), slice("chat-2", b, false, true))?;
    let status = eventually(WAIT, "the new leader to report no ready endpoint", || {
        let status = api.get(&chat)?.context("chat exists")?["status"].clone();
        Ok((status["readyEndpoints"] == 0).then_some(status))
    })?;
    let ready = condition(&status, "Ready").context("Ready")?;
    assert_eq!(ready["status"], "False", "{status}");
    assert_eq!(ready["reason"], "NoReadyEndpoints", "{status}");
    assert_eq!(
        status["proxies"], 0,
        "no proxy subscribed to ctl-2: {status}"
    );

    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn only_the_labelled_endpoint_slices_are_watched() -> Result<()> {
    let (_agent, a) = demo_agent("agent-a")?;
    let (_apiserver, api, dir, kubeconfig) = fake_cluster("kube-labels")?;
    api.create(POOLS, &pool("chat", "chat"))?;
    let mut labelled = slice("chat-1", a, true, false);
    labelled["metadata"]["labels"]["sluice.dev/agent"] = "true".into();
    api.create(SLICES, &labelled)?;

    let (_controller, addr) = controller(
        "ctl-1",
        &kubeconfig,
        &["--endpointslice-label", "sluice.dev/agent=true"],
    )?;
    let (_proxy, traffic) = proxy(addr)?;
    eventually(WAIT, "traffic to reach agent-a", || {
        let resp = get(traffic, "/agents/chat/hello")?;
        Ok((resp.header("x-demo-agent") == Some("agent-a")).then_some(()))
    })?;

    // The label comes off the Service (and so off its slice): for the controller the
    // slice is gone, and the pool has no endpoint left.
    api.update(&format!("{SLICES}/chat-1"), slice("chat-1", a, true, false))?;
    eventually(WAIT, "the pool to lose its endpoint", || {
        let resp = get(traffic, "/agents/chat/hello")?;
        Ok((resp.status == 503).then_some(()))
    })?;
    let chat = api.get(&format!("{POOLS}/chat"))?.context("chat")?;
    assert_eq!(chat["status"]["readyEndpoints"], 0, "{chat}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn the_leader_counts_the_proxies_of_the_other_replica() -> Result<()> {
    let (_agent, a) = demo_agent("agent-a")?;
    let (_apiserver, api, dir, kubeconfig) = fake_cluster("kube-peers")?;
    api.create(POOLS, &pool("chat", "chat"))?;
    api.create(SLICES, &slice("chat-1", a, true, false))?;

    // The standby's address must be known to the leader, which starts first (to hold
    // the Lease): a port found free a moment before.
    let standby_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let peers = standby_addr.to_string();
    let (_leader, _) = controller(
        "ctl-1",
        &kubeconfig,
        &["--peers", &peers, "--peers-interval", "200ms"],
    )?;
    eventually(WAIT, "ctl-1 to hold the Lease", || {
        Ok(api
            .get(LEASE)?
            .filter(|l| l["spec"]["holderIdentity"] == "ctl-1"))
    })?;
    let (_standby, standby) = controller_on(&peers, "ctl-2", &kubeconfig, &[])?;
    let (_proxy, traffic) = proxy(standby)?;
    eventually(WAIT, "traffic through the standby's table", || {
        let resp = get(traffic, "/agents/chat/hello")?;
        Ok((resp.header("x-demo-agent") == Some("agent-a")).then_some(()))
    })?;

    // Only the leader writes status, and it counts the standby's proxy.
    let status = eventually(WAIT, "the leader to count the standby's proxy", || {
        let status = api.get(&format!("{POOLS}/chat"))?.context("chat")?["status"].clone();
        Ok((status["updatedProxies"] == 1).then_some(status))
    })?;
    assert_eq!(status["proxies"], 1, "{status}");
    let lease = api.get(LEASE)?.context("the Lease")?;
    assert_eq!(lease["spec"]["holderIdentity"], "ctl-1", "{lease}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

const SECRETS: &str = "/api/v1/namespaces/agents/secrets";

/// Secret `provider` labelled for backends, holding `key` as its `api-key`.
fn upstream_secret(key: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "name": "provider", "namespace": "agents",
            "labels": {"sluice.dev/upstream": ""},
        },
        "stringData": {"api-key": key},
    })
}

#[test]
fn a_backend_by_url_gets_the_credential_of_its_upstream_secret_and_its_rotation() -> Result<()> {
    let (_agent, a) = demo_agent("provider")?;
    let (_apiserver, api, dir, kubeconfig) = fake_cluster("kube-upstream")?;
    api.create(SECRETS, &upstream_secret("sk-first-0123456789"))?;
    api.create(
        POOLS,
        &json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "AgentPool",
            "metadata": {"name": "provider", "namespace": "agents"},
            "spec": {
                "matches": [{"pathPrefix": "/v1"}],
                "backends": [{
                    "url": format!("http://{a}"),
                    "auth": {"secretRef": {"name": "provider"}, "prefix": "Bearer "},
                }],
            },
        }),
    )?;
    // The Secrets backends name are read in `agents` only, as the chart sets it.
    let (_controller, addr) = controller(
        "ctl-1",
        &kubeconfig,
        &["--upstream-secret-namespace", "agents"],
    )?;
    let (_proxy, traffic) = proxy(addr)?;
    let seen = |expected: &'static str| {
        eventually(WAIT, expected, || {
            let resp = get(traffic, "/v1/models")?;
            if resp.status != 200 {
                return Ok(None);
            }
            let echo: Value = serde_json::from_str(&resp.body)?;
            Ok((echo["headers"]["authorization"] == expected).then_some(echo))
        })
    };
    let echo = seen("Bearer sk-first-0123456789")?;
    assert_eq!(echo["headers"]["host"], a.to_string(), "{echo}");

    // The Secret is rotated: the next table carries the new credential.
    api.update(
        &format!("{SECRETS}/provider"),
        upstream_secret("sk-second-0123456789"),
    )?;
    seen("Bearer sk-second-0123456789")?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Secret `clients-ca` labelled for pools, holding `ca` as its `ca.crt`.
fn client_ca_secret(ca: &TestCa) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "name": "clients-ca", "namespace": "agents",
            "labels": {"sluice.dev/upstream": ""},
        },
        "stringData": {"ca.crt": ca.pem},
    })
}

#[test]
fn a_pool_requiring_client_certificates_reads_its_ca_secret_and_its_rotation() -> Result<()> {
    let (_agent, a) = demo_agent("agent")?;
    let (_apiserver, api, dir, kubeconfig) = fake_cluster("kube-mtls")?;
    let clients = TestCa::new("clients CA");
    api.create(SECRETS, &client_ca_secret(&clients))?;
    api.create(
        POOLS,
        &json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "AgentPool",
            "metadata": {"name": "planner", "namespace": "agents"},
            "spec": {
                "matches": [{"pathPrefix": "/planner"}],
                "backends": [{"endpoints": [a.to_string()]}],
                "access": {"clientCertificates": {
                    "caSecretRef": {"name": "clients-ca"},
                    "subjects": ["planner.agents.example"],
                }},
            },
        }),
    )?;
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs)?;
    let server_ca = TestCa::new("server CA");
    let server = server_ca.leaf(&["proxy.example"]).write(&certs, "proxy");
    let (_controller, addr) = controller("ctl-1", &kubeconfig, &[])?;
    let (cert, key) = (
        server.cert.to_string_lossy().into_owned(),
        server.key.to_string_lossy().into_owned(),
    );
    let (mut proxy, plain, _) = subscribed_proxy(
        "proxy",
        addr,
        "proxy-1",
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
    )?;
    let tls = proxy.logged_addr("proxy started", "tls_listen")?;
    let call = |cert: &TestCert| {
        let config = server_ca.client_config_presenting(&[b"http/1.1"], cert);
        let answer = tls_get_with(tls, "proxy.example", config, Some("/planner/x"), &[])?;
        answer.response.context("a response")
    };
    let planner = clients.client_leaf("planner", &["planner.agents.example"], &[]);
    let echo = eventually(WAIT, "the planner served", || {
        let resp = call(&planner)?;
        Ok((resp.status == 200).then_some(resp))
    })?;
    assert!(
        echo.body
            .contains(r#""x-sluice-consumer":"planner.agents.example""#),
        "{}",
        echo.body
    );
    let resp = get(plain, "/planner/x")?;
    assert_eq!(resp.status, 403, "over the plaintext listener: {resp:?}");

    // The CA Secret is rotated: the next table checks against the new CA.
    let renewed_ca = TestCa::new("clients CA, renewed");
    api.update(
        &format!("{SECRETS}/clients-ca"),
        client_ca_secret(&renewed_ca),
    )?;
    let renewed = renewed_ca.client_leaf("planner", &["planner.agents.example"], &[]);
    eventually(WAIT, "the renewed CA", || {
        Ok((call(&renewed)?.status == 200).then_some(()))
    })?;
    let resp = call(&planner)?;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(
        resp.body.contains("client_certificate_invalid"),
        "{}",
        resp.body
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
