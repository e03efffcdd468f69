//! Request matching shared by every filter with per-route rules (`nexus_config::router::RequestMatch`):
//! path prefix/exact/regex, methods, headers, gRPC service, with regexes compiled once at
//! configure time and anchored like Envoy's `safe_regex`.

use nexus_config::router::{HeaderMatch, PathMatch, RequestMatch};
use nexus_config::ConfigError;
use regex::Regex;

use crate::HeaderList;

/// The request as matching sees it: pseudo-headers split out, other headers looked up by name.
pub struct RequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    content_type: &'a str,
    headers: &'a HeaderList,
    strip_prefix: &'a str,
}

impl<'a> RequestView<'a> {
    pub fn new(headers: &'a HeaderList, strip_prefix: &'a str) -> Self {
        let mut view = Self {
            method: "",
            path: "",
            content_type: "",
            headers,
            strip_prefix,
        };
        for (name, value) in headers.iter() {
            match name {
                ":method" => view.method = value,
                ":path" => view.path = value,
                "content-type" => view.content_type = value,
                _ => {}
            }
        }
        view
    }

    /// A header's first value; stripped (spoofable) headers are invisible.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        if !self.strip_prefix.is_empty() && name.starts_with(self.strip_prefix) {
            return None;
        }
        self.headers.get(name)
    }

    pub fn path_only(&self) -> &'a str {
        self.path.split(['?', '#']).next().unwrap_or("")
    }

    fn is_grpc(&self) -> bool {
        self.content_type.starts_with("application/grpc")
    }
}

#[derive(Debug)]
enum CompiledPath {
    Prefix(String),
    Exact(String),
    Regex(Regex),
}

#[derive(Debug)]
enum CompiledHeader {
    Present(String, bool),
    Exact(String, String),
    Prefix(String, String),
    Regex(String, Regex),
}

#[derive(Debug)]
pub struct CompiledMatch {
    path: Option<CompiledPath>,
    methods: Vec<String>,
    headers: Vec<CompiledHeader>,
    grpc: Option<(String, Option<String>)>,
}

impl CompiledMatch {
    pub fn compile(m: &RequestMatch, at: &str) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let path = match &m.path {
            None => None,
            Some(PathMatch::Prefix(p)) => Some(CompiledPath::Prefix(p.clone())),
            Some(PathMatch::Exact(p)) => Some(CompiledPath::Exact(p.clone())),
            Some(PathMatch::Regex(re)) => {
                anchored(re, &format!("{at}.path.regex"), &mut errors).map(CompiledPath::Regex)
            }
        };
        let headers = m
            .headers
            .iter()
            .enumerate()
            .filter_map(|(i, h)| compile_header(h, &format!("{at}.headers[{i}]"), &mut errors))
            .collect();
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            path,
            methods: m.methods.clone(),
            headers,
            grpc: m
                .grpc_service
                .as_ref()
                .map(|s| (s.clone(), m.grpc_method.clone())),
        })
    }

    pub fn matches(&self, req: &RequestView) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == req.method) {
            return false;
        }
        let path = req.path_only();
        let path_ok = match &self.path {
            None => true,
            Some(CompiledPath::Prefix(p)) => path.starts_with(p.as_str()),
            Some(CompiledPath::Exact(p)) => path == p,
            Some(CompiledPath::Regex(re)) => re.is_match(path),
        };
        if !path_ok {
            return false;
        }
        if let Some((service, method)) = &self.grpc {
            // gRPC paths are `/package.Service/Method`.
            let Some(rest) = path.strip_prefix('/') else {
                return false;
            };
            let Some((s, m)) = rest.split_once('/') else {
                return false;
            };
            if !req.is_grpc() || s != service || method.as_ref().is_some_and(|want| want != m) {
                return false;
            }
        }
        self.headers.iter().all(|h| header_matches(h, req))
    }
}

fn header_matches(h: &CompiledHeader, req: &RequestView) -> bool {
    match h {
        CompiledHeader::Present(name, want) => req.header(name).is_some() == *want,
        CompiledHeader::Exact(name, v) => req.header(name) == Some(v.as_str()),
        CompiledHeader::Prefix(name, p) => {
            req.header(name).is_some_and(|v| v.starts_with(p.as_str()))
        }
        CompiledHeader::Regex(name, re) => req.header(name).is_some_and(|v| re.is_match(v)),
    }
}

fn compile_header(
    h: &HeaderMatch,
    at: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<CompiledHeader> {
    let name = h.name.to_ascii_lowercase();
    Some(if let Some(v) = &h.exact {
        CompiledHeader::Exact(name, v.clone())
    } else if let Some(p) = &h.prefix {
        CompiledHeader::Prefix(name, p.clone())
    } else if let Some(re) = &h.regex {
        CompiledHeader::Regex(name, anchored(re, &format!("{at}.regex"), errors)?)
    } else {
        CompiledHeader::Present(name, h.present.unwrap_or(true))
    })
}

/// Envoy's `safe_regex` matches the whole value; so do we.
fn anchored(re: &str, at: &str, errors: &mut Vec<ConfigError>) -> Option<Regex> {
    match Regex::new(&format!("^(?:{re})$")) {
        Ok(r) => Some(r),
        Err(e) => {
            errors.push(ConfigError::new(at, format!("invalid regex {re:?}: {e}")));
            None
        }
    }
}
