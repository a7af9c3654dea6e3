//! Where the operator may send notifications. Their URLs come from users'
//! Secrets, and the operator sits inside the cluster network: without a
//! limit, a webhook URL would let any user who may create a backup probe
//! cluster-internal services from the operator's position (and read which
//! ports answer from the Notified condition). Loopback, link-local, private
//! and other internal ranges are refused unless the operator's allow-list
//! (`--notify-allowed-networks`, the chart's `notify.allowedNetworks`) names
//! them. Names are checked as resolved, right before connecting, so a name
//! that resolves elsewhere later cannot slip through.

use hyper_util::client::legacy::connect::dns::Name;
use ipnet::IpNet;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// What a refused address says: the same whether anything listens there.
pub const REFUSED: &str = "the URL's host is a loopback, link-local or private address, \
     which the operator's notify.allowedNetworks does not name";

/// Networks the operator may send to although they are internal.
#[derive(Clone, Debug, Default)]
pub struct Allowed(Arc<Vec<IpNet>>);

impl Allowed {
    pub fn new(networks: Vec<IpNet>) -> Allowed {
        Allowed(Arc::new(networks))
    }

    /// Whether a notification may go to `ip` (an IPv4 address embedded in
    /// an IPv6 one counts as itself).
    pub fn permits(&self, ip: IpAddr) -> bool {
        let v4 = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let listed = |ip: IpAddr| self.0.iter().any(|n| n.contains(&ip));
        !internal(ip) || listed(ip) || v4.is_some_and(listed)
    }

    /// For a URL whose host is an address (no lookup happens for it): whether
    /// it may be sent to. Names pass here; the resolver checks them.
    pub fn permits_host(&self, host: &str) -> bool {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>().map_or(true, |ip| self.permits(ip))
    }
}

/// Addresses inside a cluster or host rather than on the internet.
fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                // Shared address space (RFC 6598), used by some pod networks.
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => internal(IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (first & 0xfe00) == 0xfc00 // unique local
                    || (first & 0xffc0) == 0xfe80 // link-local
            }
        },
    }
}

/// The IPv4 address an IPv6 one carries: mapped (::ffff:a.b.c.d), the old
/// compatible form (::a.b.c.d) or NAT64's well-known prefix (64:ff9b::/96),
/// each of which reaches that IPv4 address.
fn embedded_v4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let s = v6.segments();
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., a, b, c, d] = v6.octets();
        return Some(std::net::Ipv4Addr::new(a, b, c, d));
    }
    v6.to_ipv4()
}

/// A DNS resolver that keeps only the addresses `Allowed` permits, and fails
/// when none is left.
#[derive(Clone)]
pub struct Resolver(pub Allowed);

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allowed = self.0.clone();
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let permitted: Vec<SocketAddr> = found.filter(|a| allowed.permits(a.ip())).collect();
            match permitted.is_empty() {
                true => Err(io::Error::new(io::ErrorKind::PermissionDenied, REFUSED)),
                false => Ok(permitted.into_iter()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_need_the_allow_list() {
        let none = Allowed::default();
        for refused in [
            "127.0.0.1",
            "10.96.0.1",
            "172.20.3.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.10",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "::10.0.0.1",
        ] {
            assert!(!none.permits(refused.parse().unwrap()), "{refused}");
        }
        for public in ["8.8.8.8", "2606:4700::1111", "172.32.0.1"] {
            assert!(none.permits(public.parse().unwrap()), "{public}");
        }
        let cluster = Allowed::new(vec!["10.96.0.0/12".parse().unwrap()]);
        assert!(cluster.permits("10.96.0.1".parse().unwrap()));
        assert!(!cluster.permits("10.0.0.1".parse().unwrap()));
        assert!(cluster.permits("::ffff:10.96.0.1".parse().unwrap()));
        assert!(!none.permits_host("[::1]"));
        assert!(!none.permits_host("127.0.0.1"));
        assert!(none.permits_host("hooks.example"));
    }
}
