//! Who a request comes from, for per-client rate limits and logs.
//!
//! `X-Forwarded-For` is anybody's to write, so it counts only when the socket peer is a proxy
//! listed in `TRUSTED_PROXIES`; then the list is read from the right, skipping the trusted
//! proxies' own hops, and the first address no trusted proxy vouches for is the client.
//! Anything that does not parse as an IP address ends the walk: a proxy never writes it.
//!
//! The web pages call the API on the visitor's behalf, so the API's socket peer is the web tier.
//! The web tier states the visitor's address in [`SIGNED_HEADER`], `<ip>;<unix time>;<MAC>`,
//! signed with the servers' shared key: an outsider cannot forge it, and a captured one is
//! only good for [`SIGNED_HEADER_MAX_AGE_SECONDS`] and only for the address it names.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::http::{HeaderMap, HeaderValue};

use crate::session::SessionKeys;

/// The header the web tier states the visitor's address in.
pub const SIGNED_HEADER: &str = "x-ticketing-client-ip";

/// How long a signed address is accepted (either way, for clock skew between pods).
pub const SIGNED_HEADER_MAX_AGE_SECONDS: i64 = 60;

const PURPOSE: &str = "client-ip";

/// An address block such as `10.0.0.0/8`, `fd00::/8` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not an IP address or CIDR block (like 10.0.0.0/8)")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(text.to_owned());
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix.parse::<u8>().map_err(|_| err())?)),
            None => (text, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| err())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(err());
        }
        Ok(Self { network, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (canonical(self.network), ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), 32, self.prefix) == masked(u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(net.into(), 128, self.prefix) == masked(ip.into(), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn masked(bits: u128, width: u8, prefix: u8) -> u128 {
    let prefix = u32::from(prefix.min(width));
    if prefix == 0 { 0 } else { bits >> (u32::from(width) - prefix) }
}

/// `::ffff:10.0.0.1` is 10.0.0.1 (a dual-stack socket reports IPv4 peers that way).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Tells the client address of requests, and signs the visitor's address for the API.
#[derive(Clone)]
pub struct ClientAddresses {
    trusted: Vec<Cidr>,
    /// `TRUST_PROXY`: the socket peer is a proxy whatever its address (its own hop, the
    /// rightmost, is taken; further hops only through `trusted`).
    trust_any_peer: bool,
    keys: std::sync::Arc<SessionKeys>,
}

impl std::fmt::Debug for ClientAddresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAddresses").field("trusted", &self.trusted).finish_non_exhaustive()
    }
}

impl ClientAddresses {
    pub fn new(trusted: Vec<Cidr>, keys: std::sync::Arc<SessionKeys>) -> Self {
        Self { trusted, trust_any_peer: false, keys }
    }

    /// From the settings `TRUSTED_PROXIES` and `TRUST_PROXY`.
    pub fn from_settings(settings: &crate::settings::Settings, keys: std::sync::Arc<SessionKeys>) -> Self {
        Self { trusted: settings.trusted_proxies.clone(), trust_any_peer: settings.trust_proxy, keys }
    }

    /// The servers' keys this signs with.
    pub fn keys(&self) -> &std::sync::Arc<SessionKeys> {
        &self.keys
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|cidr| cidr.contains(ip))
    }

    /// The client address of a request: the web tier's signed statement, else the rightmost
    /// `X-Forwarded-For` hop no trusted proxy vouches for, else the socket peer.
    pub fn client_ip(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> String {
        if let Some(ip) = self.signed(headers) {
            return ip.to_string();
        }
        let Some(peer) = peer.map(|peer| canonical(peer.ip())) else {
            return "unknown".to_owned();
        };
        if !(self.trust_any_peer || self.is_trusted(peer)) {
            return peer.to_string();
        }
        let mut client = peer;
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|hop| !hop.is_empty())
            .collect::<Vec<_>>();
        for hop in hops.into_iter().rev() {
            let Some(ip) = parse_hop(hop) else { break };
            client = ip;
            if !self.is_trusted(ip) {
                break;
            }
        }
        client.to_string()
    }

    /// `SIGNED_HEADER` stating `ip`, for a call to the API on a visitor's behalf.
    pub fn sign(&self, ip: &str) -> Option<HeaderValue> {
        let ip: IpAddr = ip.parse().ok()?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mac = self.keys.mac(PURPOSE, &[ip.to_string().as_bytes(), now.to_string().as_bytes()]);
        HeaderValue::from_str(&format!("{ip};{now};{}", hex::encode(mac))).ok()
    }

    fn signed(&self, headers: &HeaderMap) -> Option<IpAddr> {
        let value = headers.get(SIGNED_HEADER)?.to_str().ok()?;
        let mut parts = value.split(';');
        let (ip, at, mac) = (parts.next()?, parts.next()?, parts.next()?);
        let at_seconds: i64 = at.parse().ok()?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let fresh = (now - at_seconds).abs() <= SIGNED_HEADER_MAX_AGE_SECONDS;
        let valid = parts.next().is_none()
            && fresh
            && hex::decode(mac)
                .ok()
                .is_some_and(|mac| self.keys.verify_mac(PURPOSE, &[ip.as_bytes(), at.as_bytes()], &mac));
        if !valid {
            tracing::debug!(header = SIGNED_HEADER, "ignored an unverifiable client address");
            return None;
        }
        ip.parse().ok()
    }
}

/// `203.0.113.9`, `2001:db8::1`, or either with a port as some proxies write it.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>().or_else(|_| hop.parse::<SocketAddr>().map(|addr| addr.ip())).ok().map(canonical)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn keys(secret: &[u8]) -> Arc<SessionKeys> {
        Arc::new(SessionKeys::new(secret, time::Duration::hours(1)))
    }

    fn addresses(trusted: &[&str]) -> ClientAddresses {
        ClientAddresses::new(trusted.iter().map(|c| c.parse().unwrap()).collect(), keys(b"a key of the servers"))
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().unwrap(), 40000))
    }

    #[test]
    fn cidrs_parse_and_match() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.200.1.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()) && !one.contains("127.0.0.2".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()) && !v6.contains("fe80::1".parse().unwrap()));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains("8.8.8.8".parse().unwrap()));
        for bad in ["", "10.0.0.0/33", "::/129", "example.com", "10.0.0/8", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    /// Finding: `X-Forwarded-For` was trusted from any loopback peer even with TRUST_PROXY off.
    #[test]
    fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        let headers = forwarded(&["198.51.100.7"]);
        assert_eq!(addresses(&[]).client_ip(&headers, peer("127.0.0.1")), "127.0.0.1");
        assert_eq!(addresses(&["10.0.0.0/8"]).client_ip(&headers, peer("192.0.2.1")), "192.0.2.1");
        assert_eq!(addresses(&["127.0.0.1"]).client_ip(&headers, peer("127.0.0.1")), "198.51.100.7");
        assert_eq!(addresses(&[]).client_ip(&HeaderMap::new(), None), "unknown");
        // TRUST_PROXY: whatever proxy is in front appended the rightmost entry; no further.
        let any = ClientAddresses { trust_any_peer: true, ..addresses(&[]) };
        assert_eq!(any.client_ip(&forwarded(&["6.6.6.6, 203.0.113.9"]), peer("192.0.2.1")), "203.0.113.9");
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let proxies = addresses(&["10.0.0.0/8"]);
        // The client wrote the first entry itself; the proxies appended the rest.
        let headers = forwarded(&["6.6.6.6, 203.0.113.9", "10.0.0.5"]);
        assert_eq!(proxies.client_ip(&headers, peer("10.0.0.2")), "203.0.113.9");
        // Every hop trusted: the leftmost is as far as we can see.
        assert_eq!(proxies.client_ip(&forwarded(&["10.1.1.1, 10.0.0.5"]), peer("10.0.0.2")), "10.1.1.1");
        // Garbage is never a client address: the walk stops at the hop that wrote it.
        assert_eq!(proxies.client_ip(&forwarded(&["not-an-ip"]), peer("10.0.0.2")), "10.0.0.2");
        assert_eq!(proxies.client_ip(&forwarded(&["203.0.113.9, x, 10.0.0.5"]), peer("10.0.0.2")), "10.0.0.5");
        assert_eq!(proxies.client_ip(&forwarded(&["[2001:db8::1]:443"]), peer("10.0.0.2")), "2001:db8::1");
        assert_eq!(proxies.client_ip(&forwarded(&["203.0.113.9:5555"]), peer("10.0.0.2")), "203.0.113.9");
    }

    #[test]
    fn the_web_tier_states_the_visitor_address_in_a_header_only_it_can_sign() {
        let api = addresses(&[]);
        let mut headers = HeaderMap::new();
        headers.insert(SIGNED_HEADER, api.sign("198.51.100.7").unwrap());
        assert_eq!(api.client_ip(&headers, peer("127.0.0.1")), "198.51.100.7");

        // Signed with another key, altered, or stale: ignored, the peer counts.
        let outsider = ClientAddresses::new(Vec::new(), keys(b"somebody else's key"));
        headers.insert(SIGNED_HEADER, outsider.sign("198.51.100.7").unwrap());
        assert_eq!(api.client_ip(&headers, peer("127.0.0.1")), "127.0.0.1");
        let genuine = api.sign("198.51.100.7").unwrap();
        let altered = genuine.to_str().unwrap().replacen("198.51.100.7", "198.51.100.8", 1);
        headers.insert(SIGNED_HEADER, HeaderValue::from_str(&altered).unwrap());
        assert_eq!(api.client_ip(&headers, peer("127.0.0.1")), "127.0.0.1");
        let stale_at = time::OffsetDateTime::now_utc().unix_timestamp() - SIGNED_HEADER_MAX_AGE_SECONDS - 5;
        let mac = api.keys.mac(PURPOSE, &[b"198.51.100.7", stale_at.to_string().as_bytes()]);
        headers.insert(
            SIGNED_HEADER,
            HeaderValue::from_str(&format!("198.51.100.7;{stale_at};{}", hex::encode(mac))).unwrap(),
        );
        assert_eq!(api.client_ip(&headers, peer("127.0.0.1")), "127.0.0.1");
        headers.insert(SIGNED_HEADER, HeaderValue::from_static("198.51.100.7;1;zz"));
        assert_eq!(api.client_ip(&headers, peer("127.0.0.1")), "127.0.0.1");
        assert!(api.sign("not an ip").is_none());
    }
}
