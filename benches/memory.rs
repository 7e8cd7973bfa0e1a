//! Memory per cached token: the process's resident set after 100,000 distinct tokens
//! were admitted into the edge cache as the proxy admits them (principal, revocation
//! ids, one internal ES256 JWT for the route's audience and its header values), less
//! the resident set before. Printed, not timed: `cargo bench --bench memory`.

mod support;

use std::sync::Arc;

use intercom::broker::edge::CachedToken;
use intercom::broker::failure::TokenRejected;
use intercom::broker::Principal;
use intercom::cache::{LoadOutcome, Lookup, TokenCache};
use intercom::clock::now_secs;
use intercom::keyed_hash::SharedHasher;

/// As in the binary: the figure depends on the allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKENS: usize = 100_000;

/// The resident set of this process, from `/proc/self/statm` (pages of 4 KiB).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn main() {
    let rt = support::runtime();
    let cache: TokenCache<CachedToken, TokenRejected> =
        TokenCache::new("memory", &support::limits(2 * TOKENS as u64));
    let minter = support::minter();
    let hasher = SharedHasher::random();
    let audience: Arc<str> = Arc::from("invoices");
    // Tokens as an AS hands them out (43 characters, like oidc-provider's opaque ones).
    let tokens: Vec<String> = (0..TOKENS)
        .map(|i| format!("{i:08}-opaque-token-abcdefghijklmnopqrstuvwxyz"))
        .collect();
    let before = resident_bytes();
    rt.block_on(async {
        for (i, token) in tokens.iter().enumerate() {
            let principal = Principal {
                sub: Some(format!("user-{i}")),
                client_id: Some("app".into()),
                scopes: vec!["invoice_read".into(), "invoice_write".into()],
                exp: now_secs() + 3600,
                iat: Some(now_secs()),
                tier: Some("pro".into()),
                aud: vec!["https://api.example.com".into()],
                ..Default::default()
            };
            let ids = principal.revocation_ids(&hasher, token);
            let entry = CachedToken::new(principal, ids);
            let minted = minter.mint(&entry.principal, &audience).unwrap();
            let _ = entry.store_jwt(&audience, minted);
            let _ = cache
                .load::<(), _>(cache.key(token), async { LoadOutcome::Value(entry) })
                .await;
        }
        // Every token still cached (none evicted): the figure is per entry held.
        for token in tokens.iter().step_by(997) {
            assert!(matches!(
                cache.lookup(&cache.key(token)).await,
                Lookup::Hit(_)
            ));
        }
    });
    let after = resident_bytes();
    let per_token = (after.saturating_sub(before)) as f64 / TOKENS as f64;
    println!(
        "memory per cached token: {:.2} KiB ({} tokens, resident set {:.1} MiB → {:.1} MiB)",
        per_token / 1024.0,
        TOKENS,
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
}
