//! `required_claims` and `denied_claims` of a route: claim paths and the values they are
//! matched against, parsed when the configuration is read.
//!
//! A path is claim names joined by `.` (`realm_access.roles`); a name in double quotes
//! may hold dots (`resource_access."billing.api".roles`, `"https://example.com/roles"`).
//! TOML's own dotted keys (`realm_access.roles = [...]` unquoted makes nested tables)
//! give the same path: each nested key is one name, dots and all.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// A path to a (possibly nested) claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath {
    names: Vec<String>,
}

impl ClaimPath {
    /// Parses `a.b`, `a."b.c".d`; every name non-empty, quotes closed.
    pub fn parse(text: &str) -> Result<Self, String> {
        let fail = |why: &str| Err(format!("{text:?} is not a claim path: {why}"));
        let mut names = Vec::new();
        let mut rest = text;
        loop {
            let (name, after) = match rest.strip_prefix('"') {
                Some(quoted) => match quoted.find('"') {
                    Some(end) => (&quoted[..end], &quoted[end + 1..]),
                    None => return fail("a quote is not closed"),
                },
                None => match rest.find(['.', '"']) {
                    Some(end) if rest.as_bytes()[end] == b'"' => {
                        return fail("a quote must enclose a whole name")
                    }
                    Some(end) => (&rest[..end], &rest[end..]),
                    None => (rest, ""),
                },
            };
            if name.is_empty() {
                return fail("a name is empty");
            }
            names.push(name.to_string());
            match after.strip_prefix('.') {
                Some(next) => rest = next,
                None if after.is_empty() => break,
                None => return fail("a quoted name must be followed by '.' or the end"),
            }
        }
        Ok(Self { names })
    }

    /// The top-level claim the path starts at.
    pub fn claim(&self) -> &str {
        &self.names[0]
    }

    /// The names from the top-level claim down.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    fn joined(mut self, inner: ClaimPath) -> Self {
        self.names.extend(inner.names);
        self
    }
}

/// Written back as parsed: names that hold a dot or are not plain are quoted.
impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, name) in self.names.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            if name.contains('.') {
                write!(f, "\"{name}\"")?;
            } else {
                f.write_str(name)?;
            }
        }
        Ok(())
    }
}

/// One entry: the claim at `path` must hold (or, denied, must not hold) one of `values`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRule {
    pub path: ClaimPath,
    pub values: Vec<String>,
}

/// A route's `required_claims` or `denied_claims`: a table of claim path → values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimRules(pub Vec<ClaimRule>);

impl ClaimRules {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A value of the table: a list of values, or (TOML's dotted keys) a nested table.
enum Node {
    Values(Vec<String>),
    Table(Vec<(String, Node)>),
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of claim values, e.g. [\"pro\", \"enterprise\"]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut values = Vec::new();
        while let Some(value) = seq.next_element::<String>()? {
            values.push(value);
        }
        Ok(Node::Values(values))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, node)) = map.next_entry::<String, Node>()? {
            entries.push((key, node));
        }
        Ok(Node::Table(entries))
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

/// Flattens nested tables into paths: a top-level key is parsed as a path, a nested
/// key (TOML already split the dotted key) is one name.
fn flatten(
    prefix: Option<ClaimPath>,
    entries: Vec<(String, Node)>,
    into: &mut Vec<ClaimRule>,
) -> Result<(), String> {
    for (key, node) in entries {
        let path = match &prefix {
            None => ClaimPath::parse(&key)?,
            Some(outer) if key.is_empty() => {
                return Err(format!("a name under {outer} is empty"));
            }
            Some(outer) => outer.clone().joined(ClaimPath {
                names: vec![key.clone()],
            }),
        };
        match node {
            Node::Table(inner) => flatten(Some(path), inner, into)?,
            Node::Values(values) if values.is_empty() => {
                return Err(format!("{path} needs at least one value"));
            }
            Node::Values(values) => {
                if into.iter().any(|r| r.path == path) {
                    return Err(format!("{path} is given twice"));
                }
                into.push(ClaimRule { path, values });
            }
        }
    }
    Ok(())
}

impl<'de> Deserialize<'de> for ClaimRules {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Node::Table(entries) = Node::deserialize(deserializer)? else {
            return Err(de::Error::custom(
                "a table of claim paths to values, e.g. { plan = [\"pro\"] }",
            ));
        };
        let mut rules = Vec::new();
        flatten(None, entries, &mut rules).map_err(de::Error::custom)?;
        // In path order, whatever order the table came in: the first refusing entry is
        // the one a refusal names.
        rules.sort_by(|a, b| a.path.names.cmp(&b.path.names));
        Ok(ClaimRules(rules))
    }
}

/// A route's `claims_to_headers`: header name → the claim path its value comes from.
#[derive(Debug, Clone, Default)]
pub struct ClaimHeaderSettings(pub Vec<(super::HeaderNameSetting, ClaimPath)>);

impl<'de> Deserialize<'de> for ClaimHeaderSettings {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let table = std::collections::BTreeMap::<String, String>::deserialize(deserializer)?;
        table
            .into_iter()
            .map(|(name, path)| {
                let name = super::HeaderNameSetting::try_from(name).map_err(de::Error::custom)?;
                let path = ClaimPath::parse(&path).map_err(de::Error::custom)?;
                Ok((name, path))
            })
            .collect::<Result<_, _>>()
            .map(ClaimHeaderSettings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Result<Vec<String>, String> {
        ClaimPath::parse(text).map(|p| p.names)
    }

    #[test]
    fn paths_split_on_dots_outside_quotes() {
        assert_eq!(names("plan").unwrap(), ["plan"]);
        assert_eq!(
            names("realm_access.roles").unwrap(),
            ["realm_access", "roles"]
        );
        assert_eq!(
            names("resource_access.\"billing.api\".roles").unwrap(),
            ["resource_access", "billing.api", "roles"]
        );
        assert_eq!(
            names("\"https://example.com/roles\"").unwrap(),
            ["https://example.com/roles"]
        );
        for bad in ["", ".a", "a.", "a..b", "a.\"b", "a\"b\"", "\"a\"b", "\"\""] {
            assert!(names(bad).is_err(), "{bad:?} parsed");
        }
        let path = ClaimPath::parse("resource_access.\"billing.api\".roles").unwrap();
        assert_eq!(path.to_string(), "resource_access.\"billing.api\".roles");
        assert_eq!(path.claim(), "resource_access");
    }

    #[test]
    fn tables_quoted_keys_and_dotted_keys_give_the_same_paths() {
        #[derive(Deserialize)]
        struct Route {
            required_claims: ClaimRules,
        }
        let read = |text: &str| toml::from_str::<Route>(text).map(|r| r.required_claims);
        let dotted = read(
            "[required_claims]\nplan = [\"pro\"]\nresource_access.\"billing.api\".roles = [\"r\"]\n",
        )
        .unwrap();
        let quoted = read(
            "required_claims = { plan = [\"pro\"], 'resource_access.\"billing.api\".roles' = [\"r\"] }",
        )
        .unwrap();
        assert_eq!(dotted, quoted);
        assert_eq!(
            dotted.0[1].path.names(),
            ["resource_access", "billing.api", "roles"]
        );
        let err = |text: &str| read(text).unwrap_err().to_string();
        assert!(err("required_claims = { plan = [] }").contains("plan needs at least one value"));
        assert!(err("required_claims = { \"a..b\" = [\"x\"] }").contains("is not a claim path"));
        assert!(err("required_claims = { plan = \"pro\" }").contains("a list of claim values"));
        assert!(
            err("required_claims = { 'a.b' = [\"x\"], a = { b = [\"y\"] } }")
                .contains("a.b is given twice")
        );
    }
}
