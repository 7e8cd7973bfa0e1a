//! Header hygiene for both directions: hop-by-hop headers out (RFC 9110 §7.6.1, with
//! those the `Connection` header names), `X-Forwarded-*` set from what we know rather
//! than what the client claims, and the route's own add/set/remove rules.

use std::net::IpAddr;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use crate::settings::HeaderRules;

/// Headers that belong to one connection and never cross a proxy.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including every header named in `Connection`. One pass
/// over the headers present (usually none of these) rather than a lookup per name.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if HOP_BY_HOP.contains(&name.as_str()) {
            doomed.push(name.clone());
        }
    }
    if doomed.is_empty() {
        return;
    }
    for value in headers.get_all(actix_web::http::header::CONNECTION) {
        let Ok(text) = value.to_str() else { continue };
        doomed.extend(
            text.split(',')
                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()),
        );
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// Headers that say where a request came from, as a proxy in front would set them: from
/// an untrusted peer they are the client's own say, and go (in every spelling).
const FORWARDING: [&str; 8] = [
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-original-forwarded-for",
];

/// Headers that make some servers and frameworks route to another URL than the one
/// Intercom matched: never forwarded.
const URL_OVERRIDES: [&str; 2] = ["x-original-url", "x-rewrite-url"];

/// Headers that make frameworks treat a request as another method: only forwarded to
/// routes that allow them (`allow_method_override`).
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-method-override",
    "x-http-method",
];

/// Removes what the client should not control, in every spelling (any case, `_` for
/// `-`): URL overrides always; method overrides unless the route allows them; from an
/// untrusted peer every forwarding header (`Forwarded`, all `X-Forwarded-*`,
/// `X-Real-IP`, ...); from a trusted one only the underscore spellings, which no proxy
/// sets. [`set_forwarded`] then writes what Intercom saw.
pub fn remove_client_routing(
    headers: &mut HeaderMap,
    from_trusted: bool,
    allow_method_override: bool,
) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let name = k.as_str();
            let normalized;
            let n = if name.contains('_') {
                normalized = name.replace('_', "-");
                normalized.as_str()
            } else {
                name
            };
            let forwarding = FORWARDING.contains(&n) || n.starts_with("x-forwarded-");
            URL_OVERRIDES.contains(&n)
                || (!allow_method_override && METHOD_OVERRIDES.contains(&n))
                || (forwarding && (!from_trusted || name.contains('_')))
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// True when the peer is one of the trusted proxies.
pub fn is_trusted(peer: Option<IpAddr>, trusted: &[IpNet]) -> bool {
    peer.is_some_and(|ip| trusted.iter().any(|net| net.contains(&ip)))
}

/// A header name as servers behind us may read it: lowercase, `_` as `-`.
pub fn normalize_name(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// Removes every header whose normalized name is in `names` (already normalized), so
/// `X_User_Id` cannot stand in for `x-user-id`.
pub fn remove_spellings<'a>(headers: &mut HeaderMap, names: impl Iterator<Item = &'a str> + Clone) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let n = k.as_str();
            names.clone().any(|want| {
                n.len() == want.len()
                    && n.bytes()
                        .zip(want.bytes())
                        .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
            })
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// A route's header rules, parsed once.
#[derive(Debug, Clone, Default)]
pub struct CompiledRules {
    add: Vec<(HeaderName, HeaderValue)>,
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl CompiledRules {
    /// The rules of a route, parsed when the configuration was read.
    pub fn compile(rules: &HeaderRules) -> Self {
        Self {
            add: rules.add.clone(),
            set: rules.set.clone(),
            remove: rules.remove.iter().map(|n| n.0.clone()).collect(),
        }
    }

    /// Applies remove, then set, then add.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// What the proxy knows of the client connection.
pub struct ClientView<'a> {
    pub peer: Option<IpAddr>,
    pub scheme: &'a str,
    pub host: Option<&'a str>,
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the nearest
/// `X-Forwarded-For` hop that is not one (walking from the right, as each trusted
/// proxy appended what it saw; anything further left is the client's own say).
pub fn client_address(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer?;
    if !is_trusted(&client) {
        return Some(client);
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    Some(client)
}

/// Sets `X-Forwarded-For`, `-Proto` and `-Host`. Headers from a trusted proxy are
/// extended; from anyone else they are replaced (after [`remove_client_routing`]).
pub fn set_forwarded(headers: &mut HeaderMap, client: &ClientView<'_>, trusted: &[IpNet]) {
    let from_trusted = is_trusted(client.peer, trusted);
    let xff = HeaderName::from_static("x-forwarded-for");
    let xfp = HeaderName::from_static("x-forwarded-proto");
    let xfh = HeaderName::from_static("x-forwarded-host");
    let peer = client.peer.map(address_text).unwrap_or_default();
    if from_trusted {
        let prior: Vec<String> = headers
            .get_all(&xff)
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        let chain = if prior.is_empty() {
            peer
        } else {
            format!("{}, {peer}", prior.join(", "))
        };
        if let Ok(v) = HeaderValue::from_str(&chain) {
            headers.insert(xff, v);
        }
        if !headers.contains_key(&xfp) {
            headers.insert(xfp, HeaderValue::from_static(scheme_value(client.scheme)));
        }
        if !headers.contains_key(&xfh) {
            if let Some(v) = client.host.and_then(|h| HeaderValue::from_str(h).ok()) {
                headers.insert(xfh, v);
            }
        }
    } else {
        let empty = peer.is_empty();
        match HeaderValue::try_from(peer) {
            Ok(v) if !empty => {
                headers.insert(xff, v);
            }
            _ => {
                headers.remove(&xff);
            }
        }
        headers.insert(xfp, HeaderValue::from_static(scheme_value(client.scheme)));
        match client.host.and_then(|h| HeaderValue::from_str(h).ok()) {
            Some(v) => {
                headers.insert(xfh, v);
            }
            None => {
                headers.remove(&xfh);
            }
        }
    }
}

/// An address as `X-Forwarded-For` writes it; IPv4 (every request, usually) without the
/// formatting machinery.
fn address_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    // Exactly its length: a header value takes the buffer as it is, with no spare room
    // to account for.
    let digits = |o: u8| 1 + usize::from(o >= 10) + usize::from(o >= 100);
    let mut text = String::with_capacity(3 + v4.octets().into_iter().map(digits).sum::<usize>());
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

fn scheme_value(scheme: &str) -> &'static str {
    if scheme == "https" {
        "https"
    } else {
        "http"
    }
}

/// Removes the cookies `names` and every cookie whose name starts with `prefix` from the
/// `Cookie` headers, keeping the others (and dropping a header left empty).
pub fn remove_cookies(headers: &mut HeaderMap, names: &[&str], prefix: &str) {
    let cookie = actix_web::http::header::COOKIE;
    if !headers.contains_key(&cookie) {
        return;
    }
    let ours = |pair: &str| {
        let key = pair.split('=').next().unwrap_or("").trim();
        names.contains(&key) || key.starts_with(prefix)
    };
    let kept: Vec<String> = headers
        .get_all(&cookie)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && !ours(pair))
        .map(str::to_owned)
        .collect();
    headers.remove(&cookie);
    if kept.is_empty() {
        return;
    }
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&kept.join("; ")) {
        headers.insert(cookie, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "192.168.9.99",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(address_text(ip), ip.to_string());
        }
    }

    #[test]
    fn connection_named_headers_go_too() {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_static("connection"),
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert(
            HeaderName::from_static("x-secret-hop"),
            HeaderValue::from_static("1"),
        );
        h.insert(
            HeaderName::from_static("te"),
            HeaderValue::from_static("trailers"),
        );
        h.insert(
            HeaderName::from_static("x-keep"),
            HeaderValue::from_static("1"),
        );
        remove_hop_by_hop(&mut h);
        assert!(h.get("x-secret-hop").is_none());
        assert!(h.get("te").is_none());
        assert!(h.get("connection").is_none());
        assert!(h.get("x-keep").is_some());
    }

    #[test]
    fn identity_spellings_are_all_removed() {
        let mut h = HeaderMap::new();
        for name in [
            "x-user-id",
            "x_user_id",
            "x-user_id",
            "x-client-id",
            "x-other",
        ] {
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        remove_spellings(&mut h, ["x-user-id", "x-client-id"].into_iter());
        assert_eq!(h.len(), 1);
        assert!(h.get("x-other").is_some());
        assert_eq!(normalize_name("X_User-ID"), "x-user-id");
    }

    #[test]
    fn client_address_believes_forwarded_for_only_from_trusted_proxies() {
        let trusted: IpNet = "10.0.0.0/8".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_static("6.6.6.6, 203.0.113.7, 10.0.0.2"),
        );
        let from_proxy = Some("10.0.0.1".parse().unwrap());
        let direct = Some("198.51.100.1".parse().unwrap());
        assert_eq!(
            client_address(from_proxy, &h, &[trusted]),
            Some("203.0.113.7".parse().unwrap())
        );
        assert_eq!(client_address(direct, &h, &[trusted]), direct);
        assert_eq!(
            client_address(from_proxy, &HeaderMap::new(), &[trusted]),
            from_proxy
        );
    }

    #[test]
    fn untrusted_forwarded_headers_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_static("6.6.6.6"),
        );
        let view = ClientView {
            peer: Some("127.0.0.1".parse().unwrap()),
            scheme: "http",
            host: Some("example.test"),
        };
        set_forwarded(&mut h, &view, &[]);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "127.0.0.1");
        let trusted: IpNet = "127.0.0.0/8".parse().unwrap();
        let mut h2 = HeaderMap::new();
        h2.insert(
            HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_static("6.6.6.6"),
        );
        set_forwarded(&mut h2, &view, &[trusted]);
        assert_eq!(h2.get("x-forwarded-for").unwrap(), "6.6.6.6, 127.0.0.1");
    }

    #[test]
    fn intercoms_cookies_are_removed_and_the_others_kept() {
        let mut headers = HeaderMap::new();
        headers.append(
            actix_web::http::header::COOKIE,
            HeaderValue::from_static(
                "theme=dark; __Host-intercom-session=abc; __Host-intercom-flow-x=1",
            ),
        );
        headers.append(
            actix_web::http::header::COOKIE,
            HeaderValue::from_static("lang=en"),
        );
        remove_cookies(
            &mut headers,
            &["__Host-intercom-session", "__Host-intercom-csrf"],
            "__Host-intercom-flow-",
        );
        let left: Vec<_> = headers.get_all(actix_web::http::header::COOKIE).collect();
        assert_eq!(left, [HeaderValue::from_static("theme=dark; lang=en")]);
        let mut only_ours = HeaderMap::new();
        only_ours.insert(
            actix_web::http::header::COOKIE,
            HeaderValue::from_static("__Host-intercom-session=abc; __Host-intercom-csrf=d"),
        );
        remove_cookies(
            &mut only_ours,
            &["__Host-intercom-session", "__Host-intercom-csrf"],
            "__Host-intercom-flow-",
        );
        assert!(only_ours.get(actix_web::http::header::COOKIE).is_none());
    }
}
