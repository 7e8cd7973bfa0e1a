//! Criterion benchmarks of the edge's hot pieces: the cache-hit path (keyed hash,
//! lookup, cached JWT, scope check), the hit with the denylist after 10,000 revocations,
//! local JWT validation, minting, a rate-limit decision from reserved cells, and
//! sealing / opening a Redis value, and a route lookup in a table of 10 and of 1,000
//! routes (the second must cost about what the first does), a route's claim check, and
//! the filter phases of a route without filters (must be within noise of no work) and
//! with one no-op filter.
//!
//! `cargo bench --bench edge`

mod support;

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use intercom::broker::claims::ClaimPolicy;
use intercom::broker::edge::CachedToken;
use intercom::broker::failure::TokenRejected;
use intercom::broker::jwks::RemoteJwks;
use intercom::broker::mint::Minter;
use intercom::broker::policy::ScopePolicy;
use intercom::broker::validate::{JwtValidator, SignatureCheck};
use intercom::broker::Principal;
use intercom::cache::{LoadOutcome, Lookup, TokenCache};
use intercom::clock::now_secs;
use intercom::filter::{
    Filter, FilterChain, FilterRegistry, FilterRequest, FilterSettings, HeaderMap, Phase,
};
use intercom::keyed_hash::SharedHasher;
use intercom::proxy::routes::{Match, RouteTable};
use intercom::readiness::Readiness;
use intercom::revocation_ids::Kind;
use intercom::revoke::{Evicts, Revoker, Target};
use intercom::settings::{ScopeMatch, Settings};
use josekit::jwk::JwkSet;

fn principal() -> Principal {
    Principal {
        sub: Some("alice".into()),
        client_id: Some("app".into()),
        scopes: vec!["invoice_read".into(), "invoice_write".into()],
        exp: now_secs() + 3600,
        ..Default::default()
    }
}

fn cache_hit(c: &mut Criterion) {
    let rt = support::runtime();
    let limits = support::limits(100_000);
    let cache: TokenCache<CachedToken, TokenRejected> = TokenCache::new("bench", &limits);
    let minter = support::minter();
    let audience: Arc<str> = Arc::from("billing");
    let tokens: Vec<String> = (0..1000)
        .map(|i| format!("opaque-token-{i:04}-abcdefghijklmnopqrstuvwxyz"))
        .collect();
    rt.block_on(async {
        for t in &tokens {
            let entry = CachedToken::new(principal(), Default::default());
            let _ = entry.store_jwt(&audience, minter.mint(&entry.principal, &audience).unwrap());
            let _ = cache
                .load::<(), _>(cache.key(t), async { LoadOutcome::Value(entry) })
                .await;
        }
    });
    let policy = ScopePolicy::new(&["invoice_*".to_string()], ScopeMatch::All);
    let mut i = 0usize;
    c.bench_function(
        "edge cache hit (hash, lookup, cached JWT, scope check)",
        |b| {
            b.iter(|| {
                i = (i + 1) % tokens.len();
                rt.block_on(async {
                    let key = cache.key(&tokens[i]);
                    let Lookup::Hit(entry) = cache.lookup(&key).await else {
                        panic!("miss")
                    };
                    policy.check(&entry.principal.scopes).unwrap();
                    entry.cached_bearer(&audience, 75).unwrap()
                })
            })
        },
    );
}

/// The hit path as the proxy runs it (lookup, then the denylist), with no revocation
/// and after 10,000: a revocation must not make every later hit pay for it.
fn cache_hit_after_revocations(c: &mut Criterion) {
    let rt = support::runtime();
    let limits = support::limits(100_000);
    let settings = Settings::load(std::path::Path::new("config"), None, &Vec::new())
        .expect("the defaults load");
    let hasher = SharedHasher::new(&intercom::secret::Secret::new("bench-key"));
    let tokens: Vec<String> = (0..1000)
        .map(|i| format!("opaque-token-{i:04}-abcdefghijklmnopqrstuvwxyz"))
        .collect();
    for revocations in [0usize, 10_000] {
        let cache: TokenCache<CachedToken, TokenRejected> = TokenCache::new("bench", &limits);
        let revoker = Revoker::new(
            &settings,
            hasher.clone(),
            None,
            Evicts {
                exchange: None,
                edge: None,
            },
            None,
            Arc::new(Readiness::default()),
        );
        rt.block_on(async {
            for t in &tokens {
                let ids = principal().revocation_ids(&hasher, t);
                let entry = CachedToken::new(principal(), ids);
                let _ = cache
                    .load::<(), _>(cache.key(t), async { LoadOutcome::Value(entry) })
                    .await;
            }
            for i in 0..revocations {
                revoker
                    .revoke(Target::One(Kind::Sub, format!("someone-else-{i}")), "bench")
                    .await;
            }
        });
        let mut i = 0usize;
        c.bench_function(
            &format!("edge cache hit and denylist check, {revocations} revocations"),
            |b| {
                b.iter(|| {
                    i = (i + 1) % tokens.len();
                    rt.block_on(async {
                        let key = cache.key(&tokens[i]);
                        let Lookup::Hit(entry) = cache.lookup(&key).await else {
                            panic!("miss")
                        };
                        assert!(!revoker.is_denied(&entry.ids, entry.principal.iat));
                    })
                })
            },
        );
    }
}

fn jwt_validation(c: &mut Criterion) {
    let rt = support::runtime();
    // An "AS" key pair: minted tokens stand in for the AS's JWT access tokens.
    let minter = Minter::new(
        "ES256",
        "https://as.test",
        Duration::from_secs(300),
        Duration::from_secs(300),
    )
    .unwrap();
    let keys = JwkSet::from_bytes(minter.jwks().to_string()).unwrap();
    let jwks = RemoteJwks::with_keys(
        reqwest::Client::new(),
        "http://127.0.0.1:1/jwks".into(),
        Duration::from_secs(30),
        keys,
    );
    let validator = JwtValidator {
        issuer: "https://as.test".into(),
        audiences: vec!["api".into()],
        typ: Some("at+jwt".into()),
        leeway: Duration::from_secs(10),
        signature: SignatureCheck {
            algorithms: vec![intercom::settings::JwsAlgorithm::Es256],
            jwks,
        },
        claims: std::sync::Arc::new(intercom::broker::claims::ClaimSelection::new("plan", &[])),
    };
    let token = minter.mint(&principal(), "api").unwrap().jwt;
    c.bench_function("validate ES256 JWT access token", |b| {
        b.iter(|| rt.block_on(validator.validate(&token)).unwrap())
    });
}

fn minting(c: &mut Criterion) {
    for alg in ["ES256", "EdDSA", "RS256"] {
        let minter = Minter::new(
            alg,
            "https://intercom.test",
            Duration::from_secs(300),
            Duration::from_secs(300),
        )
        .unwrap();
        let p = principal();
        c.bench_function(&format!("mint internal JWT ({alg})"), |b| {
            b.iter(|| minter.mint(&p, "billing").unwrap())
        });
    }
}

fn rate_limit_reserved_cell(c: &mut Criterion) {
    use intercom::limits::gcra::{Verdict, WindowState};
    use intercom::limits::lease::{Leases, Spend};
    let leases = Leases::default();
    let key = (0, 0, 42);
    let refill = Verdict {
        allowed: true,
        retry_after: Duration::ZERO,
        windows: vec![WindowState {
            remaining: 1_000_000,
            reset: Duration::from_secs(60),
        }],
        reserved: 64,
    };
    c.bench_function("rate-limit decision from a reserved cell", |b| {
        b.iter(|| {
            if let Spend::Ask { .. } = leases.spend(key) {
                leases.settle(key, &refill);
            }
        })
    });
}

fn sealing(c: &mut Criterion) {
    use intercom::cache::sealed::Sealer;
    use intercom::secret::Secret;
    use intercom::secrets::registry::SecretCell;
    let sealer = Sealer::new(Arc::new(SecretCell::fixed(Secret::new("bench key"))));
    let value = vec![b'x'; 900];
    let sealed = sealer.seal(&value, b"intercom:x:e:key").unwrap();
    c.bench_function("seal a 900-byte exchange entry (AES-256-GCM)", |b| {
        b.iter(|| sealer.seal(&value, b"intercom:x:e:key").unwrap())
    });
    c.bench_function("open a 900-byte exchange entry", |b| {
        b.iter(|| sealer.open(&sealed, b"intercom:x:e:key").unwrap())
    });
}

/// A lookup of the last route of a table of 10 and of 1,000 routes (`/svc{i}` each):
/// the table is indexed by first path segment, so size must not show.
fn route_lookup(c: &mut Criterion) {
    for n in [10usize, 1000] {
        let toml: String = (0..n)
            .map(|i| {
                format!("[[routes]]\nname = \"svc{i}\"\nprefix = \"/svc{i}\"\nupstreams = [\"http://127.0.0.1:1\"]\n\n")
            })
            .collect();
        let settings = support::settings(&toml);
        let table = RouteTable::new(&settings.routes, Duration::from_secs(1), 1024, Vec::new());
        let path = format!("/svc{}/orders/42", n - 1);
        let method = actix_web::http::Method::GET;
        c.bench_function(&format!("route lookup, {n} routes"), |b| {
            b.iter(|| {
                let found = table.find(Some("api.example:443"), &path, &method);
                assert!(matches!(found, Match::Found(_)));
            })
        });
    }
}

/// A route's claim check with Keycloak-shaped rules (a plan, realm roles, a client's
/// roles behind a dotted client id, a denied group), next to the scope check it sits beside.
fn claim_check(c: &mut Criterion) {
    let toml = "[auth_server]\nissuer = \"http://127.0.0.1:1\"\nclient_id = \"i\"\nclient_secret = \"file:x\"\n\
        [[routes]]\nname = \"r\"\nprefix = \"/r\"\nupstreams = [\"http://127.0.0.1:1\"]\nauth = \"bearer\"\n\
        denied_claims = { groups = [\"suspended\"] }\n[routes.required_claims]\nplan = [\"pro\", \"enterprise\"]\n\
        realm_access.roles = [\"admin\"]\n'resource_access.\"billing.api\".roles' = [\"invoice-reader\"]\n";
    let settings = support::settings(toml);
    let route = &settings.routes[0];
    let policy = ClaimPolicy::new("bench", &route.required_claims, &route.denied_claims);
    let claims = serde_json::json!({
        "plan": "pro",
        "groups": ["staff", "billing-admins"],
        "realm_access": { "roles": ["offline_access", "uma_authorization", "user", "admin"] },
        "resource_access": { "billing.api": { "roles": ["invoice-reader"] }, "account": { "roles": ["view-profile"] } },
    });
    let claims = claims.as_object().unwrap().clone();
    c.bench_function("claim check (4 rules, Keycloak shapes)", |b| {
        b.iter(|| policy.check(&claims).unwrap())
    });
}

/// A no-op filter at every phase.
struct Noop;

#[intercom::filter::async_trait(?Send)]
impl Filter for Noop {
    fn phases(&self) -> &[Phase] {
        &[
            Phase::Authenticated,
            Phase::BeforeForwarding,
            Phase::Response,
        ]
    }
}

/// The three filter phases as the proxy runs them, for a route without filters (the cost
/// every request pays for the API: must be within noise of no work at all) and with one
/// no-op filter (what a filter costs).
fn filter_chain(c: &mut Criterion) {
    let registry =
        FilterRegistry::new().register("noop", |_| Ok(Arc::new(Noop) as Arc<dyn Filter>));
    let empty = FilterChain::default();
    let entry = FilterSettings {
        name: "noop".into(),
        claims: vec![],
        config: serde_json::Value::Null,
    };
    let one = registry.chain("bench", &[entry]).unwrap();
    let headers = HeaderMap::new();
    let method = actix_web::http::Method::GET;
    let principal = principal();
    let rt = support::runtime();
    let run = |chain: &FilterChain, outbound: &mut HeaderMap| {
        let view = || FilterRequest {
            route: "bench",
            method: &method,
            path: "/orders/42",
            headers: &headers,
            principal: Some(&principal),
        };
        rt.block_on(async {
            if chain.runs_at(Phase::Authenticated) {
                chain.authenticated(&view()).await.unwrap();
            }
            if chain.runs_at(Phase::BeforeForwarding) {
                chain.before_forwarding(&view(), outbound).await.unwrap();
            }
            if chain.runs_at(Phase::Response) {
                chain.on_response(&view(), actix_web::http::StatusCode::OK, outbound);
            }
        })
    };
    let mut outbound = HeaderMap::new();
    // What every request of a route without filters does: one check per phase, no future.
    c.bench_function("filter phases, no work at all (baseline)", |b| {
        b.iter(|| std::hint::black_box(&empty))
    });
    c.bench_function("filter phases, empty chain", |b| {
        b.iter(|| {
            let chain = std::hint::black_box(&empty);
            chain.runs_at(Phase::Authenticated)
                | chain.runs_at(Phase::BeforeForwarding)
                | chain.runs_at(Phase::Response)
        })
    });
    c.bench_function("filter phases, one no-op filter", |b| {
        b.iter(|| run(std::hint::black_box(&one), &mut outbound))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = cache_hit, cache_hit_after_revocations, jwt_validation, minting, rate_limit_reserved_cell, sealing, route_lookup, claim_check, filter_chain
}
criterion_main!(benches);
