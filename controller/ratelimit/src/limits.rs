//! Configured limits, indexed by domain, and the walk from a request descriptor to its limit.
//!
//! Matching follows envoyproxy/ratelimit; the walk itself is `RateLimitConfig::resolve` in
//! nexus-config, shared with the nexus-ratelimit filter.
//!
//! Two ways in:
//!
//! - [`Limits::load_dir`] / [`Limits::from_files`]: a directory of envoyproxy/ratelimit files
//!   (`*.yaml`, `*.yml`, `*.json`), read as envoyproxy/ratelimit reads them
//!   ([`parse_envoy`]): a file it loads loads here, a file it refuses is refused here, with an
//!   error naming the file and the JSON path of the problem.
//! - [`parse`]: one configuration Nexus rendered (its ConfigMaps), in Nexus's dialect.
//!
//! Known differences from envoyproxy/ratelimit's loader, all at the edges:
//!
//! - It matches and de-duplicates on `key + "_" + value` strings, so `{key: a_b, value: c}`
//!   and `{key: a, value: b_c}` collide there (refused as duplicates), and a wildcard
//!   `{key: a, value: "*"}` also matches entries keyed `a_b`. Here keys and values stay apart.
//! - Its YAML library keeps a scalar's text for string fields; here an integer in a string field
//!   is its number's text, which differs for a few spellings (`value: 0x1F` reads `31`,
//!   `value: +1` reads `1`; `value: 0123` stays `0123`): quote such values.
//! - Keys it accepts anywhere but reads elsewhere (a descriptor's `unit`) are ignored by both;
//!   here each is also reported in [`Limits::warnings`].

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use nexus_config::ratelimit::{Dialect, RateLimitConfig, Unit};
use nexus_config::{ConfigError, ConfigErrors};

/// Every domain's limits; cheap to clone behind an `Arc` and swap on reload.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    domains: BTreeMap<String, RateLimitConfig>,
    warnings: Vec<String>,
}

/// The limit one request descriptor resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Storage key: domain and every entry, values included (a `share_threshold` wildcard's
    /// pattern instead of the value).
    pub key: String,
    /// envoyproxy/ratelimit's stats key for the descriptor (see `ResolvedLimit::metric_key`).
    pub metric_key: String,
    /// The limit's name (empty: none), reported as `current_limit.name`.
    pub name: String,
    /// Names of the limits this one replaces.
    pub replaces: Vec<String>,
    pub requests_per_unit: u32,
    /// Meaningless when `unlimited` (second when an unlimited limit names no unit).
    pub unit: Unit,
    pub unlimited: bool,
    pub shadow_mode: bool,
    pub quota_mode: bool,
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
        Ok(Self {
            domains,
            warnings: Vec::new(),
        })
    }

    /// Reads every `*.yaml`, `*.yml` and `*.json` file in `dir` (in name order), each one domain,
    /// as envoyproxy/ratelimit reads its runtime directory: see [`Limits::from_files`].
    pub fn load_dir(dir: &Path) -> Result<Self> {
        Self::load_dir_with(dir, false)
    }

    /// [`Limits::load_dir`]; `merge_domains` is envoyproxy/ratelimit's `MERGE_DOMAIN_CONFIG`.
    pub fn load_dir_with(dir: &Path, merge_domains: bool) -> Result<Self> {
        Self::from_files(&read_dir(dir)?, merge_domains)
    }

    /// Loads `(file name, contents)` pairs in envoyproxy/ratelimit's format and with its
    /// refusals ([`parse_envoy`]). One domain per file; a domain in two files is refused, unless
    /// `merge_domains`, which adds the later file's descriptors to the domain (a descriptor both
    /// files configure at the top level is still refused). Errors start with the file name.
    pub fn from_files(files: &[(String, String)], merge_domains: bool) -> Result<Self> {
        let mut domains: BTreeMap<String, (RateLimitConfig, String)> = BTreeMap::new();
        let mut warnings = Vec::new();
        for (name, text) in files {
            let (config, file_warnings) =
                parse_envoy_with_warnings(text).map_err(|e| anyhow!("{name}: {e}"))?;
            warnings.extend(file_warnings.into_iter().map(|w| format!("{name}: {w}")));
            if let Some((merged, first)) = domains.get_mut(&config.domain) {
                if !merge_domains {
                    bail!(
                        "{name}: duplicate domain {:?} (already configured by {first})",
                        config.domain
                    );
                }
                merged.descriptors.extend(config.descriptors);
                let mut errors = Vec::new();
                merged.check("$", Dialect::Envoy, &mut errors);
                if !errors.is_empty() {
                    bail!(
                        "{name}: merging into domain {:?}: {}",
                        merged.domain,
                        ConfigErrors(errors)
                    );
                }
                continue;
            }
            domains.insert(config.domain.clone(), (config, name.clone()));
        }
        Ok(Self {
            domains: domains.into_iter().map(|(d, (c, _))| (d, c)).collect(),
            warnings,
        })
    }

    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.domains.keys().map(String::as_str)
    }

    /// Keys envoyproxy/ratelimit accepts anywhere but reads only in one place, found elsewhere
    /// in the loaded files and ignored as it ignores them (`file: $.path: ...`).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The limit for one descriptor's entries, if any applies.
    pub fn resolve(&self, domain: &str, entries: &[(&str, &str)]) -> Option<Resolved> {
        let r = self.domains.get(domain)?.resolve(entries)?;
        Some(Resolved {
            key: r.key,
            metric_key: r.metric_key,
            name: r.limit.limit_name().unwrap_or_default().to_string(),
            replaces: r
                .limit
                .replaces
                .iter()
                .map(|x| x.name.clone())
                .filter(|n| !n.is_empty())
                .collect(),
            requests_per_unit: r.limit.requests_per_unit,
            unit: r.limit.unit.unwrap_or(Unit::Second),
            unlimited: r.limit.unlimited,
            shadow_mode: r.shadow_mode,
            quota_mode: r.quota_mode,
        })
    }
}

impl Limits {
    /// The `metadata` of the node one descriptor's entries resolve to, if it has a limit.
    pub fn metadata(
        &self,
        domain: &str,
        entries: &[(&str, &str)],
    ) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.domains
            .get(domain)?
            .resolve(entries)?
            .descriptor
            .metadata
            .as_ref()
    }
}

/// `(path, contents)` of every `*.yaml`, `*.yml` and `*.json` file in `dir`, in name order.
/// Symbolic links are followed, so a Kubernetes ConfigMap volume (files linked through
/// `..data`, which is swapped atomically on update) reads as its current version.
pub fn read_dir(dir: &Path) -> Result<Vec<(String, String)>> {
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
    let mut files = Vec::new();
    for path in entries {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        files.push((path.display().to_string(), text));
    }
    Ok(files)
}

/// One domain's configuration Nexus rendered, from YAML (JSON is YAML too), validated with JSON
/// paths in Nexus's dialect (`nexus_config::parse`).
pub fn parse(text: &str) -> Result<RateLimitConfig> {
    let value: serde_json::Value = serde_yaml::from_str(text).context("not YAML")?;
    let json = serde_json::to_vec(&value)?;
    nexus_config::parse::<RateLimitConfig>(&json).map_err(|e| anyhow!("{e}"))
}

/// One envoyproxy/ratelimit file, read as envoyproxy/ratelimit reads it and refused when it
/// refuses it; every error carries the JSON path of the problem.
pub fn parse_envoy(text: &str) -> Result<RateLimitConfig> {
    parse_envoy_with_warnings(text).map(|(c, _)| c)
}

fn parse_envoy_with_warnings(text: &str) -> Result<(RateLimitConfig, Vec<String>)> {
    let mut yaml: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| anyhow!("not YAML: {e}"))?;
    // `<<: *anchor` merge keys, which envoyproxy/ratelimit's YAML library applies.
    yaml.apply_merge().map_err(|e| anyhow!("not YAML: {e}"))?;
    let mut json = envoy_yaml::to_json(yaml, "$", false).map_err(|e| anyhow!("{e}"))?;
    if json.is_null() {
        // An empty file: envoyproxy/ratelimit sees a file without a domain.
        json = serde_json::Value::Object(serde_json::Map::new());
    }
    let mut warnings = Vec::new();
    envoy_yaml::fit(&mut json, envoy_yaml::Shape::Root, "$", &mut warnings);
    let bytes = serde_json::to_vec(&json)?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let config: RateLimitConfig = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path.is_empty() || path == "." {
            "$".to_string()
        } else {
            format!("$.{path}")
        };
        // The position is in the JSON made from the YAML, which means nothing to the reader.
        let inner = e.inner();
        let message = inner.to_string();
        let position = format!(" at line {} column {}", inner.line(), inner.column());
        let message = message.strip_suffix(&position).unwrap_or(&message);
        anyhow!("{}", ConfigError::new(path, message))
    })?;
    let mut errors = Vec::new();
    config.check("$", Dialect::Envoy, &mut errors);
    if !errors.is_empty() {
        bail!("{}", ConfigErrors(errors));
    }
    Ok((config, warnings))
}

/// How envoyproxy/ratelimit's YAML library sees a file, brought to the JSON Nexus's types read.
mod envoy_yaml {
    use nexus_config::ConfigError;
    use serde_json::{Map, Number, Value};
    use serde_yaml::Value as Yaml;

    /// Every key envoyproxy/ratelimit accepts, at any level.
    const UPSTREAM_KEYS: [&str; 16] = [
        "domain",
        "key",
        "value",
        "descriptors",
        "rate_limit",
        "unit",
        "requests_per_unit",
        "unlimited",
        "shadow_mode",
        "quota_mode",
        "name",
        "replaces",
        "detailed_metric",
        "value_to_metric",
        "share_threshold",
        "metadata",
    ];

    /// YAML to JSON: mapping keys must be strings; a key whose value is null is left out (the
    /// field keeps its zero value, as in Go) except inside `metadata`, which is kept as written.
    pub fn to_json(yaml: Yaml, path: &str, in_metadata: bool) -> Result<Value, ConfigError> {
        Ok(match yaml {
            Yaml::Null => Value::Null,
            Yaml::Bool(b) => Value::Bool(b),
            Yaml::Number(n) => {
                if let Some(u) = n.as_u64() {
                    Value::Number(u.into())
                } else if let Some(i) = n.as_i64() {
                    Value::Number(i.into())
                } else {
                    let f = n.as_f64().unwrap_or(f64::NAN);
                    Value::Number(Number::from_f64(f).ok_or_else(|| {
                        ConfigError::new(path, format!("{f} is not a number JSON can hold"))
                    })?)
                }
            }
            Yaml::String(s) => Value::String(s),
            Yaml::Sequence(items) => Value::Array(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| to_json(v, &format!("{path}[{i}]"), in_metadata))
                    .collect::<Result<_, _>>()?,
            ),
            Yaml::Mapping(map) => {
                let mut out = Map::new();
                for (k, v) in map {
                    let k = match k {
                        Yaml::String(k) => k,
                        // envoyproxy/ratelimit reads metadata keys as their text.
                        other if in_metadata => scalar_text(&other),
                        other => {
                            return Err(ConfigError::new(
                                path,
                                format!("a key must be a string, not {}", scalar_text(&other)),
                            ))
                        }
                    };
                    if v.is_null() && !in_metadata {
                        continue;
                    }
                    let here = format!("{path}.{k}");
                    let inner = in_metadata || k == "metadata";
                    out.insert(k, to_json(v, &here, inner)?);
                }
                Value::Object(out)
            }
            Yaml::Tagged(tagged) => to_json(tagged.value, path, in_metadata)?,
        })
    }

    fn scalar_text(v: &Yaml) -> String {
        serde_yaml::to_string(v)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "a non-string".to_string())
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Shape {
        Root,
        Descriptor,
        RateLimit,
        Replaces,
    }

    impl Shape {
        fn keys(self) -> &'static [&'static str] {
            match self {
                Shape::Root => &["domain", "descriptors"],
                Shape::Descriptor => &[
                    "key",
                    "value",
                    "descriptors",
                    "rate_limit",
                    "shadow_mode",
                    "quota_mode",
                    "detailed_metric",
                    "value_to_metric",
                    "share_threshold",
                    "metadata",
                ],
                Shape::RateLimit => &["unit", "requests_per_unit", "unlimited", "name", "replaces"],
                Shape::Replaces => &["name"],
            }
        }
    }

    /// Brings a mapping of `shape` to what envoyproxy/ratelimit makes of it: a key it accepts
    /// anywhere but does not read here is dropped (with a warning), an integer or boolean given
    /// for a string field is its text (`value: 500`). Anything else is left for the typed
    /// deserialization to refuse, with its path.
    pub fn fit(value: &mut Value, shape: Shape, path: &str, warnings: &mut Vec<String>) {
        let Value::Object(map) = value else { return };
        let misplaced: Vec<String> = map
            .keys()
            .filter(|k| UPSTREAM_KEYS.contains(&k.as_str()) && !shape.keys().contains(&k.as_str()))
            .cloned()
            .collect();
        for k in misplaced {
            map.remove(&k);
            warnings.push(format!(
                "{path}.{k}: ignored (envoyproxy/ratelimit accepts {k:?} here but does not read it)"
            ));
        }
        for (k, v) in map.iter_mut() {
            let here = format!("{path}.{k}");
            match k.as_str() {
                "domain" | "key" | "value" | "name" | "unit" => {
                    let text = match v {
                        Value::Number(n) if !n.is_f64() => Some(n.to_string()),
                        Value::Bool(b) => Some(b.to_string()),
                        _ => None,
                    };
                    if let Some(text) = text {
                        *v = Value::String(text);
                    }
                }
                "shadow_mode" | "quota_mode" | "detailed_metric" | "value_to_metric"
                | "share_threshold" | "unlimited" => {
                    // YAML 1.1 booleans, which envoyproxy/ratelimit's YAML library reads.
                    if let Value::String(s) = v {
                        match s.as_str() {
                            "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => {
                                *v = Value::Bool(true)
                            }
                            "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => {
                                *v = Value::Bool(false)
                            }
                            _ => {}
                        }
                    }
                }
                "descriptors" | "replaces" => {
                    let inner = if k == "descriptors" {
                        Shape::Descriptor
                    } else {
                        Shape::Replaces
                    };
                    if let Value::Array(items) = v {
                        for (i, item) in items.iter_mut().enumerate() {
                            fit(item, inner, &format!("{here}[{i}]"), warnings);
                        }
                    }
                }
                "rate_limit" => fit(v, Shape::RateLimit, &here, warnings),
                _ => {}
            }
        }
    }
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
