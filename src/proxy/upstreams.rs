//! The instances of one route: round robin, and a cooldown for an instance that refused
//! a connection, so one dead instance does not fail every n-th request.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use url::Url;

use super::transport::Transport;

/// One upstream instance: its base URL and until when it is skipped.
#[derive(Debug)]
pub struct Instance {
    /// `scheme://authority/base-path` without a trailing '/', to which the path is appended.
    pub base: String,
    /// Authority (`host:port`), for logs.
    pub authority: String,
    /// The authority as the `Host` value sent, made once (a URL's host is a valid value).
    pub host: Option<http::HeaderValue>,
    down_until_ms: AtomicU64,
}

/// The instances of a route, shared by all workers.
#[derive(Debug)]
pub struct Upstreams {
    instances: Vec<Instance>,
    next: AtomicUsize,
    cooldown: Duration,
    epoch: Instant,
}

impl Upstreams {
    /// The instances of `urls`, their base URLs in the scheme the transport sends by.
    pub fn new(urls: &[Url], transport: &Transport, cooldown: Duration) -> Arc<Self> {
        let instances = urls
            .iter()
            .map(|u| {
                let host = u.host_str().unwrap_or_default();
                let authority = match u.port() {
                    Some(p) => format!("{host}:{p}"),
                    None => host.to_string(),
                };
                let base = format!(
                    "{}://{authority}{}",
                    transport.scheme(),
                    u.path().trim_end_matches('/')
                );
                Instance {
                    base,
                    host: http::HeaderValue::from_str(&authority).ok(),
                    authority,
                    down_until_ms: AtomicU64::new(0),
                }
            })
            .collect();
        Arc::new(Self {
            instances,
            next: AtomicUsize::new(0),
            cooldown,
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Picks the next instance not in cooldown, skipping those in `tried`.
    pub fn pick(&self, tried: &[usize]) -> Option<usize> {
        let n = self.instances.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        (0..n).map(|k| (start + k) % n).find(|&i| {
            !tried.contains(&i) && self.instances[i].down_until_ms.load(Ordering::Relaxed) <= now
        })
    }

    pub fn get(&self, index: usize) -> &Instance {
        &self.instances[index]
    }

    /// Marks an instance as refusing connections for the cooldown.
    pub fn mark_down(&self, index: usize) {
        let until = self.now_ms() + self.cooldown.as_millis() as u64;
        self.instances[index]
            .down_until_ms
            .store(until, Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        self.instances.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_skips_instances_in_cooldown() {
        let urls = [
            Url::parse("http://a:1").unwrap(),
            Url::parse("http://b:2/base/").unwrap(),
        ];
        let ups = Upstreams::new(&urls, &Transport::Plain, Duration::from_secs(60));
        let first = ups.pick(&[]).unwrap();
        let second = ups.pick(&[]).unwrap();
        assert_ne!(first, second);
        ups.mark_down(0);
        for _ in 0..4 {
            assert_eq!(ups.pick(&[]), Some(1));
        }
        assert_eq!(ups.pick(&[1]), None);
        assert_eq!(ups.get(1).base, "http://b:2/base");
        assert_eq!(ups.get(1).authority, "b:2");
        let h2c = Upstreams::new(&urls, &Transport::H2c, Duration::from_secs(60));
        assert_eq!(h2c.get(0).base, "https://a:1");
    }
}
