//! Configured limits, indexed by domain, and the walk from a request descriptor to its limit.
//!
//! Matching follows envoyproxy/ratelimit; the walk itself is `RateLimitConfig::resolve` in
//! nexus-config, shared with the nexus-ratelimit filter.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nexus_config::ratelimit::{RateLimitConfig, Unit};

/// Every domain's limits; cheap to clone behind an `Arc` and swap on reload.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    domains: BTreeMap<String, RateLimitConfig>,
}

/// The limit one request descriptor resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Storage key: domain and every entry, values included.
    pub key: String,
    pub requests_per_unit: u32,
    pub unit: Unit,
    pub unlimited: bool,
    pub shadow_mode: bool,
}

impl Resolved {
    pub fn window_us(&self) -> u64 {
        unit_us(self.unit)
    }
}

pub fn unit_us(unit: Unit) -> u64 {
    unit.seconds() * 1_000_000
}

impl Limits {
    /// Indexes configurations; two configurations for one domain are an error.
    pub fn new(configs: impl IntoIterator<Item = RateLimitConfig>) -> Result<Self> {
        let mut domains = BTreeMap::new();
        for config in configs {
            let domain = config.domain.clone();
            if domains.insert(domain.clone(), config).is_some() {
                bail!("domain {domain:?} is configured twice");
            }
        }
        Ok(Self { domains })
    }

    /// Reads every `*.yaml`, `*.yml` and `*.json` file in `dir`, each one domain (the format
    /// the controller writes into its rate-limit ConfigMap). Errors name the file and path.
    pub fn load_dir(dir: &Path) -> Result<Self> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading rate-limit config dir {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            })
            .collect();
        entries.sort();
        let mut configs = Vec::new();
        for path in entries {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            configs.push(parse(&text).with_context(|| format!("{}", path.display()))?);
        }
        Self::new(configs)
    }

    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.domains.keys().map(String::as_str)
    }

    /// The limit for one descriptor's entries, if any applies.
    pub fn resolve(&self, domain: &str, entries: &[(&str, &str)]) -> Option<Resolved> {
        let r = self.domains.get(domain)?.resolve(entries)?;
        Some(Resolved {
            key: r.key,
            requests_per_unit: r.limit.requests_per_unit,
            unit: r.limit.unit,
            unlimited: r.limit.unlimited,
            shadow_mode: r.shadow_mode,
        })
    }
}

/// One domain's configuration from YAML (JSON is YAML too), validated with JSON paths.
pub fn parse(text: &str) -> Result<RateLimitConfig> {
    let value: serde_json::Value = serde_yaml::from_str(text).context("not YAML")?;
    let json = serde_json::to_vec(&value)?;
    nexus_config::parse::<RateLimitConfig>(&json).map_err(|e| anyhow::anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
domain: nexus
descriptors:
  - key: route
    value: lake
    rate_limit: {unit: minute, requests_per_unit: 600}
    descriptors:
      - key: client_id
        rate_limit: {unit: second, requests_per_unit: 10}
      - key: client_id
        value: batch-importer
        rate_limit: {unlimited: true, unit: second}
  - key: client_id
    rate_limit: {unit: hour, requests_per_unit: 1000}
    shadow_mode: true
"#;

    fn limits() -> Limits {
        Limits::new([parse(CONFIG).unwrap()]).unwrap()
    }

    #[test]
    fn exact_value_beats_wildcard_and_values_make_keys() {
        let l = limits();
        let r = l
            .resolve("nexus", &[("route", "lake"), ("client_id", "alice")])
            .unwrap();
        assert_eq!(r.key, "nexus|route=lake|client_id=alice");
        assert_eq!((r.requests_per_unit, r.unit), (10, Unit::Second));
        let r = l
            .resolve(
                "nexus",
                &[("route", "lake"), ("client_id", "batch-importer")],
            )
            .unwrap();
        assert!(r.unlimited);
        let r = l.resolve("nexus", &[("route", "lake")]).unwrap();
        assert_eq!((r.requests_per_unit, r.unit), (600, Unit::Minute));
    }

    #[test]
    fn descriptors_outside_the_tree_are_not_limited() {
        let l = limits();
        assert_eq!(l.resolve("nexus", &[("route", "forge")]), None);
        assert_eq!(
            l.resolve("nexus", &[("route", "lake"), ("path", "/x")]),
            None
        );
        assert_eq!(l.resolve("other", &[("route", "lake")]), None);
        assert!(
            l.resolve("nexus", &[("client_id", "bob")])
                .unwrap()
                .shadow_mode
        );
    }

    #[test]
    fn bad_files_are_reported_with_file_and_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bad.yaml"),
            "domain: x\ndescriptors:\n  - key: a\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
        )
        .unwrap();
        let err = format!("{:#}", Limits::load_dir(dir.path()).unwrap_err());
        assert!(err.contains("bad.yaml"), "{err}");
        assert!(err.contains("$.descriptors[0].rate_limit.unit"), "{err}");
    }
}
