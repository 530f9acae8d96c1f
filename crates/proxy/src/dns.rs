//! Endpoint names resolved through a cache that answers for a TTL, then asks again.
//!
//! A backend by URL (`https://api.example.com`) is one endpoint whose address is a
//! name; the name is resolved when the upstream client opens a connection. The
//! system resolver says nothing about a record's TTL, so answers are kept for the
//! proxy's `--upstream-dns-ttl` on the store's clock: new connections follow a
//! provider that moves within that time, while a burst of connections costs one
//! lookup. When a lookup after the TTL fails, the last answer is used again (and
//! the next connection asks again): a resolver hiccup does not take a provider
//! away. Connections already open stay until they idle out.
//!
//! The resolver is injected ([`Resolve`]), so that tests say what a name resolves
//! to and count the lookups.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::dns::Name;

use crate::clock::SharedClock;

/// How long an answer is used when the proxy is not told otherwise.
pub const DEFAULT_DNS_TTL: Duration = Duration::from_secs(30);

/// A boxed future of a lookup.
pub type Lookup<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>>;

/// Resolves a host name to addresses.
pub trait Resolve: Send + Sync + fmt::Debug {
    /// The addresses of `host`.
    fn resolve<'a>(&'a self, host: &'a str) -> Lookup<'a>;
}

/// The system's resolver (`getaddrinfo`, on Tokio's blocking pool).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> Lookup<'a> {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host, 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// A resolver with a cache, as the upstream connector's resolver.
#[derive(Clone)]
pub struct DnsCache {
    inner: Arc<Inner>,
}

struct Inner {
    resolver: Arc<dyn Resolve>,
    ttl: Duration,
    clock: SharedClock,
    entries: Mutex<HashMap<String, Entry>>,
}

#[derive(Clone)]
struct Entry {
    addresses: Arc<[IpAddr]>,
    /// On the clock, in nanoseconds.
    expires: u64,
}

impl fmt::Debug for DnsCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsCache")
            .field("resolver", &self.inner.resolver)
            .field("ttl", &self.inner.ttl)
            .finish_non_exhaustive()
    }
}

impl DnsCache {
    /// A cache over `resolver` keeping answers for `ttl` on `clock`.
    pub fn new(resolver: Arc<dyn Resolve>, ttl: Duration, clock: SharedClock) -> Self {
        Self {
            inner: Arc::new(Inner {
                resolver,
                ttl,
                clock,
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The addresses of `host`: cached while fresh, else looked up again.
    ///
    /// # Errors
    ///
    /// The lookup's, when it fails and there is no earlier answer, or it finds nothing.
    pub async fn lookup(&self, host: &str) -> io::Result<Arc<[IpAddr]>> {
        let inner = &self.inner;
        let now = inner.clock.now_nanos();
        let cached = inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(host)
            .cloned();
        if let Some(entry) = cached.as_ref().filter(|e| e.expires > now) {
            return Ok(entry.addresses.clone());
        }
        match inner.resolver.resolve(host).await {
            Ok(addresses) if !addresses.is_empty() => {
                let addresses: Arc<[IpAddr]> = addresses.into();
                let ttl = u64::try_from(inner.ttl.as_nanos()).unwrap_or(u64::MAX);
                let now = inner.clock.now_nanos();
                let mut entries = inner.entries.lock().unwrap_or_else(PoisonError::into_inner);
                // Names no table has asked for in a while go.
                entries.retain(|_, e| e.expires.saturating_add(ttl) > now);
                entries.insert(
                    host.to_owned(),
                    Entry {
                        addresses: addresses.clone(),
                        expires: now.saturating_add(ttl),
                    },
                );
                Ok(addresses)
            }
            result => {
                let error = match result {
                    Ok(_) => io::Error::new(io::ErrorKind::NotFound, "no addresses"),
                    Err(e) => e,
                };
                match cached {
                    Some(stale) => {
                        tracing::warn!(host, error = %error, "DNS lookup failed; using the last answer");
                        Ok(stale.addresses)
                    }
                    None => Err(error),
                }
            }
        }
    }
}

impl tower_service::Service<Name> for DnsCache {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let cache = self.clone();
        Box::pin(async move {
            let addresses = cache.lookup(name.as_str()).await?;
            // The connector puts the URI's port on each address.
            Ok(addresses
                .iter()
                .map(|ip| SocketAddr::new(*ip, 0))
                .collect::<Vec<_>>()
                .into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::net::Ipv4Addr;

    use super::*;
    use crate::clock::TokioClock;

    /// Answers from a script, counting the lookups.
    #[derive(Debug, Default)]
    struct Scripted {
        answers: Mutex<VecDeque<io::Result<Vec<IpAddr>>>>,
        lookups: std::sync::atomic::AtomicUsize,
    }

    impl Resolve for Scripted {
        fn resolve<'a>(&'a self, _host: &'a str) -> Lookup<'a> {
            self.lookups
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let next = self.answers.lock().unwrap().pop_front();
            Box::pin(async move { next.unwrap_or_else(|| Err(io::ErrorKind::NotFound.into())) })
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_is_used_for_the_ttl_then_asked_again() {
        let script = Arc::new(Scripted::default());
        script
            .answers
            .lock()
            .unwrap()
            .extend([Ok(vec![ip(1)]), Ok(vec![ip(2), ip(3)])]);
        let cache = DnsCache::new(
            script.clone(),
            Duration::from_secs(30),
            TokioClock::shared(),
        );
        let lookups = || script.lookups.load(std::sync::atomic::Ordering::SeqCst);

        assert_eq!(&*cache.lookup("api.example.com").await.unwrap(), &[ip(1)]);
        tokio::time::advance(Duration::from_millis(29_999)).await;
        assert_eq!(&*cache.lookup("api.example.com").await.unwrap(), &[ip(1)]);
        assert_eq!(lookups(), 1, "fresh for the TTL");

        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            &*cache.lookup("api.example.com").await.unwrap(),
            &[ip(2), ip(3)]
        );
        assert_eq!(lookups(), 2, "asked again once the TTL passed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_lookup_after_the_ttl_keeps_the_last_answer_and_asks_again_next_time() {
        let script = Arc::new(Scripted::default());
        script.answers.lock().unwrap().extend([
            Ok(vec![ip(1)]),
            Err(io::ErrorKind::TimedOut.into()),
            Ok(vec![ip(4)]),
        ]);
        let cache = DnsCache::new(script.clone(), Duration::from_secs(5), TokioClock::shared());
        assert_eq!(&*cache.lookup("h").await.unwrap(), &[ip(1)]);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(&*cache.lookup("h").await.unwrap(), &[ip(1)], "stale kept");
        assert_eq!(&*cache.lookup("h").await.unwrap(), &[ip(4)], "asked again");
        assert_eq!(script.lookups.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_never_resolved_fails_with_the_lookup_error() {
        let script = Arc::new(Scripted::default());
        script.answers.lock().unwrap().push_back(Ok(Vec::new()));
        let cache = DnsCache::new(script, Duration::from_secs(5), TokioClock::shared());
        let error = cache.lookup("nowhere.example").await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }
}
