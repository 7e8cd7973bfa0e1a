//! What the benches set up alike: the edge cache's limits, a current-thread runtime,
//! Intercom's ES256 minter, and settings from a TOML text.

use std::time::Duration;

use intercom::broker::mint::Minter;
use intercom::cache::CacheLimits;

/// The edge cache's limits in the benches, holding `capacity` tokens.
pub fn limits(capacity: u64) -> CacheLimits {
    CacheLimits {
        capacity,
        max_ttl: Duration::from_secs(3600),
        negative_capacity: 10_000,
        negative_ttl: Duration::from_secs(10),
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Intercom's minter of internal JWTs (ES256, 5-minute lifetime).
pub fn minter() -> Minter {
    Minter::new(
        "ES256",
        "https://intercom.test",
        Duration::from_secs(300),
        Duration::from_secs(300),
    )
    .unwrap()
}

/// The settings of `config/` with `toml` layered over them, as Intercom reads them.
#[allow(dead_code)] // not every bench reads settings
pub fn settings(toml: &str) -> intercom::settings::Settings {
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), toml).unwrap();
    intercom::settings::Settings::load(
        std::path::Path::new("config"),
        Some(file.path()),
        &Vec::new(),
    )
    .unwrap()
}
