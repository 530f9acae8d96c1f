//! Caps on the connections a listener holds open: in all, and per client address.
//!
//! A connection is admitted with a [`Permit`] that gives its place back when dropped
//! (when the connection's task ends, however it ends). A client address is an IPv4
//! address, or the /64 prefix of an IPv6 one: one IPv6 host usually holds a whole /64,
//! so a per-address cap on full IPv6 addresses would bound nothing. Only addresses with
//! a connection open are remembered, so the map is bounded by the listener's cap.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The listener holds its most connections.
    Listener,
    /// The client's address holds its most connections.
    ClientAddress,
}

/// The open connections of one listener.
#[derive(Debug)]
pub(crate) struct Limits {
    max: Option<NonZeroUsize>,
    per_client: Option<NonZeroUsize>,
    open: AtomicUsize,
    /// Open connections by client key; only keys with at least one.
    by_client: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection's place among the open ones; given back when dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    limits: Arc<Limits>,
    client: IpAddr,
}

/// The key a client address is counted under: IPv4 as is (also when mapped into
/// IPv6), IPv6 by its /64 prefix.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

impl Limits {
    /// At most `max` connections (`None`: no cap), at most `per_client` from one client
    /// key (`None`: no cap).
    pub(crate) fn new(max: Option<NonZeroUsize>, per_client: Option<NonZeroUsize>) -> Self {
        Self {
            max,
            per_client,
            open: AtomicUsize::new(0),
            by_client: Mutex::new(HashMap::new()),
        }
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Admits one more connection from `ip`, or says why not.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refused> {
        // Only the accept loop admits: a check then an increment cannot race another
        // admission, only releases, which make room.
        if self.max.is_some_and(|max| self.open() >= max.get()) {
            return Err(Refused::Listener);
        }
        let client = client_key(ip);
        {
            let mut by_client = self
                .by_client
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let n = by_client.entry(client).or_insert(0);
            if self.per_client.is_some_and(|max| *n >= max.get()) {
                return Err(Refused::ClientAddress);
            }
            *n += 1;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Permit {
            limits: self.clone(),
            client,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limits.open.fetch_sub(1, Ordering::Relaxed);
        let mut by_client = self
            .limits
            .by_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                by_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn caps_in_all_and_per_client() {
        let limits = Arc::new(Limits::new(NonZeroUsize::new(3), NonZeroUsize::new(2)));
        let a1 = limits.admit(ip("10.0.0.1")).expect("first");
        let a2 = limits.admit(ip("10.0.0.1")).expect("second");
        assert_eq!(
            limits.admit(ip("10.0.0.1")).err(),
            Some(Refused::ClientAddress)
        );
        let b = limits.admit(ip("10.0.0.2")).expect("another client");
        assert_eq!(limits.admit(ip("10.0.0.3")).err(), Some(Refused::Listener));
        drop(a1);
        assert_eq!(limits.open(), 2);
        let _a3 = limits.admit(ip("10.0.0.1")).expect("room again");
        drop((a2, b));
        assert_eq!(
            limits.by_client.lock().expect("lock").len(),
            1,
            "only open clients kept"
        );
    }

    #[test]
    fn ipv6_clients_count_by_their_64_prefix() {
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa::1")),
            client_key(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(client_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        let limits = Arc::new(Limits::new(None, NonZeroUsize::new(1)));
        let _held = limits.admit(ip("2001:db8::1")).expect("first");
        assert_eq!(
            limits.admit(ip("2001:db8::2")).err(),
            Some(Refused::ClientAddress)
        );
    }
}
