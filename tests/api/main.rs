//! Integration tests: one binary, so it links once. Each module covers one capability,
//! against real processes started by `helpers`.

mod as_jwt;
mod chart;
mod claims;
mod clients;
mod compression;
mod config;
mod cors;
mod dashboard;
mod exchange;
mod explain;
mod filters;
mod harness;
mod helpers;
mod layering;
mod lifecycle;
mod paths;
mod phantom;
mod protections;
mod proxy;
mod ratelimit;
mod redis_tls;
mod reload;
mod revocation;
mod sessions;
mod streaming;
mod tls;
mod traces;
mod tunnels;
mod upstream_health;
mod upstream_tls;
mod vault;
