//! Outbound HTTP to URLs that users supply (webhook destinations, and later CI servers and
//! custom provider base URLs): one client builder behind an SSRF guard.
//!
//! The guard refuses loopback, private, link-local, shared, multicast and other special-purpose
//! addresses unless the operator allow-lists them (`allow`: CIDRs such as `10.1.0.0/16`, or
//! host names). It checks the addresses a name resolves to, in the client's own resolver, so
//! that a name cannot point at a public address when checked and at a private one when
//! connected to (DNS rebinding); literal addresses in a URL are checked before sending. Plain
//! `http` is only allowed to allow-listed destinations. Redirects are not followed: a
//! destination could otherwise send the request anywhere.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Blocked {
    /// The URL is not usable.
    #[error("invalid destination URL: {0}")]
    Url(String),
    /// Plain http to a destination that is not allow-listed.
    #[error("destination must use https")]
    Scheme,
    /// It is, or resolves to, an address that is not public.
    #[error("destination address {0} is not public and not allow-listed")]
    Address(IpAddr),
}

/// What the operator allows beyond the public internet.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    networks: Vec<IpNet>,
    hosts: Vec<String>,
}

impl Guard {
    /// A guard allowing `allow`: CIDRs (`10.0.0.0/8`, `::1/128`), bare addresses, or host names.
    pub fn new(allow: &[String]) -> Result<Guard, String> {
        let mut guard = Guard::default();
        for entry in allow {
            let entry = entry.trim();
            if let Ok(network) = entry.parse::<IpNet>() {
                guard.networks.push(network);
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                guard.networks.push(IpNet::from(ip));
            } else if !entry.is_empty() && !entry.contains(['/', ' ', ':']) {
                guard.hosts.push(entry.to_ascii_lowercase());
            } else {
                return Err(format!(
                    "{entry:?} is neither a CIDR, an address nor a host name"
                ));
            }
        }
        Ok(guard)
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.networks.iter().any(|network| network.contains(&ip))
    }

    fn allows_host(&self, host: &str) -> bool {
        self.hosts.iter().any(|allowed| allowed == host)
    }

    /// Checks a URL before it is stored or sent to: its scheme, and its host if that is an
    /// address. Names are checked when they are resolved.
    pub fn check_url(&self, url: &str) -> Result<url::Url, Blocked> {
        let parsed = url::Url::parse(url).map_err(|err| Blocked::Url(err.to_string()))?;
        let host = parsed
            .host()
            .ok_or_else(|| Blocked::Url("no host".into()))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(Blocked::Url("credentials in a URL are not allowed".into()));
        }
        let literal = match host {
            url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            url::Host::Domain(_) => None,
        };
        let allowed_host = match (literal, host) {
            (Some(ip), _) => {
                self.check_ip(ip)?;
                self.networks.iter().any(|network| network.contains(&ip))
            }
            (None, url::Host::Domain(name)) => self.allows_host(&name.to_ascii_lowercase()),
            (None, _) => false,
        };
        match parsed.scheme() {
            "https" => Ok(parsed),
            "http" if allowed_host => Ok(parsed),
            "http" => Err(Blocked::Scheme),
            other => Err(Blocked::Url(format!("scheme {other} is not http(s)"))),
        }
    }

    /// Checks one address.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Blocked> {
        if self.allows_ip(ip) {
            Ok(())
        } else {
            Err(Blocked::Address(ip))
        }
    }

    /// A client whose connections pass this guard, following no redirects.
    pub fn client(&self, user_agent: &str) -> Result<reqwest::Client, reqwest::Error> {
        crate::tls::install_crypto_provider();
        reqwest::Client::builder()
            .user_agent(user_agent)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .dns_resolver(Arc::new(GuardedResolver(self.clone())))
            // A proxy would resolve the destination itself, past the guard.
            .no_proxy()
            .build()
    }
}

/// Resolves with the system resolver and keeps the addresses the guard allows; a name with none
/// left fails to resolve.
#[derive(Debug)]
struct GuardedResolver(Guard);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_ascii_lowercase();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let named = guard.allows_host(&host);
            let kept: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|addr| named || guard.allows_ip(addr.ip()))
                .collect();
            if kept.is_empty() {
                let blocked = resolved.first().map_or_else(
                    || Blocked::Url(format!("{host} did not resolve")),
                    |addr| Blocked::Address(addr.ip()),
                );
                return Err(Box::new(blocked) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether `ip` is a globally routable unicast address (not loopback, private, link-local,
/// shared address space, documentation, benchmarking, multicast, reserved or unspecified).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8
                || first == 0x0064 && v6.segments()[1] == 0xff9b)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_pass_by_default() {
        let guard = Guard::default();
        for blocked in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = blocked.parse().expect("address");
            assert_eq!(guard.check_ip(ip), Err(Blocked::Address(ip)), "{blocked}");
        }
        for public in ["93.184.216.34", "2606:4700::1111", "8.8.8.8"] {
            assert!(
                guard.check_ip(public.parse().expect("address")).is_ok(),
                "{public}"
            );
        }
    }

    #[test]
    fn urls_need_https_unless_allow_listed() {
        let guard = Guard::default();
        assert!(guard.check_url("https://hooks.example.com/x").is_ok());
        assert_eq!(
            guard.check_url("http://hooks.example.com/x"),
            Err(Blocked::Scheme)
        );
        assert!(matches!(
            guard.check_url("https://127.0.0.1/x"),
            Err(Blocked::Address(_))
        ));
        assert!(matches!(
            guard.check_url("https://[::1]:8443/x"),
            Err(Blocked::Address(_))
        ));
        assert!(matches!(
            guard.check_url("https://user:pw@example.com/"),
            Err(Blocked::Url(_))
        ));
        assert!(guard.check_url("ftp://example.com/").is_err());

        let allowing = Guard::new(&["127.0.0.0/8".into(), "internal.svc".into()]).expect("guard");
        assert!(allowing.check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(allowing.check_url("http://internal.svc/hook").is_ok());
        assert!(Guard::new(&["not a network/x".into()]).is_err());
    }

    #[tokio::test]
    async fn the_resolver_drops_what_the_guard_refuses() {
        use reqwest::dns::Resolve;
        let name: reqwest::dns::Name = "localhost".parse().expect("name");
        let refused = GuardedResolver(Guard::default()).resolve(name).await;
        let refusal = refused.err().map(|err| err.to_string()).unwrap_or_default();
        assert!(refusal.contains("not public"), "{refusal}");
        let name: reqwest::dns::Name = "localhost".parse().expect("name");
        let allowed =
            GuardedResolver(Guard::new(&["127.0.0.0/8".into(), "::1".into()]).expect("guard"))
                .resolve(name)
                .await
                .expect("resolves");
        assert!(allowed.into_iter().all(|addr| addr.ip().is_loopback()));
    }
}
