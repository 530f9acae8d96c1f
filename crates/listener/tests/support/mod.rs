//! What the listener's tests share: a server on `127.0.0.1:0` with its own metrics,
//! read back by name, and stopped through its shutdown signal.

use std::future::Future;
use std::net::SocketAddr;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use prometheus::{Encoder, Registry};
use sluice_listener::{ListenerMetrics, ServerConfig, serve};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    registry: Registry,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    /// Serves `handler` with `config`, its metrics under the listener name `name`.
    pub async fn start<H, F, B>(config: ServerConfig, name: &str, handler: H) -> Self
    where
        H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let registry = Registry::new();
        let metrics = ListenerMetrics::new(&registry).expect("metrics");
        let config = ServerConfig {
            metrics: metrics.listener(name),
            ..config
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, config, handler, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            registry,
            stop,
            task,
        }
    }

    /// The value of metric `name` with labels `labels` (`k="v"` pairs), 0 if absent.
    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut text)
            .expect("encode");
        let wanted = format!("{name}{{{labels}}} ");
        String::from_utf8_lossy(&text)
            .lines()
            .find_map(|l| {
                l.strip_prefix(&wanted)
                    .map(|v| v.parse().expect("a number"))
            })
            .unwrap_or(0.0)
    }

    /// Stops accepting, drains, and waits for the server to end.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("stops");
    }
}
