//! Rate-limit refusals as summaries: counted per (rule, client) in memory and published once
//! per interval as one `nexus.ratelimit.over_limit.<rule>` event per pair, never one message
//! per refused request. `record` is a map update under a mutex: cheap enough for the
//! rate-limit service's hot path, and it never touches the bus.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nexus_proto::ratelimit::RateLimitRequest;
use nexus_ratelimit_service::server::SharedLimiter;

use crate::event::{Event, OverLimitData};
use crate::publisher::Events;
use crate::services::{CLIENT_KEY, RULE_KEY};

#[derive(Clone, Default)]
pub struct OverLimit {
    counts: Arc<Mutex<BTreeMap<(String, String), u64>>>,
}

impl OverLimit {
    /// One refused request of `client` by `rule`.
    pub fn record(&self, rule: &str, client: &str) {
        if let Ok(mut c) = self.counts.lock() {
            *c.entry((rule.to_string(), client.to_string())).or_insert(0) += 1;
        }
    }

    /// A call the rate-limit service refused: counted against the rule (its `route` entry)
    /// and the client (its `client_id` entry; empty when no limit of the call counts by
    /// client). Calls without a rule are not Nexus's (another Envoy filter's): not counted.
    pub fn record_call(&self, req: &RateLimitRequest) {
        let value = |key: &str| {
            req.descriptors
                .iter()
                .flat_map(|d| &d.entries)
                .find(|e| e.key == key)
                .map(|e| e.value.as_str())
        };
        if let Some(rule) = value(RULE_KEY) {
            self.record(rule, value(CLIENT_KEY).unwrap_or_default());
        }
    }

    /// Counts every call `limiter` refuses from now on.
    pub fn follow(&self, limiter: &SharedLimiter) {
        let me = self.clone();
        limiter.on_refusal(Arc::new(move |req| me.record_call(req)));
    }

    /// The summaries of the interval `[from, to]` (RFC 3339), and a fresh count.
    pub fn take(&self, from: &str, to: &str) -> Vec<Event> {
        let counts = self
            .counts
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default();
        counts
            .into_iter()
            .map(|((rule, client), count)| {
                Event::OverLimit(OverLimitData {
                    rule,
                    client,
                    count,
                    from: from.to_string(),
                    to: to.to_string(),
                })
            })
            .collect()
    }

    /// Publishes the summaries every `interval` until the process ends.
    pub fn report_every(&self, events: Events, interval: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut from = jiff::Timestamp::now().to_string();
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                let to = jiff::Timestamp::now().to_string();
                for e in me.take(&from, &to) {
                    events.publish(e);
                }
                from = to;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_summed_per_rule_and_client_per_interval() {
        let o = OverLimit::default();
        for _ in 0..500 {
            o.record("cortex-infer", "alice");
        }
        o.record("cortex-infer", "bob");
        o.record("lake-read", "alice");
        let summaries = o.take("t0", "t1");
        let keys: Vec<(String, u64)> = summaries
            .iter()
            .map(|e| match e {
                Event::OverLimit(d) => (e.routing_key() + "/" + &d.client, d.count),
                _ => (String::new(), 0),
            })
            .collect();
        assert_eq!(
            keys,
            [
                (
                    "nexus.ratelimit.over_limit.cortex-infer/alice".to_string(),
                    500
                ),
                ("nexus.ratelimit.over_limit.cortex-infer/bob".to_string(), 1),
                ("nexus.ratelimit.over_limit.lake-read/alice".to_string(), 1),
            ]
        );
        assert!(
            o.take("t1", "t2").is_empty(),
            "a new interval starts from zero"
        );
    }

    fn call(entries: &[&[(&str, &str)]]) -> RateLimitRequest {
        use nexus_proto::ratelimit::rate_limit_descriptor::Entry;
        use nexus_proto::ratelimit::RateLimitDescriptor;
        RateLimitRequest {
            domain: "nexus".into(),
            descriptors: entries
                .iter()
                .map(|d| RateLimitDescriptor {
                    entries: d
                        .iter()
                        .map(|(k, v)| Entry {
                            key: k.to_string(),
                            value: v.to_string(),
                        })
                        .collect(),
                    limit: None,
                })
                .collect(),
            hits_addend: 1,
        }
    }

    #[test]
    fn a_refused_call_counts_once_for_its_rule_and_client() {
        let o = OverLimit::default();
        // The filter's usual call: the rule's own descriptor and the client's.
        let both: &[&[(&str, &str)]] = &[
            &[("route", "cortex")],
            &[("route", "cortex"), ("client_id", "alice")],
        ];
        o.record_call(&call(both));
        o.record_call(&call(both));
        o.record_call(&call(&[&[("route", "lake"), ("header.x-tenant", "acme")]]));
        o.record_call(&call(&[&[("generic_key", "not-nexus")]]));
        let got: Vec<(String, String, u64)> = o
            .take("t0", "t1")
            .into_iter()
            .filter_map(|e| match e {
                Event::OverLimit(d) => Some((d.rule, d.client, d.count)),
                _ => None,
            })
            .collect();
        assert_eq!(
            got,
            [
                ("cortex".to_string(), "alice".to_string(), 2),
                ("lake".to_string(), String::new(), 1),
            ]
        );
    }
}
