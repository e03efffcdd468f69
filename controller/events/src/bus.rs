//! Starting the whole bus for one Nexus process: the publisher (with its outbox in Redis when
//! the process has Redis, in memory otherwise) and, when asked, the command consumer.

use std::sync::Arc;
use std::time::Duration;

use crate::consumer::{self, ConsumerConfig};
use crate::outbox::{MemoryOutbox, Outbox, RedisOutbox};
use crate::over_limit::OverLimit;
use crate::publisher::{Events, PublisherConfig};
use crate::services::Services;
use crate::stats::Stats;

#[derive(Debug, Clone)]
pub struct BusOptions {
    pub amqp_url: String,
    /// Names the command queue (`nexus.commands.<deployment>`) and the shared outbox
    /// (`nexus:events:outbox:<deployment>`): replicas of one deployment share both.
    pub deployment: String,
    /// This replica, in the envelopes' `source`.
    pub replica: String,
    pub redis_url: Option<String>,
    pub outbox_capacity: usize,
    pub consume_commands: bool,
    /// Whether a RabbitMQ outage fails `/health/ready` (the Datapunk design: required).
    pub required: bool,
    /// How often the rate-limit service's refusals are published as summaries (one
    /// `nexus.ratelimit.over_limit.<rule>` event per rule and client refused in the interval).
    pub over_limit_interval: Duration,
}

pub struct Bus {
    pub events: Events,
    pub stats: Arc<Stats>,
}

/// Starts the publisher and (if asked) the consumer on the current tokio runtime. `services`
/// carry the commands out; they announce what they did through the returned `events`. The
/// refusals of `services.limiter` (the process's rate-limit service) are summarized there.
pub fn start(options: &BusOptions, mut services: Services) -> anyhow::Result<Bus> {
    let source = format!("nexus://{}/{}", options.deployment, options.replica);
    let outbox: Arc<dyn Outbox> = match &options.redis_url {
        Some(url) => {
            let key = format!("nexus:events:outbox:{}", options.deployment);
            Arc::new(RedisOutbox::new(url, &key, options.outbox_capacity)?)
        }
        None => Arc::new(MemoryOutbox::new(options.outbox_capacity)),
    };
    let stats = Arc::new(Stats::default());
    let config = PublisherConfig::new(&options.amqp_url, &source);
    let events = Events::start(config, outbox, stats.clone());
    if let Some(limiter) = &services.limiter {
        let refusals = OverLimit::default();
        refusals.follow(limiter);
        refusals.report_every(events.clone(), options.over_limit_interval);
    }
    if options.consume_commands {
        services.events = Some(events.clone());
        let config = ConsumerConfig::new(&options.amqp_url, &options.deployment, &source);
        consumer::start(config, Arc::new(services), stats.clone());
    }
    Ok(Bus { events, stats })
}
