//! The proxies subscribed to the other controller replicas.
//!
//! Each replica tracks only the proxies subscribed to it, and only the Lease holder
//! writes status, so on its own the leader would count a fraction of the proxies in
//! the AgentPools' `proxies` and `updatedProxies`. With `--peers NAME:PORT`, a name
//! that resolves to every replica's address (a headless Service; the chart creates
//! one), each replica polls its peers' `GET /v1/proxies` and keeps the union of what
//! they answer. A replica finds itself among its peers; the caller gives its own
//! registry precedence (see [`merge`]).
//!
//! Each poll presents the token in [`PeerConfig::token`] (read again for every poll: a
//! projected ServiceAccount token rotates), and with [`PeerConfig::ca`] speaks TLS,
//! checking each peer's certificate against that CA and for the host name of the
//! target (the peers are reached by address: their certificate must hold the name of
//! the headless Service).
//!
//! Each listed proxy comes with its load, when it reported recently
//! ([`crate::load::ProxyLoad`]): [`run_with_loads`] also keeps the union of those, so
//! that every replica serves the same external metrics (see [`crate::load::totals`]).
//!
//! A peer that stops answering keeps its last answer for [`SILENT_POLLS`] polls (a
//! restart or a slow answer does not make its proxies flap out of the status), then
//! its proxies are dropped. A failed DNS lookup keeps the last view.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::ServerName;
use sluice_api::push::PROXIES_PATH;
use tokio::sync::watch;

use crate::auth::TokenFile;
use crate::load::{ProxyLoad, ProxyLoads};

type PeerClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Proxy name → the revision it acknowledged last (`None`: none yet).
pub type ProxyRevisions = BTreeMap<String, Option<String>>;

/// Polls a peer may miss before its proxies are dropped.
pub const SILENT_POLLS: u32 = 3;

/// Where and how often to ask the peers.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// `host:port` resolving to every replica's push listener.
    pub target: String,
    /// Time between polls.
    pub interval: Duration,
    /// Longest wait for one peer's answer.
    pub timeout: Duration,
    /// The bearer token to present, read again for each poll.
    pub token: Option<Arc<TokenFile>>,
    /// Speak TLS, trusting this CA bundle (PEM).
    pub ca: Option<PathBuf>,
}

/// Why the peers cannot be polled at all.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The CA bundle cannot be loaded. Not retryable.
    #[error("peers' CA: {0}")]
    Ca(#[from] sluice_listener::TlsError),
    /// The target's host is not a name a certificate can hold. Not retryable.
    #[error("{0:?}: the host is not a DNS name a certificate can hold")]
    Name(String),
}

impl PeerConfig {
    /// The client of the polls, and the scheme it speaks.
    fn client(&self) -> Result<(PeerClient, &'static str), PeerError> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(self.timeout));
        http.enforce_http(false);
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let (connector, scheme) = match &self.ca {
            Some(ca) => {
                let host = self
                    .target
                    .rsplit_once(':')
                    .map_or(self.target.as_str(), |(h, _)| h);
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|_| PeerError::Name(host.to_owned()))?;
                let tls = sluice_listener::tls::client_config(ca, &[])?;
                let connector = builder
                    .with_tls_config(tls)
                    .https_only()
                    .with_server_name_resolver(FixedServerNameResolver::new(name))
                    .enable_http1()
                    .wrap_connector(http);
                (connector, "https")
            }
            None => {
                // Never used for TLS: the scheme is http.
                let roots = rustls::RootCertStore::empty();
                let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(sluice_listener::TlsError::Config)?
                .with_root_certificates(roots)
                .with_no_client_auth();
                let connector = builder
                    .with_tls_config(tls)
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http);
                (connector, "http")
            }
        };
        Ok((
            Client::builder(TokioExecutor::new()).build(connector),
            scheme,
        ))
    }
}

/// The proxies of `local` and `peers` by name, `local`'s entry winning, counted by
/// acknowledged revision: `(proxies, revision → proxies that run it)`.
pub fn merge(local: ProxyRevisions, peers: &ProxyRevisions) -> (usize, HashMap<String, usize>) {
    let mut all = peers.clone();
    all.extend(local);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for revision in all.values().flatten() {
        *counts.entry(revision.clone()).or_default() += 1;
    }
    (all.len(), counts)
}

/// What one peer answered last, and how many polls it has missed since.
struct Answer {
    proxies: ProxyRevisions,
    loads: ProxyLoads,
    missed: u32,
}

/// Polls the peers every `config.interval` forever, sending the union of their
/// proxies on `tx` whenever it changes.
///
/// # Errors
///
/// At once, when the TLS settings cannot be used ([`PeerError`]).
pub async fn run(config: PeerConfig, tx: watch::Sender<ProxyRevisions>) -> Result<(), PeerError> {
    run_with_loads(config, tx, watch::Sender::new(ProxyLoads::new())).await
}

/// [`run`], also sending the union of the peers' proxies' loads on `loads` whenever it
/// changes.
///
/// # Errors
///
/// At once, when the TLS settings cannot be used ([`PeerError`]).
pub async fn run_with_loads(
    config: PeerConfig,
    tx: watch::Sender<ProxyRevisions>,
    loads: watch::Sender<ProxyLoads>,
) -> Result<(), PeerError> {
    let (client, scheme) = config.client()?;
    let mut answers: BTreeMap<SocketAddr, Answer> = BTreeMap::new();
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let addrs: Vec<SocketAddr> = match tokio::net::lookup_host(&config.target).await {
            Ok(addrs) => addrs.collect(),
            Err(e) => {
                tracing::warn!(peers = %config.target, error = %e, "peers not resolved; keeping the last view");
                continue;
            }
        };
        let token = match config.token.as_ref().map(|t| t.read()).transpose() {
            Ok(token) => token,
            Err(e) => {
                tracing::warn!(error = %e, "no token for the peers; keeping the last view");
                continue;
            }
        };
        let polls = addrs.iter().map(|&addr| {
            let client = client.clone();
            let token = token.as_deref();
            async move {
                (
                    addr,
                    fetch(&client, scheme, addr, token, config.timeout).await,
                )
            }
        });
        let results = futures_util::future::join_all(polls).await;
        answers.retain(|addr, _| addrs.contains(addr));
        for (addr, result) in results {
            match result {
                Ok((proxies, proxy_loads)) => {
                    if answers.get(&addr).is_some_and(|a| a.missed > 0) {
                        tracing::info!(peer = %addr, "peer answers again");
                    }
                    answers.insert(
                        addr,
                        Answer {
                            proxies,
                            loads: proxy_loads,
                            missed: 0,
                        },
                    );
                }
                Err(e) => {
                    let answer = answers.entry(addr).or_insert(Answer {
                        proxies: ProxyRevisions::new(),
                        loads: ProxyLoads::new(),
                        missed: 0,
                    });
                    answer.missed += 1;
                    if answer.missed == 1 {
                        tracing::warn!(peer = %addr, error = %e, "peer did not list its proxies");
                    }
                }
            }
        }
        let union: ProxyRevisions = answers
            .values()
            .filter(|a| a.missed <= SILENT_POLLS)
            .flat_map(|a| a.proxies.clone())
            .collect();
        tx.send_if_modified(|current| {
            let changed = *current != union;
            if changed {
                *current = union;
            }
            changed
        });
        // A load answered several times (a proxy moving between peers): the freshest.
        let mut load_union = ProxyLoads::new();
        for answer in answers.values().filter(|a| a.missed <= SILENT_POLLS) {
            for (id, load) in &answer.loads {
                let fresher = load_union
                    .get(id)
                    .is_none_or(|kept| load.age_millis < kept.age_millis);
                if fresher {
                    load_union.insert(id.clone(), load.clone());
                }
            }
        }
        loads.send_if_modified(|current| {
            let changed = *current != load_union;
            if changed {
                *current = load_union;
            }
            changed
        });
    }
}

/// One peer's `GET /v1/proxies`, as proxy name → revision, and proxy name → load.
async fn fetch(
    client: &PeerClient,
    scheme: &str,
    addr: SocketAddr,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(ProxyRevisions, ProxyLoads), String> {
    let mut req = http::Request::get(format!("{scheme}://{addr}{PROXIES_PATH}"));
    if let Some(token) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let request = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let listed: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let listed = listed["proxies"].as_array().ok_or("no \"proxies\" list")?;
        let proxies = listed
            .iter()
            .filter_map(|p| {
                let id = p["id"].as_str()?.to_owned();
                Some((id, p["revision"].as_str().map(str::to_owned)))
            })
            .collect();
        let loads = listed
            .iter()
            .filter_map(|p| {
                let id = p["id"].as_str()?.to_owned();
                let load = serde_json::from_value::<ProxyLoad>(p.get("load")?.clone()).ok()?;
                Some((id, load))
            })
            .collect();
        Ok((proxies, loads))
    };
    tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revisions(pairs: &[(&str, Option<&str>)]) -> ProxyRevisions {
        pairs
            .iter()
            .map(|(id, r)| ((*id).to_owned(), r.map(str::to_owned)))
            .collect()
    }

    #[test]
    fn the_local_registry_wins_and_every_proxy_counts_once() {
        let local = revisions(&[("a", Some("r2")), ("b", None)]);
        // `a` moved from the peer to this replica; the peer still lists it.
        let peers = revisions(&[("a", Some("r1")), ("c", Some("r2")), ("d", Some("r1"))]);
        let (proxies, by_revision) = merge(local, &peers);
        assert_eq!(proxies, 4);
        assert_eq!(by_revision.get("r2"), Some(&2));
        assert_eq!(by_revision.get("r1"), Some(&1));
    }
}
