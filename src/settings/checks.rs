//! Small checks the sections share; each error names its key.

use std::time::Duration;

use super::*;

pub(super) fn positive(key: &str, value: Duration) -> Result<(), SettingsError> {
    if value.is_zero() {
        Err(SettingsError::new(key, "must be greater than zero"))
    } else {
        Ok(())
    }
}

/// `#[serde(deserialize_with)]` for a header name held as a bare `HeaderName` (http-serde
/// 1, the release for http 0.2, has none), parsed as [`HeaderNameSetting`] is.
pub(super) fn header_name_value<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<http::HeaderName, D::Error> {
    let text = String::deserialize(deserializer)?;
    HeaderNameSetting::try_from(text)
        .map(|name| name.0)
        .map_err(serde::de::Error::custom)
}

/// `#[serde(deserialize_with)]` for a listen address, refused with an example.
pub(super) fn socket_addr<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<std::net::SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!("{text:?} is not an address like 127.0.0.1:8080"))
    })
}

/// [`socket_addr`] for an optional one.
pub(super) fn optional_socket_addr<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<std::net::SocketAddr>, D::Error> {
    socket_addr(deserializer).map(Some)
}
