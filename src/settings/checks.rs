//! Small checks the sections share; each error names its key.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;

pub(super) fn header_name(key: &str, name: &str) -> Result<(), SettingsError> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map(|_| ())
        .map_err(|_| SettingsError::new(key, format!("{name:?} is not a valid header name")))
}

pub(super) fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, SettingsError> {
    value.parse().map_err(|_| {
        SettingsError::new(
            key,
            format!("{value:?} is not an address like 127.0.0.1:8080"),
        )
    })
}

pub(super) fn positive(key: &str, value: Duration) -> Result<(), SettingsError> {
    if value.is_zero() {
        Err(SettingsError::new(key, "must be greater than zero"))
    } else {
        Ok(())
    }
}
