//! Routing through real requests, with a table compiled from AgentPool manifests:
//! host-specific routes win over generic ones, longer prefixes over shorter ones,
//! header conditions over none, and prefixes match whole path segments.

mod support;

use http::{Request, StatusCode};
use support::{Agent, Proxy, TestClient, client, compile_yaml, empty, send};

/// Extra request headers, as name and value.
type Headers = &'static [(&'static str, &'static str)];

struct Agents {
    generic: Agent,
    host: Agent,
    agents: Agent,
    echo: Agent,
    tenant: Agent,
}

fn manifests(a: &Agents) -> String {
    let pool = |name: &str, matches: &str, agent: &Agent| {
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\n\
             metadata: {{name: {name}, namespace: demo}}\n\
             spec:\n  matches: {matches}\n  backends: [{{endpoints: [\"{}\"]}}]\n---\n",
            agent.address()
        )
    };
    [
        pool("generic", "[{pathPrefix: /}]", &a.generic),
        pool("host", "[{host: Chat.Example, pathPrefix: /}]", &a.host),
        pool("agents", "[{pathPrefix: /agents/}]", &a.agents),
        pool("echo", "[{pathPrefix: /agents/echo}]", &a.echo),
        pool(
            "tenant",
            "[{pathPrefix: /agents/echo, headers: [{name: X-Tenant, value: acme}]}]",
            &a.tenant,
        ),
    ]
    .concat()
}

/// Which agent answered `GET path` with `headers`.
async fn who(client: &TestClient, proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> String {
    let mut req = Request::get(proxy.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let reply = send(client, req.body(empty()).expect("request")).await;
    assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
    reply.text().to_owned()
}

#[tokio::test]
async fn the_most_specific_route_wins() {
    let agents = Agents {
        generic: Agent::named("generic").await,
        host: Agent::named("host").await,
        agents: Agent::named("agents").await,
        echo: Agent::named("echo").await,
        tenant: Agent::named("tenant").await,
    };
    let table = compile_yaml(&manifests(&agents));
    let proxy = Proxy::with_table(table).await;
    let c = client();

    // (path, extra request headers, the agent that must answer)
    let cases: &[(&str, Headers, &str)] = &[
        // A host-specific route beats every generic one, longer prefixes included.
        ("/agents/echo/x", &[("host", "chat.example")], "host"),
        ("/", &[("host", "CHAT.example:8080")], "host"),
        ("/agents/echo", &[("host", "other.example")], "echo"),
        // Longest prefix wins.
        ("/v1/chat", &[], "generic"),
        ("/agents", &[], "agents"),
        ("/agents/", &[], "agents"),
        ("/agents/other", &[], "agents"),
        ("/agents/echo", &[], "echo"),
        ("/agents/echo/", &[], "echo"),
        ("/agents/echo/deeper?q=1", &[], "echo"),
        // Whole segments only.
        ("/agents/echoes", &[], "agents"),
        ("/agentsx", &[], "generic"),
        // Header conditions make a route more specific.
        ("/agents/echo/x", &[("x-tenant", "acme")], "tenant"),
        ("/agents/echo/x", &[("x-tenant", "other")], "echo"),
    ];
    for (path, headers, expected) in cases {
        let got = who(&c, &proxy, path, headers).await;
        assert_eq!(got, *expected, "GET {path} with {headers:?}");
    }
    // Each request reached exactly the agent that answered it.
    let count = |name: &str| cases.iter().filter(|(_, _, e)| *e == name).count();
    assert_eq!(agents.host.requests(), count("host"));
    assert_eq!(agents.echo.requests(), count("echo"));
    assert_eq!(agents.agents.requests(), count("agents"));
    assert_eq!(agents.generic.requests(), count("generic"));
    assert_eq!(agents.tenant.requests(), count("tenant"));
}
