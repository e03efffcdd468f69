//! Rate-limit refusals as summaries: counted per (rule, client) in memory and published once
//! per interval as one `nexus.ratelimit.over_limit.<rule>` event per pair, never one message
//! per refused request. `record` is a map update under a mutex: cheap enough for the
//! rate-limit service's hot path, and it never touches the bus.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::event::{Event, OverLimitData};
use crate::publisher::Events;

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
}
