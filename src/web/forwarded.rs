//! Who the client is behind reverse proxies: `Forwarded` (RFC 7239) or `X-Forwarded-For` /
//! `X-Forwarded-Proto`, believed only as far as the hops are `[web] trusted_proxies`.
//!
//! Each proxy appends the address it received the request from, so the list reads client →
//! proxies, and the socket's peer is the last proxy. Walking it from the right, every address
//! that is a trusted proxy is skipped; the first one that is not is the client. Anything left
//! of it was written by the client (or by proxies we do not know) and is ignored, so a client
//! cannot pick its own address by sending the header itself.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;

/// What the proxies say about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The client's address (the peer's, when it is not a trusted proxy).
    pub client: IpAddr,
    /// The scheme the client used, when a trusted proxy said so.
    pub proto: Option<Scheme>,
}

/// `http` or `https`, as a proxy reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    fn parse(s: &str) -> Option<Scheme> {
        match s.trim().trim_matches('"').to_ascii_lowercase().as_str() {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            _ => None,
        }
    }
}

/// One hop of the chain: the address a proxy saw and, when it says, the scheme.
#[derive(Debug, Clone, Copy)]
struct Hop {
    addr: Option<IpAddr>,
    proto: Option<Scheme>,
}

/// The request's origin, `trusted` telling which addresses are proxies of ours.
pub fn origin(peer: SocketAddr, headers: &HeaderMap, trusted: impl Fn(IpAddr) -> bool) -> Origin {
    let direct = Origin {
        client: peer.ip(),
        proto: None,
    };
    if !trusted(peer.ip()) {
        return direct;
    }
    let hops = forwarded_hops(headers).unwrap_or_else(|| x_forwarded_hops(headers));
    // The last proxy's own view of the scheme, when nothing better is found.
    let mut proto = hops.last().and_then(|h| h.proto);
    for hop in hops.iter().rev() {
        // A hop we cannot read (`unknown`, an obfuscated name): nothing to its left is ours.
        let Some(addr) = hop.addr else {
            break;
        };
        proto = hop.proto.or(proto);
        if !trusted(addr) {
            return Origin {
                client: addr,
                proto,
            };
        }
    }
    // Every hop is a proxy of ours, or there is none: the leftmost one we could read.
    let client = hops
        .iter()
        .rev()
        .take_while(|h| h.addr.is_some())
        .last()
        .and_then(|h| h.addr)
        .unwrap_or(peer.ip());
    Origin { client, proto }
}

fn values<'a>(headers: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
}

/// RFC 7239 `Forwarded: for=192.0.2.7;proto=https, for="[2001:db8::1]:4711"`; `None` when the
/// header is absent.
fn forwarded_hops(headers: &HeaderMap) -> Option<Vec<Hop>> {
    headers.get("forwarded")?;
    let hops = values(headers, "forwarded")
        .map(|element| {
            let mut hop = Hop {
                addr: None,
                proto: None,
            };
            for pair in element.split(';') {
                let Some((k, v)) = pair.split_once('=') else {
                    continue;
                };
                match k.trim().to_ascii_lowercase().as_str() {
                    "for" => hop.addr = node_address(v),
                    "proto" => hop.proto = Scheme::parse(v),
                    _ => {}
                }
            }
            hop
        })
        .collect();
    Some(hops)
}

/// A `for=` node: `192.0.2.7`, `"192.0.2.7:80"`, `"[2001:db8::1]"`, `"[2001:db8::1]:80"`.
fn node_address(v: &str) -> Option<IpAddr> {
    let v = v.trim().trim_matches('"');
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    v.parse()
        .ok()
        .or_else(|| v.rsplit_once(':').and_then(|(a, _)| a.parse().ok()))
}

/// `X-Forwarded-For` with `X-Forwarded-Proto` (one value per hop when the proxies append, or
/// a single value: the scheme the client used at the first proxy).
fn x_forwarded_hops(headers: &HeaderMap) -> Vec<Hop> {
    let protos: Vec<Option<Scheme>> = values(headers, "x-forwarded-proto")
        .map(Scheme::parse)
        .collect();
    let addrs: Vec<Option<IpAddr>> = values(headers, "x-forwarded-for")
        .map(node_address)
        .collect();
    if addrs.is_empty() {
        // A proxy that only says the scheme.
        return protos
            .first()
            .map(|p| Hop {
                addr: None,
                proto: *p,
            })
            .into_iter()
            .collect();
    }
    let paired = protos.len() == addrs.len();
    addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| Hop {
            addr: *addr,
            proto: if paired {
                protos[i]
            } else if i == 0 {
                protos.first().copied().flatten()
            } else {
                None
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn trusted(ip: IpAddr) -> bool {
        ip.is_loopback() || ip == "10.0.0.9".parse::<IpAddr>().unwrap()
    }

    const PEER: &str = "127.0.0.1:5000";

    #[test]
    fn untrusted_peers_headers_are_ignored() {
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-proto", "https"),
        ]);
        let o = origin("192.0.2.1:1".parse().unwrap(), &h, trusted);
        assert_eq!(o.client, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(o.proto, None);
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        // The client wrote 6.6.6.6 itself; 198.51.100.7 reached our proxy 10.0.0.9.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.9")]);
        let o = origin(PEER.parse().unwrap(), &h, trusted);
        assert_eq!(o.client, "198.51.100.7".parse::<IpAddr>().unwrap());
        let h = headers(&[(
            "forwarded",
            "for=6.6.6.6;proto=http, for=\"[2001:db8::7]:4711\";proto=https",
        )]);
        let o = origin(PEER.parse().unwrap(), &h, trusted);
        assert_eq!(o.client, "2001:db8::7".parse::<IpAddr>().unwrap());
        assert_eq!(o.proto, Some(Scheme::Https));
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for_and_unknown_stops_the_walk() {
        let h = headers(&[
            ("forwarded", "for=198.51.100.7"),
            ("x-forwarded-for", "6.6.6.6"),
        ]);
        let o = origin(PEER.parse().unwrap(), &h, trusted);
        assert_eq!(o.client, "198.51.100.7".parse::<IpAddr>().unwrap());
        let h = headers(&[("forwarded", "for=6.6.6.6, for=unknown, for=10.0.0.9")]);
        let o = origin(PEER.parse().unwrap(), &h, trusted);
        assert_eq!(o.client, "10.0.0.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_single_proto_is_the_first_proxys() {
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.7, 10.0.0.9"),
            ("x-forwarded-proto", "http"),
        ]);
        let o = origin(PEER.parse().unwrap(), &h, trusted);
        assert_eq!(o.proto, Some(Scheme::Http));
        let h = headers(&[("x-forwarded-proto", "https")]);
        let o = origin(PEER.parse().unwrap(), &h, trusted);
        assert_eq!(
            (o.client, o.proto),
            (
                PEER.parse::<SocketAddr>().unwrap().ip(),
                Some(Scheme::Https)
            )
        );
    }
}
