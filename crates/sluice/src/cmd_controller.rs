//! `sluice controller`.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sluice_controller::auth::{PushAuth, TokenFile, TokenReviewConfig, TokenReviewer};
use sluice_controller::events::EventPublisher;
use sluice_controller::external_metrics::{self, ExternalMetrics};
use sluice_controller::from_dir::{DirWatcher, Poll};
use sluice_controller::lease::{self, LeaderElector, LeaseConfig};
use sluice_controller::load::{LoadSettings, ProxyLoads};
use sluice_controller::peers::{self, PeerConfig};
use sluice_controller::proxies::ProxyRegistry;
use sluice_controller::publisher::Publisher;
use sluice_controller::push::{self, PushConfig, PushMetrics};
use sluice_controller::status_writer::{self, StatusBatch, StatusWriter};
use sluice_controller::watch::{self, SliceLabel, Watch, WatchMetrics};
use sluice_listener::{CertificateFiles, ListenerMetrics, ServerConfig, TlsConfig};

/// Arguments of `sluice controller`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Compile the manifests in this folder (AgentPools, RatePolicies, EndpointSlices)
    /// instead of watching the Kubernetes API.
    #[arg(long, env = "SLUICE_FROM_DIR")]
    from_dir: Option<PathBuf>,
    /// Watch only this namespace (repeat for several). Default: all namespaces.
    /// Ignored with --from-dir.
    #[arg(long = "namespace", value_name = "NAMESPACE")]
    namespaces: Vec<String>,
    /// Read consumer Secrets (labelled `sluice.dev/consumer`) only in this namespace
    /// (repeat for several). RBAC cannot restrict a Secret watch by label: the
    /// controller needs `list` and `watch` on every Secret where it reads consumers, so
    /// keep them in namespaces that hold nothing else of value. Default: the namespaces
    /// of --namespace (all when none). Ignored with --from-dir.
    #[arg(long = "consumer-namespace", value_name = "NAMESPACE")]
    consumer_namespaces: Vec<String>,
    /// Let the AgentPools of this namespace name Secrets (labelled
    /// `sluice.dev/upstream`) for their backends' TLS and credentials, read there only
    /// (repeat for several); a pool of another namespace that names one is refused
    /// (`Accepted=False`, naming the field). RBAC cannot restrict a Secret watch by
    /// label: the controller needs `list` and `watch` on every Secret of these
    /// namespaces. Default: the namespaces of --namespace (all when none), where any pool
    /// may. Ignored with --from-dir.
    #[arg(long = "upstream-secret-namespace", value_name = "NAMESPACE")]
    upstream_secret_namespaces: Vec<String>,
    /// Watch only the EndpointSlices with this label, `KEY` or `KEY=VALUE` (repeat for
    /// several; all must match). Kubernetes copies a Service's labels to its slices:
    /// label the agents' Services, say `sluice.dev/agent=true`, and the controller no
    /// longer caches every slice in the cluster. Ignored with --from-dir.
    #[arg(long = "endpointslice-label", value_name = "KEY[=VALUE]")]
    endpointslice_labels: Vec<SliceLabel>,
    /// `HOST:PORT` resolving to every controller replica's push listener (a headless
    /// Service): the proxies subscribed to the other replicas are then counted in the
    /// AgentPools' status too, and their load in the external metrics. Without it, each
    /// replica counts its own. With --from-dir, only the external metrics use it.
    #[arg(long, value_name = "HOST:PORT", env = "SLUICE_CONTROLLER_PEERS")]
    peers: Option<String>,
    /// How often the peers are asked for their proxies (with --peers).
    #[arg(long, default_value = "5s", value_parser = parse_interval)]
    peers_interval: Duration,
    /// Most status patches per second (twice as many at once after a quiet spell): a
    /// proxy joining changes every AgentPool's proxy count. Ignored with --from-dir.
    #[arg(long, value_name = "N", default_value_t = NonZeroU32::new(status_writer::DEFAULT_WRITES_PER_SECOND).unwrap_or(NonZeroU32::MIN))]
    status_write_rate: NonZeroU32,
    /// Least time between two compiles: a change after a quiet spell is compiled at
    /// once, the changes of a burst together once this has passed.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    debounce: Duration,
    /// Where proxies subscribe to route tables.
    #[arg(long, default_value = "0.0.0.0:9090", env = "SLUICE_CONTROLLER_LISTEN")]
    listen: SocketAddr,
    /// How often the folder is read for changes (with --from-dir).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    poll_interval: Duration,
    /// Interval of heartbeat lines on idle subscriptions.
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    heartbeat: Duration,
    /// This replica's name in leader election (the Lease's holderIdentity) and in the
    /// events it reports. Default: the host name (a pod's name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// The Lease that elects the one replica that writes status and events.
    #[arg(long, default_value = lease::DEFAULT_LEASE_NAME)]
    lease_name: String,
    /// The Lease's namespace (the controller's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// How long a leader's claim lasts: a standby takes over once it has seen the Lease
    /// unchanged this long by its own clock (at most 4/3 of it after the leader's last
    /// renewal). Whole seconds, at least 3s.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// A PEM certificate chain for the push listener: proxies and peers then speak TLS
    /// (with --tls-key). Read again when the file changes.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        env = "SLUICE_TLS_CERT"
    )]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_cert",
        env = "SLUICE_TLS_KEY"
    )]
    tls_key: Option<PathBuf>,
    /// How often --tls-cert and --tls-key are read for changes.
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    tls_reload_interval: Duration,
    /// A file holding the token every proxy and peer must present (standalone and
    /// --from-dir deployments); read again when it changes.
    #[arg(
        long,
        value_name = "FILE",
        env = "SLUICE_PUSH_TOKEN_FILE",
        conflicts_with = "push_token_audience"
    )]
    push_token_file: Option<PathBuf>,
    /// Check callers' ServiceAccount tokens with the Kubernetes TokenReview API: they
    /// must be valid for this audience, and of a --proxy-service-account or a
    /// --peer-service-account.
    #[arg(long, value_name = "AUDIENCE", conflicts_with = "from_dir")]
    push_token_audience: Option<String>,
    /// With --push-token-audience: a ServiceAccount, NAMESPACE:NAME, whose pods are
    /// proxies (subscribe, acknowledge). Repeat for several.
    #[arg(long = "proxy-service-account", value_name = "NAMESPACE:NAME", value_parser = parse_account)]
    proxy_service_accounts: Vec<String>,
    /// With --push-token-audience: a ServiceAccount, NAMESPACE:NAME, whose pods are
    /// controller replicas (list the proxies). Repeat for several.
    #[arg(long = "peer-service-account", value_name = "NAMESPACE:NAME", value_parser = parse_account)]
    peer_service_accounts: Vec<String>,
    /// The token presented to the --peers (default: --push-token-file); a projected
    /// ServiceAccount token with --push-token-audience. Read for every poll.
    #[arg(long, value_name = "FILE", env = "SLUICE_PEERS_TOKEN_FILE")]
    peers_token_file: Option<PathBuf>,
    /// Poll the --peers over TLS, checking their certificates against this CA bundle
    /// (PEM) for the host name of --peers.
    #[arg(long, value_name = "FILE", env = "SLUICE_PEERS_CA")]
    peers_ca: Option<PathBuf>,
    /// Serve the push API to anyone who reaches --listen, without a token: anyone can
    /// then read the route table (consumer key hashes included). Needed for a
    /// non-loopback --listen without --push-token-file or --push-token-audience.
    #[arg(long)]
    no_push_auth: bool,
    /// With authentication, a subscription ends after 80% to 100% of this and its
    /// proxy subscribes again with its current token: a revoked token stops receiving
    /// tables within this long. 0s: never.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    push_subscription_lifetime: Duration,
    /// Most connections open at once on --listen; beyond it new ones are closed at
    /// once. 0: no cap.
    #[arg(long, default_value_t = sluice_listener::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Serve the `external.metrics.k8s.io` API (HTTPS, for kube-aggregator) on this
    /// address: each AgentPool's in-flight requests, queue depth, utilisation and p95
    /// latency, summed over the proxies' load reports. Needs
    /// --external-metrics-tls-cert, --external-metrics-tls-key and
    /// --requestheader-client-ca. Off by default.
    #[arg(
        long,
        value_name = "ADDR",
        requires_all = ["external_metrics_tls_cert", "external_metrics_tls_key", "requestheader_client_ca"],
        env = "SLUICE_EXTERNAL_METRICS_LISTEN"
    )]
    external_metrics_listen: Option<SocketAddr>,
    /// The PEM certificate chain of --external-metrics-listen (the APIService's
    /// caBundle must hold its CA). Read again when the file changes.
    #[arg(long, value_name = "FILE", requires = "external_metrics_listen")]
    external_metrics_tls_cert: Option<PathBuf>,
    /// The PEM private key of --external-metrics-tls-cert.
    #[arg(long, value_name = "FILE", requires = "external_metrics_listen")]
    external_metrics_tls_key: Option<PathBuf>,
    /// The CA (PEM) of kube-aggregator's front-proxy client certificate
    /// (`requestheader-client-ca-file` of the ConfigMap
    /// kube-system/extension-apiserver-authentication): a client of
    /// --external-metrics-listen without a certificate it signed is refused in the
    /// TLS handshake. Read at start.
    #[arg(long, value_name = "FILE", requires = "external_metrics_listen")]
    requestheader_client_ca: Option<PathBuf>,
    /// A common name the front-proxy client certificate may have
    /// (`requestheader-allowed-names`; repeat for several). None: any certificate the
    /// --requestheader-client-ca signed.
    #[arg(
        long = "requestheader-allowed-name",
        value_name = "NAME",
        requires = "external_metrics_listen"
    )]
    requestheader_allowed_names: Vec<String>,
    /// The window the p95 latency of the external metrics is read over.
    #[arg(long, default_value = "2m", value_parser = parse_interval)]
    external_metrics_window: Duration,
    /// A proxy whose latest load report is older than this counts in no external
    /// metric (the proxies report every 5s by default).
    #[arg(long, default_value = "30s", value_parser = parse_interval)]
    load_report_max_age: Duration,
    /// Print the RBAC rules the controller needs (JSON: the ClusterRole's, the Lease
    /// Role's, the TokenReview ClusterRole's, and the Roles' of each consumer namespace
    /// and each upstream Secret namespace) and exit.
    #[arg(long)]
    print_rbac: bool,
}

/// Parses a ServiceAccount `NAMESPACE:NAME`.
fn parse_account(s: &str) -> Result<String, String> {
    match s.split_once(':') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains(':') => {
            Ok(s.to_owned())
        }
        _ => Err(format!("{s:?}: give NAMESPACE:NAME")),
    }
}

/// Parses `500ms`, `2s`, `1m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<sluice_api::Duration>()
        .map(sluice_api::Duration::get)
        .map_err(|e| e.to_string())
}

/// Parses a duration that is the period of something repeated: not zero.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("an interval must be longer than zero".to_owned()),
        d => Ok(d),
    }
}

/// Runs the controller until a shutdown signal: from a folder with `--from-dir`,
/// else from the Kubernetes API (in-cluster config or `KUBECONFIG`), where every
/// replica watches and serves proxies and the holder of the Lease writes status.
pub async fn run(args: Args) -> Result<()> {
    if args.print_rbac {
        let rbac = serde_json::to_string_pretty(&sluice_controller::rbac_json())?;
        return crate::print_stdout(&format!("{rbac}\n"));
    }
    let publisher = Publisher::new();
    let registry = prometheus::Registry::new();
    let metrics = PushMetrics::new(&registry).context("registering metrics")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let listen = listener.local_addr()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            TlsConfig::new(
                vec![CertificateFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }],
                args.tls_reload_interval,
            )
            .context("--tls-cert/--tls-key")?,
        ),
        _ => None,
    };
    let listener_metrics = ListenerMetrics::new(&registry).context("registering metrics")?;
    // Which proxies run which table: /v1/proxies, sluice_controller_proxies and the
    // AgentPools' status.
    let proxies = ProxyRegistry::with_settings(
        publisher.clone(),
        sluice_controller::proxies::DEFAULT_CAPACITY,
        LoadSettings {
            window: args.external_metrics_window,
            max_age: args.load_report_max_age,
        },
    );
    let mut external_metrics = ExternalMetrics::new(proxies.clone());
    proxies
        .register_metrics(&registry)
        .context("registering metrics")?;

    let mut auth = match &args.push_token_file {
        Some(path) => {
            let file = TokenFile::new(path);
            file.read().context("--push-token-file")?;
            PushAuth::SharedToken(Arc::new(file))
        }
        None => PushAuth::Open,
    };
    if args.push_token_audience.is_none()
        && (!args.proxy_service_accounts.is_empty() || !args.peer_service_accounts.is_empty())
    {
        bail!("--proxy-service-account and --peer-service-account need --push-token-audience");
    }
    if auth.is_open() && args.push_token_audience.is_none() {
        if !listen.ip().is_loopback() && !args.no_push_auth {
            bail!(
                "--listen {listen} is not a loopback address: give --push-token-file (or, on Kubernetes, --push-token-audience) so that only proxies read the route table, or --no-push-auth to serve it to anyone"
            );
        }
        tracing::warn!(%listen, "the push API is served without authentication");
    }
    let peers_token = args
        .peers_token_file
        .clone()
        .or_else(|| args.push_token_file.clone())
        .map(|path| Arc::new(TokenFile::new(path)));

    // The other replicas' proxies: their revisions for the status, their load for the
    // external metrics.
    let peer_revisions = args.peers.as_ref().map(|target| {
        let (tx, rx) = tokio::sync::watch::channel(peers::ProxyRevisions::new());
        let (loads_tx, loads_rx) = tokio::sync::watch::channel(ProxyLoads::new());
        external_metrics = external_metrics.clone().with_peers(loads_rx);
        let config = PeerConfig {
            target: target.clone(),
            interval: args.peers_interval,
            timeout: args.peers_interval.min(Duration::from_secs(2)),
            token: peers_token.clone(),
            ca: args.peers_ca.clone(),
        };
        tokio::spawn(async move {
            if let Err(e) = peers::run_with_loads(config, tx, loads_tx).await {
                tracing::error!(error = %e, "the peers are not polled");
            }
        });
        rx
    });

    let mut election = None;
    if let Some(dir) = &args.from_dir {
        tracing::info!(%listen, from_dir = %dir.display(), "controller started");
        let watcher = DirWatcher::new(dir);
        let pubr = publisher.clone();
        tokio::spawn(watcher.run(args.poll_interval, move |poll| {
            on_poll(&pubr, poll, false);
        }));
    } else {
        let identity = match &args.identity {
            Some(id) => id.clone(),
            None => default_identity(),
        };
        let lease = LeaseConfig::new(
            &args.lease_name,
            &args.lease_namespace,
            &identity,
            args.lease_duration,
        )
        .context("--lease-*")?;
        let client = kube::Client::try_default()
            .await
            .context("connecting to Kubernetes (in-cluster config or KUBECONFIG)")?;
        if let Some(audience) = &args.push_token_audience {
            if args.proxy_service_accounts.is_empty() {
                bail!("--push-token-audience needs the proxies' --proxy-service-account");
            }
            let mut config = TokenReviewConfig::new(audience.clone());
            config.proxies = args.proxy_service_accounts.clone();
            config.peers = args.peer_service_accounts.clone();
            tracing::info!(%audience, proxies = ?config.proxies, peers = ?config.peers, "push API callers checked with TokenReview");
            auth = PushAuth::TokenReview(Arc::new(TokenReviewer::new(client.clone(), config)));
        }
        let elector = LeaderElector::new(client.clone(), lease)
            .with_metrics(&registry)
            .context("registering metrics")?;
        let leadership = elector.leadership();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        election = Some((
            stop,
            tokio::spawn(elector.run(async {
                let _ = stopped.await;
            })),
        ));
        let watch_metrics = WatchMetrics::new(&registry).context("registering metrics")?;
        let scope = watch::Scope {
            namespaces: &args.namespaces,
            consumer_namespaces: &args.consumer_namespaces,
            upstream_secret_namespaces: &args.upstream_secret_namespaces,
            slice_labels: &args.endpointslice_labels,
        };
        let sources = watch::kube_sources(&client, &scope, &watch_metrics);
        let (status_tx, status_rx) = tokio::sync::watch::channel(StatusBatch::default());
        let burst = args
            .status_write_rate
            .saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
        let writer = StatusWriter::new(client.clone())
            .with_leadership(leadership.clone())
            .with_events(EventPublisher::new(client, &identity))
            .with_write_rate(args.status_write_rate, burst);
        let written = writer.last_written();
        tokio::spawn(writer.run(status_rx));
        let core = Watch::new(sources, publisher.clone(), watch_metrics, args.debounce)
            .with_statuses(status_tx)
            .with_last_written(written)
            .with_leadership(leadership)
            .with_proxies(proxies.clone());
        let core = match peer_revisions {
            Some(rx) => core.with_peer_proxies(rx),
            None => core,
        };
        tokio::spawn(core.run());
        let namespaces = if args.namespaces.is_empty() {
            "all".to_owned()
        } else {
            args.namespaces.join(",")
        };
        tracing::info!(
            %listen, %namespaces, debounce = ?args.debounce, %identity,
            lease = %format!("{}/{}", args.lease_namespace, args.lease_name),
            "controller started, watching Kubernetes"
        );
    }

    if let Some(addr) = args.external_metrics_listen {
        let (Some(cert), Some(key), Some(ca)) = (
            &args.external_metrics_tls_cert,
            &args.external_metrics_tls_key,
            &args.requestheader_client_ca,
        ) else {
            bail!(
                "--external-metrics-listen needs --external-metrics-tls-cert, --external-metrics-tls-key and --requestheader-client-ca"
            );
        };
        let verifier =
            external_metrics::front_proxy_verifier(ca, args.requestheader_allowed_names.clone())
                .context("--requestheader-client-ca")?;
        let tls = TlsConfig::with_client_verifier(
            vec![CertificateFiles {
                cert: cert.clone(),
                key: key.clone(),
            }],
            args.tls_reload_interval,
            verifier,
        )
        .context("--external-metrics-tls-cert/--external-metrics-tls-key")?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        tracing::info!(listen = %listener.local_addr()?, "serving external.metrics.k8s.io");
        let config = ServerConfig {
            tls: Some(tls),
            metrics: listener_metrics.listener("external_metrics"),
            ..ServerConfig::default()
        };
        tokio::spawn(external_metrics::serve(
            listener,
            config,
            external_metrics,
            crate::shutdown_signal(),
        ));
    }

    push::serve_with(
        listener,
        proxies,
        metrics,
        PushConfig {
            heartbeat: args.heartbeat,
            subscription_lifetime: (!auth.is_open() && !args.push_subscription_lifetime.is_zero())
                .then_some(args.push_subscription_lifetime),
            auth,
            listener: ServerConfig {
                tls,
                max_connections: NonZeroUsize::new(args.max_connections),
                metrics: listener_metrics.listener("push"),
                ..PushConfig::default().listener
            },
        },
        crate::shutdown_signal(),
    )
    .await;
    // Hand the Lease over now rather than at its expiry.
    if let Some((stop, task)) = election {
        let _ = stop.send(());
        let _ = tokio::time::timeout(args.lease_duration, task).await;
    }
    Ok(())
}

/// The host name (in a pod: the pod's name), else `sluice-controller-<pid>`.
fn default_identity() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| format!("sluice-controller-{}", std::process::id()))
}

/// What [`on_poll`] made of a poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollOutcome {
    /// The table was published, or the manifests changed without changing it.
    Published,
    /// Nothing to do.
    Unchanged,
    /// The manifests could not be read, had errors (with `strict`), or compiled into
    /// a table that failed validation: the last table stays in force.
    Rejected,
}

/// Logs what a poll found and publishes the table. With `strict`, a table whose
/// compile reported errors is not published (the last good one stays); otherwise the
/// objects that compiled are published without the invalid ones.
pub fn on_poll(publisher: &Publisher, poll: Poll, strict: bool) -> PollOutcome {
    match poll {
        Poll::Unchanged => PollOutcome::Unchanged,
        Poll::Failed(e) => {
            tracing::error!(error = %e, "cannot read manifests; keeping the last table");
            PollOutcome::Rejected
        }
        Poll::Compiled(table, diags) => {
            for d in diags.iter() {
                match d.severity {
                    sluice_api::Severity::Error => tracing::error!("{d}"),
                    sluice_api::Severity::Warning => tracing::warn!("{d}"),
                }
            }
            if strict && diags.has_errors() {
                tracing::error!("manifests have errors; keeping the last table");
                return PollOutcome::Rejected;
            }
            let (pools, routes) = (table.pools.len(), table.routes.len());
            match publisher.publish(table) {
                Ok(Some(version)) => {
                    tracing::info!(version, pools, routes, "route table published");
                    PollOutcome::Published
                }
                Ok(None) => {
                    tracing::debug!("manifests changed but the table did not");
                    PollOutcome::Published
                }
                Err(e) => {
                    tracing::error!(error = %e, "compiled table is invalid; keeping the last table");
                    PollOutcome::Rejected
                }
            }
        }
    }
}
