//! Request matches: a rule's CRD `match` as the router's `RequestMatch`, narrowed to the
//! route's hosts.

use nexus_config::router::{HeaderMatch, PathMatch, RequestMatch};
use nexus_config::Validate;

use crate::crd::{PathSpec, RuleMatch};

use super::problem::Ctx;

/// An anchored `:authority` regex for the route's hosts, or none for any host.
pub(super) fn host_header(hosts: &[String]) -> Option<HeaderMatch> {
    if hosts.is_empty() || hosts.iter().any(|h| h == "*") {
        return None;
    }
    let alts: Vec<String> = hosts
        .iter()
        .map(|h| match h.strip_prefix("*.") {
            Some(rest) => format!("[^.]+\\.{}", rest.replace('.', "\\.")),
            None => h.replace('.', "\\."),
        })
        .collect();
    Some(HeaderMatch {
        name: ":authority".to_string(),
        regex: Some(format!("^({})(:[0-9]+)?$", alts.join("|"))),
        ..HeaderMatch::default()
    })
}

/// The router's match for `m` (checked by the router's own validation), plus the host header.
pub(super) fn request_match(
    cx: &mut Ctx,
    m: &RuleMatch,
    at: &str,
    host: &Option<HeaderMatch>,
) -> RequestMatch {
    let mut rm = RequestMatch {
        path: m.path.as_ref().and_then(|p| path_match(cx, p, at)),
        methods: m.methods.clone(),
        headers: m
            .headers
            .iter()
            .map(|h| HeaderMatch {
                name: h.name.to_ascii_lowercase(),
                present: h.present,
                exact: h.exact.clone(),
                prefix: h.prefix.clone(),
                regex: h.regex.clone(),
            })
            .collect(),
        grpc_service: m.grpc_service.clone(),
        grpc_method: m.grpc_method.clone(),
    };
    let mut errors = Vec::new();
    rm.validate(at, &mut errors);
    cx.take_config_errors(errors);
    if let Some(h) = host {
        rm.headers.push(h.clone());
    }
    rm
}

/// Exactly one of prefix, exact, regex; if several are given (reported), the first of those wins.
fn path_match(cx: &mut Ctx, p: &PathSpec, at: &str) -> Option<PathMatch> {
    let given = [p.prefix.is_some(), p.exact.is_some(), p.regex.is_some()]
        .iter()
        .filter(|g| **g)
        .count();
    if given != 1 {
        cx.bad(
            format!("{at}.path"),
            "give exactly one of prefix, exact, regex",
        );
    }
    if let Some(v) = &p.prefix {
        Some(PathMatch::Prefix(v.clone()))
    } else if let Some(v) = &p.exact {
        Some(PathMatch::Exact(v.clone()))
    } else {
        p.regex.as_ref().map(|v| PathMatch::Regex(v.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_is_anchored() {
        let h = host_header(&["api.example.com".into(), "*.example.org".into()]).unwrap();
        let re = regex::Regex::new(h.regex.as_deref().unwrap()).unwrap();
        assert!(re.is_match("api.example.com"));
        assert!(re.is_match("api.example.com:8443"));
        assert!(re.is_match("a.example.org"));
        assert!(!re.is_match("evil-api.example.com"));
        assert!(!re.is_match("api.example.com.evil"));
        assert!(host_header(&["*".into()]).is_none());
    }
}
