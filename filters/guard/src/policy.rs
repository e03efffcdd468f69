//! Configured policies, compiled once per configuration: rules with their matchers, field
//! lists lower-cased, detector sets as bit masks.

use nexus_config::guard::{BodyPolicy, GuardConfig, GuardPolicy, PiiAction};
use nexus_config::ConfigError;
use nexus_filter_core::matcher::{CompiledMatch, RequestView};
use nexus_filter_core::HeaderList;

use crate::detectors::{Kind, ALL_ENABLED};
use crate::scan::ScanConfig;

#[derive(Debug)]
pub struct Direction {
    pub action: PiiAction,
    pub scan: ScanConfig,
}

impl Direction {
    fn compile(b: &BodyPolicy) -> Self {
        let enabled = if b.detectors.is_empty() {
            ALL_ENABLED
        } else {
            b.detectors
                .iter()
                .fold(0, |m, d| m | Kind::from_detector(*d).bit())
        };
        let lower = |v: &[String]| {
            v.iter()
                .map(|s| s.to_ascii_lowercase().into_bytes())
                .collect()
        };
        Self {
            action: b.action,
            scan: ScanConfig {
                enabled: enabled | Kind::Field.bit(),
                allow: lower(&b.fields.allow),
                deny: lower(&b.fields.deny),
            },
        }
    }
}

#[derive(Debug)]
pub struct Policy {
    /// The rule's name (`default` for the default policy), for refusals and logs.
    pub name: String,
    pub config: GuardPolicy,
    pub request: Direction,
    pub response: Direction,
}

impl Policy {
    fn compile(name: &str, p: &GuardPolicy) -> Self {
        Self {
            name: name.to_string(),
            config: p.clone(),
            request: Direction::compile(&p.request),
            response: Direction::compile(&p.response),
        }
    }
    pub fn max_scan(&self) -> usize {
        self.config.max_scan_bytes as usize
    }
}

#[derive(Debug)]
pub struct Policies {
    rules: Vec<(CompiledMatch, Policy)>,
    default: Option<Policy>,
}

impl Policies {
    pub fn compile(c: &GuardConfig) -> Result<Self, Vec<ConfigError>> {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        for (i, r) in c.rules.iter().enumerate() {
            match CompiledMatch::compile(&r.matcher, &format!("$.rules[{i}].match")) {
                Ok(m) => rules.push((m, Policy::compile(&r.name, &r.policy))),
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let default = c.default.as_ref().map(|p| Policy::compile("default", p));
        Ok(Self { rules, default })
    }

    /// The index of the policy for these request headers (`rules.len()`: the default).
    pub fn select(&self, headers: &HeaderList) -> Option<usize> {
        let view = RequestView::new(headers, "");
        self.rules
            .iter()
            .position(|(m, _)| m.matches(&view))
            .or(self.default.as_ref().map(|_| self.rules.len()))
    }

    pub fn get(&self, index: usize) -> Option<&Policy> {
        match self.rules.get(index) {
            Some((_, p)) => Some(p),
            None if index == self.rules.len() => self.default.as_ref(),
            None => None,
        }
    }
}
