//! `sluice-fake-apiserver`: a stand-in for the Kubernetes API server, so that the
//! controller runs in Kubernetes mode on a machine without a cluster: in process,
//! through kube's own client ([`FakeApiServer::client`], with Tokio's paused time), and
//! as a binary the end-to-end tests start (`sluice-fake-apiserver --listen ADDR`).
//!
//! It behaves as the real server does where the controller's correctness depends on it:
//!
//! * **Collections**: `GET` with `labelSelector` (equality- and set-based), `limit` and
//!   `continue` (pages), and `resourceVersion` (`0` is accepted: any version); with
//!   `watch=true`, a stream of `{"type", "object"}` lines from the `resourceVersion`
//!   asked for, kept open. An object that starts or stops matching the selector is
//!   `ADDED` or `DELETED` for that watch.
//! * **Delayed watches**: [`FakeApiServer::set_watch_delay`] (`POST /fake/watch-delay`
//!   `{"ms": N}` on the binary) delivers every watch event that long after its write,
//!   as a loaded API server does; reads and writes answer at once.
//! * **Objects**: `GET`, `PUT` (optimistic concurrency on `metadata.resourceVersion`),
//!   `DELETE`, `POST` (with `generateName`); names are DNS subdomains of at most 253
//!   characters; `events.k8s.io` Events are validated as the API server does (required
//!   fields, lengths, type); one resource version counter; `metadata.generation` grows when
//!   anything but metadata and status changes.
//! * **CRDs**: a CustomResourceDefinition created (or [`FakeApiServer::install_crd`])
//!   makes its objects pruned and validated as [`schema`] describes (formats ignored,
//!   declared bounds and CEL rules enforced), with a `status` subresource written only
//!   through `/status`. Replacing a CRD keeps the objects already stored, as a
//!   tightened schema does in a real cluster.
//! * **Server-side apply** (`application/apply-patch+yaml`) with field managers, list
//!   maps and conflicts ([`apply`]); JSON merge patches.
//!
//! * **RBAC, for one resource**: [`FakeApiServer::grant_only_in`] lets the HTTP
//!   clients (the controller) reach a resource only in the namespaces named, as Roles
//!   bound there and no ClusterRole would: any other request for it, a cluster-wide list
//!   or watch included, is `403 Forbidden`. [`FakeApiServer::call`] (a test acting as
//!   `kubectl`, a cluster admin) is not restricted.
//!
//! `GET /fake/requests` lists the requests served (method, path, query). Not a
//! conformance-grade server: no authentication, authorization only as above, no
//! admission webhooks, no defaulting, no table output, no bookmarks, no compaction.

pub mod apply;
pub mod schema;
pub mod selector;
pub mod store;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::selector::Selector;
use crate::store::{ApiError, Store, Target};

/// The body of every answer.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The stand-in API server: cheap to clone, every clone serves the same objects.
#[derive(Clone)]
pub struct FakeApiServer {
    store: Arc<Mutex<Store>>,
    /// The newest resource version, for watches to wake on.
    latest: watch::Sender<u64>,
}

impl Default for FakeApiServer {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer").finish_non_exhaustive()
    }
}

/// What [`FakeApiServer::call`] answered.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: Value,
}

fn respond(code: u16, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(bytes)).boxed_unsync());
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

impl FakeApiServer {
    /// An empty server.
    pub fn new() -> Self {
        // A resource version is never 0 in a real cluster: `0` asks for any version.
        let mut store = Store::default();
        store.rv = 1;
        Self {
            store: Arc::new(Mutex::new(store)),
            latest: watch::Sender::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Delivers every watch event `delay` after the write that made it.
    pub fn set_watch_delay(&self, delay: Duration) {
        self.lock().watch_delay = delay;
        // Wake the watches, which wait with the old delay.
        self.latest.send_modify(|_| {});
    }

    /// From now on, serves `resource` of `group` (`""`: the core group) to HTTP clients
    /// only in `namespaces`, as when the caller's only grants on it are Roles there: a
    /// request elsewhere, or cluster-wide, is `403 Forbidden` (and recorded in
    /// [`Self::requests`]).
    pub fn grant_only_in(&self, group: &str, resource: &str, namespaces: &[&str]) {
        self.lock().grants.insert(
            (group.to_owned(), resource.to_owned()),
            namespaces.iter().map(|n| (*n).to_owned()).collect(),
        );
    }

    /// Installs (or replaces) a CRD, as `kubectl apply -f crd.yaml` would.
    ///
    /// # Errors
    ///
    /// A CRD without group, names or a served version.
    pub fn install_crd(&self, crd: &Value) -> Result<(), String> {
        self.lock().install_crd(crd).map_err(|e| e.message)
    }

    /// The requests served so far: `{"method", "path", "query"}`.
    pub fn requests(&self) -> Vec<Value> {
        self.lock().requests.clone()
    }

    /// Serves one request without HTTP (not a watch, not in [`Self::requests`]): a test
    /// acting as `kubectl`. A `PATCH` is a JSON merge patch.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let content_type = if method == "PATCH" {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        self.call_with(method, path, content_type, body.unwrap_or(Value::Null))
    }

    /// [`Self::call`] with a body of `content_type`: `application/apply-patch+yaml` (a
    /// server-side apply, its field manager in the path's `?fieldManager=`) or
    /// `application/merge-patch+json` for a `PATCH`.
    pub fn call_with(&self, method: &str, path: &str, content_type: &str, body: Value) -> Answer {
        let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let query = parse_query(query);
        match self.answer(&method, path, &query, content_type, body) {
            Ok(body) => Answer {
                status: if method == Method::POST { 201 } else { 200 },
                body,
            },
            Err(e) => Answer {
                status: e.code,
                body: e.body(),
            },
        }
    }

    /// A kube client that talks to this server in process.
    pub fn client(&self) -> kube::Client {
        let server = self.clone();
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let server = server.clone();
            async move { Ok::<_, Infallible>(server.handle(req).await) }
        });
        kube::Client::new(service, "default")
    }

    /// Serves HTTP on `listener` until the task is dropped.
    ///
    /// # Errors
    ///
    /// When accepting a connection fails.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use hyper_util::server::conn::auto;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let server = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let server = server.clone();
                    async move { Ok::<_, Infallible>(server.handle(req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    /// Answers one HTTP request.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body,
        B::Error: std::fmt::Display,
    {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_owned();
        let query = parse_query(parts.uri.query().unwrap_or_default());
        self.lock().requests.push(json!({
            "method": parts.method.as_str(), "path": path, "query": query,
        }));
        let bytes = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return respond(400, &ApiError::new(400, "BadRequest", e.to_string()).body()),
        };
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    return respond(
                        400,
                        &ApiError::new(400, "BadRequest", format!("body: {e}")).body(),
                    );
                }
            }
        };
        let watch = parts.method == Method::GET && query.get("watch").is_some_and(|w| w == "true");
        if let Some(refused) = self.forbidden(&parts.method, &path, watch) {
            return respond(refused.code, &refused.body());
        }
        if watch {
            return self.watch(&path, &query);
        }
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();
        match self.answer(&parts.method, &path, &query, &content_type, body) {
            Ok(body) => respond(
                if parts.method == Method::POST {
                    201
                } else {
                    200
                },
                &body,
            ),
            Err(e) => respond(e.code, &e.body()),
        }
    }

    /// The refusal of a request that no grant of [`Self::grant_only_in`] allows.
    fn forbidden(&self, method: &Method, path: &str, watch: bool) -> Option<ApiError> {
        let target = Target::parse(path)?;
        let store = self.lock();
        let allowed = store
            .grants
            .get(&(target.group.clone(), target.resource.clone()))?;
        if target
            .namespace
            .as_ref()
            .is_some_and(|ns| allowed.contains(ns))
        {
            return None;
        }
        let verb = match *method {
            Method::GET if target.name.is_some() => "get",
            Method::GET if watch => "watch",
            Method::GET => "list",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "other",
        };
        let scope = match &target.namespace {
            Some(ns) => format!("in the namespace {ns:?}"),
            None => "at the cluster scope".to_owned(),
        };
        Some(ApiError::new(
            403,
            "Forbidden",
            format!(
                "{resource} is forbidden: User \"system:serviceaccount:sluice:sluice-controller\" cannot {verb} resource {resource:?} in API group {group:?} {scope}",
                resource = target.resource,
                group = target.group,
            ),
        ))
    }

    fn answer(
        &self,
        method: &Method,
        path: &str,
        query: &BTreeMap<String, String>,
        content_type: &str,
        body: Value,
    ) -> Result<Value, ApiError> {
        match (method, path) {
            (&Method::GET, "/fake/requests") => return Ok(Value::Array(self.requests())),
            (&Method::POST, "/fake/watch-delay") => {
                let ms = body["ms"].as_u64().unwrap_or(0);
                self.set_watch_delay(Duration::from_millis(ms));
                return Ok(json!({"ms": ms}));
            }
            _ => {}
        }
        let target =
            Target::parse(path).ok_or_else(|| ApiError::new(404, "NotFound", "no such path"))?;
        let manager = query.get("fieldManager").cloned().unwrap_or_default();
        let mut store = self.lock();
        let rv_before = store.rv;
        let result = match (method, target.name.is_some()) {
            (&Method::GET, false) => {
                let selector =
                    Selector::parse(query.get("labelSelector").map_or("", String::as_str))
                        .map_err(|e| ApiError::new(400, "BadRequest", e))?;
                let limit = query
                    .get("limit")
                    .and_then(|l| l.parse().ok())
                    .filter(|&l| l > 0);
                let (items, rv, next) = store.list(
                    &target,
                    &selector,
                    limit,
                    query.get("continue").map(String::as_str),
                );
                let mut metadata = json!({"resourceVersion": rv.to_string()});
                if let Some(next) = next {
                    metadata["continue"] = Value::String(next);
                }
                Ok(
                    json!({"apiVersion": "v1", "kind": "List", "metadata": metadata, "items": items}),
                )
            }
            (&Method::GET, true) => store.get(&target),
            (&Method::POST, false) => {
                let manager = if manager.is_empty() {
                    "unknown"
                } else {
                    &manager
                };
                store.create(&target, body, manager)
            }
            (&Method::PUT, true) => store.replace(&target, body),
            (&Method::PATCH, true) => {
                let force = query.get("force").is_some_and(|f| f == "true");
                store.patch(&target, &body, content_type, &manager, force)
            }
            (&Method::DELETE, true) => store.delete(&target),
            _ => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "not served by the fake",
            )),
        };
        let rv = store.rv;
        drop(store);
        if rv != rv_before {
            self.latest.send_replace(rv);
        }
        result
    }

    fn watch(&self, path: &str, query: &BTreeMap<String, String>) -> Response<Body> {
        let Some(target) = Target::parse(path) else {
            return respond(404, &ApiError::new(404, "NotFound", "no such path").body());
        };
        let selector = match Selector::parse(query.get("labelSelector").map_or("", String::as_str))
        {
            Ok(s) => s,
            Err(e) => return respond(400, &ApiError::new(400, "BadRequest", e).body()),
        };
        let mut from: u64 = query
            .get("resourceVersion")
            .and_then(|rv| rv.parse().ok())
            .filter(|&rv| rv > 0)
            .unwrap_or_else(|| self.lock().rv);
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let server = self.clone();
        let mut latest = self.latest.subscribe();
        tokio::spawn(async move {
            loop {
                // The next change this watch reports, and when it is due; else the
                // newest change, which it has then seen.
                let (next, newest) = {
                    let store = server.lock();
                    let start = store.history.partition_point(|c| c.rv <= from);
                    let next = store.history[start..].iter().find_map(|c| {
                        let line = watch_line(c, &target, &selector)?;
                        Some((c.rv, c.at + store.watch_delay, line))
                    });
                    (next, store.rv)
                };
                let Some((rv, due, line)) = next else {
                    from = from.max(newest);
                    tokio::select! {
                        changed = latest.changed() => if changed.is_err() { return },
                        () = tx.closed() => return,
                    }
                    continue;
                };
                if due > tokio::time::Instant::now() {
                    // Woken early by a write (the delay may have changed): look again.
                    tokio::select! {
                        () = tokio::time::sleep_until(due) => {}
                        changed = latest.changed() => if changed.is_err() { return },
                        () = tx.closed() => return,
                    }
                    continue;
                }
                if tx.send(line).await.is_err() {
                    return;
                }
                from = rv;
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|line| (Ok::<_, Infallible>(Frame::data(line)), rx))
        });
        let mut resp = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        resp
    }
}

/// The line a watch of `target` with `selector` sends for `change`, if any.
fn watch_line(change: &store::Change, target: &Target, selector: &Selector) -> Option<Bytes> {
    let ns = change.object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("");
    if change.group != target.group
        || change.resource != target.resource
        || target.namespace.as_deref().is_some_and(|n| n != ns)
    {
        return None;
    }
    let now = selector.matches(&change.object);
    let then = change.before.as_ref().map(|b| selector.matches(b));
    let kind = match (change.kind, then) {
        ("MODIFIED", Some(false)) if now => "ADDED",
        ("MODIFIED", Some(true)) if !now => "DELETED",
        (kind, _) if now => kind,
        _ => return None,
    };
    let mut line =
        serde_json::to_vec(&json!({"type": kind, "object": change.object})).unwrap_or_default();
    line.push(b'\n');
    Some(Bytes::from(line))
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}
