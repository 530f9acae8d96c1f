//! `sluice-fake-apiserver`: a small stand-in for the Kubernetes API server, so that the
//! real `sluice controller` binary can run in Kubernetes mode on a machine without a
//! cluster (the end-to-end tests and `bench/push_latency.sh SOURCE=kube`).
//!
//! It speaks the API's HTTP as kube-rs uses it, over plain HTTP on 127.0.0.1:
//!
//! * `GET` a collection (all namespaces or one), with `labelSelector` (`k`, `k=v`,
//!   `k==v`, `k!=v`, `!k`, comma-separated); with `watch=true`, a stream of
//!   `{"type", "object"}` lines from the `resourceVersion` asked for, kept open;
//! * `GET`, `PUT` (optimistic concurrency on `metadata.resourceVersion`) and `DELETE`
//!   one object, `POST` to a collection;
//! * `PATCH` of the `status` subresource (server-side apply: the status sent replaces
//!   the stored one) and JSON merge patches of objects (Events).
//!
//! Objects are kept in memory with one resource version counter; every change is a
//! watch event, and `metadata.generation` grows when anything but metadata and status
//! changes, as for custom resources. `GET /fake/requests` lists the requests served
//! (method, path, query), for tests to check what the controller asked for.
//!
//! Not a conformance-grade server: no admission, no field managers, no table output,
//! no pagination (a `limit` is ignored and every item returned), no bookmarks.
//!
//! Usage: `sluice-fake-apiserver [--listen 127.0.0.1:0]`; it logs
//! `fake apiserver listening addr=...` on stderr.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// `(resource, namespace, name)`.
type Key = (String, String, String);

/// One change, as a watch reports it.
struct Change {
    rv: u64,
    resource: String,
    kind: &'static str,
    object: Value,
    /// The labels before a modification (`{"metadata": {"labels"}}`): a watch with a
    /// label selector sees an object that starts or stops matching as ADDED or DELETED.
    before: Option<Value>,
}

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    requests: Vec<Value>,
}

#[derive(Clone)]
struct Server {
    store: Arc<Mutex<Store>>,
    /// The newest resource version, for watches to wake on.
    latest: watch::Sender<u64>,
}

/// What a request's path names.
struct Target {
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match parts.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (resource, name, status) = match rest {
        [resource] => (*resource, None, false),
        [resource, name] => (*resource, Some((*name).to_owned()), false),
        [resource, name, "status"] => (*resource, Some((*name).to_owned()), true),
        _ => return None,
    };
    Some(Target {
        resource: resource.to_owned(),
        namespace,
        name,
        status,
    })
}

/// One requirement of a label selector.
enum Requirement {
    Exists(String),
    Absent(String),
    Equal(String, String),
    NotEqual(String, String),
}

fn parse_selector(s: &str) -> Result<Vec<Requirement>, String> {
    s.split(',')
        .filter(|r| !r.trim().is_empty())
        .map(|r| {
            let r = r.trim();
            if r.contains(" in ") || r.contains(" notin ") || r.contains('(') {
                return Err(format!("set-based selector {r:?} is not supported here"));
            }
            Ok(if let Some((k, v)) = r.split_once("!=") {
                Requirement::NotEqual(k.to_owned(), v.to_owned())
            } else if let Some((k, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
                Requirement::Equal(k.to_owned(), v.to_owned())
            } else if let Some(k) = r.strip_prefix('!') {
                Requirement::Absent(k.to_owned())
            } else {
                Requirement::Exists(r.to_owned())
            })
        })
        .collect()
}

fn selected(object: &Value, selector: &[Requirement]) -> bool {
    let labels = &object["metadata"]["labels"];
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    selector.iter().all(|r| match r {
        Requirement::Exists(k) => label(k).is_some(),
        Requirement::Absent(k) => label(k).is_none(),
        Requirement::Equal(k, v) => label(k) == Some(v.as_str()),
        Requirement::NotEqual(k, v) => label(k) != Some(v.as_str()),
    })
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    respond(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": reason, "message": message, "code": code.as_u16(),
        }),
    )
}

fn not_found(key: &Key) -> Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{key:?} not found"),
    )
}

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(bytes)).boxed_unsync());
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// The object without metadata and status: what `generation` counts changes of.
fn spec_of(object: &Value) -> Value {
    let mut v = object.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("metadata");
        o.remove("status");
    }
    v
}

impl Store {
    fn record(
        &mut self,
        resource: &str,
        kind: &'static str,
        object: &mut Value,
        before: Option<&Value>,
    ) -> u64 {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        self.history.push(Change {
            rv: self.rv,
            resource: resource.to_owned(),
            kind,
            object: object.clone(),
            before: before.map(|b| json!({"metadata": {"labels": b["metadata"]["labels"]}})),
        });
        self.rv
    }
}

impl Server {
    fn new() -> Self {
        Self {
            store: Arc::default(),
            latest: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn changed(&self, rv: u64) {
        self.latest.send_replace(rv);
    }

    async fn handle(self, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query: BTreeMap<String, String> = req
            .uri()
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        self.lock().requests.push(json!({
            "method": method.as_str(), "path": path, "query": query,
        }));
        if path == "/fake/requests" {
            let requests = Value::Array(self.lock().requests.clone());
            return Ok(respond(StatusCode::OK, &requests));
        }
        let Some(target) = parse_path(&path) else {
            return Ok(status(StatusCode::NOT_FOUND, "NotFound", "no such path"));
        };
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return Ok(status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &e.to_string(),
                ));
            }
        };
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    return Ok(status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &format!("body: {e}"),
                    ));
                }
            }
        };
        Ok(match (&method, target.name.is_some()) {
            (&Method::GET, false) if query.get("watch").is_some_and(|w| w == "true") => {
                self.watch(&target, &query)
            }
            (&Method::GET, false) => self.list(&target, &query),
            (&Method::GET, true) => self.get(&target),
            (&Method::POST, false) => self.create(&target, body),
            (&Method::PUT, true) => self.replace(&target, body),
            (&Method::PATCH, true) => self.patch(&target, body),
            (&Method::DELETE, true) => self.delete(&target),
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "not served by the fake",
            ),
        })
    }

    fn key(target: &Target, body: &Value) -> Option<Key> {
        let name = target
            .name
            .clone()
            .or_else(|| body["metadata"]["name"].as_str().map(str::to_owned))?;
        let namespace = target
            .namespace
            .clone()
            .or_else(|| body["metadata"]["namespace"].as_str().map(str::to_owned))
            .unwrap_or_default();
        Some((target.resource.clone(), namespace, name))
    }

    fn selector(query: &BTreeMap<String, String>) -> Result<Vec<Requirement>, String> {
        parse_selector(query.get("labelSelector").map_or("", String::as_str))
    }

    fn in_scope(target: &Target, key: &Key) -> bool {
        key.0 == target.resource && target.namespace.as_ref().is_none_or(|ns| *ns == key.1)
    }

    fn list(&self, target: &Target, query: &BTreeMap<String, String>) -> Response<Body> {
        let selector = match Self::selector(query) {
            Ok(s) => s,
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
        };
        let store = self.lock();
        let items: Vec<Value> = store
            .objects
            .iter()
            .filter(|(k, o)| Self::in_scope(target, k) && selected(o, &selector))
            .map(|(_, o)| o.clone())
            .collect();
        respond(
            StatusCode::OK,
            &json!({
                "apiVersion": "v1", "kind": "List",
                "metadata": {"resourceVersion": store.rv.to_string()},
                "items": items,
            }),
        )
    }

    fn watch(&self, target: &Target, query: &BTreeMap<String, String>) -> Response<Body> {
        let selector = match Self::selector(query) {
            Ok(s) => s,
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
        };
        let mut from: u64 = query
            .get("resourceVersion")
            .and_then(|rv| rv.parse().ok())
            .unwrap_or_else(|| self.lock().rv);
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let server = self.clone();
        let mut latest = self.latest.subscribe();
        let (resource, namespace) = (target.resource.clone(), target.namespace.clone());
        tokio::spawn(async move {
            loop {
                let lines: Vec<Bytes> = {
                    let store = server.lock();
                    let start = store.history.partition_point(|c| c.rv <= from);
                    let mut lines = Vec::new();
                    for c in &store.history[start..] {
                        from = c.rv;
                        let ns = c.object["metadata"]["namespace"].as_str().unwrap_or("");
                        if c.resource != resource || namespace.as_deref().is_some_and(|n| n != ns) {
                            continue;
                        }
                        let now = selected(&c.object, &selector);
                        let then = c.before.as_ref().map(|b| selected(b, &selector));
                        let kind = match (c.kind, then) {
                            ("MODIFIED", Some(false)) if now => "ADDED",
                            ("MODIFIED", Some(true)) if !now => "DELETED",
                            (kind, _) if now => kind,
                            _ => continue,
                        };
                        let mut line =
                            serde_json::to_vec(&json!({"type": kind, "object": c.object}))
                                .unwrap_or_default();
                        line.push(b'\n');
                        lines.push(Bytes::from(line));
                    }
                    lines
                };
                for line in lines {
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    changed = latest.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|line| (Ok::<_, Infallible>(Frame::data(line)), rx))
        });
        let mut resp = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        resp
    }

    fn get(&self, target: &Target) -> Response<Body> {
        let Some(key) = Self::key(target, &Value::Null) else {
            return status(StatusCode::BAD_REQUEST, "BadRequest", "no name");
        };
        match self.lock().objects.get(&key) {
            Some(o) => respond(StatusCode::OK, o),
            None => not_found(&key),
        }
    }

    fn create(&self, target: &Target, mut body: Value) -> Response<Body> {
        let Some(key) = Self::key(target, &body) else {
            return status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "metadata.name is required",
            );
        };
        let rv = {
            let mut store = self.lock();
            if store.objects.contains_key(&key) {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    &format!("{key:?} exists"),
                );
            }
            let meta = &mut body["metadata"];
            meta["namespace"] = Value::String(key.1.clone());
            meta["uid"] = Value::String(format!("uid-{}", store.rv + 1));
            meta["generation"] = json!(1);
            meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
            let rv = store.record(&key.0, "ADDED", &mut body, None);
            store.objects.insert(key, body.clone());
            rv
        };
        self.changed(rv);
        respond(StatusCode::CREATED, &body)
    }

    fn replace(&self, target: &Target, mut body: Value) -> Response<Body> {
        let Some(key) = Self::key(target, &body) else {
            return status(StatusCode::BAD_REQUEST, "BadRequest", "no name");
        };
        let rv = {
            let mut store = self.lock();
            let Some(old) = store.objects.get(&key).cloned() else {
                return not_found(&key);
            };
            let asked = body["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_owned);
            if asked
                .is_some_and(|rv| Some(rv.as_str()) != old["metadata"]["resourceVersion"].as_str())
            {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "the object has been modified",
                );
            }
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
            let bumped = spec_of(&old) != spec_of(&body);
            let meta = &mut body["metadata"];
            meta["namespace"] = Value::String(key.1.clone());
            meta["uid"] = old["metadata"]["uid"].clone();
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
            meta["generation"] = json!(generation + i64::from(bumped));
            // The status subresource is written only through `/status`.
            match old.get("status") {
                Some(s) => body["status"] = s.clone(),
                None => {
                    if let Some(o) = body.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            let rv = store.record(&key.0, "MODIFIED", &mut body, Some(&old));
            store.objects.insert(key, body.clone());
            rv
        };
        self.changed(rv);
        respond(StatusCode::OK, &body)
    }

    fn patch(&self, target: &Target, body: Value) -> Response<Body> {
        let Some(key) = Self::key(target, &Value::Null) else {
            return status(StatusCode::BAD_REQUEST, "BadRequest", "no name");
        };
        let (rv, object) = {
            let mut store = self.lock();
            let Some(old) = store.objects.get(&key).cloned() else {
                return not_found(&key);
            };
            let mut new = old.clone();
            if target.status {
                new["status"] = body.get("status").cloned().unwrap_or(Value::Null);
            } else {
                merge(&mut new, &body);
            }
            if new == old {
                return respond(StatusCode::OK, &old);
            }
            let rv = store.record(&key.0, "MODIFIED", &mut new, Some(&old));
            store.objects.insert(key, new.clone());
            (rv, new)
        };
        self.changed(rv);
        respond(StatusCode::OK, &object)
    }

    fn delete(&self, target: &Target) -> Response<Body> {
        let Some(key) = Self::key(target, &Value::Null) else {
            return status(StatusCode::BAD_REQUEST, "BadRequest", "no name");
        };
        let (rv, object) = {
            let mut store = self.lock();
            let Some(mut old) = store.objects.remove(&key) else {
                return not_found(&key);
            };
            let rv = store.record(&key.0, "DELETED", &mut old, None);
            (rv, old)
        };
        self.changed(rv);
        respond(StatusCode::OK, &object)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut listen: SocketAddr = "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!());
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(addr)) => {
                listen = addr.parse().map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("--listen: {e}"))
                })?;
            }
            _ => {
                eprintln!("usage: sluice-fake-apiserver [--listen ADDR]");
                std::process::exit(2);
            }
        }
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("fake apiserver listening addr={}", listener.local_addr()?);
    let server = Server::new();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| server.clone().handle(req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
