//! Header names and header edits in the configuration, parsed when read.

use serde::Deserialize;

/// Header edits applied in the order remove → set → add.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRules {
    #[serde(default, deserialize_with = "header_pairs")]
    pub add: Vec<(http::HeaderName, http::HeaderValue)>,
    #[serde(default, deserialize_with = "header_pairs")]
    pub set: Vec<(http::HeaderName, http::HeaderValue)>,
    #[serde(default)]
    pub remove: Vec<HeaderNameSetting>,
}

/// A header name of the configuration, parsed when read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HeaderNameSetting(pub http::HeaderName);

impl TryFrom<String> for HeaderNameSetting {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        http::HeaderName::from_bytes(name.as_bytes())
            .map(HeaderNameSetting)
            .map_err(|_| format!("{name:?} is not a valid header name"))
    }
}

/// A table of `name = "value"` headers, each name and value parsed when read (in the
/// table's order, which is the names' order).
fn header_pairs<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, D::Error> {
    use serde::de::Error;
    let table = std::collections::BTreeMap::<String, String>::deserialize(deserializer)?;
    table
        .into_iter()
        .map(|(name, value)| {
            let parsed = HeaderNameSetting::try_from(name.clone())
                .map_err(D::Error::custom)?
                .0;
            let value = http::HeaderValue::from_str(&value).map_err(|_| {
                D::Error::custom(format!("the value of {name:?} is not a valid header value"))
            })?;
            Ok((parsed, value))
        })
        .collect()
}
