//! A binary of a team's own: Intercom with one filter of its own registered.
//!
//! `claim_matches_path` refuses a caller whose verified claim differs from a parameter
//! of the path: with `pattern = "/invoices/{subscriber_id}"`, a token whose
//! `subscriber_id` claim is `42` may read `/invoices/42/...` and nothing under another
//! subscriber's id (the fine-grained check a scope cannot express).
//!
//! ```toml
//! [[routes]]
//! name = "invoices"
//! prefix = "/invoices"
//! auth = "bearer"
//! upstreams = ["http://127.0.0.1:9000"]
//! [[routes.filters]]
//! name = "claim_matches_path"
//! claims = ["subscriber_id"]
//! config = { pattern = "/invoices/{subscriber_id}" }   # claim = "..." when it differs
//! ```
//!
//! Build and run it like `intercom` itself:
//! `cargo run --example claim_matches_path -- --config my.toml serve`.

mod filter;

use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let filters = intercom::filter::FilterRegistry::new().register(
        "claim_matches_path",
        filter::ClaimMatchesPath::from_settings,
    );
    intercom::cli::run(filters)
}
