//! The nexus-cache filter, host-agnostic and sans-IO.
//!
//! A request matched by a rule is looked up in the L1 (this Envoy's shared data, see [`l1`]),
//! then, when a service is configured, in the shared L2 (`nexus.cache.v1.Cache/Get`; the
//! adapter pauses the request on it). A miss goes upstream; the response is copied as it
//! streams by and, if cacheable, stored in the L1 and written through to the service
//! (`Put`, fire-and-forget). Service failures are misses (fail open), never errors. Both
//! copies are versioned by when the filter decided to go upstream, not when the response
//! completed: an invalidation during the fetch must win over the (possibly stale) response.
//!
//! [`Cache`] is the configuration, shared by every request; [`Exchange`] is one request's
//! state, owned by the adapter's HTTP context; [`coherency::Subscription`] is the root
//! context's event stream. The response header `x-nexus-cache` says what happened:
//! `hit-local`, `hit-shared`, `miss` (served from upstream, stored if it fits) or `bypass`
//! (the request or the response may not be cached).

pub mod coherency;
pub mod key;
pub mod l1;
pub mod policy;

use nexus_config::cache::{CacheConfig, CachePolicy, CacheService};
use nexus_config::{ConfigError, ConfigErrors};
use nexus_filter_core::matcher::{CompiledMatch, RequestView};
use nexus_filter_core::{HeaderList, Level, LocalResponse, Log, Metrics, SharedData};
use nexus_proto::cache::{CachedResponse, GetRequest, GetResponse, Header, PutRequest};
use prost::Message;

/// Counter names (Envoy shows them as `wasmcustom.<name>`).
pub mod metrics {
    pub const HIT_LOCAL: &str = "nexus_cache.hit.local";
    pub const HIT_SHARED: &str = "nexus_cache.hit.shared";
    /// Staleness: the age (ms) of every response served from cache, either level.
    pub const HIT_AGE_MS: &str = "nexus_cache.hit_age_ms";
    pub const MISS: &str = "nexus_cache.miss";
    pub const BYPASS: &str = "nexus_cache.bypass";
    pub const STORES: &str = "nexus_cache.store";
    pub const SERVICE_ERRORS: &str = "nexus_cache.service.errors";
    pub const INVALIDATIONS: &str = "nexus_cache.invalidations";
    pub const RECONNECTS: &str = "nexus_cache.stream.reconnects";
    pub const FLUSHES: &str = "nexus_cache.flushes";

    /// `nexus_cache.bypass.<reason>`, spelled out: no string is built per request.
    pub fn bypass(reason: &str) -> &'static str {
        match reason {
            "anonymous" => "nexus_cache.bypass.anonymous",
            "cache_control" => "nexus_cache.bypass.cache_control",
            "credentials" => "nexus_cache.bypass.credentials",
            "method" => "nexus_cache.bypass.method",
            "no_store" => "nexus_cache.bypass.no_store",
            "set_cookie" => "nexus_cache.bypass.set_cookie",
            "status" => "nexus_cache.bypass.status",
            "too_large" => "nexus_cache.bypass.too_large",
            "vary" => "nexus_cache.bypass.vary",
            _ => "nexus_cache.bypass.other",
        }
    }
}

/// Response header telling clients (and tests) what the cache did.
pub use nexus_config::contract::CACHE_RESULT as CACHE_HEADER;

pub struct Cache {
    config: CacheConfig,
    rules: Vec<CompiledMatch>,
    writer: String,
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Continue,
    /// Answer from the cache.
    Respond(LocalResponse),
    /// Pause; send this encoded `GetRequest` to the service, then call
    /// [`Cache::on_lookup_response`].
    Lookup(Vec<u8>),
}

/// What to do with (part of) a response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseStep {
    /// Headers to set on the response (only from [`Cache::on_response_headers`]).
    pub headers: Vec<(String, String)>,
    /// An encoded `PutRequest` to send to the service (write-through, answer ignored).
    pub put: Option<Vec<u8>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// No rule matched: the cache stays out of the way.
    #[default]
    Untouched,
    Bypass,
    Lookup,
    /// Going upstream; the response may be stored.
    Fetch,
    Served,
}

/// One request's state.
#[derive(Debug, Default)]
pub struct Exchange {
    stage: Stage,
    rule: usize,
    key: String,
    /// The L1 generation and invalidation epoch when the request started (see [`l1`]).
    generation: u64,
    epoch: u64,
    /// When the filter decided to go upstream (after the L1 miss, or after the shared miss):
    /// the version the response is stored under. An invalidation after this instant wins over
    /// the response, however late it completes (the service refuses puts stamped at or before
    /// an invalidation's watermark).
    fetch_started_ms: u64,
    use_l1: bool,
    capture: Option<Capture>,
}

#[derive(Debug)]
struct Capture {
    status: u32,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    ttl_ms: u64,
    tags: Vec<String>,
}

impl Exchange {
    /// The cache key (empty when no rule matched or the request bypassed).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether the response body is being copied for storing (else the adapter need not
    /// read it).
    pub fn capturing(&self) -> bool {
        self.capture.is_some()
    }

    /// Whether the response has work for this exchange: the adapter keeps only such exchanges
    /// past the request phase.
    pub fn wants_response(&self) -> bool {
        !matches!(self.stage, Stage::Untouched | Stage::Served)
    }
}

impl Cache {
    /// `default_writer` is used when the configuration names none (the adapter derives one
    /// per VM).
    pub fn from_json(bytes: &[u8], default_writer: &str) -> Result<Self, ConfigErrors> {
        Self::new(nexus_config::parse(bytes)?, default_writer)
    }

    pub fn new(config: CacheConfig, default_writer: &str) -> Result<Self, ConfigErrors> {
        let mut errors: Vec<ConfigError> = Vec::new();
        let mut rules = Vec::new();
        for (i, r) in config.rules.iter().enumerate() {
            match CompiledMatch::compile(&r.matcher, &format!("$.rules[{i}].match")) {
                Ok(m) => rules.push(m),
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let writer = config
            .writer
            .clone()
            .unwrap_or_else(|| default_writer.to_string());
        Ok(Self {
            config,
            rules,
            writer,
        })
    }

    pub fn service(&self) -> Option<&CacheService> {
        self.config.service.as_ref()
    }

    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// The event stream to follow, when the configuration asks for one.
    pub fn subscription(&self, subscriber: &str) -> Option<coherency::Subscription> {
        self.service()
            .filter(|s| s.subscribe)
            .map(|s| coherency::Subscription::new(s, &self.writer, subscriber))
    }

    fn policy(&self, ex: &Exchange) -> Option<&CachePolicy> {
        self.config.rules.get(ex.rule).map(|r| &r.policy)
    }

    /// `l1_live`: whether this worker may use the L1 (see [`coherency`]; always true without
    /// a subscription).
    pub fn on_request_headers(
        &self,
        ex: &mut Exchange,
        headers: &HeaderList,
        l1_live: bool,
        shared: &impl SharedData,
        metrics: &impl Metrics,
        now_ms: u64,
    ) -> Step {
        let view = RequestView::new(headers, "");
        let Some(rule) = self.rules.iter().position(|m| m.matches(&view)) else {
            return Step::Continue;
        };
        ex.rule = rule;
        let Some(policy) = self.policy(ex) else {
            return Step::Continue;
        };
        let plan = match policy::request_plan(policy, headers) {
            Ok(plan) => plan,
            Err(reason) => {
                ex.stage = Stage::Bypass;
                metrics.increment(metrics::BYPASS, 1);
                metrics.increment(metrics::bypass(reason), 1);
                return Step::Continue;
            }
        };
        ex.key = key::cache_key(&key::KeyParts {
            method: view.method,
            authority: headers
                .get(":authority")
                .or_else(|| headers.get("host"))
                .unwrap_or(""),
            path: view.path,
            vary: policy
                .vary
                .iter()
                .map(|name| (name.as_str(), headers.get(name)))
                .collect(),
            client: plan.client.as_deref(),
        });
        ex.use_l1 = l1_live;
        if ex.use_l1 {
            ex.generation = l1::generation(shared);
        }
        ex.stage = Stage::Fetch;
        ex.fetch_started_ms = now_ms;
        if ex.use_l1 && plan.lookup {
            if let Some(resp) = l1::get_at(shared, &ex.key, ex.generation, now_ms) {
                ex.stage = Stage::Served;
                metrics.increment(metrics::HIT_LOCAL, 1);
                metrics.record(
                    metrics::HIT_AGE_MS,
                    now_ms.saturating_sub(resp.stored_at_ms),
                );
                return Step::Respond(replay(resp, "hit-local", now_ms));
            }
        }
        // Not served from L1: the epoch is only needed to keep what is fetched from here on
        // out of the L1 if an invalidation arrives meanwhile.
        if ex.use_l1 {
            ex.epoch = l1::epoch(shared);
        }
        if !plan.lookup {
            return Step::Continue;
        }
        if self.service().is_some() {
            ex.stage = Stage::Lookup;
            return Step::Lookup(
                GetRequest {
                    key: ex.key.clone(),
                }
                .encode_to_vec(),
            );
        }
        Step::Continue
    }

    /// The service's `GetResponse`, or why there is none (the call failed or timed out).
    /// Either a hit (`Respond`) or a miss (`Continue`: resume the request).
    pub fn on_lookup_response(
        &self,
        ex: &mut Exchange,
        answer: Result<&[u8], String>,
        shared: &impl SharedData,
        metrics: &impl Metrics,
        log: &impl Log,
        now_ms: u64,
    ) -> Step {
        if ex.stage != Stage::Lookup {
            return Step::Continue;
        }
        ex.stage = Stage::Fetch;
        // A miss resumes the request now: the upstream fetch starts here.
        ex.fetch_started_ms = now_ms;
        let entry = match answer.and_then(|b| GetResponse::decode(b).map_err(|e| e.to_string())) {
            Ok(r) => r.entry,
            Err(e) => {
                // Fail open: the request goes upstream as a miss.
                metrics.increment(metrics::SERVICE_ERRORS, 1);
                log.log(Level::Debug, &format!("nexus-cache: Get failed: {e}"));
                None
            }
        };
        let Some(entry) = entry else {
            return Step::Continue;
        };
        let Ok(mut resp) = CachedResponse::decode(entry.value.as_slice()) else {
            metrics.increment(metrics::SERVICE_ERRORS, 1);
            return Step::Continue;
        };
        if entry.ttl_remaining_ms > 0 {
            resp.expires_at_ms = resp
                .expires_at_ms
                .min(now_ms.saturating_add(entry.ttl_remaining_ms));
        }
        if resp.expires_at_ms <= now_ms {
            return Step::Continue;
        }
        if ex.use_l1 {
            let version = l1::Version {
                timestamp_ms: entry.timestamp_ms,
                writer: entry.writer,
            };
            l1::put_unless_invalidated(
                shared,
                self.config.l1_max_entries,
                &ex.key,
                ex.generation,
                ex.epoch,
                version,
                &resp,
            );
        }
        ex.stage = Stage::Served;
        metrics.increment(metrics::HIT_SHARED, 1);
        metrics.record(
            metrics::HIT_AGE_MS,
            now_ms.saturating_sub(resp.stored_at_ms),
        );
        Step::Respond(replay(resp, "hit-shared", now_ms))
    }

    /// Response headers (`:status` included). `end_of_stream`: there is no body.
    pub fn on_response_headers(
        &self,
        ex: &mut Exchange,
        headers: &HeaderList,
        end_of_stream: bool,
        shared: &impl SharedData,
        metrics: &impl Metrics,
        now_ms: u64,
    ) -> ResponseStep {
        let label = match ex.stage {
            Stage::Untouched | Stage::Served | Stage::Lookup => return ResponseStep::default(),
            Stage::Bypass => "bypass",
            Stage::Fetch => {
                let Some(policy) = self.policy(ex) else {
                    return ResponseStep::default();
                };
                let status = headers
                    .get(":status")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                match policy::response_ttl_ms(policy, status, headers) {
                    Ok(ttl_ms) => {
                        metrics.increment(metrics::MISS, 1);
                        ex.capture = Some(Capture {
                            status,
                            headers: policy::stored_headers(headers),
                            body: Vec::new(),
                            ttl_ms,
                            tags: policy::tags(policy, headers),
                        });
                        "miss"
                    }
                    Err(reason) => {
                        metrics.increment(metrics::BYPASS, 1);
                        metrics.increment(metrics::bypass(reason), 1);
                        "bypass"
                    }
                }
            }
        };
        let mut step = if end_of_stream {
            self.complete(ex, shared, metrics, now_ms)
        } else {
            ResponseStep::default()
        };
        step.headers
            .push((CACHE_HEADER.to_string(), label.to_string()));
        step
    }

    /// A response body chunk, as it passes (the filter never holds the response back).
    pub fn on_response_body(
        &self,
        ex: &mut Exchange,
        chunk: &[u8],
        end_of_stream: bool,
        shared: &impl SharedData,
        metrics: &impl Metrics,
        now_ms: u64,
    ) -> ResponseStep {
        let max = self.policy(ex).map_or(0, |p| p.max_object_bytes);
        if let Some(c) = &mut ex.capture {
            if (c.body.len() + chunk.len()) as u64 > max {
                // Served, not stored: keep no copy of an oversized body.
                ex.capture = None;
                metrics.increment(metrics::bypass("too_large"), 1);
            } else {
                c.body.extend_from_slice(chunk);
            }
        }
        if end_of_stream {
            self.complete(ex, shared, metrics, now_ms)
        } else {
            ResponseStep::default()
        }
    }

    /// Trailers: a response with trailers (gRPC, ...) is not stored; we replay no trailers.
    pub fn on_response_trailers(&self, ex: &mut Exchange) {
        ex.capture = None;
    }

    fn complete(
        &self,
        ex: &mut Exchange,
        shared: &impl SharedData,
        metrics: &impl Metrics,
        now_ms: u64,
    ) -> ResponseStep {
        let Some(c) = ex.capture.take() else {
            return ResponseStep::default();
        };
        let resp = CachedResponse {
            status: c.status,
            headers: c
                .headers
                .into_iter()
                .map(|(name, value)| Header {
                    name,
                    value: value.into_bytes(),
                })
                .collect(),
            body: c.body,
            stored_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(c.ttl_ms),
        };
        metrics.increment(metrics::STORES, 1);
        // The version is when the fetch started, not now: a response that was in flight when an
        // invalidation happened is older than the invalidation, and loses to it (here through
        // the epoch, in the service through its watermarks).
        let version_ms = ex.fetch_started_ms;
        if ex.use_l1 {
            let version = l1::Version {
                timestamp_ms: version_ms,
                writer: self.writer.clone(),
            };
            l1::put_unless_invalidated(
                shared,
                self.config.l1_max_entries,
                &ex.key,
                ex.generation,
                ex.epoch,
                version,
                &resp,
            );
        }
        let put = self.service().map(|_| {
            PutRequest {
                key: ex.key.clone(),
                value: resp.encode_to_vec(),
                tags: c.tags,
                ttl_ms: c.ttl_ms,
                timestamp_ms: version_ms,
                writer: self.writer.clone(),
            }
            .encode_to_vec()
        });
        ResponseStep {
            headers: Vec::new(),
            put,
        }
    }
}

/// The stored response as a local reply. Envoy sets each local-reply header once, so
/// repeated headers are joined (RFC 9110 §5.3; `set-cookie`, the exception, is never stored).
fn replay(resp: CachedResponse, label: &str, now_ms: u64) -> LocalResponse {
    let mut headers: Vec<(String, String)> = Vec::with_capacity(resp.headers.len() + 2);
    for h in resp.headers {
        let value = String::from_utf8_lossy(&h.value).into_owned();
        match headers.iter_mut().find(|(k, _)| *k == h.name) {
            Some((_, v)) => {
                v.push_str(", ");
                v.push_str(&value);
            }
            None => headers.push((h.name, value)),
        }
    }
    headers.push((CACHE_HEADER.to_string(), label.to_string()));
    headers.push((
        "age".to_string(),
        (now_ms.saturating_sub(resp.stored_at_ms) / 1000).to_string(),
    ));
    LocalResponse {
        status: u16::try_from(resp.status).unwrap_or(200),
        headers,
        body: resp.body,
        details: if label == "hit-local" {
            "nexus_cache_hit_local"
        } else {
            "nexus_cache_hit_shared"
        }
        .to_string(),
    }
}

#[cfg(test)]
mod tests;
