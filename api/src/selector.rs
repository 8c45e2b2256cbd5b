//! Which agents an assignment reaches: all of them, or those carrying every given label.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `all`, or `key=value[,key=value…]` (an agent must carry every pair).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    labels: BTreeMap<String, String>,
}

impl Selector {
    /// Every agent.
    pub fn all() -> Selector {
        Selector::default()
    }

    /// Does an agent with these labels match?
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.labels.is_empty() {
            return f.write_str("all");
        }
        let pairs: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        f.write_str(&pairs.join(","))
    }
}

impl FromStr for Selector {
    type Err = String;

    fn from_str(s: &str) -> Result<Selector, String> {
        let s = s.trim();
        if s.is_empty() || s == "all" {
            return Ok(Selector::all());
        }
        let mut labels = BTreeMap::new();
        for pair in s.split(',') {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                format!("'{pair}' in the selector '{s}' is not key=value; write `all` or e.g. `env=prod,region=eu`")
            })?;
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() || value.is_empty() || value.contains('=') {
                return Err(format!(
                    "'{pair}' in the selector '{s}' needs a non-empty key and value; write e.g. `env=prod`"
                ));
            }
            if labels.insert(key.to_string(), value.to_string()).is_some() {
                return Err(format!("the selector '{s}' names the label '{key}' twice"));
            }
        }
        Ok(Selector { labels })
    }
}

impl Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Selector, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_label_must_match() {
        let selector: Selector = "env=prod,region=eu".parse().unwrap();
        assert!(selector.matches(&labels(&[("env", "prod"), ("region", "eu"), ("x", "y")])));
        assert!(!selector.matches(&labels(&[("env", "prod")])));
        assert!(!selector.matches(&labels(&[("env", "dev"), ("region", "eu")])));
        assert!("all".parse::<Selector>().unwrap().matches(&labels(&[])));
        assert_eq!(selector.to_string(), "env=prod,region=eu");
    }

    #[test]
    fn malformed_selectors_say_how_to_write_one() {
        for bad in ["env", "env=", "=prod", "env=prod,env=dev", "a=b=c"] {
            let err = bad.parse::<Selector>().unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }
}
